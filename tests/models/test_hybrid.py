"""Nemotron-H on a tiny random model of its stock class (blocks Mamba, MLP, attention, MLP, Mamba; 8 Mamba heads of 8
channels in 2 groups): exact keep-all pruning, group-aware Mamba head and group pruning checked against hand slicing,
checkpoints that stock `transformers` loads, Mamba scores against a hand computation, streaming equal to in-memory,
exact dry-run counts, depth pruning by block type, and distillation."""

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
from minitron.models.tiny import tiny_model
from minitron.prune import dry_run, make_plan, prune, prune_checkpoint_streaming, save_checkpoint

LAYERS = 5  # M - * - M
HEADS, HEAD_DIM, GROUPS, STATE, HIDDEN = 8, 8, 2, 16, 64
INNER = HEADS * HEAD_DIM
IDS = torch.randint(3, 128, (3, 20), generator=torch.Generator().manual_seed(0))
TARGETS = {
    # every width axis at once: hidden 64->48, MLP 128->64, 4->2 attention heads, Mamba heads 8->4 (2 per group)
    "width": {"hidden_size": 48, "intermediate_size": 64, "num_attention_heads": 2, "mamba_num_heads": 4},
    # one Mamba group of two left, its 4 heads whole
    "groups": {"n_groups": 1},
    # 3 of 4 heads in the one kept group, and one MLP block dropped by its depth score
    "groups_heads_depth": {"n_groups": 1, "mamba_num_heads": 3, "num_hidden_layers": 4, "drop_block_types": ["mlp"]},
}


@pytest.fixture(scope="module")
def model():
    return tiny_model("nemotron_h", seed=1, num_hidden_layers=LAYERS)


@pytest.fixture(scope="module")
def scores(model):
    return estimate(model, [IDS], progress=False)


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("source")
    model.save_pretrained(folder)
    return folder


def logits(m, ids=IDS):
    with torch.no_grad():
        return m(ids).logits


def test_the_adapter_names_every_tensor_by_block_type(model):
    a = get_adapter(model)
    a.check_model(model)
    assert a.block_symbols == ["M", "-", "*", "-", "M"]
    assert a.num_parameters() == model.num_parameters()
    assert [a.has_axis("mamba_heads", i) for i in range(LAYERS)] == [True, False, False, False, True]
    assert a.axis_tensors("heads", 0) == [] and a.axis_tensors("mamba_heads", 2) == []


# ---- pruning --------------------------------------------------------------------------------------------------
def test_keep_all_is_bitwise_exact(model, scores):
    explicit = {"hidden_size": HIDDEN, "intermediate_size": 1.0, "num_attention_heads": 4, "num_key_value_heads": 2,
                "mamba_num_heads": HEADS, "n_groups": GROUPS, "num_hidden_layers": LAYERS}
    for target in ({}, explicit):
        pruned = prune(model, scores, target)
        assert torch.equal(logits(pruned), logits(model))
        assert pruned.num_parameters() == model.num_parameters()


@pytest.mark.parametrize("name", TARGETS)
def test_pruned_checkpoint_loads_in_the_stock_class(model, scores, name, tmp_path):
    target = TARGETS[name]
    plan = make_plan(model.config, scores, target)
    pruned = prune(model, scores, target)
    save_checkpoint(pruned, None, tmp_path / "pruned")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned").eval()
    assert type(loaded) is type(model)
    assert torch.equal(logits(loaded), logits(pruned)) and torch.isfinite(logits(loaded)).all()
    for key, value in target.items():
        if key not in ("num_hidden_layers", "drop_block_types"):
            assert getattr(loaded.config, key) == value, key
    assert loaded.config.layers_block_type == [model.config.layers_block_type[i] for i in plan.keep_layers]
    assert loaded.num_parameters() == pruned.num_parameters() == plan.pruned_adapter.num_parameters()
    with torch.no_grad():  # generation runs with the pruned cache layout
        assert loaded.generate(IDS[:1, :5], max_new_tokens=3, do_sample=False).shape == (1, 8)


