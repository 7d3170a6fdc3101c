"""Helpers shared by the pruning tests: seeded synthetic importance scores and small-run overrides."""

from __future__ import annotations

import torch

from minitron.importance import Importance, config_hash
from minitron.models import get_adapter
from small_runs import SMALL_ARCH, SMALL_DATA

# A very small `minitron pretrain` run (a few seconds): a 2-layer Nemotron with a 320-token BPE tokenizer.
DATA = SMALL_DATA
TEACHER = [
    *SMALL_ARCH,
    "train.max_steps=4",
    "train.batch_size=4",
    "train.warmup_steps=1",
    "train.logging_steps=2",
    "train.eval_batches=2",
    *DATA,
]



def fake_importance(model_or_config, seed: int = 0, *, depth: bool = True) -> Importance:
    """Random but seeded scores of the right shapes for `model_or_config` (distinct values, so rankings are unique)."""
    config = getattr(model_or_config, "config", model_or_config)
    a = get_adapter(config)
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.rand(*shape, generator=g)
    return Importance(
        hidden=r(a.hidden_size),
        heads=r(a.num_hidden_layers, a.num_attention_heads),
        mlp=r(a.num_hidden_layers, a.intermediate_size),
        kv_groups=r(a.num_hidden_layers, a.num_key_value_heads),
        layers=r(a.num_hidden_layers) if depth else None,
        layers_loss=r(a.num_hidden_layers) if depth else None,
        batch_agg="l2",
        seq_agg="mean",
        mlp_site="post",
        num_samples=1,
        num_tokens=1,
        seq_len=1,
        config_hash=config_hash(config),
        corpus_fingerprint="synthetic",
    )
