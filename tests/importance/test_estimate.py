"""`estimate` against a plain reference: activations captured by the test's own hooks, statistics computed
with explicit loops over samples and tokens, in float64."""

from __future__ import annotations

import json
from itertools import product

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from minitron.errors import MinitronError
from minitron.importance import AGGREGATORS, Importance, config_hash, estimate
from minitron.models import get_adapter
from minitron.models.tiny import tiny_config, tiny_model

FAMILIES = ("nemotron", "llama")
PAIRS = list(product(AGGREGATORS, AGGREGATORS))  # (seq_agg, batch_agg)


def calibration_batches() -> list:
    """Three batches of 6 samples in all: right padding, a bare tensor, and an all-ones mask."""
    g = torch.Generator().manual_seed(0)
    padded = torch.randint(3, 128, (3, 10), generator=g)
    mask = torch.ones_like(padded)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    padded[mask == 0] = 0
    return [
        {"input_ids": padded, "attention_mask": mask},
        torch.randint(3, 128, (2, 10), generator=g),
        {"input_ids": torch.randint(3, 128, (1, 7), generator=g), "attention_mask": torch.ones(1, 7, dtype=torch.long)},
    ]


def samples_of(batches):
    """(input_ids, mask) per batch, with a mask of ones where the batch had none."""
    out = []
    for b in batches:
        ids, mask = (b["input_ids"], b.get("attention_mask")) if isinstance(b, dict) else (b, None)
        out.append((ids, torch.ones_like(ids) if mask is None else mask))
    return out


# ---- the plain reference ----------------------------------------------------------------------------------
def seq_reference(tokens: list[torch.Tensor], how: str) -> torch.Tensor:
    count = len(tokens)
    acc = torch.zeros_like(tokens[0])
    if how == "mean":
        for x in tokens:
            acc += x.abs()
        return acc / count
    if how == "l2":
        for x in tokens:
            acc += x * x
        return acc.sqrt()
    mean = torch.zeros_like(tokens[0])
    for x in tokens:
        mean += x
    mean /= count
    for x in tokens:
        acc += (x - mean) ** 2
    return acc / count


def batch_reference(per_sample: list[torch.Tensor], how: str) -> torch.Tensor:
    # the per-sample values are the "tokens" of the second step; the formulas are the same
    return seq_reference(per_sample, how)


