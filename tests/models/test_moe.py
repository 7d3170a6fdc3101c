"""Mixtral and Qwen3-MoE on tiny random models of their stock classes (4 experts, 2 per token): exact keep-all
pruning, checkpoints that stock `transformers` loads, expert and per-expert neuron scores against a hand
computation from the modeling code, streaming equal to in-memory, exact dry-run counts, distillation, and the
target keys of each family."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from family_checks import assert_distillation_lowers_the_kd_loss

from minitron.errors import MinitronError
from minitron.importance import Importance, estimate, estimate_streaming
from minitron.importance.baselines import weight_magnitude
from minitron.models import get_adapter
from minitron.models.tiny import tiny_config, tiny_model
from minitron.prune import dry_run, make_plan, prune, prune_checkpoint_streaming, save_checkpoint
from minitron.prune.search import _count

FAMILIES = ("mixtral", "qwen3_moe")
EXPERT_SIZE = {"mixtral": "intermediate_size", "qwen3_moe": "moe_intermediate_size"}  # each config's own name
LAYERS, EXPERTS, FFN = 3, 4, 48
IDS = torch.randint(3, 128, (3, 10), generator=torch.Generator().manual_seed(0))


def targets(family):
    ffn = EXPERT_SIZE[family]
    return {
        # every axis at once: hidden 64->48, experts 4->3, expert neurons 48->32, 4->2 heads, 3->2 layers
        "all": {"hidden_size": 48, "num_experts": 3, ffn: 32, "num_attention_heads": 2, "num_hidden_layers": 2},
        # one expert left: each token is routed to it alone (num_experts_per_tok 2 -> 1)
        "one_expert": {"num_experts": 1},
    }


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    return request.param


def logits(m, ids=IDS):
    with torch.no_grad():
        return m(ids).logits


# ---- pruning --------------------------------------------------------------------------------------------------
def test_keep_all_is_bitwise_exact(family, model, scores):
    explicit = {"hidden_size": 64, EXPERT_SIZE[family]: 1.0, "num_experts": EXPERTS, "num_attention_heads": 4,
                "num_key_value_heads": 2, "num_hidden_layers": LAYERS}
    for target in ({}, explicit):
        pruned = prune(model, scores, target)
        assert torch.equal(logits(pruned), logits(model))
        assert pruned.num_parameters() == model.num_parameters()


@pytest.mark.parametrize("name", ["all", "one_expert"])
def test_pruned_checkpoint_loads_in_the_stock_class(family, model, scores, name, tmp_path):
    target = targets(family)[name]
    plan = make_plan(model.config, scores, target)
    pruned = prune(model, scores, target)
    save_checkpoint(pruned, None, tmp_path / "pruned")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned").eval()
    assert type(loaded) is type(model)
    assert torch.equal(logits(loaded), logits(pruned))
    assert torch.isfinite(logits(loaded)).all()
    for key, value in target.items():
        assert getattr(loaded.config, key) == value, key
    assert loaded.config.num_experts_per_tok == min(2, target["num_experts"])
    assert loaded.num_parameters() == pruned.num_parameters() == plan.pruned_adapter.num_parameters()


def test_router_rows_and_expert_neurons_follow_the_plan(family, model, scores):
    """The kept experts' router rows and weights, each with its own kept neurons, taken by hand."""
    target = targets(family)["all"]
    plan, pruned = make_plan(model.config, scores, target), prune(model, scores, target)
    h = plan.hidden
    for new, old in enumerate(plan.keep_layers):
        src, dst = model.model.layers[old].mlp, pruned.model.layers[new].mlp
        experts = plan.experts[old]
        assert len(experts) == 3 and plan.mlp[old].shape == (3, 32)
        assert torch.equal(dst.gate.weight, src.gate.weight[experts][:, h])
        for k, e in enumerate(experts.tolist()):
            n = plan.mlp[old][k]
            assert torch.equal(n, torch.sort(torch.argsort(scores.mlp[old][e], descending=True, stable=True)[:32]).values)
            gate_up = src.experts.gate_up_proj[e]
            assert torch.equal(dst.experts.gate_up_proj[k], torch.cat([gate_up[n], gate_up[FFN + n]])[:, h])
            assert torch.equal(dst.experts.down_proj[k], src.experts.down_proj[e][h][:, n])


