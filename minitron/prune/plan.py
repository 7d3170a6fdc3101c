"""What to keep: the index of every kept channel, neuron, head, KV group and layer, and how each tensor is cut.

A `PrunePlan` is computed from a source config, importance scores and a `Target`, before any tensor is touched,
so that every impossible request fails first. It then slices one state-dict tensor at a time (`apply`), which
serves both the in-memory pruner and the streaming export that reads a checkpoint tensor by tensor.

Indices are always kept in their original order (a keep-everything plan is the identity), and each axis keeps
the top-ranked units by importance with ties broken towards the lower index.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from transformers import PretrainedConfig

from minitron.errors import MinitronError
from minitron.models import FamilyAdapter, TensorSlice, get_adapter
from minitron.prune.target import Shape, Target

if TYPE_CHECKING:
    from minitron.importance import Importance

_LAYER_KEY = re.compile(r"^(?P<prefix>.*\.layers\.)(?P<index>\d+)(?P<rest>\..*)$")


def top_k(scores: Tensor, k: int) -> Tensor:
    """Indices of the k largest scores, in ascending index order (ties go to the lower index)."""
    if k >= scores.numel():
        return torch.arange(scores.numel())
    order = torch.argsort(scores.float(), descending=True, stable=True)
    return order[:k].sort().values


def expand(index: Tensor, unit: int) -> Tensor:
    """Element indices of the units in `index` (unit i owns elements i*unit .. i*unit + unit - 1)."""
    if unit == 1:
        return index
    return (index[:, None] * unit + torch.arange(unit)).reshape(-1)


@dataclass
class PrunePlan:
    """Kept indices per axis (source numbering) and the pruned config."""

    source: PretrainedConfig
    config: PretrainedConfig
    keep_layers: list[int]
    hidden: Tensor
    heads: dict[int, Tensor]  # source layer -> kept query heads
    kv_groups: dict[int, Tensor]  # source layer -> kept KV heads
    mlp: dict[int, Tensor]  # source layer -> kept neurons; MoE: [kept experts, kept neurons], one row per kept expert
    fold: dict[int, list[tuple[int, int]]] = field(default_factory=dict)  # layer -> (kept head, pruned head) pairs
    experts: dict[int, Tensor] = field(default_factory=dict)  # MoE: source layer -> kept experts
    mamba_heads: dict[int, Tensor] = field(default_factory=dict)  # hybrid: source Mamba block -> kept heads
    mamba_groups: dict[int, Tensor] = field(default_factory=dict)  # hybrid: source Mamba block -> kept groups
    # name -> dim -> (offset, length, kept element indices within the block) per cut block of that dimension
    _cuts: dict[str, dict[int, list[tuple[int, int | None, Tensor]]]] = field(default_factory=dict, repr=False)
    # the same for per-expert cuts: the kept indices are one row per kept expert (applied after the expert cut)
    _expert_cuts: dict[str, dict[int, list[tuple[int, int | None, Tensor]]]] = field(default_factory=dict, repr=False)
    _folds: dict[str, list[tuple[int, int, int, list[tuple[int, int]]]]] = field(default_factory=dict, repr=False)
    _transforms: dict[str, Callable[[Tensor], Tensor]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._index_tensors()

    @property
    def adapter(self) -> FamilyAdapter:
        return get_adapter(self.source)

    @property
    def pruned_adapter(self) -> FamilyAdapter:
        return get_adapter(self.config)

    def _cut(self, t: TensorSlice, index: Tensor) -> None:
        cuts = self._expert_cuts if t.per_expert else self._cuts
        blocks = cuts.setdefault(t.name, {}).setdefault(t.dim, [])
        if any(offset == t.offset for offset, _, _ in blocks):
            raise ValueError(f"two cuts of the block at {t.offset} of dimension {t.dim} of '{t.name}'")
        if t.per_expert:
            index = torch.stack([expand(row, t.unit) for row in index])
        else:
            index = expand(index, t.unit)
        blocks.append((t.offset, t.length, index))

    def _index_tensors(self) -> None:
        a = self.adapter
        full_hidden = len(self.hidden) == a.hidden_size
        if not full_hidden:
            for t in a.axis_tensors("hidden"):
                if _layer_of(t.name) in (None, *self.keep_layers):
                    self._cut(t, self.hidden)
            self._transforms = a.hidden_transforms(len(self.hidden))
        for i in self.keep_layers:
            head_slices = a.axis_tensors("heads", i)
            if len(self.heads[i]) != a.num_attention_heads:
                for t in head_slices:
                    self._cut(t, self.heads[i])
            if len(self.kv_groups[i]) != a.num_key_value_heads:
                q_and_o = {t.key for t in head_slices}
                for t in a.axis_tensors("kv_groups", i):
                    if t.key not in q_and_o:  # q rows and o columns follow the kept heads above
                        self._cut(t, self.kv_groups[i])
            if self.mlp[i].shape[-1] != a.intermediate_size:
                for t in a.axis_tensors("mlp", i):
                    self._cut(t, self.mlp[i])
            if a.moe and len(self.experts[i]) != a.num_experts:
                for t in a.axis_tensors("experts", i):
                    self._cut(t, self.experts[i])
            if i in self.mamba_heads and len(self.mamba_heads[i]) != a.mamba_num_heads:
                head_owned = a.axis_tensors("mamba_heads", i)
                for t in head_owned:
                    self._cut(t, self.mamba_heads[i])
                if len(self.mamba_groups[i]) != a.n_groups:
                    by_heads = {t.key for t in head_owned}
                    for t in a.axis_tensors("mamba_groups", i):
                        if t.key not in by_heads:  # the B and C blocks; a group's heads follow the kept heads above
                            self._cut(t, self.mamba_groups[i])
            if self.fold.get(i):
                # Multi-head attention: a head owns its K and V rows too; with GQA they are shared by the group.
                owned = a.axis_tensors("kv_groups", i) if a.heads_per_group == 1 else head_slices
                for t in owned:
                    self._folds.setdefault(t.name, []).append((t.dim, t.offset, t.unit, self.fold[i]))

    # ---- names -------------------------------------------------------------------------------------
    def rename(self, name: str) -> str | None:
        """The pruned model's key for source key `name`; None when its layer is dropped."""
        m = _LAYER_KEY.match(name)
        if m is None:
            return name
        old = int(m["index"])
        if old not in self._new_index:
            return None
        return f"{m['prefix']}{self._new_index[old]}{m['rest']}"

    def source_name(self, name: str) -> str:
        """The source key a pruned key comes from."""
        m = _LAYER_KEY.match(name)
        if m is None:
            return name
        return f"{m['prefix']}{self.keep_layers[int(m['index'])]}{m['rest']}"

    @property
    def _new_index(self) -> dict[int, int]:
        return {old: new for new, old in enumerate(self.keep_layers)}

    # ---- tensors -----------------------------------------------------------------------------------
    def apply(self, name: str, tensor: Tensor) -> Tensor:
        """Slice source tensor `name` to its pruned shape (a new tensor; the input is left unchanged)."""
        for fold in self._folds.get(name, ()):
            tensor = _fold_heads(tensor, *fold)
        for dim, blocks in self._cuts.get(name, {}).items():
            index = _dim_index(tensor.shape[dim], blocks)
            tensor = tensor.index_select(dim, index.to(tensor.device))
        for dim, blocks in self._expert_cuts.get(name, {}).items():
            # dimension 0 already holds the kept experts, in the order of the rows of each block's index
            per_expert = []
            for e in range(tensor.shape[0]):
                index = _dim_index(tensor.shape[dim], [(offset, length, rows[e]) for offset, length, rows in blocks])
                per_expert.append(tensor[e].index_select(dim - 1, index.to(tensor.device)))
            tensor = torch.stack(per_expert)
        transform = self._transforms.get(name)
        if transform is not None:
            tensor = transform(tensor)
        return tensor

    def state_dict(self, source: dict[str, Tensor]) -> dict[str, Tensor]:
        """The pruned state dict from a source one, checked against the pruned config's names and shapes."""
        shapes = self.pruned_adapter.tensor_shapes()
        out = {}
        for new_name, shape in shapes.items():
            old = self.source_name(new_name)
            if old not in source:
                raise MinitronError(f"the source model has no tensor '{old}' (needed for '{new_name}')")
            out[new_name] = self.apply(old, source[old])
            if tuple(out[new_name].shape) != shape:
                raise MinitronError(
                    f"pruned tensor '{new_name}' has shape {tuple(out[new_name].shape)}, expected {shape}"
                )
        return out

    def summary(self) -> dict[str, Any]:
        return {
            "keep_layers": list(self.keep_layers),
            "dropped_layers": [i for i in range(self.adapter.num_hidden_layers) if i not in self.keep_layers],
            "source": Shape.of(self.source).as_dict(),
            "pruned": Shape.of(self.config).as_dict(),
            "source_parameters": self.adapter.num_parameters(),
            "pruned_parameters": self.pruned_adapter.num_parameters(),
        }


