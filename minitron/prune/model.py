"""Prune an in-memory model: a new model of the same class, built from the smaller config, holding sliced weights."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch
from transformers import PreTrainedModel
from transformers.initialization import no_init_weights

from minitron.models import get_adapter
from minitron.models.adapter import dtype_of
from minitron.prune.plan import PrunePlan, make_plan
from minitron.prune.target import Target

if TYPE_CHECKING:
    from minitron.importance import Importance


def prune(model: PreTrainedModel, importance: Importance | None, target: Target | Any) -> PreTrainedModel:
    """A pruned copy of `model` (same class, same dtype and device; the original is left untouched).

    `target` is a `Target` or a mapping of its fields: any of `hidden_size`, `intermediate_size`,
    `num_attention_heads`, `num_key_value_heads`, `num_hidden_layers` (integers, or fractions in (0, 1]),
    `drop_layers`, `depth_metric` (bi | loss | contiguous), `block_metric` (loss | bi | sum: how `contiguous` ranks
    blocks) and `fold_heads`. `importance` may be None when only explicit `drop_layers` are given.
    """
    plan = make_plan(model.config, importance, target)
    return build_pruned(model, plan)


def build_pruned(model: PreTrainedModel, plan: PrunePlan) -> PreTrainedModel:
    """The model `plan` describes, from `model`'s weights (see `make_plan`)."""
    get_adapter(model).check_model(model)
    source = dict(model.state_dict())
    with torch.no_grad():
        state = plan.state_dict(source)
    dtype = dtype_of(model)
    device = next(model.parameters()).device
    with no_init_weights(), torch.device(device):
        pruned = type(model)._from_config(plan.config, dtype=dtype)
    if pruned.config.tie_word_embeddings:
        pruned.tie_weights()
    missing, unexpected = pruned.load_state_dict(state, strict=False)
    tied = {get_adapter(pruned).lm_head + ".weight"} if pruned.config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"pruned state dict mismatch: missing {sorted(set(missing) - tied)[:4]}, unexpected {unexpected[:4]}")
    if tied:
        pruned.tie_weights()
    get_adapter(pruned).check_model(pruned)
    _copy_buffers(model, pruned, plan)
    if getattr(model, "generation_config", None) is not None:
        pruned.generation_config = copy.deepcopy(model.generation_config)
    pruned.train(model.training)
    return pruned


def _copy_buffers(source: PreTrainedModel, pruned: PreTrainedModel, plan: PrunePlan) -> None:
    """Non-persistent buffers (rotary frequencies) of the source, where the pruned model has the same ones: the
    pruned model then computes exactly as its source did, whatever dtype the source's buffers were cast to."""
    theirs = dict(source.named_buffers())
    derived = set(plan.adapter.derived_buffers())  # computed from the pruned config (e.g. Gemma's embed_scale)
    for name, buf in list(pruned.named_buffers()):
        if plan.source_name(name) in derived:
            continue
        src = theirs.get(plan.source_name(name))
        if src is not None and src.shape == buf.shape:
            owner, _, attr = name.rpartition(".")
            module = pruned.get_submodule(owner) if owner else pruned
            module._buffers[attr] = src.detach().clone()