class Captured:
    """Every activation the scores read, per site and per sample, as lists of float64 token vectors."""

    def __init__(self, family: str):
        self.model = tiny_model(family, seed=7)
        self.batches = calibration_batches()
        self.adapter = a = get_adapter(self.model)
        sites = {}
        for i in range(a.num_hidden_layers):
            for k, path in enumerate(a.norms(i)):
                sites[("norm", i, k)] = (path, "out")
            sites[("o_in", i)] = (a.o_proj(i), "in")
            sites[("down_in", i)] = (a.down_proj(i), "in")
            sites[("up_out", i)] = (a.up_proj(i), "out")
            sites[("layer_in", i)] = (a.layer(i), "in")
            sites[("layer_out", i)] = (a.layer(i), "out")
        self.acts = {key: [] for key in sites}  # key -> per sample -> list of token vectors
        store = {}
        handles = []
        for key, (path, where) in sites.items():
            module = self.model.get_submodule(path)
            if where == "in":
                handles.append(
                    module.register_forward_pre_hook(
                        lambda m, args, kwargs, key=key: store.__setitem__(key, args[0] if args else kwargs["hidden_states"]),
                        with_kwargs=True,
                    )
                )
            else:
                handles.append(
                    module.register_forward_hook(
                        lambda m, args, out, key=key: store.__setitem__(key, out[0] if isinstance(out, tuple) else out)
                    )
                )
        with torch.no_grad():
            for ids, mask in samples_of(self.batches):
                self.model(input_ids=ids, attention_mask=mask)
                for key in sites:
                    for n in range(ids.shape[0]):
                        tokens = [store[key][n, t].double() for t in range(ids.shape[1]) if mask[n, t]]
                        self.acts[key].append(tokens)
        for h in handles:
            h.remove()
        self._seq_cache = {}

    def site_score(self, key, seq_agg: str, batch_agg: str) -> torch.Tensor:
        if (key, seq_agg) not in self._seq_cache:
            self._seq_cache[key, seq_agg] = [seq_reference(tokens, seq_agg) for tokens in self.acts[key]]
        return batch_reference(self._seq_cache[key, seq_agg], batch_agg)

    def reference(self, seq_agg: str, batch_agg: str, mlp_site: str) -> dict[str, torch.Tensor]:
        cfg = self.model.config
        layers, heads, kv_heads = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads
        head_dim = cfg.head_dim
        hidden = torch.zeros(cfg.hidden_size, dtype=torch.float64)
        head_scores = torch.zeros(layers, heads, dtype=torch.float64)
        kv_scores = torch.zeros(layers, kv_heads, dtype=torch.float64)
        mlp = []
        for i in range(layers):
            for k in range(2):
                hidden += self.site_score(("norm", i, k), seq_agg, batch_agg)
            per_dim = self.site_score(("o_in", i), seq_agg, batch_agg)
            for h in range(heads):
                head_scores[i, h] = sum(per_dim[h * head_dim + d] ** 2 for d in range(head_dim)) ** 0.5
            for g in range(kv_heads):
                # transformers' repeat_kv: query head h reads KV head h // (heads // kv_heads)
                members = [h for h in range(heads) if h // (heads // kv_heads) == g]
                kv_scores[i, g] = sum(head_scores[i, h] ** 2 for h in members) ** 0.5
            mlp.append(self.site_score(("down_in", i) if mlp_site == "post" else ("up_out", i), seq_agg, batch_agg))
        return dict(hidden=hidden, heads=head_scores, kv_groups=kv_scores, mlp=torch.stack(mlp))

    def block_importance(self) -> torch.Tensor:
        out = []
        for i in range(self.model.config.num_hidden_layers):
            total, count = 0.0, 0
            for xs, ys in zip(self.acts[("layer_in", i)], self.acts[("layer_out", i)]):
                for x, y in zip(xs, ys):
                    total += 1 - float(x @ y / (x.norm() * y.norm()))
                    count += 1
            out.append(total / count)
        return torch.tensor(out, dtype=torch.float64)

    def skip_losses(self) -> torch.Tensor:
        out = []
        for i, layer in enumerate(self.adapter.layers(self.model)):
            handle = layer.register_forward_hook(
                lambda m, args, kwargs, output: args[0] if args else kwargs["hidden_states"], with_kwargs=True
            )
            total, count = 0.0, 0
            with torch.no_grad():
                for ids, mask in samples_of(self.batches):
                    logits = self.model(input_ids=ids, attention_mask=mask).logits.double()
                    for n in range(ids.shape[0]):
                        for t in range(ids.shape[1] - 1):
                            if mask[n, t] and mask[n, t + 1]:
                                total -= float(F.log_softmax(logits[n, t], dim=-1)[ids[n, t + 1]])
                                count += 1
            handle.remove()
            out.append(total / count)
        return torch.tensor(out, dtype=torch.float64)


@pytest.fixture(scope="module", params=FAMILIES)
def captured(request) -> Captured:
    cap = Captured(request.param)
    cap.bi = cap.block_importance()
    cap.loss = cap.skip_losses()
    return cap


def assert_scores_close(got: torch.Tensor, want: torch.Tensor, name: str) -> None:
    assert got.dtype == torch.float32, name
    assert got.shape == want.shape, name
    # 1e-5 relative to the scale of the axis: var-of-var scores can be far below the largest one
    tol = 1e-5 * float(want.abs().max())
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=tol, msg=lambda m: f"{name}: {m}")


# ---- the main comparison ----------------------------------------------------------------------------------
@pytest.mark.parametrize("mlp_site", ["post", "pre"])
@pytest.mark.parametrize("seq_agg,batch_agg", PAIRS)
def test_every_axis_matches_the_plain_reference(captured, seq_agg, batch_agg, mlp_site):
    imp = estimate(
        captured.model, captured.batches, seq_agg=seq_agg, batch_agg=batch_agg, mlp_site=mlp_site, progress=False
    )
    want = captured.reference(seq_agg, batch_agg, mlp_site)
    for name in ("hidden", "heads", "kv_groups", "mlp"):
        assert_scores_close(getattr(imp, name), want[name], name)
    assert_scores_close(imp.layers, captured.bi, "layers")
    assert_scores_close(imp.layers_loss, captured.loss, "layers_loss")
    assert (imp.seq_agg, imp.batch_agg, imp.mlp_site) == (seq_agg, batch_agg, mlp_site)
    assert (imp.num_samples, imp.num_tokens, imp.seq_len) == (6, 3 * 10 - 4 - 7 + 20 + 7, 10)