def _layer_of(name: str) -> int | None:
    m = _LAYER_KEY.match(name)
    return None if m is None else int(m["index"])


def _dim_index(size: int, blocks: list[tuple[int, int | None, Tensor]]) -> Tensor:
    """The kept indices of a dimension of `size` elements: in each cut block those chosen, elsewhere all."""
    parts, at = [], 0
    for offset, length, index in sorted(blocks, key=lambda b: b[0]):
        end = size if length is None else offset + length
        if offset < at or end > size:
            raise ValueError(f"cut blocks overlap or overrun a dimension of {size}")
        parts += [torch.arange(at, offset), index + offset]
        at = end
    parts.append(torch.arange(at, size))
    return torch.cat(parts)


def _fold_heads(tensor: Tensor, dim: int, offset: int, unit: int, pairs: list[tuple[int, int]]) -> Tensor:
    """head_kept += head_kept - head_pruned for each pair (the paper's fold-back), on one block of one tensor."""
    tensor = tensor.clone()
    for kept, pruned in pairs:
        k = tensor.narrow(dim, offset + kept * unit, unit)
        p = tensor.narrow(dim, offset + pruned * unit, unit)
        k.copy_(2 * k - p)
    return tensor


def fold_pairs(scores: Tensor, kept: Tensor, group_heads: list[int]) -> list[tuple[int, int]]:
    """The paper's pairs within one KV group: with the group's heads ranked by score (1 = best), K kept out of L,
    kept rank i absorbs pruned rank 2K - i + 1 for the last L - K kept ranks (as many as there are to absorb)."""
    ranked = sorted(group_heads, key=lambda h: (-float(scores[h]), h))
    keep = {int(h) for h in kept}
    kept_ranked = [h for h in ranked if h in keep]
    pruned_ranked = [h for h in ranked if h not in keep]
    k, n = len(kept_ranked), len(ranked)
    pairs = []
    for i in range(max(1, 2 * k - n + 1), k + 1):  # 1-based ranks
        j = 2 * k - i + 1
        pairs.append((kept_ranked[i - 1], pruned_ranked[j - k - 1]))
    return pairs