def _mamba_rows(heads: torch.Tensor, groups: torch.Tensor) -> dict[str, torch.Tensor]:
    """The rows of in_proj and the channels of conv1d that the kept heads and groups own, by hand from the layout
    [z (I) | x (I) | B (G N) | C (G N) | dt (nh)] of in_proj and [x | B | C] of conv1d."""
    channels = (heads[:, None] * HEAD_DIM + torch.arange(HEAD_DIM)).reshape(-1)
    state = (groups[:, None] * STATE + torch.arange(STATE)).reshape(-1)
    b, c = INNER + state, INNER + GROUPS * STATE + state
    return {"in_proj": torch.cat([channels, INNER + channels, INNER + b, INNER + c, 2 * INNER + 2 * GROUPS * STATE + heads]),
            "conv1d": torch.cat([channels, b, c]), "channels": channels}


def test_mamba_heads_are_kept_group_aware_and_sliced_by_hand(model, scores):
    """Each kept group keeps its best heads by their own scores; every Mamba tensor is the source's, sliced by hand."""
    target = TARGETS["groups_heads_depth"]
    plan, pruned = make_plan(model.config, scores, target), prune(model, scores, target)
    h = plan.hidden
    for new, old in enumerate(plan.keep_layers):
        if not get_adapter(model).has_axis("mamba_heads", old):
            continue
        group = int(torch.argmax(scores.mamba_groups[old]))
        assert plan.mamba_groups[old].tolist() == [group]
        members = torch.arange(group * 4, group * 4 + 4)
        best = members[torch.argsort(scores.mamba_heads[old][members], descending=True, stable=True)[:3]].sort().values
        assert torch.equal(plan.mamba_heads[old], best)
        src, dst = model.model.layers[old].mixer, pruned.model.layers[new].mixer
        rows = _mamba_rows(best, plan.mamba_groups[old])
        assert torch.equal(dst.in_proj.weight, src.in_proj.weight[rows["in_proj"]][:, h])
        assert torch.equal(dst.conv1d.weight, src.conv1d.weight[rows["conv1d"]])
        assert torch.equal(dst.conv1d.bias, src.conv1d.bias[rows["conv1d"]])
        for name in ("A_log", "D", "dt_bias"):
            assert torch.equal(getattr(dst, name), getattr(src, name)[best]), name
        assert torch.equal(dst.norm.weight, src.norm.weight[rows["channels"]])
        assert torch.equal(dst.out_proj.weight, src.out_proj.weight[h][:, rows["channels"]])
        assert dst.norm.group_size == 3 * HEAD_DIM  # one norm group: the kept group's three heads


