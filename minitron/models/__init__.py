"""Model-family adapters and tiny model builders."""

from __future__ import annotations

from transformers import PretrainedConfig, PreTrainedModel

from minitron.errors import MinitronError
from minitron.models.adapter import AXES, FamilyAdapter, Rows, TensorSlice
from minitron.models.families import FAMILIES, LlamaAdapter, NemotronAdapter

SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(t for f in FAMILIES for t in f.model_types)


def get_adapter(model_or_config: PreTrainedModel | PretrainedConfig) -> FamilyAdapter:
    """The adapter for a loaded model or its config; a one-line error for any other architecture."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    for family in FAMILIES:
        if model_type in family.model_types:
            return family(config)
    raise MinitronError(
        f"unsupported architecture model_type='{model_type}' "
        f"({', '.join(getattr(config, 'architectures', None) or ['?'])}); "
        f"supported model types: {', '.join(SUPPORTED_MODEL_TYPES)}"
    )


__all__ = [
    "AXES",
    "FamilyAdapter",
    "LlamaAdapter",
    "NemotronAdapter",
    "Rows",
    "SUPPORTED_MODEL_TYPES",
    "TensorSlice",
    "get_adapter",
]
