"""`minitron.prune.prune` on tiny random models: exactness, a hand-sliced reference, depth, options, carried fields."""

from __future__ import annotations

import pytest
import torch
from prune_helpers import fake_importance
from transformers import NemotronConfig, NemotronForCausalLM

from minitron.errors import MinitronError
from minitron.models import get_adapter
from minitron.models.tiny import tiny_model
from minitron.prune import Target, make_plan, prune

FAMILIES = ("nemotron", "llama", "mistral", "qwen2")
INPUT = torch.randint(3, 128, (2, 12), generator=torch.Generator().manual_seed(0))


def logits(model, ids=INPUT):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("target", [{}, {"hidden_size": 1.0, "intermediate_size": 128, "num_attention_heads": 4}])
def test_keep_everything_is_bitwise_exact(family, target):
    model = tiny_model(family, seed=1)
    pruned = prune(model, fake_importance(model), target)
    assert type(pruned) is type(model) and pruned is not model
    assert torch.equal(logits(pruned), logits(model))
    assert pruned.num_parameters() == model.num_parameters()


def test_keep_everything_bf16_stays_bf16_and_exact():
    model = tiny_model("nemotron", seed=2).to(torch.bfloat16)
    pruned = prune(model, fake_importance(model), {})
    assert next(pruned.parameters()).dtype == torch.bfloat16
    assert pruned.model.rotary_emb.inv_freq.dtype == model.model.rotary_emb.inv_freq.dtype
    assert torch.equal(logits(pruned), logits(model))