@pytest.mark.parametrize("name", ["all", "one_expert"])
def test_streaming_export_equals_in_memory_export(model, scores, checkpoint, family, name, tmp_path):
    target = targets(family)[name]
    prune_checkpoint_streaming(checkpoint, scores, target, tmp_path / "streamed")
    pruned = prune(model, scores, target)
    save_checkpoint(pruned, None, tmp_path / "memory")
    got, want = load_file(tmp_path / "streamed" / "model.safetensors"), load_file(tmp_path / "memory" / "model.safetensors")
    assert set(got) == set(want)  # the per-expert keys `save_pretrained` writes
    for key in want:
        assert torch.equal(got[key], want[key]), key
    streamed = AutoModelForCausalLM.from_pretrained(tmp_path / "streamed").eval()
    assert torch.equal(logits(streamed), logits(pruned))


def test_dry_run_and_search_counts_equal_the_built_model(family, model, scores):
    for target in (*targets(family).values(), {"hidden_size": 0.5, EXPERT_SIZE[family]: 16, "num_experts": 0.5}):
        pruned = prune(model, scores, target)
        report = dry_run(model.config, target)
        assert report["source_parameters"] == model.num_parameters()
        assert report["pruned_parameters"] == pruned.num_parameters()
        assert report["pruned_shape"]["num_experts"] == pruned.config.num_local_experts
        assert _count(get_adapter(model), report["pruned_shape"]) == pruned.num_parameters()


def test_search_candidates_prune_to_their_counts(family, model, scores):
    """The candidates of a budget search (experts kept) resolve under the family's own keys and count exactly."""
    from minitron.prune.search import enumerate_candidates

    ranked = enumerate_candidates(model.config, model.num_parameters() // 2, tolerance=0.2, steps=4)
    assert ranked
    for c in (ranked[0], ranked[-1]):
        assert prune(model, scores, c.target()).num_parameters() == c.parameters


def test_target_keys_name_each_family_s_own_fields(family, model):
    other = "moe_intermediate_size" if family == "mixtral" else "intermediate_size"
    with pytest.raises(MinitronError, match=f"target.{other} does not apply to {family}.*set target.{EXPERT_SIZE[family]}"):
        dry_run(model.config, {other: 16})
    with pytest.raises(MinitronError, match="target.num_experts=5 is larger than the source model's num_experts=4"):
        dry_run(model.config, {"num_experts": 5})
    dense = tiny_model("llama")
    with pytest.raises(MinitronError, match="target.num_experts=2 needs a mixture-of-experts model"):
        dry_run(dense.config, {"num_experts": 2})
    with pytest.raises(MinitronError, match="target.moe_intermediate_size does not apply to llama"):
        dry_run(dense.config, {"moe_intermediate_size": 2})


def test_qwen3_moe_with_dense_layers_is_refused_in_one_line():
    with pytest.raises(MinitronError, match="mlp_only_layers=\\[1\\].*every layer must be sparse"):
        get_adapter(tiny_config("qwen3_moe", mlp_only_layers=[1]))


# ---- importance -----------------------------------------------------------------------------------------------
def _routed(model, layer):
    """The experts' inputs in one forward pass of IDS: hidden [tokens, hidden], top-k index and weights."""
    got = {}
    experts = model.model.layers[layer].mlp.experts
    hook = experts.register_forward_hook(lambda m, args, out: got.update(args=args))
    logits(model)
    hook.remove()
    return got["args"]


def test_expert_scores_of_one_layer_equal_a_hand_computation(family, model):
    """REAP's saliency and the per-expert neuron means, written out from the experts' forward, one token at a
    time: for each token and each of its top-k experts, gate/up rows, the activation, the down projection."""
    layer = 1
    hidden, index, weights = (t.double() if t.is_floating_point() else t for t in _routed(model, layer))
    experts = model.model.layers[layer].mlp.experts
    gate_up, down = experts.gate_up_proj.detach().double(), experts.down_proj.detach().double()
    act = F.silu
    gain, count = torch.zeros(EXPERTS, dtype=torch.float64), torch.zeros(EXPERTS, dtype=torch.float64)
    post, pre = torch.zeros(EXPERTS, FFN, dtype=torch.float64), torch.zeros(EXPERTS, FFN, dtype=torch.float64)
    for t in range(hidden.shape[0]):
        for slot in range(index.shape[1]):
            e = int(index[t, slot])
            up = gate_up[e, FFN:] @ hidden[t]
            a = act(gate_up[e, :FFN] @ hidden[t]) * up
            y = down[e] @ a
            gain[e] += weights[t, slot] * y.norm()
            count[e] += 1
            post[e] += a.abs()
            pre[e] += up.abs()
    assert int(count.sum()) == 2 * IDS.numel() and bool((count > 0).all())
    close = lambda got, want: torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6 * float(want.abs().max()))
    imp = estimate(model, [IDS], progress=False)
    close(imp.experts[layer], gain / count)
    close(imp.mlp[layer], post / count[:, None])
    close(estimate(model, [IDS], mlp_site="pre", depth=(), progress=False).mlp[layer], pre / count[:, None])