def test_default_aggregation_is_the_reference_implementation_formula():
    """sqrt(sum over samples of (mean over tokens of |x|)^2), per channel."""
    model = tiny_model("llama")
    batches = calibration_batches()
    default = estimate(model, batches, depth=(), progress=False)
    explicit = estimate(model, batches, seq_agg="mean", batch_agg="l2", mlp_site="post", depth=(), progress=False)
    for name, tensor in default.tensors().items():
        torch.testing.assert_close(tensor, getattr(explicit, name), rtol=0, atol=0)
    assert (default.seq_agg, default.batch_agg, default.mlp_site) == ("mean", "l2", "post")


# ---- tokens and batching ----------------------------------------------------------------------------------
@pytest.mark.parametrize("seq_agg,batch_agg", [("mean", "l2"), ("var", "var")])
def test_scores_do_not_depend_on_batching_or_padding(seq_agg, batch_agg):
    model = tiny_model("nemotron")
    g = torch.Generator().manual_seed(3)
    lengths = [9, 4, 7, 2, 9]
    samples = [torch.randint(3, 128, (n,), generator=g) for n in lengths]

    def padded(group, width):
        ids = torch.zeros(len(group), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, s in enumerate(group):
            ids[r, : len(s)] = s
            mask[r, : len(s)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    one_batch = [padded(samples, 12)]
    one_each = [s.unsqueeze(0) for s in samples]
    mixed = [padded(samples[:2], 9), padded(samples[2:], 11)]
    runs = [
        estimate(model, b, seq_agg=seq_agg, batch_agg=batch_agg, progress=False) for b in (one_batch, one_each, mixed)
    ]
    for other in runs[1:]:
        for name, tensor in runs[0].tensors().items():
            torch.testing.assert_close(getattr(other, name), tensor, rtol=2e-5, atol=1e-6, msg=name)
        assert other.corpus_fingerprint == runs[0].corpus_fingerprint
        assert (other.num_samples, other.num_tokens) == (5, sum(lengths))


def test_masked_positions_are_ignored():
    model = tiny_model("llama")
    batch = calibration_batches()[0]
    noisy = dict(batch, input_ids=torch.where(batch["attention_mask"].bool(), batch["input_ids"], 127))
    a = estimate(model, [batch], progress=False)
    b = estimate(model, [noisy], progress=False)
    for name, tensor in a.tensors().items():
        torch.testing.assert_close(getattr(b, name), tensor, rtol=1e-6, atol=1e-7, msg=name)
    assert a.corpus_fingerprint == b.corpus_fingerprint


def test_fully_masked_samples_are_dropped_and_empty_input_is_an_error():
    model = tiny_model("llama")
    ids = torch.randint(3, 128, (2, 5))
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]])
    imp = estimate(model, [{"input_ids": ids, "attention_mask": mask}], depth=(), progress=False)
    assert (imp.num_samples, imp.num_tokens) == (1, 3)
    with pytest.raises(MinitronError, match="no calibration tokens"):
        estimate(model, [], progress=False)


# ---- hooks, modes, dtypes ---------------------------------------------------------------------------------
def hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_hooks_are_removed_and_mode_restored_also_on_error():
    model = tiny_model("nemotron").train()
    before = hook_count(model)
    estimate(model, calibration_batches(), progress=False)
    assert hook_count(model) == before and model.training

    def failing():
        yield calibration_batches()[1]
        raise RuntimeError("corpus broke")

    with pytest.raises(RuntimeError, match="corpus broke"):
        estimate(model, failing(), progress=False)
    assert hook_count(model) == before and model.training


def test_bf16_model_accumulates_in_float32():
    batches = calibration_batches()
    ref = estimate(tiny_model("nemotron"), batches, progress=False)
    low = estimate(tiny_model("nemotron").to(torch.bfloat16), batches, progress=False)
    for name, tensor in low.tensors().items():
        assert tensor.dtype == torch.float32, name
        assert torch.isfinite(tensor).all(), name
        torch.testing.assert_close(tensor, getattr(ref, name), rtol=0.1, atol=0.02 * float(ref.tensors()[name].abs().max()), msg=name)


