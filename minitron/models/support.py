"""What each family supports on each prunable axis, rendered from the adapters (the README's table, which a test
compares with this rendering)."""

from __future__ import annotations

from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from minitron.models.adapter import FamilyAdapter
from minitron.models.families import FAMILIES

COLUMNS = ("family", "model types (classes)", "hidden", "heads", "KV groups", "MLP", "experts", "Mamba heads", "depth")


def _overrides(cls: type[FamilyAdapter], method: str) -> bool:
    return getattr(cls, method) is not getattr(FamilyAdapter, method)


def _cells(cls: type[FamilyAdapter]) -> list[str]:
    types = ", ".join(f"`{t}` ({MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[t]})" for t in cls.model_types)
    hidden = [f"{len(cls.layer_norm_names)} norms per layer" + (" with bias" if cls.norm_has_bias else "")]
    if cls.layer_norm_names and not any(n.startswith(("input", "pre_")) for n in cls.layer_norm_names):
        hidden.append("post-norms only")
    if _overrides(cls, "hidden_transforms"):
        hidden.append("embedding scale folded into the weights")
    heads, groups = [], []
    if cls.fused_qkv:
        heads.append(f"blocks of fused `{cls.fused_qkv.rsplit('.', 1)[-1]}`")
        groups.append(f"blocks of fused `{cls.fused_qkv.rsplit('.', 1)[-1]}`")
    if cls.qk_norm == "head":
        heads.append("per-head `q_norm`/`k_norm` kept whole")
        groups.append("per-head `q_norm`/`k_norm` kept whole")
    elif cls.qk_norm == "projection":
        heads.append("`q_norm` sliced")
        groups.append("`k_norm`, `q_norm` sliced")
    mlp = ["gated" if cls.gated_mlp else "no gate"]
    if cls.fused_gate_up:
        mlp.append(f"blocks of fused `{cls.fused_gate_up.rsplit('.', 1)[-1]}`")
    if cls.moe:
        mlp = [f"each expert's own neurons (`{cls.mlp_size_field}`)", "gated"]
    experts = "yes: router rows with the experts; `num_experts_per_tok` at most the kept" if cls.moe else "no (dense)"
    extra = [f"`{f}`" for f in cls.per_layer_config_fields if f != "layer_types"]  # every family slices layer_types
    depth = [f"{', '.join(extra)} follow the kept layers"] if extra else []
    mamba = "no"
    if cls.hybrid:
        kinds = sorted(set(cls.block_kinds.values()))
        hidden = [f"1 norm per block, through every block type ({', '.join(kinds)})"]
        heads, groups, mlp = (["in attention blocks"], ["in attention blocks"], ["in MLP blocks", *mlp])
        mamba = "yes: group-aware (`mamba_num_heads`, the same heads kept in every group) and whole groups (`n_groups`)"
        depth = [f"by block type (`drop_block_types`); `{cls.types_field}` follows the kept blocks, one of each type stays"]
    yes = lambda notes: "yes" + (f": {'; '.join(notes)}" if notes else "")
    return [cls.family, types, yes(hidden), yes(heads), yes(groups), yes(mlp), experts, mamba, yes(depth)]


def support_table() -> str:
    """A markdown table: one row per family, one column per axis, from the adapters' declarations."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cells(cls)) + " |" for cls in FAMILIES]
    return "\n".join(lines) + "\n"
