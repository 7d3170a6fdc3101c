"""The validation loss: mean next-token cross-entropy (nats/token) over held-out packed blocks.

Every place that reports a validation loss (pretraining, distillation, the pipeline's evaluations, the width
search, the ablation cells) calls `lm_loss`. It runs the decoder stack once per batch and takes the loss from the
final hidden states through the output layer, one tile of tokens x vocabulary at a time: each tile of logits gets
the family's own output transform (`FamilyAdapter.logits`: Gemma's soft-capping, Granite's scaling), then its
log-sum-exp per token and the logits of the targets that fall in it; the tiles' log-sum-exps are combined per
token at the end. This is the blockwise log-sum-exp of Cut Cross-Entropy (Wijmans et al. 2024, arXiv:2411.09009,
sec. 4), here without gradients. The `[tokens, vocabulary]` float32 logits, their shifted copy and their
log-softmax are never formed (at vocabulary 49,152 and 8 x 256 tokens that is 0.4 GB each, at 256,000 2.1 GB),
and each tile's exponentials are taken while the tile is still in the cache. The value is the cross-entropy of
the model's own logits (to float32 rounding; the log-sum-exp in float32 per tile is closer to a float64
reference than `F.cross_entropy` in float32 is). Padding (attention_mask 0) is neither predicted nor counted.
`benchmarks/eval_speed.py` measures this pass against a plain forward.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import Any

import datasets
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from minitron.errors import MinitronError
from minitron.models import get_adapter

# Logits are formed one tile of at most TILE_ROWS tokens x TILE_VOCAB vocabulary entries at a time (2 MiB in
# float32), so that the exponentials of a tile are taken while it is still in the cache it was written to. On the
# 2-core build machine (1 MiB of L2 per core), at SmolLM2-135M's output layer (576 x 49,152) and 2,040 tokens,
# tiles of 128-1024 x 512-1024 took about the same time, less than the logits alone and a fifth less than the
# logits plus `F.cross_entropy` (`benchmarks/eval_speed.py --tiles`). The vocabulary is the outer loop: each
# slice of the output weight is read from memory once per batch and stays in the cache for all the token tiles.
TILE_ROWS = 512
TILE_VOCAB = 1024


def logits_cross_entropy_sum(hidden: Tensor, targets: Tensor, weight: Tensor, bias: Tensor | None = None,
                             transform: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Sum over rows of cross_entropy(transform(hidden @ weight.T + bias), targets), in float64, computed tile by
    tile; `transform` must act element-wise (every family's does)."""
    n, vocab = targets.shape[0], weight.shape[0]
    lse = torch.empty(n, math.ceil(vocab / TILE_VOCAB), dtype=torch.float32, device=hidden.device)
    target_logit = torch.empty(n, dtype=torch.float32, device=hidden.device)
    for j, start in enumerate(range(0, vocab, TILE_VOCAB)):
        stop = min(start + TILE_VOCAB, vocab)
        w, b = weight[start:stop], None if bias is None else bias[start:stop]
        for row in range(0, n, TILE_ROWS):
            logits = F.linear(hidden[row : row + TILE_ROWS], w, b)
            if transform is not None:
                logits = transform(logits)
            logits = logits.float()  # in the model's dtype up to here, as its own logits are; the loss in float32
            lse[row : row + TILE_ROWS, j] = torch.logsumexp(logits, dim=-1)
            local = targets[row : row + TILE_ROWS] - start
            hit = ((local >= 0) & (local < stop - start)).nonzero().squeeze(1)
            target_logit[row + hit] = logits[hit, local[hit]]
    return (torch.logsumexp(lse, dim=-1) - target_logit).double().sum()


def _gathered(params: list[nn.Parameter]):
    """Under ZeRO-3 a rank holds only a partition of each weight: gather them (read-only) for the loss."""
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed  # only under ZeRO-3: importing it takes seconds and probes for accelerators

        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    return contextlib.nullcontext()