def make_plan(config: PretrainedConfig, importance: Importance | None, target: Target | Any) -> PrunePlan:
    """Check `target` and `importance` against `config` and choose what to keep on every axis."""
    target = Target.from_mapping(target)
    a = get_adapter(config)
    shape = target.shape(config)
    if importance is not None:
        importance.check_model(config)
    keep_layers = target.keep_layers(config, importance)
    width = {
        "hidden_size": shape.hidden_size != a.hidden_size,
        "intermediate_size": shape.intermediate_size != a.intermediate_size,
        "num_attention_heads": shape.num_attention_heads != a.num_attention_heads,
        "num_key_value_heads": shape.num_key_value_heads != a.num_key_value_heads,
        "num_experts": shape.num_experts != a.num_experts,
    }
    if a.hybrid:
        width["mamba_num_heads"] = shape.mamba_num_heads != a.mamba_num_heads
        width["n_groups"] = shape.n_groups != a.n_groups
    needed = [a.mlp_size_field if k == "intermediate_size" else k for k, v in width.items() if v]
    if needed and importance is None:
        raise MinitronError(
            f"target.{needed[0]} prunes width, which needs importance scores; pass a scores file or let "
            "`minitron prune` compute them (scores=null)"
        )
    new_config = target.resolve(config, keep_layers)

    hidden = top_k(importance.hidden, shape.hidden_size) if width["hidden_size"] else torch.arange(a.hidden_size)
    heads, kv_groups, mlp, fold = {}, {}, {}, {}
    per_group = shape.num_attention_heads // shape.num_key_value_heads
    experts: dict[int, Tensor] = {}
    for i in keep_layers:
        if a.moe:
            # Experts by their scores, then each kept expert's own neurons by that expert's neuron scores.
            experts[i] = top_k(importance.experts[i], shape.num_experts) if width["num_experts"] else torch.arange(a.num_experts)
            mlp[i] = torch.stack([
                top_k(importance.mlp[i][e], shape.intermediate_size) if width["intermediate_size"] else torch.arange(a.intermediate_size)
                for e in experts[i].tolist()
            ])
        else:
            mlp[i] = top_k(importance.mlp[i], shape.intermediate_size) if width["intermediate_size"] else torch.arange(a.intermediate_size)
        if not (width["num_attention_heads"] or width["num_key_value_heads"]):
            heads[i], kv_groups[i] = torch.arange(a.num_attention_heads), torch.arange(a.num_key_value_heads)
            continue
        # With multi-head attention a KV group is one head: rank it by its head score.
        group_scores = importance.heads[i] if a.heads_per_group == 1 else importance.kv_groups[i]
        groups = top_k(group_scores, shape.num_key_value_heads) if width["num_key_value_heads"] else torch.arange(a.num_key_value_heads)
        kept: list[Tensor] = []
        pairs: list[tuple[int, int]] = []
        for g in groups.tolist():
            members = [h for h in range(a.num_attention_heads) if a.kv_group_of_head(h) == g]
            local = top_k(importance.heads[i][members], per_group)
            chosen = torch.tensor(members)[local]
            kept.append(chosen)
            if target.fold_heads and a.heads_per_group > 1:
                pairs += fold_pairs(importance.heads[i], chosen, members)
        heads[i], kv_groups[i] = torch.cat(kept), groups
        if target.fold_heads and a.heads_per_group == 1:  # multi-head attention: the paper's setting, all heads at once
            pairs = fold_pairs(importance.heads[i], heads[i], list(range(a.num_attention_heads)))
        if pairs:
            fold[i] = pairs
    mamba_heads, mamba_groups = _mamba_plan(a, importance, shape, keep_layers)
    return PrunePlan(config, new_config, keep_layers, hidden, heads, kv_groups, mlp, fold, experts, mamba_heads,
                     mamba_groups)