def test_a_group_pruned_mamba_block_computes_the_kept_heads_of_the_source(model, scores):
    """With hidden and everything else whole, a Mamba block keeping one group's heads outputs what the source
    block outputs with the other group's heads zeroed before out_proj (its norm groups are per SSM group)."""
    target = {"n_groups": 1}
    plan, pruned = make_plan(model.config, scores, target), prune(model, scores, target)
    x = torch.randn(2, 12, HIDDEN, generator=torch.Generator().manual_seed(1))
    src, dst = model.model.layers[0].mixer, pruned.model.layers[0].mixer
    kept = _mamba_rows(plan.mamba_heads[0], plan.mamba_groups[0])["channels"]
    seen = {}
    hook = src.out_proj.register_forward_pre_hook(lambda m, args: seen.__setitem__("y", args[0]))
    with torch.no_grad():
        src(x)
        hook.remove()
        want = F.linear(seen["y"][..., kept], src.out_proj.weight[:, kept])
        torch.testing.assert_close(dst(x), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", TARGETS)
def test_streaming_export_equals_in_memory_export(model, scores, checkpoint, name, tmp_path):
    target = TARGETS[name]
    prune_checkpoint_streaming(checkpoint, scores, target, tmp_path / "streamed")
    pruned = prune(model, scores, target)
    save_checkpoint(pruned, None, tmp_path / "memory")
    got, want = load_file(tmp_path / "streamed" / "model.safetensors"), load_file(tmp_path / "memory" / "model.safetensors")
    assert set(got) == set(want) and all(k.startswith(("backbone.", "lm_head")) for k in got)  # the release's names
    for key in want:
        assert torch.equal(got[key], want[key]), key
    streamed = AutoModelForCausalLM.from_pretrained(tmp_path / "streamed").eval()
    assert torch.equal(logits(streamed), logits(pruned))


def test_dry_run_counts_equal_the_built_model(model, scores):
    for target in (*TARGETS.values(), {"hidden_size": 0.5, "mamba_num_heads": 2}, {"drop_layers": [1, 4]}):
        report = dry_run(model.config, target)
        assert report["source_parameters"] == model.num_parameters()
        assert report["pruned_parameters"] == prune(model, scores, target).num_parameters(), target
    # which blocks a depth target drops decides a hybrid's size: without an explicit list or one kind, no count
    with pytest.raises(MinitronError, match="drops 2 of the 5 blocks of a hybrid.*set target.drop_layers"):
        dry_run(model.config, {"num_hidden_layers": 3})


def test_depth_pruning_drops_blocks_by_type_and_keeps_one_of_each(model, scores):
    only_mlp = make_plan(model.config, scores, {"num_hidden_layers": 4, "drop_block_types": ["mlp"]})
    weaker = 1 if scores.layers[1] <= scores.layers[3] else 3  # the MLP block with the lower Block Importance
    assert only_mlp.keep_layers == [i for i in range(LAYERS) if i != weaker]
    assert only_mlp.config.layers_block_type == [model.config.layers_block_type[i] for i in only_mlp.keep_layers]
    # the scores never drop the only attention block, whatever they say
    rigged = Importance(**{**scores.__dict__, "layers": torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0])})
    assert 2 in make_plan(model.config, rigged, {"num_hidden_layers": 4}).keep_layers
    with pytest.raises(MinitronError, match=r"drop_layers=\[2\] removes every nemotron_h block of one type"):
        make_plan(model.config, scores, {"drop_layers": [2]})
    with pytest.raises(MinitronError, match=r"drops 2 layers but only 1 layer\(s\) of the types in target.drop_block_types"):
        make_plan(model.config, scores, {"num_hidden_layers": 3, "drop_block_types": ["mlp"]})
    with pytest.raises(MinitronError, match="leaves none of that kind"):
        dry_run(model.config, {"num_hidden_layers": 3, "drop_block_types": ["mlp"]})
    with pytest.raises(MinitronError, match="'moe' is not a block type of nemotron_h"):
        make_plan(model.config, scores, {"num_hidden_layers": 4, "drop_block_types": ["moe"]})


def test_bad_mamba_targets_are_one_line_errors(model):
    with pytest.raises(MinitronError, match="mamba_num_heads=5 is not a multiple of the kept Mamba groups"):
        dry_run(model.config, {"mamba_num_heads": 5})
    with pytest.raises(MinitronError, match="gives 8 heads per group, more than the source's 4"):
        dry_run(model.config, {"mamba_num_heads": 8, "n_groups": 1})
    dense = tiny_model("llama").config
    with pytest.raises(MinitronError, match="target.mamba_num_heads=4 needs a model with Mamba blocks but llama has none"):
        dry_run(dense, {"mamba_num_heads": 4})
    with pytest.raises(MinitronError, match="drop_block_types=\\['mlp'\\] needs a hybrid model"):
        dry_run(dense, {"num_hidden_layers": 1, "drop_block_types": ["mlp"]})


