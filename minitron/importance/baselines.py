"""Importance criteria that need no calibration data: the baselines the paper compares activations against.

`weight_magnitude` scores an index of each width axis by the L2 norm of every weight it selects (the slices the
family adapter lists for that axis), and a layer by the norm of all its weights; `random_scores` draws seeded
uniform scores of the same shapes. Both return an `Importance` that `prune` takes like any other.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import PretrainedConfig, PreTrainedModel

from minitron.importance.scores import Importance, config_hash
from minitron.models import TensorSlice, get_adapter


def _axis_norms(state: dict[str, Tensor], slices, size: int) -> Tensor:
    """sqrt of the sum of squares of the weights each of the `size` indices selects, over all `slices`."""
    total = torch.zeros(size, dtype=torch.float64)
    for s in slices:
        t = state[s.name].detach().to(torch.float64)
        if s.offset or s.length is not None:  # one block of a fused projection
            t = t.narrow(s.dim, s.offset, t.shape[s.dim] - s.offset if s.length is None else s.length)
        t = t.movedim(s.dim, 0).reshape(size, -1)
        total += t.pow(2).sum(dim=1)
    return total.sqrt().float()


def _expert_norms(state: dict[str, Tensor], slices, experts: int, size: int) -> Tensor:
    """[experts, size]: `_axis_norms` within each expert's matrix of the per-expert slices."""
    per = lambda e: {s.name: state[s.name][e] for s in slices}
    moved = [TensorSlice(s.name, s.dim - 1, s.unit, s.offset, s.length) for s in slices]
    return torch.stack([_axis_norms(per(e), moved, size) for e in range(experts)])


def _mlp_scores(a, state: dict[str, Tensor], i: int) -> Tensor:
    if a.moe:
        return _expert_norms(state, a.axis_tensors("mlp", i), a.num_experts, a.intermediate_size)
    return _axis_norms(state, a.axis_tensors("mlp", i), a.intermediate_size)


def _importance(config: PretrainedConfig, scores: dict[str, Tensor], kind: str) -> Importance:
    return Importance(
        **scores,
        layers_loss=None,
        batch_agg=kind,
        seq_agg=kind,
        mlp_site="weights",
        num_samples=0,
        num_tokens=0,
        seq_len=0,
        config_hash=config_hash(config),
        corpus_fingerprint="",
    )


def weight_magnitude(model: PreTrainedModel) -> Importance:
    """Scores from the weights alone: the L2 norm of the weights each channel, head, KV group, neuron or layer owns."""
    a = get_adapter(model)
    state = model.state_dict()
    n = a.num_hidden_layers
    scores = {
        "hidden": _axis_norms(state, a.axis_tensors("hidden"), a.hidden_size),
        "heads": torch.stack([_axis_norms(state, a.axis_tensors("heads", i), a.num_attention_heads) for i in range(n)]),
        "mlp": torch.stack([_mlp_scores(a, state, i) for i in range(n)]),
        "kv_groups": torch.stack([_axis_norms(state, a.axis_tensors("kv_groups", i), a.num_key_value_heads) for i in range(n)]),
        "layers": torch.stack([_axis_norms(state, a.axis_tensors("layers", i), 1)[0] for i in range(n)]),
    }
    if a.moe:
        scores["experts"] = torch.stack([_axis_norms(state, a.axis_tensors("experts", i), a.num_experts) for i in range(n)])
    if a.hybrid:
        for axis, size in (("mamba_heads", a.mamba_num_heads), ("mamba_groups", a.n_groups)):
            scores[axis] = torch.stack([_axis_norms(state, a.axis_tensors(axis, i), size) for i in range(n)])
    return _importance(model.config, scores, "magnitude")


def random_scores(config: PretrainedConfig, seed: int) -> Importance:
    """Seeded uniform scores of the shapes `config` needs: the floor every criterion has to beat."""
    a = get_adapter(config)
    g = torch.Generator().manual_seed(seed)
    n = a.num_hidden_layers
    scores = {
        "hidden": torch.rand(a.hidden_size, generator=g),
        "heads": torch.rand(n, a.num_attention_heads, generator=g),
        "mlp": torch.rand(n, *((a.num_experts,) if a.moe else ()), a.intermediate_size, generator=g),
        "kv_groups": torch.rand(n, a.num_key_value_heads, generator=g),
        "layers": torch.rand(n, generator=g),
    }
    if a.moe:  # drawn after the dense axes, so a dense model's draws are unchanged
        scores["experts"] = torch.rand(n, a.num_experts, generator=g)
    if a.hybrid:
        scores["mamba_heads"] = torch.rand(n, a.mamba_num_heads, generator=g)
        scores["mamba_groups"] = torch.rand(n, a.n_groups, generator=g)
    return _importance(config, scores, "random")
