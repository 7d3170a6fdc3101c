"""Block-level depth scores: how much each contiguous block of `block_layers` decoder layers matters.

Depth pruning that drops a contiguous block should judge the block as a whole, not add up the scores of its
layers measured one at a time: removing one layer leaves its neighbours to compensate, removing the block does
not. The 2408 Minitron paper (arXiv 2408.11796) picks the block to drop by the pruned model's accuracy with that
block removed; two forward-only measures of the same question are computed here, for every block start s (the
block is layers s .. s + n - 1, counted from 0):

- `loss`: the next-token LM loss with the whole block skipped (its first layer's input handed straight to the
  layer after its last), the same masking as `layers_loss`. Lower means the model misses the block less.
- `bi`: block Block Importance, 1 - mean over unmasked tokens of cos(input of layer s, output of layer
  s + n - 1). ShortGPT (Men et al., arXiv 2403.03853) scores layers by this 1 - cos between a layer's input and
  output; Gromov et al., "The Unreasonable Ineffectiveness of the Deeper Layers" (arXiv 2403.17887), apply the
  same comparison across n layers (as an angular distance, a monotone function of the cosine) to choose the
  block to remove. Lower means the block changes the hidden states less.

Both come from the layer inputs that `estimate`'s hooks keep for `layers_loss`, so a block score costs no extra
forward pass over the whole stack: `bi` is L - n + 1 cosines per batch, `loss` re-runs the layers after each
block, (L - n)(L - n + 1) / 2 layer calls and L - n + 1 head calls per batch.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from minitron.errors import MinitronError
from minitron.importance.replay import call_layer, cosine_distance, lm_loss_sum
from minitron.importance.scores import BLOCK_AXES

BLOCK_METRICS: tuple[str, ...] = tuple(BLOCK_AXES)


def check_block_options(blocks: Iterable[str] | str, block_layers: int | None, num_layers: int | None = None) -> tuple[str, ...]:
    """Validate the requested block metrics and block length; return the metrics as a tuple."""
    blocks = (blocks,) if isinstance(blocks, str) else tuple(blocks)
    for b in blocks:
        if b not in BLOCK_METRICS:
            raise MinitronError(f"blocks='{b}' is not a block score; expected any of {', '.join(BLOCK_METRICS)}")
    if not blocks:
        return blocks
    if isinstance(block_layers, bool) or not isinstance(block_layers, int) or block_layers < 1:
        raise MinitronError(f"block_layers={block_layers!r} must be the number of layers in a block (an integer >= 1)")
    if num_layers is not None and block_layers >= num_layers:
        raise MinitronError(
            f"block_layers={block_layers} leaves no layer of the model's {num_layers}; a block must be shorter than the model"
        )
    return blocks


class BlockScores:
    """Running sums of the block scores over calibration batches."""

    def __init__(self, num_layers: int, block_layers: int, metrics: tuple[str, ...]):
        self.num_layers = num_layers
        self.block_layers = block_layers
        self.metrics = metrics
        self.starts = num_layers - block_layers + 1
        self.bi_sums: list[Tensor | None] = [None] * self.starts
        self.bi_tokens = 0
        self.loss_sums: list[Tensor | None] = [None] * self.starts
        self.targets = 0

    def add(
        self,
        layers: nn.ModuleList,
        inputs: dict[int, tuple[Tensor, tuple, dict[str, Any]]],
        last_output: Tensor,
        head: tuple[nn.Module, nn.Module],
        batch: Any,
        vocab: int,
    ) -> None:
        """One batch: `inputs[i]` is what layer i received (hidden states, positional and keyword arguments),
        `last_output` the last layer's output, as `ScoreCollector` keeps them."""
        n, L = self.block_layers, self.num_layers
        for s in range(self.starts):
            block_in = inputs[s][0]
            if "bi" in self.metrics:
                block_out = inputs[s + n][0] if s + n < L else last_output
                distance = cosine_distance(block_in, block_out)
                if batch.tokens.mask is not None:
                    distance = torch.where(batch.tokens.mask, distance, 0)
                self.bi_sums[s] = _acc(self.bi_sums[s], distance.sum())
            if "loss" in self.metrics:
                hidden = block_in
                for j in range(s + n, L):
                    hidden = call_layer(layers[j], hidden, inputs[j][1], inputs[j][2])
                self.loss_sums[s] = _acc(self.loss_sums[s], lm_loss_sum(hidden, batch, head, vocab))
        self.bi_tokens += batch.tokens.total
        self.targets += batch.num_targets

    def value(self) -> dict[str, Tensor]:
        """`blocks_bi` and/or `blocks_loss`, [num_layers - block_layers + 1] float32 on the CPU, by block start."""
        out = {}
        if "bi" in self.metrics:
            out["blocks_bi"] = torch.stack([s.detach().float().cpu() for s in self.bi_sums]) / max(self.bi_tokens, 1)
        if "loss" in self.metrics:
            if self.targets == 0:
                raise MinitronError("block loss scores need calibration samples of at least two unmasked tokens")
            out["blocks_loss"] = torch.stack([s.detach().float().cpu() for s in self.loss_sums]) / self.targets
        return out


def _acc(total: Tensor | None, part: Tensor) -> Tensor:
    return part if total is None else total + part
