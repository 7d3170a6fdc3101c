"""A pruning target: the sizes to keep on each axis, checked against a source config before any work is done.

A size is either an absolute integer (`hidden_size: 4096`) or a fraction of the source in (0, 1]
(`intermediate_size: 0.5` keeps half of the MLP neurons); null keeps the axis whole. Depth is set by
`num_hidden_layers` (which layers go is decided by `depth_metric` from the importance scores) or by an explicit
`drop_layers` list. Mixture-of-experts families add `num_experts` (experts kept per layer: the same key for
Mixtral, whose config calls it `num_local_experts`, and Qwen3-MoE) and prune each expert's neurons with the key
their config uses: `intermediate_size` for Mixtral, `moe_intermediate_size` for Qwen3-MoE. Every check raises a one-line `MinitronError` that names the field.

Layer indices count from 0, like the `model.layers.N` keys of a Hugging Face checkpoint. NVIDIA's tools count
from 1 (NeMo's `PruningConfig.drop_layers`, Model Optimizer's `drop_mcore_language_model_layers`), so their
`drop_layers=[16, ..., 31]` for Llama-3.1-Minitron 4B Depth is `drop_layers=[15, ..., 30]` here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import torch
from huggingface_hub.errors import StrictDataclassError
from transformers import PretrainedConfig

from minitron.checkpoint import LAYER_MAP
from minitron.config import to_plain
from minitron.errors import MinitronError
from minitron.models import get_adapter

if TYPE_CHECKING:
    from minitron.importance import Importance

SIZE_FIELDS: tuple[str, ...] = (
    "num_hidden_layers",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
)
# Target keys of mixture-of-experts families (see `Target.shape` for how they map onto the config).
EXPERT_FIELDS: tuple[str, ...] = ("num_experts", "moe_intermediate_size")
# Target keys of hybrid families with Mamba-2 blocks: the heads per Mamba block and its groups (HF's config names).
MAMBA_FIELDS: tuple[str, ...] = ("mamba_num_heads", "n_groups")
DEPTH_METRICS: tuple[str, ...] = ("bi", "loss", "contiguous")
# How `contiguous` ranks the blocks: by block scores ("loss": LM loss with the block skipped, "bi": 1 - cos across
# the block; see minitron.importance.blocks) or by the sum of the block's single-layer scores ("sum").
BLOCK_METRICS: tuple[str, ...] = ("loss", "bi", "sum")
_DEPTH_SCORES = {"bi": "layers", "loss": "layers_loss"}


def depth_scores_for(depth_metric: str) -> tuple[str, ...]:
    """The depth scores `importance.estimate` must compute for `depth_metric` (Block Importance always: it is
    cheap and plotted)."""
    return ("bi", "loss") if depth_metric == "loss" else ("bi",)


@dataclass(frozen=True)
class Shape:
    """The resolved, homogeneous sizes of a model: `intermediate_size` is the neurons of one MLP (of one expert in
    an MoE family), `num_experts` the experts per layer (None for a dense family)."""

    num_hidden_layers: int
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    num_experts: int | None = None
    mamba_num_heads: int | None = None
    n_groups: int | None = None

    @classmethod
    def of(cls, config: PretrainedConfig) -> Shape:
        a = get_adapter(config)
        mamba = (a.mamba_num_heads, a.n_groups) if a.hybrid else (None, None)
        return cls(a.num_hidden_layers, a.hidden_size, a.intermediate_size, a.num_attention_heads,
                   a.num_key_value_heads, a.num_experts, *mamba)

    def as_dict(self) -> dict[str, int]:
        out = {f: getattr(self, f) for f in SIZE_FIELDS}
        if self.num_experts is not None:
            out["num_experts"] = self.num_experts
        if self.mamba_num_heads is not None:
            out.update(mamba_num_heads=self.mamba_num_heads, n_groups=self.n_groups)
        return out

    def config_fields(self, config: PretrainedConfig) -> dict[str, int]:
        """These sizes under the config keys of `config`'s family (Qwen3-MoE's expert width is
        `moe_intermediate_size`, the expert count is `num_local_experts`); an MoE config routes each token to
        at most the kept experts."""
        a = get_adapter(config)
        out = {f: getattr(self, f) for f in SIZE_FIELDS if f != "intermediate_size"}
        out[a.mlp_size_field] = self.intermediate_size
        if a.moe:
            out[a.experts_field] = self.num_experts
            out["num_experts_per_tok"] = min(a.num_experts_per_tok, self.num_experts)
        if a.hybrid:
            out.update(mamba_num_heads=self.mamba_num_heads, n_groups=self.n_groups)
            out.pop("num_hidden_layers")  # a hybrid's layer count is the length of its per-layer type list
        return out


@dataclass(frozen=True)
class Target:
    """What to keep. Sizes: int (absolute), float in (0, 1] (fraction of the source) or None (keep all).

    `drop_layers` lists 0-based layer indices (layer i is the checkpoint's `model.layers.i`).

    `depth_metric=contiguous` drops the best block of consecutive layers as ranked by `block_metric`:
    `loss` (default) drops the block whose removal raises the LM loss least, the closest forward-only stand-in for
    the 2408 paper's choice by accuracy with the block removed (arXiv 2408.11796); `bi` drops the block whose
    output is closest in cosine to its input (ShortGPT, arXiv 2403.03853; Gromov et al., arXiv 2403.17887), one
    forward pass; `sum` drops the block with the smallest sum of single-layer scores (`layers`, else `layers_loss`).

    `name` and `source` (the model the target was written for) only label it and improve error messages.
    """

    num_hidden_layers: int | float | None = None
    hidden_size: int | float | None = None
    intermediate_size: int | float | None = None
    num_attention_heads: int | float | None = None
    num_key_value_heads: int | float | None = None
    num_experts: int | float | None = None
    moe_intermediate_size: int | float | None = None
    mamba_num_heads: int | float | None = None
    n_groups: int | float | None = None
    drop_layers: tuple[int, ...] | None = None
    drop_block_types: tuple[str, ...] | None = None
    depth_metric: str = "bi"
    block_metric: str = "loss"
    fold_heads: bool = False
    name: str | None = None
    source: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for key in (*SIZE_FIELDS, *EXPERT_FIELDS, *MAMBA_FIELDS):
            value = getattr(self, key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise MinitronError(f"target.{key}={value!r} must be an integer size, a fraction in (0, 1], or null")
            if isinstance(value, float) and not 0 < value <= 1:
                raise MinitronError(
                    f"target.{key}={value} is neither an integer size nor a fraction in (0, 1]; "
                    f"write an absolute size as an integer (e.g. {int(value)}) or a ratio like 0.5"
                )
            if isinstance(value, int) and value < 1:
                raise MinitronError(f"target.{key}={value} must be at least 1 (null keeps the axis whole)")
        if self.drop_layers is not None:
            drops = self.drop_layers
            if isinstance(drops, (str, bytes)) or not isinstance(drops, Sequence):
                raise MinitronError(f"target.drop_layers={drops!r} must be a list of 0-based layer indices, e.g. [15, 16]")
            if any(isinstance(i, bool) or not isinstance(i, int) for i in drops):
                raise MinitronError(f"target.drop_layers={list(drops)} must hold integer layer indices")
            if len(set(drops)) != len(drops):
                raise MinitronError(f"target.drop_layers={list(drops)} names a layer twice")
            object.__setattr__(self, "drop_layers", tuple(sorted(drops)))
        if self.drop_block_types is not None:
            types = self.drop_block_types
            if isinstance(types, str):
                types = (types,)
            if not isinstance(types, Sequence) or not types or any(not isinstance(t, str) for t in types):
                raise MinitronError(
                    f"target.drop_block_types={self.drop_block_types!r} must be a list of block types, e.g. [mlp]"
                )
            object.__setattr__(self, "drop_block_types", tuple(types))
        if self.depth_metric not in DEPTH_METRICS:
            raise MinitronError(
                f"target.depth_metric='{self.depth_metric}' is not a depth metric; expected one of {', '.join(DEPTH_METRICS)}"
            )
        if self.block_metric not in BLOCK_METRICS:
            raise MinitronError(
                f"target.block_metric='{self.block_metric}' is not a block metric; expected one of {', '.join(BLOCK_METRICS)}"
            )
        if not isinstance(self.fold_heads, bool):
            raise MinitronError(f"target.fold_heads={self.fold_heads!r} must be true or false")

    # ---- construction -------------------------------------------------------------------------------
    @classmethod
    def from_mapping(cls, mapping: Target | Mapping[str, Any] | None) -> Target:
        """A Target from a mapping (a `target` config group, a dict); unknown keys are rejected."""
        if isinstance(mapping, Target):
            return mapping
        data = dict(to_plain(mapping) or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise MinitronError(f"unknown target key '{unknown[0]}'; valid keys: {', '.join(sorted(known))}")
        for key in ("drop_layers", "drop_block_types"):
            if isinstance(data.get(key), list):
                data[key] = tuple(data[key])
        return cls(**data)

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["drop_layers"] = None if self.drop_layers is None else list(self.drop_layers)
        out["drop_block_types"] = None if self.drop_block_types is None else list(self.drop_block_types)
        return out

    @property
    def label(self) -> str:
        return f"target '{self.name}'" if self.name else "the target"

    # ---- resolution against a source config ---------------------------------------------------------
    def _size(self, key: str, source: int) -> int | None:
        value = getattr(self, key)
        if value is None:
            return None
        size = round(source * value) if isinstance(value, float) else value
        if size < 1:
            raise MinitronError(f"target.{key}={value} keeps nothing of the source's {source}; raise it")
        if size > source:
            hint = f" ({self.label} is meant for model={self.source})" if self.source else ""
            raise MinitronError(
                f"target.{key}={size} is larger than the source model's {key}={source}; "
                f"pruning can only shrink a model{hint}"
            )
        return size

    def shape(self, config: PretrainedConfig) -> Shape:
        """The pruned sizes for a source `config`; raises MinitronError for an impossible target."""
        src = Shape.of(config)
        adapter = get_adapter(config)
        sizes = {key: self._size(key, getattr(src, key)) for key in SIZE_FIELDS if key != "intermediate_size"}
        sizes["intermediate_size"] = self._size(self._mlp_key(adapter), src.intermediate_size)
        if self.num_experts is not None and not adapter.moe:
            raise MinitronError(
                f"target.num_experts={self.num_experts} needs a mixture-of-experts model but {adapter.family} is "
                "dense; remove target.num_experts"
            )
        experts = self._size("num_experts", src.num_experts) if adapter.moe else None

        heads, kv = sizes["num_attention_heads"], sizes["num_key_value_heads"]
        if kv is None and heads is not None and src.num_attention_heads == src.num_key_value_heads:
            kv = heads  # multi-head attention stays multi-head: each head is its own KV group
        if heads is None and kv is not None:
            heads = kv * adapter.heads_per_group  # pruning KV groups alone keeps every query head of a kept group
        heads = src.num_attention_heads if heads is None else heads
        kv = src.num_key_value_heads if kv is None else kv
        if heads % kv:
            raise MinitronError(
                f"target.num_attention_heads={heads} is not a multiple of the kept KV groups "
                f"(num_key_value_heads={kv}); every KV group must keep the same number of query heads"
            )
        if heads // kv > adapter.heads_per_group:
            raise MinitronError(
                f"target.num_attention_heads={heads} with num_key_value_heads={kv} gives {heads // kv} query heads "
                f"per KV group, more than the source's {adapter.heads_per_group}; keep at most "
                f"{kv * adapter.heads_per_group} heads or more KV groups"
            )

        mamba = self._mamba_shape(adapter)
        self._check_block_types(adapter)

        layers = sizes["num_hidden_layers"]
        if self.drop_layers is not None:
            for i in self.drop_layers:
                if not 0 <= i < src.num_hidden_layers:
                    hint = f"; {self.label} is meant for model={self.source}" if self.source else ""
                    raise MinitronError(
                        f"target.drop_layers: layer index {i} is out of range: the model has "
                        f"{src.num_hidden_layers} layers (0..{src.num_hidden_layers - 1}){hint}"
                    )
            left = src.num_hidden_layers - len(self.drop_layers)
            if left < 1:
                raise MinitronError("target.drop_layers drops every layer; keep at least one")
            if layers is not None and layers != left:
                raise MinitronError(
                    f"target.num_hidden_layers={layers} disagrees with target.drop_layers, which leaves {left} "
                    f"of {src.num_hidden_layers} layers; set one of them only"
                )
            layers = left
        return Shape(
            num_hidden_layers=src.num_hidden_layers if layers is None else layers,
            hidden_size=sizes["hidden_size"] or src.hidden_size,
            intermediate_size=sizes["intermediate_size"] or src.intermediate_size,
            num_attention_heads=heads,
            num_key_value_heads=kv,
            num_experts=experts or src.num_experts,
            **mamba,
        )

    def _mamba_shape(self, adapter) -> dict[str, int]:
        """The kept Mamba heads and groups of a hybrid: group-aware, every kept group keeps the same heads."""
        if not adapter.hybrid:
            for key in MAMBA_FIELDS:
                if getattr(self, key) is not None:
                    raise MinitronError(
                        f"target.{key}={getattr(self, key)} needs a model with Mamba blocks but {adapter.family} has "
                        f"none; remove target.{key}"
                    )
            return {}
        groups = self._size("n_groups", adapter.n_groups)
        heads = self._size("mamba_num_heads", adapter.mamba_num_heads)
        if heads is None and groups is not None:
            heads = groups * adapter.mamba_heads_per_group  # dropping groups alone keeps each kept group whole
        groups = adapter.n_groups if groups is None else groups
        heads = adapter.mamba_num_heads if heads is None else heads
        if heads % groups:
            raise MinitronError(
                f"target.mamba_num_heads={heads} is not a multiple of the kept Mamba groups (n_groups={groups}); "
                "group-aware pruning keeps the same number of heads in every group"
            )
        if heads // groups > adapter.mamba_heads_per_group:
            raise MinitronError(
                f"target.mamba_num_heads={heads} with n_groups={groups} gives {heads // groups} heads per group, more "
                f"than the source's {adapter.mamba_heads_per_group}; keep at most {groups * adapter.mamba_heads_per_group} "
                "heads or more groups"
            )
        return {"mamba_num_heads": heads, "n_groups": groups}

    def _check_block_types(self, adapter) -> None:
        if self.drop_block_types is None:
            return
        if not adapter.hybrid:
            raise MinitronError(
                f"target.drop_block_types={list(self.drop_block_types)} needs a hybrid model but every {adapter.family} "
                "layer has the same type; remove target.drop_block_types"
            )
        known = list(adapter.block_kinds)
        for t in self.drop_block_types:
            if t not in known:
                raise MinitronError(
                    f"target.drop_block_types: '{t}' is not a block type of {adapter.family}; expected any of {', '.join(known)}"
                )
        if self.drop_layers is not None:
            raise MinitronError("target.drop_block_types restricts which blocks the depth scores may drop; it does not "
                                "apply with target.drop_layers (an explicit list): set one of them only")
        if self.depth_metric == "contiguous":
            raise MinitronError("target.drop_block_types does not apply to depth_metric=contiguous (a block of "
                                "consecutive layers spans several types); use depth_metric=bi or loss")

    def _hybrid_keep_for_counts(self, config: PretrainedConfig, adapter, shape: Shape) -> list[int]:
        """Kept layers that give a hybrid's pruned sizes without scores: its blocks differ in size, so this needs
        either the explicit `drop_layers` or droppable blocks all of one kind (any `drop` of them weigh the same)."""
        drop = adapter.num_hidden_layers - shape.num_hidden_layers
        if self.drop_layers is not None or drop == 0:
            return self.keep_layers(config, None)
        candidates = self.depth_candidates(config)
        if len({adapter.kind(i) for i in candidates}) != 1 or drop > len(candidates):
            raise MinitronError(
                f"{self.label} drops {drop} of the {adapter.num_hidden_layers} blocks of a hybrid, whose size depends on "
                "which blocks go: set target.drop_layers, or target.drop_block_types to blocks of one kind (e.g. [mlp])"
            )
        gone = set(candidates[-drop:])
        if not self._kinds_kept(adapter, gone):
            raise MinitronError(
                f"{self.label} drops {drop} blocks of one kind, which leaves none of that kind; keep at least one block "
                "of each type the model has"
            )
        return [i for i in range(adapter.num_hidden_layers) if i not in gone]

    def depth_candidates(self, config: PretrainedConfig) -> list[int]:
        """The layers depth scores may drop: all, or a hybrid's blocks of the types in `drop_block_types`."""
        adapter = get_adapter(config)
        if self.drop_block_types is None:
            return list(range(adapter.num_hidden_layers))
        return [i for i in range(adapter.num_hidden_layers) if adapter.block_type(i) in self.drop_block_types]

    def _mlp_key(self, adapter) -> str:
        """The target key that sizes each MLP (each expert): the family's own config name for it."""
        key, other = adapter.mlp_size_field, ("intermediate_size" if adapter.mlp_size_field != "intermediate_size"
                                              else "moe_intermediate_size")
        if getattr(self, other) is not None:
            raise MinitronError(
                f"target.{other} does not apply to {adapter.family}, whose "
                f"{'experts' if adapter.moe else 'MLPs'} are sized by {key}; set target.{key} instead"
            )
        return key

    def resolve(self, config: PretrainedConfig, keep_layers: Sequence[int] | None = None) -> PretrainedConfig:
        """The pruned config, built through the config class so that every other field carries over.

        `keep_layers` (source indices) slices the per-layer config lists the adapter names (`layer_types`,
        SmolLM3's `no_rope_layers`); without it the first `num_hidden_layers` entries are kept (enough for
        parameter counts).
        """
        shape = self.shape(config)
        adapter = get_adapter(config)
        values = config.to_dict()
        values.update(shape.config_fields(config))
        # head_dim is independent of hidden_size / num_attention_heads once either is pruned: always write it.
        values["head_dim"] = adapter.head_dim
        keep = list(range(shape.num_hidden_layers)) if keep_layers is None else list(keep_layers)
        if len(keep) != shape.num_hidden_layers:
            raise ValueError(f"keep_layers has {len(keep)} layers, the target {shape.num_hidden_layers}")
        if keep_layers is None and adapter.hybrid:
            keep = self._hybrid_keep_for_counts(config, adapter, shape)
        for name in adapter.per_layer_config_fields:
            if isinstance(values.get(name), list):
                values[name] = [values[name][i] for i in keep]
        if keep_layers is not None and keep != list(range(adapter.num_hidden_layers)):
            # relative to this source; a width-only prune keeps the source's own map, if any, since layers are unchanged
            values[LAYER_MAP] = {"source_num_hidden_layers": adapter.num_hidden_layers, "source_layers": keep}
        try:
            new = type(config)(**values)
        except (ValueError, TypeError, StrictDataclassError) as e:  # the config class's own validators
            cause = e.__cause__ or e
            lines = [ln.strip() for ln in str(cause).splitlines() if ln.strip()]
            raise MinitronError(
                f"{type(config).__name__} rejects the pruned shape {shape.as_dict()}: "
                f"{lines[-1] if lines else type(cause).__name__}; choose other target sizes"
            ) from None
        get_adapter(new)  # the pruned config must itself be a valid layout
        return new

    # ---- depth -------------------------------------------------------------------------------------
    def keep_layers(self, config: PretrainedConfig, importance: Importance | None) -> list[int]:
        """Source indices of the layers that stay, in order. A hybrid keeps at least one block of every kind it has
        (transformers' Nemotron-H cannot run with a cache once its last attention block is gone): scores then drop
        the next candidate instead, and an explicit list that would remove a kind is refused."""
        shape = self.shape(config)
        adapter = get_adapter(config)
        total = adapter.num_hidden_layers
        if self.drop_layers is not None:
            self._check_kinds_kept(adapter, set(self.drop_layers))
            return [i for i in range(total) if i not in set(self.drop_layers)]
        drop = total - shape.num_hidden_layers
        if drop == 0:
            return list(range(total))
        if self.depth_metric == "contiguous":
            per_block = self._block_scores(importance, drop)
            # The least important block; on a tie the later one (the last layers are the usual first candidates).
            starts = [s for s in range(len(per_block)) if self._kinds_kept(adapter, set(range(s, s + drop)))]
            if not starts:
                raise MinitronError(f"every block of {drop} consecutive layers holds the last {adapter.family} block of "
                                    "some type; drop fewer layers")
            start = min(starts, key=lambda s: (per_block[s], -s))
            dropped = set(range(start, start + drop))
        else:
            candidates = self.depth_candidates(config)
            scores = self._depth_scores(importance)[candidates]
            dropped: set[int] = set()
            for i in torch.argsort(scores, stable=True).tolist():
                if len(dropped) < drop and self._kinds_kept(adapter, dropped | {candidates[i]}):
                    dropped.add(candidates[i])
            if len(dropped) < drop:
                which = f" of the types in target.drop_block_types={list(self.drop_block_types)}" if self.drop_block_types else ""
                raise MinitronError(
                    f"target.num_hidden_layers={shape.num_hidden_layers} drops {drop} layers but only {len(dropped)} "
                    f"layer(s){which} can go while a block of every type stays; drop fewer or allow more types"
                )
        return [i for i in range(total) if i not in dropped]

    @staticmethod
    def _kinds_kept(adapter, dropped: set[int]) -> bool:
        if not adapter.hybrid:
            return True
        kinds = lambda layers: {adapter.kind(i) for i in layers}
        return kinds(i for i in range(adapter.num_hidden_layers) if i not in dropped) == kinds(range(adapter.num_hidden_layers))

    def _check_kinds_kept(self, adapter, dropped: set[int]) -> None:
        if not self._kinds_kept(adapter, dropped):
            raise MinitronError(
                f"target.drop_layers={sorted(dropped)} removes every {adapter.family} block of one type; keep at least one "
                "block of each type the model has"
            )

    def importance_options(self, config: PretrainedConfig) -> dict[str, Any]:
        """The `minitron.importance.estimate` options (`depth`, `blocks`, `block_layers`) that give this target
        the scores it needs on a model of `config`; block scores are per block length, which only the target knows."""
        depth = list(depth_scores_for(self.depth_metric))
        drop = get_adapter(config).num_hidden_layers - self.shape(config).num_hidden_layers
        if self.depth_metric == "contiguous" and self.drop_layers is None and drop and self.block_metric != "sum":
            return {"depth": depth, "blocks": [self.block_metric], "block_layers": drop}
        return {"depth": depth}

    def _block_scores(self, importance: Importance | None, drop: int) -> list[float]:
        """One score per start of a `drop`-layer block, lower = less important."""
        importance = _require_scores(importance)
        if self.block_metric == "sum":
            scores = importance.layers if importance.layers is not None else importance.layers_loss
            if scores is None:
                raise MinitronError(
                    "target.block_metric=sum needs per-layer scores (`layers` or `layers_loss`) but the scores "
                    "file has none; re-run `minitron score` with a depth score, or set target.drop_layers"
                )
            return [float(scores[s : s + drop].sum()) for s in range(len(scores) - drop + 1)]
        scores = importance.block_scores(self.block_metric)
        if scores is None or importance.block_layers != drop:
            has = "none" if scores is None else f"blocks of {importance.block_layers} layers"
            raise MinitronError(
                f"target.block_metric={self.block_metric} needs block scores for blocks of {drop} layers but the scores "
                f"have {has}; score with blocks=['{self.block_metric}'] block_layers={drop} (`minitron prune` without "
                f"scores= does) or set target.block_metric=sum"
            )
        return [float(x) for x in scores]

    def _depth_scores(self, importance: Importance | None):
        name = _DEPTH_SCORES[self.depth_metric]
        scores = getattr(_require_scores(importance), name)
        if scores is None:
            raise MinitronError(
                f"target.depth_metric={self.depth_metric} needs the `{name}` scores but the scores file has none; "
                f"re-run `minitron score` with the '{self.depth_metric}' depth score or pick another target.depth_metric"
            )
        return scores


def _require_scores(importance: Importance | None) -> Importance:
    if importance is None:
        raise MinitronError(
            "target.num_hidden_layers needs depth scores to choose the layers to drop; pass a scores file "
            "or list the layers in target.drop_layers"
        )
    return importance