def _mamba_plan(a: FamilyAdapter, importance: Importance | None, shape: Shape,
                keep_layers: list[int]) -> tuple[dict[int, Tensor], dict[int, Tensor]]:
    """Kept heads and groups of each kept Mamba block, group-aware (Taghibakhshi et al. 2025, arXiv 2504.11409):
    the groups by their scores, then in every kept group its best `mamba_num_heads / n_groups` heads by their own
    scores, so each kept head stays with its group's B and C and every group keeps as many heads."""
    heads: dict[int, Tensor] = {}
    groups: dict[int, Tensor] = {}
    if not a.hybrid:
        return heads, groups
    prune_groups, prune_heads = shape.n_groups != a.n_groups, shape.mamba_num_heads != a.mamba_num_heads
    per_group = shape.mamba_num_heads // shape.n_groups
    for i in keep_layers:
        if not a.has_axis("mamba_heads", i):
            continue
        if not (prune_groups or prune_heads):
            heads[i], groups[i] = torch.arange(a.mamba_num_heads), torch.arange(a.n_groups)
            continue
        groups[i] = top_k(importance.mamba_groups[i], shape.n_groups) if prune_groups else torch.arange(a.n_groups)
        kept = []
        for g in groups[i].tolist():
            members = torch.arange(g * a.mamba_heads_per_group, (g + 1) * a.mamba_heads_per_group)
            kept.append(members[top_k(importance.mamba_heads[i][members], per_group)])
        heads[i] = torch.cat(kept)
    return heads, groups
