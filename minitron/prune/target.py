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

    @classmethod
    def of(cls, config: PretrainedConfig) -> Shape:
        a = get_adapter(config)
        return cls(a.num_hidden_layers, a.hidden_size, a.intermediate_size, a.num_attention_heads,
                   a.num_key_value_heads, a.num_experts)

    def as_dict(self) -> dict[str, int]:
        out = {f: getattr(self, f) for f in SIZE_FIELDS}
        return out if self.num_experts is None else {**out, "num_experts": self.num_experts}

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
    drop_layers: tuple[int, ...] | None = None
    depth_metric: str = "bi"
    block_metric: str = "loss"
    fold_heads: bool = False
    name: str | None = None
    source: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for key in (*SIZE_FIELDS, *EXPERT_FIELDS):
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
        if isinstance(data.get("drop_layers"), list):
            data["drop_layers"] = tuple(data["drop_layers"])
        return cls(**data)

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["drop_layers"] = None if self.drop_layers is None else list(self.drop_layers)
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
        )

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
        """Source indices of the layers that stay, in order."""
        shape = self.shape(config)
        total = get_adapter(config).num_hidden_layers
        if self.drop_layers is not None:
            return [i for i in range(total) if i not in set(self.drop_layers)]
        drop = total - shape.num_hidden_layers
        if drop == 0:
            return list(range(total))
        if self.depth_metric == "contiguous":
            per_block = self._block_scores(importance, drop)
            # The least important block; on a tie the later one (the last layers are the usual first candidates).
            start = min(range(len(per_block)), key=lambda s: (per_block[s], -s))
            dropped = set(range(start, start + drop))
        else:
            scores = self._depth_scores(importance)
            order = torch.argsort(scores, stable=True)
            dropped = {int(i) for i in order[:drop]}
        return [i for i in range(total) if i not in dropped]

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