def test_moe_blocks_are_refused_in_one_line():
    with pytest.raises(MinitronError, match="nemotron_h block type 'moe' is not supported"):
        get_adapter(tiny_model("nemotron_h", layers_block_type=["linear_attention", "moe", "full_attention"]).config)


# ---- importance -----------------------------------------------------------------------------------------------
def test_mamba_scores_of_one_block_equal_a_hand_computation(model):
    """The default statistic on out_proj's input (mean of |y| over each sample's tokens, L2 over samples), the L2
    norm over each head's channels, and over each group's heads; other block types score 0 on the Mamba axes."""
    seen = {}
    mixer = model.model.layers[4].mixer
    hook = mixer.out_proj.register_forward_pre_hook(lambda m, args: seen.__setitem__("y", args[0].double()))
    logits(model)
    hook.remove()
    per_channel = seen["y"].abs().mean(dim=1).square().sum(dim=0).sqrt()
    heads = per_channel.view(HEADS, HEAD_DIM).norm(dim=1)
    groups = heads.view(GROUPS, HEADS // GROUPS).norm(dim=1)
    imp = estimate(model, [IDS], progress=False)
    close = lambda got, want: torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-7)
    close(imp.mamba_heads[4], heads)
    close(imp.mamba_groups[4], groups)
    assert not imp.mamba_heads[1:4].any() and not imp.heads[0].any() and not imp.mlp[2].any() and imp.heads[2].all()


def test_streaming_importance_equals_in_memory_and_the_file_round_trips(model, checkpoint, tmp_path):
    batches = [IDS[:2], {"input_ids": IDS[2:], "attention_mask": torch.tensor([[1] * 14 + [0] * 6])}]
    want = estimate(model, batches, progress=False)
    got = estimate_streaming(checkpoint, batches, progress=False)
    assert set(got.tensors()) == set(want.tensors()) >= {"mamba_heads", "mamba_groups"}
    for name, tensor in want.tensors().items():
        torch.testing.assert_close(getattr(got, name), tensor, rtol=1e-5, atol=1e-6 * float(tensor.abs().max()), msg=name)
    loaded = Importance.load(want.save(tmp_path / "scores.safetensors"))
    loaded.check_model(model.config)
    assert torch.equal(loaded.mamba_heads, want.mamba_heads) and torch.equal(loaded.mamba_groups, want.mamba_groups)


def test_weight_magnitude_of_a_mamba_head_reads_every_tensor_it_owns(model):
    imp = weight_magnitude(model)
    m = model.model.layers[0].mixer
    rows = _mamba_rows(torch.tensor([5]), torch.tensor([], dtype=torch.long))
    want = (m.in_proj.weight[rows["in_proj"]].square().sum() + m.conv1d.weight[rows["conv1d"]].square().sum()
            + m.conv1d.bias[rows["conv1d"]].square().sum() + sum(getattr(m, n)[5].square() for n in ("A_log", "D", "dt_bias"))
            + m.norm.weight[rows["channels"]].square().sum() + m.out_proj.weight[:, rows["channels"]].square().sum())
    torch.testing.assert_close(imp.mamba_heads[0, 5], want.sqrt().detach())


# ---- distillation ---------------------------------------------------------------------------------------------
def test_a_few_distillation_steps_lower_the_kd_loss(model, scores, tmp_path):
    assert_distillation_lowers_the_kd_loss(model, prune(model, scores, TARGETS["width"]), tmp_path)


def test_search_varies_a_hybrid_s_width_and_counts_exactly(model, scores):
    from minitron.prune.search import enumerate_candidates

    ranked = enumerate_candidates(model.config, model.num_parameters() // 2, tolerance=0.25, steps=4)
    assert ranked and {c.num_hidden_layers for c in ranked} == {LAYERS}  # its blocks differ in size: no depth
    for c in (ranked[0], ranked[-1]):
        assert prune(model, scores, c.target()).num_parameters() == c.parameters
