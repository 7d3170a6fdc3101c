"""Qwen3, OLMo-2, Gemma 2, Gemma 3, Phi-3, Granite and SmolLM3 on tiny random models of their stock classes:
exact keep-all pruning, checkpoints that stock `transformers` loads, importance against a hand computation,
streaming equal to in-memory, exact dry-run counts, distillation, and each family's own quirk."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from family_checks import assert_distillation_lowers_the_kd_loss

from minitron.importance import estimate, estimate_streaming
from minitron.importance.baselines import random_scores, weight_magnitude
from minitron.models import get_adapter
from minitron.models.support import support_table
from minitron.models.tiny import tiny_model
from minitron.prune import dry_run, make_plan, prune, prune_checkpoint_streaming, save_checkpoint
from minitron.prune.search import _count

FAMILIES = ("qwen3", "olmo2", "gemma2", "gemma3", "phi3", "granite", "smollm3")
LAYERS = 3
IDS = torch.randint(3, 128, (3, 10), generator=torch.Generator().manual_seed(0))
# Every axis at once (hidden 64->48, MLP 128->96, 4->2 query heads with both KV groups, 3->2 layers), and KV
# groups alone (2->1, which keeps both query heads of the kept group).
WIDTH_DEPTH = {"hidden_size": 48, "intermediate_size": 96, "num_attention_heads": 2, "num_hidden_layers": 2}
KV = {"num_key_value_heads": 1}
TARGETS = {"width_depth": WIDTH_DEPTH, "kv_groups": KV}

# Config fields each family's pruned config must carry unchanged.
CARRIED = {
    "gemma2": ("final_logit_softcapping", "attn_logit_softcapping", "sliding_window", "query_pre_attn_scalar"),
    "gemma3": ("final_logit_softcapping", "sliding_window", "query_pre_attn_scalar", "rope_parameters"),
    "granite": ("embedding_multiplier", "residual_multiplier", "attention_multiplier", "logits_scaling"),
}


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    return request.param


def logits(m, ids=IDS):
    with torch.no_grad():
        return m(ids).logits


# ---- pruning --------------------------------------------------------------------------------------------------
def test_keep_all_is_bitwise_exact(model, scores):
    a = get_adapter(model)
    explicit = {"hidden_size": a.hidden_size, "intermediate_size": 1.0, "num_attention_heads": a.num_attention_heads,
                "num_key_value_heads": a.num_key_value_heads, "num_hidden_layers": LAYERS}
    for target in ({}, explicit):
        pruned = prune(model, scores, target)
        assert torch.equal(logits(pruned), logits(model))
        assert pruned.num_parameters() == model.num_parameters()


@pytest.mark.parametrize("target", TARGETS.values(), ids=TARGETS.keys())
def test_pruned_checkpoint_loads_in_the_stock_class(family, model, scores, target, tmp_path):
    plan = make_plan(model.config, scores, target)
    pruned = prune(model, scores, target)
    save_checkpoint(pruned, None, tmp_path / "pruned")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned").eval()
    assert type(loaded) is type(model)
    assert torch.equal(logits(loaded), logits(pruned))
    assert torch.isfinite(logits(loaded)).all()
    config, source = loaded.config, model.config
    for key, value in target.items():
        assert getattr(config, key) == value, key
    for key in CARRIED.get(family, ()):
        assert getattr(config, key) == getattr(source, key), key
    kept = plan.keep_layers
    for key in get_adapter(model).per_layer_config_fields:
        if getattr(source, key, None) is not None:
            assert list(getattr(config, key)) == [getattr(source, key)[i] for i in kept], key
    assert loaded.num_parameters() == pruned.num_parameters() == plan.pruned_adapter.num_parameters()


@pytest.mark.parametrize("target", TARGETS.values(), ids=TARGETS.keys())
def test_streaming_export_equals_in_memory_export(model, scores, checkpoint, target, tmp_path):
    prune_checkpoint_streaming(checkpoint, scores, target, tmp_path / "streamed")
    pruned = prune(model, scores, target)
    save_checkpoint(pruned, None, tmp_path / "memory")
    got, want = load_file(tmp_path / "streamed" / "model.safetensors"), load_file(tmp_path / "memory" / "model.safetensors")
    assert set(got) == set(want)
    for name in want:
        assert torch.equal(got[name], want[name]), name
    streamed = AutoModelForCausalLM.from_pretrained(tmp_path / "streamed").eval()
    ignore = ("architectures", "transformers_version", "_name_or_path")
    same = lambda c: {k: v for k, v in c.to_dict().items() if k not in ignore}
    assert same(streamed.config) == same(AutoModelForCausalLM.from_pretrained(tmp_path / "memory").config)
    assert torch.equal(logits(streamed), logits(pruned))


@pytest.mark.parametrize("target", [*TARGETS.values(), {"hidden_size": 0.5, "intermediate_size": 32, "num_hidden_layers": 1}])
def test_dry_run_and_search_counts_equal_the_built_model(model, scores, target):
    pruned = prune(model, scores, target)
    report = dry_run(model.config, target)
    assert report["source_parameters"] == model.num_parameters()
    assert report["pruned_parameters"] == pruned.num_parameters()
    assert _count(get_adapter(model), report["pruned_shape"]) == pruned.num_parameters()


# ---- importance -----------------------------------------------------------------------------------------------
# Where each family's scores are read, written out from the modeling code rather than taken from the adapter:
# the hidden channels at what feeds attention and the MLP, the up projection's output for mlp_site="pre".
HIDDEN_SITES = {
    "olmo2": [("self_attn.q_proj", "in"), ("mlp.up_proj", "in")],  # no pre-norms: the residual stream itself
    "gemma2": [("input_layernorm", "out"), ("pre_feedforward_layernorm", "out")],
    "gemma3": [("input_layernorm", "out"), ("pre_feedforward_layernorm", "out")],
}
DEFAULT_SITES = [("input_layernorm", "out"), ("post_attention_layernorm", "out")]
UP_SITE = {"phi3": ("mlp.gate_up_proj", slice(128, 256))}  # gate rows first, then up rows


def _capture(model, sites):
    """The tensor at each (module path, "in" | "out") site during one forward pass of IDS, in float64."""
    got, handles = {}, []
    for path, where in sites:
        module = model.get_submodule(path)
        if where == "in":
            hook = lambda m, args, kwargs, path=path: got.__setitem__((path, "in"), (args[0] if args else kwargs["hidden_states"]).double())
            handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
        else:
            hook = lambda m, args, out, path=path: got.__setitem__((path, "out"), (out[0] if isinstance(out, tuple) else out).double())
            handles.append(module.register_forward_hook(hook))
    with torch.no_grad():
        model(IDS)
    for h in handles:
        h.remove()
    return got


def _mean_then_l2(x):
    """The default aggregation: mean of |x| over each sample's tokens, then the L2 norm over the samples."""
    return x.abs().mean(dim=1).square().sum(dim=0).sqrt()


