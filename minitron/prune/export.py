"""Write a pruned checkpoint: from an in-memory model (`minitron.checkpoint.save_checkpoint`), or straight from a
teacher checkpoint on disk one tensor at a time (`prune_checkpoint_streaming`) for models larger than memory.

Both write safetensors shards (one `model.safetensors`, or `model-0000i-of-0000n.safetensors` plus
`model.safetensors.index.json` above `max_shard_size`), `config.json`, `generation_config.json` and the
tokenizer, into a temporary sibling folder that is renamed into place when complete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoTokenizer, GenerationConfig, PreTrainedModel

from minitron.checkpoint import (
    INDEX,
    SAFETENSORS_DTYPES,
    WEIGHTS,
    output_folder,
    write_weights_streaming,
)
from minitron.errors import MinitronError
from minitron.prune.plan import PrunePlan, make_plan

if TYPE_CHECKING:
    from minitron.importance import Importance



def load_key_mapping(cls: type[PreTrainedModel], checkpoint_prefix: str = "model") -> dict[str, str] | None:
    """The `key_mapping` that `cls.from_pretrained` needs for a causal-LM checkpoint whose base weights sit under
    `checkpoint_prefix.`; None when the class uses that prefix already. (In transformers 5,
    `NemotronForQuestionAnswering` keeps its base model under `transformer.` while every Nemotron checkpoint,
    NVIDIA's included, stores it under `model.`.)"""
    prefix = getattr(cls, "base_model_prefix", checkpoint_prefix)
    if prefix == checkpoint_prefix:
        return None
    return {rf"^{checkpoint_prefix}\.": f"{prefix}."}


# ---- streaming ------------------------------------------------------------------------------------------
class CheckpointReader:
    """Tensor-by-tensor access to a safetensors checkpoint folder (single file or sharded with an index)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        index = self.folder / INDEX
        if index.is_file():
            self.weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        elif (self.folder / WEIGHTS).is_file():
            with safe_open(str(self.folder / WEIGHTS), framework="pt") as f:
                self.weight_map = {name: WEIGHTS for name in f.keys()}
        else:
            raise MinitronError(
                f"teacher={self.folder} has no {WEIGHTS} or {INDEX}; streaming export needs a safetensors checkpoint"
            )

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def dtype(self, name: str) -> str:
        """The safetensors dtype name of `name` (read from the header only)."""
        with safe_open(str(self.folder / self.weight_map[name]), framework="pt", device="cpu") as f:
            dtype = f.get_slice(name).get_dtype()
        if dtype not in SAFETENSORS_DTYPES:
            raise MinitronError(f"tensor '{name}' has dtype {dtype}, which the streaming export does not handle")
        return dtype

    def get(self, name: str) -> torch.Tensor:
        if name not in self.weight_map:
            raise MinitronError(f"teacher checkpoint {self.folder} has no tensor '{name}'")
        with safe_open(str(self.folder / self.weight_map[name]), framework="pt", device="cpu") as f:
            return f.get_tensor(name)


def prune_checkpoint_streaming(
    teacher: str | os.PathLike,
    importance: Importance | None,
    target: Any,
    out: str | os.PathLike,
    *,
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
    trust_remote_code: bool = False,
) -> PrunePlan:
    """Prune the checkpoint folder `teacher` into `out` without loading the model: each pruned tensor is read
    from its source, sliced and appended to its shard, so peak memory is about one source tensor and its slice."""
    teacher = Path(teacher)
    config = AutoConfig.from_pretrained(str(teacher), trust_remote_code=trust_remote_code)
    plan = make_plan(config, importance, target)  # every check happens before anything is written
    reader = CheckpointReader(teacher)
    source_adapter, pruned_adapter = plan.adapter, plan.pruned_adapter
    specs: dict[str, tuple[str, tuple[int, ...]]] = {}
    owner: dict[str, str] = {}  # stored key -> the pruned model tensor it is part of
    for name, shape in pruned_adapter.tensor_shapes().items():
        source = plan.source_name(name)
        parts = [source] if source in reader else list(source_adapter.stored_shapes(source, ()))
        if not all(p in reader for p in parts):
            raise MinitronError(f"teacher checkpoint {teacher} has no tensor '{source}'")
        dtype = reader.dtype(parts[0])
        # Written as `save_pretrained` writes it (e.g. one key per expert for a fused MoE parameter).
        for key, stored in pruned_adapter.stored_shapes(name, shape).items():
            specs[key], owner[key] = (dtype, stored), name
    pending: dict[str, dict[str, torch.Tensor]] = {}  # the stored parts of a model tensor not yet written

    def produce(key: str) -> torch.Tensor:
        name = owner[key]
        if name not in pending:
            source = plan.source_name(name)
            tensor = source_adapter.read_stored(source, reader.__contains__, reader.get)
            pending[name] = pruned_adapter.to_stored(name, plan.apply(source, tensor))
        part = pending[name].pop(key)
        if not pending[name]:
            del pending[name]  # nothing of it outlives its last part's write
        return part

    with output_folder(out, overwrite=overwrite) as tmp:
        write_weights_streaming(tmp, specs, produce, max_shard_size)
        new_config = plan.config
        new_config.architectures = list(getattr(config, "architectures", None) or [])
        new_config.save_pretrained(tmp)
        _copy_generation_config(teacher, tmp)
        _copy_tokenizer(teacher, tmp)
    return plan


def _copy_generation_config(teacher: Path, out: Path) -> None:
    if (teacher / "generation_config.json").is_file():
        GenerationConfig.from_pretrained(str(teacher)).save_pretrained(out)


def _copy_tokenizer(teacher: Path, out: Path) -> None:
    """The teacher's tokenizer, re-saved (so the files match what `save_pretrained` of the tokenizer writes)."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(teacher))
    except (OSError, ValueError):
        return  # a checkpoint without a tokenizer stays without one
    tokenizer.save_pretrained(out)