def test_padding_is_left_out_of_the_expert_scores(model):
    """A padded batch scores like the same samples cut to their unmasked tokens."""
    mask = torch.tensor([[1] * 10, [1] * 6 + [0] * 4, [1] * 10])
    padded = estimate(model, [{"input_ids": IDS, "attention_mask": mask}], depth=(), progress=False)
    cut = estimate(model, [IDS[:1], IDS[1:2, :6], IDS[2:]], depth=(), progress=False)
    torch.testing.assert_close(padded.experts, cut.experts, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(padded.mlp, cut.mlp, rtol=1e-5, atol=1e-7)


def test_streaming_importance_equals_in_memory_and_the_file_round_trips(model, checkpoint, tmp_path):
    batches = [IDS[:2], {"input_ids": IDS[2:], "attention_mask": torch.tensor([[1] * 7 + [0] * 3])}]
    want = estimate(model, batches, progress=False)
    got = estimate_streaming(checkpoint, batches, progress=False)
    assert set(got.tensors()) == set(want.tensors()) >= {"experts", "mlp"}
    for name, tensor in want.tensors().items():
        torch.testing.assert_close(getattr(got, name), tensor, rtol=1e-5, atol=1e-6 * float(tensor.abs().max()), msg=name)
    loaded = Importance.load(want.save(tmp_path / "scores.safetensors"))
    loaded.check_model(model.config)
    assert torch.equal(loaded.experts, want.experts) and torch.equal(loaded.mlp, want.mlp)


def test_weight_magnitude_scores_experts_by_their_router_row_and_weights(model):
    imp = weight_magnitude(model)
    moe = model.model.layers[0].mlp
    want = (moe.gate.weight.square().sum(1) + moe.experts.gate_up_proj.square().sum((1, 2))
            + moe.experts.down_proj.square().sum((1, 2))).sqrt()
    torch.testing.assert_close(imp.experts[0], want.detach())
    neuron = (moe.experts.gate_up_proj[2, :FFN].square().sum(1) + moe.experts.gate_up_proj[2, FFN:].square().sum(1)
              + moe.experts.down_proj[2].square().sum(0)).sqrt()
    torch.testing.assert_close(imp.mlp[0, 2], neuron.detach())


# ---- distillation ---------------------------------------------------------------------------------------------
def test_a_few_distillation_steps_lower_the_kd_loss(family, model, scores, tmp_path):
    assert_distillation_lowers_the_kd_loss(model, prune(model, scores, targets(family)["all"]), tmp_path)