def test_importance_of_one_layer_equals_a_hand_computation(family, model):
    layer, (heads, kv, hd) = 1, (4, 2, 16)
    prefix = lambda i: f"model.layers.{i}."
    hidden_sites = [(prefix(i) + p, w) for i in range(LAYERS) for p, w in HIDDEN_SITES.get(family, DEFAULT_SITES)]
    up_path, up_rows = UP_SITE.get(family, ("mlp.up_proj", slice(None)))
    own = [(prefix(layer) + "self_attn.o_proj", "in"), (prefix(layer) + "mlp.down_proj", "in"),
           (prefix(layer) + up_path, "out"), (prefix(layer)[:-1], "in"), (prefix(layer)[:-1], "out")]
    acts = _capture(model, hidden_sites + own)

    hidden = sum(_mean_then_l2(acts[site]) for site in hidden_sites)
    per_dim = _mean_then_l2(acts[own[0]])
    head_scores = per_dim.view(heads, hd).norm(dim=1)
    group_scores = head_scores.view(kv, heads // kv).norm(dim=1)  # repeat_kv: heads 2g and 2g+1 read group g
    mlp_post = _mean_then_l2(acts[own[1]])
    mlp_pre = _mean_then_l2(acts[own[2]][..., up_rows])
    x, y = acts[own[3]], acts[own[4]]
    block_importance = (1 - F.cosine_similarity(x, y, dim=-1)).mean()

    # skip-one-layer loss: the stock model with layer `layer` returning its input (its logit post-processing,
    # Gemma's soft-capping or Granite's logits_scaling, included)
    skip = model.get_submodule(prefix(layer)[:-1]).register_forward_hook(
        lambda m, args, kwargs, out: args[0] if args else kwargs["hidden_states"], with_kwargs=True
    )
    skipped = logits(model).double()
    skip.remove()
    skip_loss = F.cross_entropy(skipped[:, :-1].reshape(-1, skipped.shape[-1]), IDS[:, 1:].reshape(-1))

    close = lambda got, want: torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6 * float(want.abs().max()))
    for site, want in (("post", mlp_post), ("pre", mlp_pre)):
        imp = estimate(model, [IDS], mlp_site=site, progress=False)
        close(imp.mlp[layer], want)
    close(imp.hidden, hidden)
    close(imp.heads[layer], head_scores)
    close(imp.kv_groups[layer], group_scores)
    close(imp.layers[layer], block_importance)
    close(imp.layers_loss[layer], skip_loss)


