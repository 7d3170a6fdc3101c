"""The checkpoint contract: what minitron reads and writes as a model.

A checkpoint is a folder written by `save_pretrained` (config.json, safetensors weights, the tokenizer) or a hub
id. Weights load from safetensors only, and a checkpoint that ships its own modelling code loads only when the
user asks for it (`trust_remote_code`). Outputs are written atomically: a kill leaves the old folder or the new
one, never half of one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedModel

from minitron.errors import MinitronError, first_line
from minitron.io import atomic_path
from minitron.models import get_adapter

DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")
# The config attribute a depth-pruned model records which source layer each of its layers is:
# {"source_num_hidden_layers": L, "source_layers": [0-based source index of layer 0, 1, ...]}. Stock transformers
# keeps unknown config attributes (written to config.json, restored by from_pretrained), so the checkpoint still
# loads with no code of ours; distillation reads it to pair each student layer with the teacher layer it was.
LAYER_MAP = "minitron_layer_map"


def check_dtype(name: str, field: str = "dtype") -> torch.dtype:
    """The torch dtype named `name`; a one-line error naming `field` for any other name."""
    if name not in DTYPES:
        raise MinitronError(f"{field}={name} is not supported; use one of {', '.join(DTYPES)}")
    return getattr(torch, name)


def config_dtype(config: PretrainedConfig) -> str:
    """The dtype a checkpoint's weights were saved in, by name (float32 when its config does not say)."""
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32"
    return str(dtype).replace("torch.", "")


def checkpoint_folder(value: Any, field: str, hint: str = "pass a folder written by save_pretrained") -> Path:
    """`value` as a local checkpoint folder; a one-line error naming `field` when it holds no config.json."""
    path = Path(str(value)).expanduser()
    if not path.is_dir():
        raise MinitronError(f"{field}={value} is not a folder; {hint}")
    if not (path / "config.json").is_file():
        raise MinitronError(f"{field}={value} is not a checkpoint folder (it has no config.json); {hint}")
    return path


def _check_local(local: Path, trust_remote_code: bool) -> None:
    """The checks a local folder must pass before transformers reads it: a readable config, no remote code
    unless trusted, safetensors weights."""
    if not (local / "config.json").is_file():
        raise MinitronError(f"{local} has no config.json; point it at a Hugging Face checkpoint folder")
    try:
        config = json.loads((local / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MinitronError(f"{local}/config.json is not valid JSON ({e}); re-export the checkpoint") from None
    if config.get("auto_map") and not trust_remote_code:
        raise MinitronError(
            f"{local} ships its own modelling code (auto_map in config.json); set trust_remote_code=true "
            "if you trust it, or use a checkpoint of a supported transformers class"
        )


def load_config(path: str | os.PathLike, *, trust_remote_code: bool = False) -> PretrainedConfig:
    """The config of a checkpoint folder or hub id (no weights are read)."""
    local = Path(str(path)).expanduser()
    if local.exists():
        _check_local(local, trust_remote_code)
    try:
        return AutoConfig.from_pretrained(str(local if local.exists() else path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as e:
        raise MinitronError(f"cannot read the config of {path}: {first_line(e)}") from None


def load_model(path: str | os.PathLike, *, dtype: str = "float32", trust_remote_code: bool = False) -> PreTrainedModel:
    """A causal LM from a checkpoint folder or hub id, in `dtype`: safetensors only, remote code only when asked for."""
    local = Path(str(path)).expanduser()
    if local.exists():
        _check_local(local, trust_remote_code)
        if not any(local.glob("*.safetensors")) and not (local / "model.safetensors.index.json").is_file():
            pickled = sorted(p.name for p in local.glob("*.bin")) + sorted(p.name for p in local.glob("*.pt"))
            raise MinitronError(
                f"{path} has no safetensors weights{' (only ' + ', '.join(pickled) + ')' if pickled else ''}; "
                "minitron loads safetensors only: convert it once with save_pretrained(safe_serialization=True)"
            )
    torch_dtype = check_dtype(dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(local if local.exists() else path), dtype=torch_dtype, trust_remote_code=trust_remote_code,
            use_safetensors=True,
        )
    except Exception as e:  # transformers, safetensors and hub errors come in many types; all mean "cannot load"
        raise MinitronError(f"cannot load the checkpoint {path}: {first_line(e)}") from None
    get_adapter(model)
    return model


def load_tokenizer(path: str | os.PathLike):
    """The tokenizer of a checkpoint folder or hub id (no weights are read)."""
    local = Path(str(path)).expanduser()
    return AutoTokenizer.from_pretrained(str(local if local.exists() else path))


def load_checkpoint(path: str | os.PathLike, *, dtype: str = "float32", trust_remote_code: bool = False):
    """(model in eval mode, tokenizer) from a checkpoint folder or hub id."""
    model = load_model(path, dtype=dtype, trust_remote_code=trust_remote_code)
    return model.eval(), load_tokenizer(path)


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string like '5GB', '500MB', '10KiB'."""
    if isinstance(size, int):
        return size
    text = str(size).strip().upper()
    units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "B": 1}
    for unit, factor in units.items():
        if text.endswith(unit):
            try:
                return int(float(text[: -len(unit)]) * factor)
            except ValueError:
                break
    raise MinitronError(f"max_shard_size={size!r} is not a size; write e.g. 5GB or 500MB")


@contextmanager
def output_folder(out: str | os.PathLike, *, overwrite: bool) -> Iterator[Path]:
    """A temporary folder that replaces `out` on success; refuses a non-empty `out` unless `overwrite`."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MinitronError(f"out={out} is a file; give a folder for the checkpoint")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise MinitronError(f"out={out} is not empty; pass overwrite=true or choose another folder")
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        yield tmp


def save_checkpoint(
    model: PreTrainedModel, tokenizer: Any, out: str | os.PathLike, *, max_shard_size: int | str = "5GB", overwrite: bool = False
) -> Path:
    """`save_pretrained` of `model` (safetensors, sharded above `max_shard_size`) and `tokenizer`, atomically."""
    with output_folder(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True, max_shard_size=parse_size(max_shard_size))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return Path(out)


def layer_map(config: PretrainedConfig) -> tuple[int, list[int]] | None:
    """(source layer count, 0-based source index of each layer) recorded by a depth prune, or None."""
    recorded = getattr(config, LAYER_MAP, None)
    if not recorded:
        return None
    try:
        total, layers = int(recorded["source_num_hidden_layers"]), [int(i) for i in recorded["source_layers"]]
    except (KeyError, TypeError, ValueError):
        raise MinitronError(
            f"config.{LAYER_MAP}={recorded!r} is not a kept-layer map; expected source_num_hidden_layers and "
            f"source_layers (delete the attribute from config.json to pair layers evenly)"
        ) from None
    if len(layers) != config.num_hidden_layers or any(not 0 <= i < total for i in layers):
        raise MinitronError(
            f"config.{LAYER_MAP} lists {len(layers)} source layers of {total} for a model of {config.num_hidden_layers} "
            f"layers; delete the attribute from config.json to pair layers evenly"
        )
    return total, layers
