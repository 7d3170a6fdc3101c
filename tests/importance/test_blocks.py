"""Block scores on a model whose least important block is known by construction: layers 2-3 of a 6-layer model
return their input unchanged (their output projections are zero), so skipping exactly that block changes
nothing, while every other block holds a layer that matters."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from minitron.errors import MinitronError
from minitron.importance import Importance, estimate
from minitron.models.tiny import tiny_model
from minitron.prune import make_plan, prune

IDENTITY = (2, 3)  # the block made identity: its layers add nothing to the residual stream


def known_block_model():
    model = tiny_model("llama", seed=11, num_hidden_layers=6)
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            if i in IDENTITY:
                layer.self_attn.o_proj.weight.zero_()
                layer.mlp.down_proj.weight.zero_()
            else:  # make every other layer's contribution large, so that skipping it is costly
                layer.self_attn.o_proj.weight.mul_(8)
                layer.mlp.down_proj.weight.mul_(8)
        model.lm_head.weight.mul_(20)  # sharp predictions: the model's own greedy text is nearly certain to it
    return model.eval()


def greedy_text(model, rows: int = 4, length: int = 24) -> torch.Tensor:
    """Text the model itself continues greedily, so its loss on it is near its minimum."""
    ids = torch.randint(3, 128, (rows, 1), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        for _ in range(length - 1):
            nxt = model(ids).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
    return ids


def full_loss(model, ids) -> float:
    with torch.no_grad():
        logits = model(ids).logits[:, :-1]
    return float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1)))


@pytest.fixture(scope="module")
def setup():
    model = known_block_model()
    ids = greedy_text(model)
    batches = [ids[:2], {"input_ids": ids[2:], "attention_mask": torch.ones_like(ids[2:])}]
    imp = estimate(model, batches, depth=("bi",), blocks=("loss", "bi"), block_layers=2, progress=False)
    return model, ids, imp


def test_block_scores_find_the_identity_block(setup):
    model, ids, imp = setup
    assert imp.block_layers == 2 and imp.blocks_loss.shape == imp.blocks_bi.shape == (5,)
    start = IDENTITY[0]
    # skipping an identity block leaves the model as it was: the same loss, and the block's output is its input
    assert float(imp.blocks_loss[start]) == pytest.approx(full_loss(model, ids), abs=1e-5)
    assert float(imp.blocks_bi[start]) == pytest.approx(0.0, abs=1e-6)
    others = [s for s in range(5) if s != start]
    assert min(float(imp.blocks_loss[s]) for s in others) > float(imp.blocks_loss[start]) + 0.5
    assert min(float(imp.blocks_bi[s]) for s in others) > 0.01


def test_block_loss_equals_the_loss_of_the_model_without_the_block(setup):
    """Each block's loss against a model actually pruned of that block (the reference runs no hooks)."""
    model, ids, imp = setup
    for start in range(5):
        pruned = prune(model, None, {"drop_layers": [start, start + 1]})
        assert float(imp.blocks_loss[start]) == pytest.approx(full_loss(pruned, ids), rel=1e-5, abs=1e-5), start


def test_contiguous_drops_the_known_block_with_either_block_metric(setup):
    model, ids, imp = setup
    for metric in ("loss", "bi"):
        plan = make_plan(model.config, imp, {"num_hidden_layers": 4, "depth_metric": "contiguous", "block_metric": metric})
        assert plan.keep_layers == [0, 1, 4, 5], metric
    pruned = prune(model, imp, {"num_hidden_layers": 4, "depth_metric": "contiguous"})  # block_metric=loss by default
    with torch.no_grad():
        torch.testing.assert_close(pruned(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-4)


def test_block_scores_round_trip_and_guard_their_length(setup, tmp_path):
    model, _, imp = setup
    imp.save(tmp_path / "s.safetensors")
    back = Importance.load(tmp_path / "s.safetensors")
    assert back.block_layers == 2
    assert torch.equal(back.blocks_loss, imp.blocks_loss) and torch.equal(back.blocks_bi, imp.blocks_bi)
    back.check_model(model.config)
    # scores for 2-layer blocks cannot choose a 3-layer block; the message names the field and the fix
    with pytest.raises(MinitronError, match="target.block_metric=loss needs block scores for blocks of 3 layers"):
        make_plan(model.config, imp, {"num_hidden_layers": 3, "depth_metric": "contiguous"})
    with pytest.raises(MinitronError, match="block_layers=6 leaves no layer"):
        estimate(model, [torch.ones(1, 4, dtype=torch.long)], depth=(), blocks=("bi",), block_layers=6, progress=False)
    with pytest.raises(MinitronError, match="blocks='cos' is not a block score"):
        estimate(model, [torch.ones(1, 4, dtype=torch.long)], depth=(), blocks=("cos",), block_layers=2, progress=False)
    with pytest.raises(MinitronError, match="target.block_metric='mean' is not a block metric"):
        make_plan(model.config, imp, {"num_hidden_layers": 4, "depth_metric": "contiguous", "block_metric": "mean"})


def test_target_asks_importance_for_the_blocks_it_needs():
    from minitron.prune import Target

    config = tiny_model("llama", num_hidden_layers=6).config
    assert Target(num_hidden_layers=4, depth_metric="contiguous").importance_options(config) == {
        "depth": ["bi"], "blocks": ["loss"], "block_layers": 2}
    assert Target(num_hidden_layers=4, depth_metric="contiguous", block_metric="bi").importance_options(config)[
        "blocks"] == ["bi"]
    assert Target(num_hidden_layers=4, depth_metric="contiguous", block_metric="sum").importance_options(config) == {
        "depth": ["bi"]}
    assert Target(num_hidden_layers=4, depth_metric="loss").importance_options(config) == {"depth": ["bi", "loss"]}
    assert Target(drop_layers=(1, 2), depth_metric="contiguous").importance_options(config) == {"depth": ["bi"]}


def test_padding_is_left_out_of_block_scores(setup):
    """Two samples of different lengths scored in one right-padded batch or one at a time give the same scores."""
    model, ids, _ = setup
    short, full = ids[0, :15], ids[1]
    padded = torch.zeros(2, ids.shape[1], dtype=torch.long)
    mask = torch.zeros_like(padded)
    padded[0, :15], mask[0, :15] = short, 1
    padded[1], mask[1] = full, 1
    options = dict(depth=(), blocks=("loss", "bi"), block_layers=3, progress=False)
    together = estimate(model, [{"input_ids": padded, "attention_mask": mask}], **options)
    apart = estimate(model, [short[None], full[None]], **options)
    torch.testing.assert_close(together.blocks_loss, apart.blocks_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(together.blocks_bi, apart.blocks_bi, rtol=1e-5, atol=1e-6)
