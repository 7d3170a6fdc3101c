"""Re-running part of a decoder stack on recorded layer inputs: the pieces shared by the skip-one-layer loss
(`estimate`), the block scores (`blocks`) and the streaming estimate."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_LOGIT_ELEMENTS = 1 << 24  # rows of logits are computed in chunks of at most this many elements


def cosine_distance(a: Tensor, b: Tensor) -> Tensor:
    """1 - cos(a, b) over the last dimension, in float32 (a dot product and two norms: on CPU about twice as
    fast as `F.cosine_similarity`)."""
    a, b = a.float(), b.float()
    norms = torch.linalg.vector_norm(a, dim=-1) * torch.linalg.vector_norm(b, dim=-1)
    return 1 - torch.linalg.vecdot(a, b) / norms.clamp_min(1e-12)


def call_layer(layer: nn.Module, hidden: Tensor, args: tuple, kwargs: dict[str, Any]) -> Tensor:
    out = layer(hidden, *args, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def lm_loss_sum(hidden: Tensor, batch: Any, head: Callable[[Tensor], Tensor], vocab: int) -> Tensor:
    """Sum of the next-token cross entropies of `batch` from last-layer hidden states (float32); `head` maps
    them to logits (final norm, LM head and whatever the family does to the logits)."""
    h, y = hidden[:, :-1], batch.input_ids[:, 1:]
    if batch.target_mask is None:
        h, y = h.reshape(-1, h.shape[-1]), y.reshape(-1)
    else:
        h, y = h[batch.target_mask], y[batch.target_mask]
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    rows = max(1, _LOGIT_ELEMENTS // vocab)
    for start in range(0, y.shape[0], rows):
        logits = head(h[start : start + rows])
        total = total + F.cross_entropy(logits.float(), y[start : start + rows], reduction="sum")
    return total
