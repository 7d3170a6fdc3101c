"""Per-channel importance statistics, accumulated batch by batch.

At one site (the output of a norm, the input of `o_proj` or `down_proj`, ...), sample n contributes the
activations x_t[c] of its unmasked tokens t = 1..T_n. The score of channel c is built in two steps, as in the
paper's Table 13:

1. over the sequence of each sample, giving s_n[c]:
   - `mean`: (1/T) sum_t |x_t|
   - `l2`:   sqrt(sum_t x_t^2)
   - `var`:  (1/T) sum_t (x_t - m)^2 with m = (1/T) sum_t x_t   (population variance)
2. over the N samples, from the s_n:
   - `mean`: (1/N) sum_n |s_n|
   - `l2`:   sqrt(sum_n s_n^2)
   - `var`:  (1/N) sum_n (s_n - mean_n s)^2                     (population variance)

The default pair (sequence `mean`, batch `l2`) is sqrt(sum_n (mean_t |x_t|)^2), the score of the reference
implementation. Step 1 sees a whole sample at once (it lives in one batch); step 2 keeps running sums, with
Chan's parallel update for the variance, so no activation outlives the forward pass that produced it.
Everything is float32 whatever the model's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from minitron.errors import MinitronError

AGGREGATORS: tuple[str, ...] = ("mean", "l2", "var")


def check_aggregator(name: str, role: str) -> None:
    if name not in AGGREGATORS:
        raise MinitronError(f"{role}='{name}' is not an aggregator; expected one of {', '.join(AGGREGATORS)}")


@dataclass(frozen=True)
class Tokens:
    """Which positions of a batch count: `mask` is bool [batch, seq] on the activations' device, or None when
    every position counts; `counts` is float32 [batch, 1], the tokens of each sample; `total` their sum;
    `kept[n]` the positions sample n keeps (a LongTensor), or None when it keeps them all."""

    mask: Tensor | None
    counts: Tensor
    total: int
    kept: tuple[Tensor | None, ...]

    @classmethod
    def of(cls, attention_mask: Tensor | None, shape: torch.Size, device: torch.device) -> Tokens:
        batch, seq = shape
        if attention_mask is None:
            counts = torch.full((batch, 1), float(seq), dtype=torch.float32, device=device)
            return cls(None, counts, batch * seq, (None,) * batch)
        mask = attention_mask.to(device=device, dtype=torch.bool)
        counts = mask.sum(1, keepdim=True, dtype=torch.float32)
        kept = tuple(None if bool(row.all()) else row.nonzero().squeeze(1) for row in mask)
        return cls(mask, counts, int(attention_mask.sum()), kept)


def sequence_aggregate(x: Tensor, tokens: Tokens, how: str) -> Tensor:
    """Step 1: [batch, seq, channels] activations -> float32 [batch, channels]."""
    if x.device.type == "cpu":
        return _sequence_aggregate_chunked(x, tokens, how)
    return _sequence_aggregate_batched(x, tokens, how)


_CHUNK_ELEMENTS = 1 << 18  # 1 MiB of float32: fits a core's L2 cache


def _sequence_aggregate_chunked(x: Tensor, tokens: Tokens, how: str) -> Tensor:
    """A few samples at a time through one reused float32 buffer of about `_CHUNK_ELEMENTS`: the elementwise
    result is still in the CPU's cache when it is summed, which makes this about twice as fast as whole-batch
    reductions and keeps the hooks' cost small next to the layer's own matmuls. A sample with masked positions
    is a chunk of its own, its kept positions gathered first."""
    batch, seq, channels = x.shape
    per_chunk = max(1, _CHUNK_ELEMENTS // max(1, seq * channels))
    out = torch.empty(batch, channels, dtype=torch.float32)
    buffer = torch.empty(min(per_chunk, batch) * seq * channels, dtype=torch.float32)
    n = 0
    while n < batch:
        stop = n + 1
        if tokens.kept[n] is not None:
            rows = x[n].index_select(0, tokens.kept[n]).unsqueeze(0)
        else:
            while stop < batch and stop - n < per_chunk and tokens.kept[stop] is None:
                stop += 1
            rows = x[n:stop]
        if rows.dtype != torch.float32:
            rows = rows.float()  # squares and deviations of bf16 values would be rounded to bf16
        work = buffer[: rows.numel()].view(rows.shape)
        if how == "mean":
            torch.abs(rows, out=work)
        elif how == "l2":
            torch.mul(rows, rows, out=work)
        else:  # two passes (mean, then squared deviations): stable, unlike E[x^2] - E[x]^2
            torch.sub(rows, rows.sum(1, keepdim=True) / rows.shape[1], out=work)
            work.square_()
        torch.sum(work, 1, out=out[n:stop])
        n = stop
    if how == "l2":
        return out.sqrt_()
    return out.div_(tokens.counts)


def _sequence_aggregate_batched(x: Tensor, tokens: Tokens, how: str) -> Tensor:
    """The same statistics as whole-batch reductions (for accelerators, where a loop over samples would only
    add kernel launches)."""
    if tokens.mask is not None:
        # `where`, not a product: a padded position may hold inf or nan.
        x = torch.where(tokens.mask.unsqueeze(-1), x, 0)
    if how == "mean":
        # |x| is exact in any dtype; the sum accumulates in float32
        return x.abs().sum(1, dtype=torch.float32) / tokens.counts
    x = x.float()
    if how == "l2":
        return x.square().sum(1).sqrt()
    centred = x - x.sum(1, keepdim=True) / tokens.counts.unsqueeze(-1)
    if tokens.mask is not None:
        centred = torch.where(tokens.mask.unsqueeze(-1), centred, 0)
    return centred.square().sum(1) / tokens.counts


class RunningScore:
    """The two-step score of every channel at one site, updated one batch at a time."""

    def __init__(self, seq_agg: str = "mean", batch_agg: str = "l2"):
        check_aggregator(seq_agg, "seq_agg")
        check_aggregator(batch_agg, "batch_agg")
        self.seq_agg = seq_agg
        self.batch_agg = batch_agg
        self.samples = 0
        self._acc: Tensor | None = None  # sum |s| (mean), sum s^2 (l2), or the running mean (var)
        self._m2: Tensor | None = None  # var only: sum of squared deviations from the running mean

    def update(self, x: Tensor, tokens: Tokens) -> None:
        """Add the samples of one batch, x [batch, seq, channels]."""
        self.add_sample_scores(sequence_aggregate(x, tokens, self.seq_agg))

    def add_sample_scores(self, s: Tensor) -> None:
        """Step 2 on per-sample scores s [batch, channels] (float32)."""
        n_new = s.shape[0]
        if n_new == 0:
            return
        if self.batch_agg == "var":
            mean_new = s.mean(0)
            m2_new = (s - mean_new).square().sum(0)
            if self._acc is None:
                self._acc, self._m2 = mean_new, m2_new
            else:
                total = self.samples + n_new
                delta = mean_new - self._acc
                self._acc = self._acc + delta * (n_new / total)
                self._m2 = self._m2 + m2_new + delta.square() * (self.samples * n_new / total)
        else:
            part = s.abs().sum(0) if self.batch_agg == "mean" else s.square().sum(0)
            self._acc = part if self._acc is None else self._acc + part
        self.samples += n_new

    def value(self) -> Tensor:
        """The float32 score of every channel."""
        if self._acc is None:
            raise MinitronError("no calibration sample reached this site; check that the batches are not empty")
        if self.batch_agg == "mean":
            return self._acc / self.samples
        if self.batch_agg == "l2":
            return self._acc.sqrt()
        return self._m2 / self.samples