def _top(scores, k):
    """Top-k indices in ascending order, written out independently of the library."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return sorted(order[:k])


def test_equals_a_model_sliced_by_hand():
    """hidden 64->40, MLP 128->48, 2 of 4 query heads (one per KV group), 2->1 layers by Block Importance."""
    model = tiny_model("nemotron", seed=3, num_hidden_layers=2, partial_rotary_factor=0.5)
    imp = fake_importance(model, seed=7)
    pruned = prune(model, imp, {"hidden_size": 40, "intermediate_size": 48, "num_attention_heads": 2, "num_hidden_layers": 1})

    layer = int(torch.argmax(imp.layers))  # the layer with the higher Block Importance stays
    hd = 16
    keep_h = torch.tensor(_top(imp.hidden, 40))
    keep_ffn = torch.tensor(_top(imp.mlp[layer], 48))
    heads = [g * 2 + _top(imp.heads[layer][g * 2 : g * 2 + 2], 1)[0] for g in range(2)]  # 2 heads per KV group
    q_rows = torch.cat([torch.arange(h * hd, (h + 1) * hd) for h in heads])

    sd = model.state_dict()
    src = f"model.layers.{layer}."
    expected = {
        "model.embed_tokens.weight": sd["model.embed_tokens.weight"][:, keep_h],
        "lm_head.weight": sd["lm_head.weight"][:, keep_h],
        "model.norm.weight": sd["model.norm.weight"][keep_h],
        "model.norm.bias": sd["model.norm.bias"][keep_h],
    }
    for norm in ("input_layernorm", "post_attention_layernorm"):
        for p in ("weight", "bias"):
            expected[f"model.layers.0.{norm}.{p}"] = sd[f"{src}{norm}.{p}"][keep_h]
    expected["model.layers.0.self_attn.q_proj.weight"] = sd[f"{src}self_attn.q_proj.weight"][q_rows][:, keep_h]
    expected["model.layers.0.self_attn.k_proj.weight"] = sd[f"{src}self_attn.k_proj.weight"][:, keep_h]
    expected["model.layers.0.self_attn.v_proj.weight"] = sd[f"{src}self_attn.v_proj.weight"][:, keep_h]
    expected["model.layers.0.self_attn.o_proj.weight"] = sd[f"{src}self_attn.o_proj.weight"][keep_h][:, q_rows]
    expected["model.layers.0.mlp.up_proj.weight"] = sd[f"{src}mlp.up_proj.weight"][keep_ffn][:, keep_h]
    expected["model.layers.0.mlp.down_proj.weight"] = sd[f"{src}mlp.down_proj.weight"][keep_h][:, keep_ffn]

    config = NemotronConfig(**{**model.config.to_dict(), "hidden_size": 40, "intermediate_size": 48,
                               "num_attention_heads": 2, "num_key_value_heads": 2, "num_hidden_layers": 1, "head_dim": 16})
    reference = NemotronForCausalLM(config).eval()
    reference.load_state_dict(expected, strict=True)

    assert set(pruned.state_dict()) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(pruned.state_dict()[name], tensor), name
    assert torch.equal(logits(pruned), logits(reference))
    assert pruned.config.rope_parameters["partial_rotary_factor"] == 0.5 and pruned.config.head_dim == 16


def test_kv_groups_are_an_axis_and_heads_follow_their_group():
    model = tiny_model("llama", seed=4, num_attention_heads=8, num_key_value_heads=4, hidden_size=64, head_dim=8)
    imp = fake_importance(model, seed=5)
    plan = make_plan(model.config, imp, {"num_key_value_heads": 2})
    for i in range(2):
        groups = _top(imp.kv_groups[i], 2)
        assert plan.kv_groups[i].tolist() == groups
        assert plan.heads[i].tolist() == [h for g in groups for h in (2 * g, 2 * g + 1)]
    pruned = prune(model, imp, {"num_key_value_heads": 2})
    assert (pruned.config.num_attention_heads, pruned.config.num_key_value_heads) == (4, 2)
    assert logits(pruned).shape == (2, 12, 128)
    # keeping 1 head per kept group: each kept group contributes its best head
    plan = make_plan(model.config, imp, {"num_key_value_heads": 2, "num_attention_heads": 2})
    for i in range(2):
        groups = _top(imp.kv_groups[i], 2)
        assert plan.heads[i].tolist() == [2 * g + _top(imp.heads[i][2 * g : 2 * g + 2], 1)[0] for g in groups]


@pytest.mark.parametrize("metric, scores", [("bi", "layers"), ("loss", "layers_loss")])
def test_depth_by_scores(metric, scores):
    model = tiny_model("llama", seed=6, num_hidden_layers=6)
    imp = fake_importance(model, seed=8)
    plan = make_plan(model.config, imp, {"num_hidden_layers": 4, "depth_metric": metric})
    assert plan.keep_layers == _top(getattr(imp, scores), 4)
    pruned = prune(model, imp, {"num_hidden_layers": 4, "depth_metric": metric})
    kept = plan.keep_layers
    for new, old in enumerate(kept):
        assert torch.equal(pruned.state_dict()[f"model.layers.{new}.mlp.up_proj.weight"],
                           model.state_dict()[f"model.layers.{old}.mlp.up_proj.weight"])


def test_depth_contiguous_block_and_explicit_drops():
    model = tiny_model("nemotron", seed=6, num_hidden_layers=6)
    imp = fake_importance(model)
    imp.layers = torch.tensor([0.9, 0.1, 0.8, 0.05, 0.5, 0.7])  # lowest: 3, 1; lowest pair: 3-4
    assert make_plan(model.config, imp, {"num_hidden_layers": 4, "depth_metric": "bi"}).keep_layers == [0, 2, 4, 5]
    sums = {"num_hidden_layers": 4, "depth_metric": "contiguous", "block_metric": "sum"}
    assert make_plan(model.config, imp, sums).keep_layers == [0, 1, 2, 5]
    imp.layers = None  # without BI the sum falls back to the skip-one-layer losses
    imp.layers_loss = torch.tensor([0.1, 0.9, 0.8, 0.7, 0.05, 0.06])  # lowest pair: 4-5
    assert make_plan(model.config, imp, sums).keep_layers == [0, 1, 2, 3]
    pruned = prune(model, None, {"drop_layers": [1, 3]})  # explicit drops need no scores
    assert pruned.config.num_hidden_layers == 4
    assert torch.equal(pruned.state_dict()["model.layers.1.self_attn.q_proj.weight"],
                       model.state_dict()["model.layers.2.self_attn.q_proj.weight"])
    # dropping the last layers equals running only the first ones
    first = prune(model, None, {"drop_layers": [4, 5]})
    with torch.no_grad():
        h = model(INPUT, output_hidden_states=True).hidden_states[4]
        expected = model.lm_head(model.model.norm(h))
    torch.testing.assert_close(logits(first), expected, rtol=1e-5, atol=1e-5)


def test_ratios_resolve_against_the_source():
    model = tiny_model("llama", seed=0)
    pruned = prune(model, fake_importance(model), {"intermediate_size": 0.5, "hidden_size": 0.75, "num_hidden_layers": 0.5})
    c = pruned.config
    assert (c.intermediate_size, c.hidden_size, c.num_hidden_layers) == (64, 48, 1)
    assert pruned.num_parameters() == get_adapter(c).num_parameters()


def test_fold_heads_is_off_by_default_and_follows_the_paper():
    model = tiny_model("nemotron", seed=9, num_attention_heads=8, num_key_value_heads=1, hidden_size=64, head_dim=8)
    imp = fake_importance(model, seed=10)
    plain = prune(model, imp, {"num_attention_heads": 5})
    folded = prune(model, imp, {"num_attention_heads": 5, "fold_heads": True})
    assert not Target().fold_heads
    sd, hd = model.state_dict(), 8
    for i in range(2):
        ranked = sorted(range(8), key=lambda h: (-float(imp.heads[i][h]), h))  # rank 1 = ranked[0]
        kept = sorted(ranked[:5])
        # L=8, K=5: kept ranks 3..5 absorb pruned ranks 8..6
        pairs = {ranked[r - 1]: ranked[2 * 5 - r] for r in (3, 4, 5)}
        q = sd[f"model.layers.{i}.self_attn.q_proj.weight"]
        o = sd[f"model.layers.{i}.self_attn.o_proj.weight"]
        for new, h in enumerate(kept):
            rows = slice(new * hd, (new + 1) * hd)
            src_q = q[h * hd : (h + 1) * hd]
            src_o = o[:, h * hd : (h + 1) * hd]
            if h in pairs:
                p = pairs[h]
                src_q = 2 * src_q - q[p * hd : (p + 1) * hd]
                src_o = 2 * src_o - o[:, p * hd : (p + 1) * hd]
            assert torch.equal(plain.state_dict()[f"model.layers.{i}.self_attn.q_proj.weight"][rows], q[h * hd : (h + 1) * hd])
            assert torch.equal(folded.state_dict()[f"model.layers.{i}.self_attn.q_proj.weight"][rows], src_q)
            assert torch.equal(folded.state_dict()[f"model.layers.{i}.self_attn.o_proj.weight"][:, rows], src_o)


def test_fold_heads_with_multi_head_attention_folds_whole_heads():
    """MHA (the paper's setting): each head owns its q, k, v rows and o columns, and all four are folded."""
    model = tiny_model("llama", seed=13, num_attention_heads=4, num_key_value_heads=4, hidden_size=48, head_dim=16)
    imp = fake_importance(model, seed=14)
    folded = prune(model, imp, {"num_attention_heads": 3, "fold_heads": True})
    assert (folded.config.num_attention_heads, folded.config.num_key_value_heads) == (3, 3)
    sd, hd = model.state_dict(), 16
    for i in range(2):
        ranked = sorted(range(4), key=lambda h: (-float(imp.heads[i][h]), h))
        kept, kept_rank3, pruned_rank4 = sorted(ranked[:3]), ranked[2], ranked[3]  # L=4, K=3: rank 3 absorbs rank 4
        new = kept.index(kept_rank3)
        for proj in ("q_proj", "k_proj", "v_proj"):
            w = sd[f"model.layers.{i}.self_attn.{proj}.weight"]
            expected = 2 * w[kept_rank3 * hd : (kept_rank3 + 1) * hd] - w[pruned_rank4 * hd : (pruned_rank4 + 1) * hd]
            got = folded.state_dict()[f"model.layers.{i}.self_attn.{proj}.weight"][new * hd : (new + 1) * hd]
            assert torch.equal(got, expected), proj
        o = sd[f"model.layers.{i}.self_attn.o_proj.weight"]
        expected = 2 * o[:, kept_rank3 * hd : (kept_rank3 + 1) * hd] - o[:, pruned_rank4 * hd : (pruned_rank4 + 1) * hd]
        assert torch.equal(folded.state_dict()[f"model.layers.{i}.self_attn.o_proj.weight"][:, new * hd : (new + 1) * hd], expected)


def test_everything_else_carries_over():
    model = tiny_model("llama", seed=11, tie_word_embeddings=True, rope_scaling={"rope_type": "linear", "factor": 2.0},
                       bos_token_id=5, eos_token_id=6, pad_token_id=7)
    model.generation_config.max_new_tokens = 9
    model.generation_config.do_sample = True
    model.generation_config.temperature = 0.7
    pruned = prune(model, fake_importance(model), {"hidden_size": 32, "num_attention_heads": 2})
    c, src = pruned.config, model.config
    assert c.tie_word_embeddings and pruned.lm_head.weight.data_ptr() == pruned.model.embed_tokens.weight.data_ptr()
    assert c.head_dim == 16 and c.hidden_size == 32
    assert c.rope_parameters == src.rope_parameters
    assert (c.bos_token_id, c.eos_token_id, c.pad_token_id) == (5, 6, 7)
    assert pruned.generation_config.max_new_tokens == 9 and pruned.generation_config.temperature == 0.7
    assert pruned.num_parameters() == get_adapter(c).num_parameters()
    assert model.config.hidden_size == 64  # the source is untouched


def test_source_model_is_not_modified():
    model = tiny_model("nemotron", seed=12)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prune(model, fake_importance(model), {"hidden_size": 32, "num_attention_heads": 2, "fold_heads": True})
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    "target, message",
    [
        ({"hidden_size": 65}, "larger than the source model's hidden_size=64"),
        ({"num_attention_heads": 3}, "not a multiple of the kept KV groups"),
        ({"num_attention_heads": 4, "num_key_value_heads": 1}, "more than the source's 2"),
        ({"drop_layers": [2]}, "layer index 2 is out of range"),
        ({"num_hidden_layers": 3}, "larger than the source model's num_hidden_layers=2"),
        ({"intermediate_size": 1.5}, "neither an integer size nor a fraction"),
        ({"hidden_sizes": 3}, "unknown target key 'hidden_sizes'"),
        ({"depth_metric": "cos"}, "is not a depth metric"),
    ],
)
def test_impossible_targets_fail_with_one_line(target, message):
    model = tiny_model("nemotron")
    with pytest.raises(MinitronError, match=message) as e:
        prune(model, fake_importance(model), target)
    assert "\n" not in str(e.value)


def test_a_shape_the_config_class_rejects_fails_in_one_line():
    model = tiny_model("llama", num_attention_heads=4, num_key_value_heads=4)  # LlamaConfig needs hidden % heads == 0
    with pytest.raises(MinitronError, match="LlamaConfig rejects the pruned shape .*not a multiple") as e:
        prune(model, fake_importance(model), {"num_attention_heads": 3})
    assert "\n" not in str(e.value)


def test_width_without_scores_and_scores_of_another_model():
    model = tiny_model("nemotron")
    with pytest.raises(MinitronError, match="needs importance scores"):
        prune(model, None, {"hidden_size": 32})
    other = tiny_model("nemotron", hidden_size=96)
    with pytest.raises(MinitronError, match="computed for another model") as e:
        prune(model, fake_importance(other), {"hidden_size": 32})
    assert "\n" not in str(e.value)
    same_shapes = tiny_model("nemotron", rope_theta=500.0)  # same shapes, different model
    with pytest.raises(MinitronError, match="another model"):
        prune(model, fake_importance(same_shapes), {"hidden_size": 32})