def test_streaming_importance_equals_in_memory(model, checkpoint):
    batches = [IDS[:2], {"input_ids": IDS[2:], "attention_mask": torch.tensor([[1] * 7 + [0] * 3])}]
    want = estimate(model, batches, progress=False)
    got = estimate_streaming(checkpoint, batches, progress=False)
    for name, tensor in want.tensors().items():
        torch.testing.assert_close(getattr(got, name), tensor, rtol=1e-5, atol=1e-6 * float(tensor.abs().max()), msg=name)


def test_weight_magnitude_reads_the_blocks_of_each_axis(family, model):
    """Head scores from the weights: the q rows and o columns of each head, taken by hand from the modules."""
    imp = weight_magnitude(model)
    attn = model.model.layers[0].self_attn
    q = attn.qkv_proj.weight[:64] if family == "phi3" else attn.q_proj.weight
    want = (q.view(4, 16, 64).square().sum((1, 2)) + attn.o_proj.weight.view(64, 4, 16).square().sum((0, 2)))
    if family == "olmo2":
        want = want + attn.q_norm.weight.view(4, 16).square().sum(1)
    torch.testing.assert_close(imp.heads[0], want.sqrt().detach())


# ---- distillation ---------------------------------------------------------------------------------------------
def test_a_few_distillation_steps_lower_the_kd_loss(model, scores, tmp_path):
    assert_distillation_lowers_the_kd_loss(model, prune(model, scores, WIDTH_DEPTH), tmp_path)


# ---- family quirks --------------------------------------------------------------------------------------------
def _heads_pruned(family):
    model = tiny_model(family, seed=2)
    scores = random_scores(model.config, seed=4)
    target = {"num_attention_heads": 2, "num_key_value_heads": 1}
    return model, make_plan(model.config, scores, target), prune(model, scores, target)


def test_qwen3_per_head_qk_norms_are_untouched_by_head_pruning():
    model, plan, pruned = _heads_pruned("qwen3")
    assert plan.heads[0].numel() == 2 and plan.kv_groups[0].numel() == 1
    src, new = model.state_dict(), pruned.state_dict()
    for i in range(2):
        for norm in ("q_norm", "k_norm"):
            name = f"model.layers.{i}.self_attn.{norm}.weight"
            assert new[name].shape == (16,) and torch.equal(new[name], src[name])


def test_olmo2_projection_qk_norms_follow_the_kept_heads_and_groups():
    model, plan, pruned = _heads_pruned("olmo2")
    src, new = model.state_dict(), pruned.state_dict()
    rows = lambda units: torch.cat([torch.arange(u * 16, (u + 1) * 16) for u in units.tolist()])
    for i in range(2):
        q_norm, k_norm = (f"model.layers.{i}.self_attn.{n}.weight" for n in ("q_norm", "k_norm"))
        assert torch.equal(new[q_norm], src[q_norm][rows(plan.heads[i])])
        assert torch.equal(new[k_norm], src[k_norm][rows(plan.kv_groups[i])])
    hidden = prune(model, random_scores(model.config, seed=4), {"hidden_size": 40})
    assert hidden.model.layers[0].post_feedforward_layernorm.weight.shape == (40,)
    assert not hasattr(hidden.model.layers[0], "input_layernorm")