def test_depth_selects_the_depth_scores():
    model = tiny_model("llama")
    batches = calibration_batches()
    none = estimate(model, batches, depth=(), progress=False)
    bi = estimate(model, batches, depth=("bi",), progress=False)
    loss = estimate(model, batches, depth="loss", progress=False)
    assert none.layers is None and none.layers_loss is None
    assert bi.layers is not None and bi.layers_loss is None
    assert loss.layers is None and loss.layers_loss is not None
    assert set(none.tensors()) == {"hidden", "heads", "mlp", "kv_groups"}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(seq_agg="max"), "seq_agg='max'"),
        (dict(batch_agg="sum"), "batch_agg='sum'"),
        (dict(mlp_site="mid"), "mlp_site='mid'"),
        (dict(depth=("bi", "ppl")), "depth='ppl'"),
    ],
)
def test_bad_options_are_one_line_errors(kwargs, match):
    with pytest.raises(MinitronError, match=match):
        estimate(tiny_model("llama"), calibration_batches(), progress=False, **kwargs)


# ---- the scores file --------------------------------------------------------------------------------------
def test_save_load_round_trip(tmp_path):
    model = tiny_model("nemotron")
    imp = estimate(model, calibration_batches(), seq_agg="var", batch_agg="mean", mlp_site="pre", progress=False)
    path = imp.save(tmp_path / "scores" / "importance.safetensors")
    assert sorted(p.name for p in path.parent.iterdir()) == ["importance.safetensors"]  # no temporary left
    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == {"hidden", "heads", "mlp", "kv_groups", "layers", "layers_loss"}
        meta = {k: json.loads(v) for k, v in f.metadata().items() if k != "format"}
    assert meta["seq_agg"] == "var" and meta["batch_agg"] == "mean" and meta["mlp_site"] == "pre"
    assert meta["num_samples"] == 6 and meta["seq_len"] == 10 and meta["depth"] == ["bi", "loss"]
    assert meta["config_hash"] == config_hash(model.config) and meta["corpus_fingerprint"] == imp.corpus_fingerprint
    back = Importance.load(path)
    for name, tensor in imp.tensors().items():
        torch.testing.assert_close(getattr(back, name), tensor, rtol=0, atol=0)
    assert back.metadata() == imp.metadata()
    back.check_model(model.config)


def test_saved_file_holds_only_the_computed_depth_scores(tmp_path):
    imp = estimate(tiny_model("llama"), calibration_batches(), depth=("bi",), progress=False)
    path = imp.save(tmp_path / "bi.safetensors")
    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == {"hidden", "heads", "mlp", "kv_groups", "layers"}
    back = Importance.load(path)
    assert back.layers_loss is None and back.metadata()["depth"] == ["bi"]


def test_config_hash_survives_a_round_trip_and_a_cast(tmp_path):
    model = tiny_model("llama")
    model.save_pretrained(tmp_path / "ckpt")
    reloaded = type(model).from_pretrained(tmp_path / "ckpt", dtype=torch.bfloat16)
    assert config_hash(reloaded.config) == config_hash(model.config)
    imp = estimate(model, calibration_batches(), depth=(), progress=False)
    imp.check_model(reloaded.config)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(intermediate_size=96), r"importance tensor 'mlp' has shape \(2, 128\) but this model needs \(2, 96\)"),
        (dict(hidden_size=32, head_dim=8), r"importance tensor 'hidden' has shape \(64,\)"),
        (dict(num_hidden_layers=3), r"importance tensor 'heads' has shape \(2, 4\)"),
        (dict(num_key_value_heads=1), r"importance tensor 'kv_groups' has shape \(2, 2\)"),
        (dict(rope_theta=500.0), r"computed for another model \(config hash [0-9a-f]{16}, this model [0-9a-f]{16}\)"),
    ],
)
def test_check_model_rejects_scores_of_another_model(overrides, match):
    imp = estimate(tiny_model("llama"), calibration_batches(), depth=("bi",), progress=False)
    with pytest.raises(MinitronError, match=match) as err:
        imp.check_model(tiny_config("llama", **overrides))
    assert "\n" not in str(err.value)


def test_loading_a_foreign_file_is_a_one_line_error(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(MinitronError, match="not a minitron importance file"):
        Importance.load(tmp_path / "other.safetensors")
    with pytest.raises(MinitronError, match="does not exist"):
        Importance.load(tmp_path / "missing.safetensors")
    (tmp_path / "text.safetensors").write_text("not a tensor file")
    with pytest.raises(MinitronError, match=r"text.safetensors is not a readable importance file \(.+\); pass a file") as err:
        Importance.load(tmp_path / "text.safetensors")
    assert "\n" not in str(err.value)
