"""The validation loss (`minitron.train.validation`) equals the plain cross-entropy of the model's own logits."""

from __future__ import annotations

import math

import datasets
import pytest
import torch
from torch.nn import functional as F

from minitron.errors import MinitronError
from minitron.models.tiny import tiny_model
from minitron.train import validation
from minitron.train.validation import (
    batch_loss_sums,
    lm_loss,
    logits_cross_entropy_sum,
    mean_and_se,
)

# a plain family, one that soft-caps its logits (Gemma 2) and one that scales them (Granite)
FAMILIES = ("nemotron", "gemma2", "granite", "nemotron_h")


def _model(family: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    cap = {"final_logit_softcapping": 2.0} if family == "gemma2" else {}
    model = tiny_model(family, **cap)
    with torch.no_grad():  # logits of a few units, not ~0: soft-capping and scaling then change the loss
        model.get_output_embeddings().weight.mul_(20)
    return model.to(dtype)


def _rows(seed: int = 0, blocks: int = 7, length: int = 24) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    rows = [{"input_ids": torch.randint(3, 128, (length,), generator=g).tolist(), "attention_mask": [1] * length}
            for _ in range(blocks)]
    rows[2]["attention_mask"] = [1] * 9 + [0] * (length - 9)  # padded blocks, as the last block of a split may be
    rows[-1]["attention_mask"] = [1] * 2 + [0] * (length - 2)
    return rows


def _plain(model, rows: list[dict], batch_size: int, dtype: torch.dtype = torch.float32) -> float:
    """The straightforward loss: the model's logits, shifted, and F.cross_entropy over the real targets."""
    total, count = 0.0, 0
    for i in range(0, len(rows), batch_size):
        ids = torch.tensor([r["input_ids"] for r in rows[i : i + batch_size]])
        mask = torch.tensor([r["attention_mask"] for r in rows[i : i + batch_size]])
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits
        labels = ids.masked_fill(mask == 0, -100)[:, 1:].flatten()
        total += F.cross_entropy(logits[:, :-1].flatten(0, 1).to(dtype), labels, ignore_index=-100,
                                 reduction="sum").item()
        count += int((labels != -100).sum())
    return total / count


@pytest.mark.parametrize("tiles", [(512, 1024), (16, 24)], ids=["one-tile", "many-tiles"])
@pytest.mark.parametrize("family", FAMILIES)
def test_lm_loss_equals_the_cross_entropy_of_the_models_logits(family, tiles, monkeypatch):
    """With padded blocks, on a list, a Dataset and a stream; tiles of 16 x 24 split both the tokens and the
    vocabulary of 128, so that the log-sum-exps of many tiles are combined."""
    monkeypatch.setattr(validation, "TILE_ROWS", tiles[0])
    monkeypatch.setattr(validation, "TILE_VOCAB", tiles[1])
    model, rows = _model(family), _rows()
    expected = _plain(model, rows, batch_size=3)
    table = datasets.Dataset.from_list(rows)
    for source in (rows, table, table.to_iterable_dataset()):
        assert lm_loss(model, source, batch_size=3) == pytest.approx(expected, rel=1e-5)
    # closer still to the same loss in float64 (the float32 log-sum-exp is the more exact of the two)
    assert lm_loss(model, rows, batch_size=3) == pytest.approx(_plain(model, rows, 3, torch.float64), rel=1e-6)
    assert lm_loss(model, rows, batch_size=3, max_batches=1) == pytest.approx(_plain(model, rows[:3], 3), rel=1e-5)


@pytest.mark.parametrize("family", ["gemma2", "granite"])
def test_the_familys_logits_transform_matters_and_is_applied(family):
    """Without the adapter's transform the loss differs (so the test above would catch a missing one)."""
    model, rows = _model(family), _rows()
    ids = torch.tensor([r["input_ids"] for r in rows[:2]])
    with torch.no_grad():
        hidden = model.get_decoder()(input_ids=ids).last_hidden_state[:, :-1].flatten(0, 1)
        raw = logits_cross_entropy_sum(hidden, ids[:, 1:].flatten(), model.get_output_embeddings().weight).item()
    assert raw / (2 * 23) != pytest.approx(_plain(model, rows[:2], 2), rel=1e-2)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_bf16_model_gets_the_loss_of_its_own_bf16_logits(family):
    model, rows = _model(family, torch.bfloat16), _rows()
    assert lm_loss(model, rows, batch_size=4) == pytest.approx(_plain(model, rows, 4), rel=1e-5)


def test_lm_loss_restores_the_mode_and_refuses_a_split_without_tokens():
    model = _model("nemotron").train()
    lm_loss(model, _rows(), batch_size=3)
    assert model.training
    padding_only = [{"input_ids": [5, 6, 7], "attention_mask": [1, 0, 0]}]
    with pytest.raises(MinitronError, match="the validation split has no tokens"):
        lm_loss(model, padding_only, batch_size=1)
    assert model.training


def test_the_standard_error_treats_batches_as_the_units():
    model = _model("nemotron")
    rows = _rows(blocks=9)
    batches = batch_loss_sums(model, rows, batch_size=3)
    assert [c for _, c in batches] == [23 + 23 + 8, 23 * 3, 23 + 23 + 1]  # padded blocks count their real targets
    mean, se = mean_and_se(batches)
    assert mean == pytest.approx(lm_loss(model, rows, batch_size=3), rel=1e-12)
    # by hand: per-batch residuals of the ratio estimator
    sums = torch.tensor([s for s, _ in batches], dtype=torch.float64)
    counts = torch.tensor([c for _, c in batches], dtype=torch.float64)
    expected = ((sums - mean * counts).pow(2).sum() * 3 / 2).sqrt() / counts.sum()
    assert se == pytest.approx(float(expected), rel=1e-12) and se > 0
    # equal counts: the ratio estimator is the standard error of the per-batch means
    equal = [(2.0, 10), (3.0, 10), (7.0, 10)]
    per_batch = torch.tensor([0.2, 0.3, 0.7], dtype=torch.float64)
    assert mean_and_se(equal)[1] == pytest.approx(float(per_batch.std() / 3 ** 0.5), rel=1e-12)
    assert math.isnan(mean_and_se(equal[:1])[1])