def next_token_loss_sum(model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None = None) -> tuple[Tensor, int]:
    """(sum in float64, count) of the next-token cross-entropies of a batch, over every target whose
    attention_mask is 1 (padding is neither predicted nor counted), equal to the cross-entropy of the model's
    own logits. `model` is a causal LM of a supported family (or a DeepSpeed engine around one)."""
    model = getattr(model, "module", model)  # a DeepSpeed engine wraps the model
    adapter = get_adapter(model)
    if attention_mask is not None and bool(attention_mask.all()):
        attention_mask = None  # the same causal attention, without building a mask
    hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    hidden, targets = hidden[:, :-1], input_ids[:, 1:]
    if attention_mask is None:
        hidden, targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    else:
        keep = attention_mask[:, 1:].bool()
        hidden, targets = hidden[keep], targets[keep]
    head = model.get_output_embeddings()
    params = [head.weight] + ([head.bias] if head.bias is not None else [])
    with _gathered(params):
        total = logits_cross_entropy_sum(hidden, targets, head.weight, head.bias, adapter.logits)
    return total, targets.shape[0]


def _batches(dataset, batch_size: int, limit: int | None) -> Iterator[tuple[Tensor, Tensor | None]]:
    """(input_ids, attention_mask or None) of consecutive batches of `dataset` (a `datasets.Dataset` is sliced a
    batch at a time; anything else, a stream or a list of rows, is read row by row), at most `limit` of them."""
    if isinstance(dataset, datasets.Dataset):
        table = dataset.with_format("torch")
        stop = len(dataset) if limit is None else min(len(dataset), limit * batch_size)
        for start in range(0, stop, batch_size):
            rows = table[start : min(start + batch_size, stop)]
            yield rows["input_ids"], rows.get("attention_mask")
        return
    it: Iterable[dict[str, Any]] = iter(dataset)
    while limit is None or limit > 0:
        rows = list(islice(it, batch_size))
        if not rows:
            return
        ids = torch.tensor([r["input_ids"] for r in rows], dtype=torch.long)
        mask = torch.tensor([r["attention_mask"] for r in rows], dtype=torch.long) if "attention_mask" in rows[0] else None
        yield ids, mask
        limit = None if limit is None else limit - 1


@torch.no_grad()
def batch_loss_sums(model: nn.Module, dataset, *, batch_size: int = 8,
                    max_batches: int | None = None) -> list[tuple[float, int]]:
    """(sum of next-token losses in nats, token count) per batch of `dataset` (a Dataset, a stream or a list of
    packed blocks, read in order, `batch_size` blocks at a time, at most `max_batches` batches)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    n = math.ceil(len(dataset) / batch_size) if hasattr(dataset, "__len__") else None
    total_batches = n if max_batches is None else max_batches if n is None else min(n, max_batches)
    out: list[tuple[float, int]] = []
    try:
        for ids, mask in tqdm(_batches(dataset, batch_size, max_batches), total=total_batches, desc="eval",
                              leave=False, dynamic_ncols=True):
            s, c = next_token_loss_sum(model, ids.to(device), None if mask is None else mask.to(device))
            out.append((s.item(), c))
    finally:
        model.train(was_training)
    if sum(c for _, c in out) == 0:
        raise MinitronError("the validation split has no tokens; lower data.seq_len or check data.validation_fraction")
    return out


def mean_and_se(batches: list[tuple[float, int]]) -> tuple[float, float]:
    """Token-weighted mean loss of (sum, count) batches and its standard error with the batches as the sampled
    units (the ratio estimator: SE^2 = k / (k - 1) * sum_i (s_i - mean * c_i)^2 / (sum_i c_i)^2 over k batches;
    Cochran, Sampling Techniques, 3rd ed., sec. 6.3). The blocks of a batch are neighbours in the corpus, so
    batches, not tokens, are the independent draws. NaN with a single batch."""
    total = sum(c for _, c in batches)
    mean = sum(s for s, _ in batches) / total
    k = len(batches)
    if k < 2:
        return mean, math.nan
    spread = sum((s - mean * c) ** 2 for s, c in batches)
    return mean, math.sqrt(k / (k - 1) * spread) / total


def lm_loss(model: nn.Module, dataset, *, batch_size: int = 8, max_batches: int | None = None) -> float:
    """Mean next-token loss in nats over every real token of `dataset` (token-weighted, not batch-weighted): a
    Dataset, a stream or a list of packed blocks, read in order, `batch_size` blocks at a time, at most
    `max_batches` batches."""
    return mean_and_se(batch_loss_sums(model, dataset, batch_size=batch_size, max_batches=max_batches))[0]