def test_phi3_fused_projections_are_sliced_by_block():
    model = tiny_model("phi3", seed=2)
    scores = random_scores(model.config, seed=4)
    target = {"num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 96}
    plan, pruned = make_plan(model.config, scores, target), prune(model, scores, target)
    rows = lambda units, offset=0: torch.cat([torch.arange(offset + u * 16, offset + (u + 1) * 16) for u in units.tolist()])
    for i in range(2):
        src = model.model.layers[i]
        qkv = src.self_attn.qkv_proj.weight
        want = torch.cat([qkv[rows(plan.heads[i])], qkv[rows(plan.kv_groups[i], 64)], qkv[rows(plan.kv_groups[i], 96)]])
        assert torch.equal(pruned.model.layers[i].self_attn.qkv_proj.weight, want)
        gate_up, ffn = src.mlp.gate_up_proj.weight, plan.mlp[i]
        assert torch.equal(pruned.model.layers[i].mlp.gate_up_proj.weight, torch.cat([gate_up[ffn], gate_up[128 + ffn]]))


@pytest.mark.parametrize("gemma", ["gemma2", "gemma3"])
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_gemma_embedding_scale_is_folded_into_the_weights(gemma, tied, tmp_path):
    """The pruned model scales its embedding by sqrt(48), not sqrt(64): the weights carry the ratio, so the residual
    stream starts as the source's kept channels, and a tied head still maps normed states to the same logits."""
    model = tiny_model(gemma, seed=5, tie_word_embeddings=tied)
    scores = random_scores(model.config, seed=6)
    plan, pruned = make_plan(model.config, scores, {"hidden_size": 48}), prune(model, scores, {"hidden_size": 48})
    keep = plan.hidden
    assert torch.equal(pruned.model.embed_tokens.embed_scale, torch.tensor(math.sqrt(48)))  # its own, not the source's
    with torch.no_grad():
        torch.testing.assert_close(pruned.model.embed_tokens(IDS), model.model.embed_tokens(IDS)[..., keep], rtol=1e-6, atol=1e-6)
    embed, gain = model.model.embed_tokens.weight.detach(), 1 + model.model.norm.weight.detach()
    new_embed, new_gain = pruned.model.embed_tokens.weight.detach(), 1 + pruned.model.norm.weight.detach()
    if tied:
        assert pruned.lm_head.weight is pruned.model.embed_tokens.weight
        torch.testing.assert_close(new_embed * new_gain, embed[:, keep] * gain[keep], rtol=1e-6, atol=1e-7)
    else:
        assert torch.equal(pruned.lm_head.weight, model.lm_head.weight[:, keep])
        assert torch.equal(new_gain, gain[keep])
    save_checkpoint(pruned, None, tmp_path / "pruned")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned").eval()
    assert torch.equal(logits(loaded), logits(pruned))


def test_smollm3_depth_pruning_keeps_the_nope_pattern():
    model = tiny_model("smollm3", seed=2, num_hidden_layers=4)
    assert model.config.no_rope_layers == [1, 0, 1, 0]
    pruned = prune(model, None, {"drop_layers": [0, 3]})
    assert pruned.config.no_rope_layers == [0, 1]
    assert [layer.self_attn.use_rope for layer in pruned.model.layers] == [0, 1]
    src = model.state_dict()
    assert torch.equal(pruned.state_dict()["model.layers.0.mlp.up_proj.weight"], src["model.layers.1.mlp.up_proj.weight"])


def test_the_readme_table_is_the_adapters_rendering():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    begin = "<!-- families table: rendered by minitron.models.support.support_table(); tests/models/test_families.py checks it -->\n"
    assert readme.count(begin) == 1, "README.md lost the families table's opening marker"
    block = readme.split(begin, 1)[1].split("<!-- end of families table -->", 1)[0]
    assert block == support_table(), "README.md's families table is stale: paste minitron.models.support.support_table()"
    for family in FAMILIES:
        assert f"| {family} |" in block


@pytest.mark.parametrize("kv_heads", [2, 4], ids=["gqa", "mha"])
def test_phi3_prunes_like_the_same_weights_in_separate_projections(kv_heads):
    """Phi-3 computes what Llama computes with q/k/v and gate/up fused: every prune (heads folded back
    included) must give the blocks of the Llama model pruned with the same scores."""
    from transformers import LlamaConfig, LlamaForCausalLM

    phi = tiny_model("phi3", seed=7, num_key_value_heads=kv_heads, num_hidden_layers=3)
    fields = {k: getattr(phi.config, k) for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                                   "num_attention_heads", "num_key_value_heads", "rms_norm_eps")}
    llama = LlamaForCausalLM(LlamaConfig(**fields, head_dim=16, rope_parameters=phi.config.rope_parameters)).eval()
    state, q, kv = {}, 64, 16 * kv_heads
    for name, tensor in phi.state_dict().items():
        if name.endswith("qkv_proj.weight"):
            base = name.removesuffix("qkv_proj.weight")
            for part, rows in zip("qkv", tensor.split([q, kv, kv])):
                state[f"{base}{part}_proj.weight"] = rows
        elif name.endswith("gate_up_proj.weight"):
            base = name.removesuffix("gate_up_proj.weight")
            state[f"{base}gate_proj.weight"], state[f"{base}up_proj.weight"] = tensor.chunk(2)
        else:
            state[name] = tensor
    llama.load_state_dict(state, strict=True)
    torch.testing.assert_close(logits(llama), logits(phi))

    target = {"hidden_size": 40, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 2,
              "fold_heads": True}
    small_phi = prune(phi, random_scores(phi.config, seed=8), target)
    small_llama = prune(llama, random_scores(llama.config, seed=8), target)  # the same draws: same shapes, same seed
    got, want = small_phi.state_dict(), small_llama.state_dict()
    for i in range(2):
        p = f"model.layers.{i}."
        fused = torch.cat([want[f"{p}self_attn.{x}_proj.weight"] for x in "qkv"])
        assert torch.equal(got[f"{p}self_attn.qkv_proj.weight"], fused)
        assert torch.equal(got[f"{p}mlp.gate_up_proj.weight"], torch.cat([want[f"{p}mlp.gate_proj.weight"], want[f"{p}mlp.up_proj.weight"]]))
    torch.testing.assert_close(logits(small_phi), logits(small_llama))
