"""The two implementations of the per-sample statistics (by sample on CPU, batched on accelerators) and the
running batch statistics, against direct formulas."""

from __future__ import annotations

from itertools import product

import pytest
import torch

from minitron.errors import MinitronError
from minitron.importance import aggregate
from minitron.importance.aggregate import (
    AGGREGATORS,
    RunningScore,
    Tokens,
    _sequence_aggregate_batched,
    _sequence_aggregate_chunked,
)


def masked_batch(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(6, 9, 6, generator=g) * 3 + 1).to(dtype)
    mask = torch.ones(6, 9, dtype=torch.long)  # samples 0, 3, 4, 5 unmasked
    mask[1, 5:] = 0
    mask[2, :2] = 0  # left padding and a hole: any mask shape is allowed
    mask[2, 6] = 0
    x[mask == 0] = float("nan")  # padded activations must not leak into any statistic
    return x, mask


def direct(x: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    rows = []
    for n in range(x.shape[0]):
        v = x[n][mask[n].bool()].double()
        rows.append({"mean": v.abs().mean(0), "l2": v.square().sum(0).sqrt(), "var": v.var(0, correction=0)}[how])
    return torch.stack(rows)


@pytest.mark.parametrize("how", AGGREGATORS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk", [1, 2 * 9 * 6, 1 << 18], ids=["sample", "two-samples", "whole-batch"])
def test_both_implementations_match_the_formula(monkeypatch, how, dtype, chunk):
    monkeypatch.setattr(aggregate, "_CHUNK_ELEMENTS", chunk)
    x, mask = masked_batch(dtype)
    tokens = Tokens.of(mask, mask.shape, x.device)
    want = direct(x, mask, how)
    for impl in (_sequence_aggregate_chunked, _sequence_aggregate_batched):
        got = impl(x, tokens, how)
        assert got.dtype == torch.float32 and torch.isfinite(got).all(), impl.__name__
        torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6, msg=impl.__name__)


def test_unmasked_batches_use_every_position():
    x, _ = masked_batch()
    x = torch.nan_to_num(x, nan=0.5)
    tokens = Tokens.of(None, x.shape[:2], x.device)
    assert tokens.kept == (None,) * 6 and tokens.total == 54
    for how in AGGREGATORS:
        want = direct(x, torch.ones(6, 9), how)
        for impl in (_sequence_aggregate_chunked, _sequence_aggregate_batched):
            torch.testing.assert_close(impl(x, tokens, how).double(), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("seq_agg,batch_agg", list(product(AGGREGATORS, AGGREGATORS)))
def test_running_score_over_uneven_batches_matches_the_formula(seq_agg, batch_agg):
    x, mask = masked_batch()
    per_sample = direct(x, mask, seq_agg)
    score = RunningScore(seq_agg, batch_agg)
    for rows in ([0], [1, 2], [], [3, 4, 5]):  # an empty batch changes nothing
        sel = torch.tensor(rows, dtype=torch.long)
        score.update(x[sel], Tokens.of(mask[sel], (len(rows), 9), x.device))
    want = {
        "mean": per_sample.abs().mean(0),
        "l2": per_sample.square().sum(0).sqrt(),
        "var": per_sample.var(0, correction=0),
    }[batch_agg]
    assert score.samples == 6
    torch.testing.assert_close(score.value().double(), want, rtol=1e-5, atol=1e-6)


def test_running_variance_is_stable_far_from_zero():
    """Chan's update keeps the spread of values around 1e4 that differ by about 1e-2."""
    g = torch.Generator().manual_seed(1)
    values = 1e4 + 1e-2 * torch.randn(64, 3, generator=g, dtype=torch.float64)
    score = RunningScore("mean", "var")
    for chunk in values.split(5):
        score.add_sample_scores(chunk.float())
    want = values.float().double().var(0, correction=0)
    torch.testing.assert_close(score.value().double(), want, rtol=2e-2, atol=0)


def test_no_sample_is_an_error():
    with pytest.raises(MinitronError, match="no calibration sample reached this site"):
        RunningScore().value()
