"""The checkpoint contract: what minitron reads and writes as a model.

A checkpoint is a folder written by `save_pretrained` (config.json, safetensors weights, the tokenizer) or a hub
id. Weights load from safetensors only, and a checkpoint that ships its own modelling code loads only when the
user asks for it (`trust_remote_code`). Outputs are written atomically: a kill leaves the old folder or the new
one, never half of one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import snapshot_download
from huggingface_hub.utils import HFValidationError, validate_repo_id
from safetensors import safe_open
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PretrainedConfig,
    PreTrainedModel,
)

from minitron.errors import MinitronError, first_line, hub_problem
from minitron.io import atomic_path
from minitron.models import get_adapter

DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")
# floating-point dtypes as a safetensors header names them
# bytes per element of each safetensors dtype name
SAFETENSORS_DTYPES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
    "F8_E4M3": 1, "F8_E5M2": 1,
}


# the safetensors names of the dtypes a checkpoint may be cast to
FLOAT_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
SAFETENSORS_FLOATS = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})
# The config attribute a depth-pruned model records which source layer each of its layers is:
# {"source_num_hidden_layers": L, "source_layers": [0-based source index of layer 0, 1, ...]}. Stock transformers
# keeps unknown config attributes (written to config.json, restored by from_pretrained), so the checkpoint still
# loads with no code of ours; distillation reads it to pair each student layer with the teacher layer it was.
LAYER_MAP = "minitron_layer_map"
# What a hub snapshot needs for minitron: config, safetensors weights (and their index), tokenizer files. Pickled
# weights (*.bin, *.pt), TF/Flax/ONNX exports are never fetched, so a repo that ships both costs only the safetensors.
HUB_PATTERNS: tuple[str, ...] = ("*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja")


def check_dtype(name: str, field: str = "dtype") -> torch.dtype:
    """The torch dtype named `name`; a one-line error naming `field` for any other name."""
    if name not in DTYPES:
        raise MinitronError(f"{field}={name} is not supported; use one of {', '.join(DTYPES)}")
    return getattr(torch, name)


def config_dtype(config: PretrainedConfig) -> str:
    """The dtype a checkpoint's weights were saved in, by name (float32 when its config does not say)."""
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32"
    return str(dtype).replace("torch.", "")


def _looks_like_path(text: str) -> bool:
    return text.startswith(("/", ".", "~")) or text.count("/") > 1


def hub_snapshot(repo_id: str, field: str, hint: str, *, weights: bool = True) -> Path:
    """The local snapshot folder of hub model `repo_id` (`ORG/NAME[@REVISION]`): fetched once into the hub cache
    (HF_HOME) and read from there afterwards; with HF_HUB_OFFLINE=1 only the cache is read. Safetensors, config and
    tokenizer files only (`HUB_PATTERNS`); without `weights`, all but the safetensors (a dry run or a tokenizer
    reads no weights)."""
    name, _, revision = repo_id.partition("@")
    try:
        validate_repo_id(name)
    except HFValidationError:
        raise MinitronError(f"{field}={repo_id} is neither a folder nor a hub id (ORG/NAME); {hint}") from None
    try:
        patterns = [p for p in HUB_PATTERNS if weights or p != "*.safetensors"]
        folder = snapshot_download(name, revision=revision or None, allow_patterns=patterns)
    except Exception as e:  # hub, network and cache errors come in many types; all mean "not available here"
        raise MinitronError(
            f"{field}={repo_id} is not a local folder, and the hub model {name} could not be fetched or found in the "
            f"hub cache ({first_line(e)}); check the id, the network, or HF_HOME / HF_HUB_OFFLINE"
        ) from None
    return Path(folder)


def checkpoint_folder(
    value: Any, field: str, hint: str = "pass a folder written by save_pretrained or a hub id", *, weights: bool = True
) -> Path:
    """`value` as a local checkpoint folder: a folder as given, or a hub id (`ORG/NAME[@REVISION]`) resolved to its
    snapshot in the hub cache (`hub_snapshot`; no weight files without `weights`); a one-line error naming
    `field` when there is no config.json."""
    text = str(value)
    path = Path(text).expanduser()
    if not path.exists() and not _looks_like_path(text):
        path = hub_snapshot(text, field, hint, weights=weights)
    elif not path.is_dir():
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
    """The config of a checkpoint folder or hub id (no weights are read, nor fetched)."""
    local = checkpoint_folder(path, "checkpoint", weights=False)
    _check_local(local, trust_remote_code)
    try:
        return AutoConfig.from_pretrained(str(local), trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as e:
        raise MinitronError(_hub_or(e, local, f"cannot read the config of {path}: {first_line(e)}")) from None


def load_model(path: str | os.PathLike, *, dtype: str = "float32", trust_remote_code: bool = False) -> PreTrainedModel:
    """A causal LM from a checkpoint folder or hub id, in `dtype`: safetensors only, remote code only when asked for."""
    local = checkpoint_folder(path, "checkpoint")
    _check_local(local, trust_remote_code)
    if not any(local.glob("*.safetensors")) and not (local / "model.safetensors.index.json").is_file():
        pickled = sorted(p.name for p in local.glob("*.bin")) + sorted(p.name for p in local.glob("*.pt"))
        raise MinitronError(
            f"{path} has no safetensors weights{' (only ' + ', '.join(pickled) + ')' if pickled else ''}; "
            "minitron loads safetensors only: convert it once with save_pretrained(safe_serialization=True)"
        )
    torch_dtype = check_dtype(dtype)
    model = _load_zero3_partitions(local, torch_dtype, trust_remote_code)
    if model is not None:
        get_adapter(model)
        return model
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(local), dtype=torch_dtype, trust_remote_code=trust_remote_code, use_safetensors=True,
        )
    except Exception as e:  # transformers, safetensors and hub errors come in many types; all mean "cannot load"
        raise MinitronError(_hub_or(e, local, f"cannot load the checkpoint {path}: {first_line(e)}")) from None
    get_adapter(model)
    return model


def _load_zero3_partitions(local: Path, dtype: torch.dtype, trust_remote_code: bool) -> PreTrainedModel | None:
    """Under a registered ZeRO-3 config: the model created partitioned, each rank reading its own partitions.

    transformers' ZeRO-3 loading memory-maps every weight file on rank 0 and copies the values into the partitions
    module by module: rank 0's resident set then holds the whole checkpoint's file pages on top of its partitions
    (2 GB more than rank 1 for a 513M-parameter float32 teacher). Here every rank reads, tensor by tensor, only the
    rows of the file that cover its partition (a ZeRO-3
    partition is a contiguous range of the flattened tensor, `ds_tensor`), with the file open for that tensor
    only, so at most one tensor's pages are mapped at a time. None when ZeRO-3 is off, or when the checkpoint's
    keys are not exactly the model's parameters (renamed keys, saved buffers): transformers loads those.
    """
    from transformers.integrations import is_deepspeed_zero3_enabled

    if not is_deepspeed_zero3_enabled():
        return None
    files: dict[str, Path] = {}
    for f in sorted(local.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as handle:
            names = handle.keys()
        files.update(dict.fromkeys(names, f))
    try:
        config = AutoConfig.from_pretrained(str(local), trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    except Exception as e:  # as in load_model: every failure to build the model means "cannot load"
        raise MinitronError(f"cannot load the checkpoint {local}: {first_line(e)}") from None
    params = dict(model.named_parameters())  # tied weights appear once, under the name the file holds
    tied = set(model.state_dict()) - set(params) - {n for n, _ in model.named_buffers()}
    if not set(params) <= set(files) or not set(files) - set(params) <= tied:
        del model  # every rank sees the same files, so every rank falls back together
        return None
    for name, param in params.items():
        _read_partition(files[name], name, param)
    if (local / "generation_config.json").is_file():  # as from_pretrained: a saved student keeps the source's
        model.generation_config = GenerationConfig.from_pretrained(str(local))
    model.eval()
    return model


def _read_partition(file: Path, name: str, param: torch.nn.Parameter) -> None:
    """Copy this rank's range of the flattened tensor `name` in `file` into `param.ds_tensor` (ZeRO-3)."""
    import torch.distributed as dist

    part = param.ds_tensor
    size = part.numel()  # every rank's partition has this size; the last one is padded past the tensor's end
    start = size * dist.get_rank(group=param.ds_process_group)
    count = max(0, min(size, param.ds_numel - start))
    with safe_open(str(file), framework="pt") as handle:
        piece = handle.get_slice(name)
        shape = piece.get_shape()
        if list(shape) != list(param.ds_shape):
            raise MinitronError(f"{file}: {name} has shape {tuple(shape)}, the model's config gives {tuple(param.ds_shape)}")
        if count == 0:
            return
        row = 1
        for d in shape[1:]:
            row *= d
        first, last = start // row, -(-(start + count) // row)  # the rows that cover [start, start + count)
        values = piece[first:last] if shape else handle.get_tensor(name)
        part.data[:count].copy_(values.reshape(-1)[start - first * row: start - first * row + count])


def _hub_or(err: BaseException, local: Path, otherwise: str) -> str:
    """A hub id that cannot be fetched is a network problem, not a broken checkpoint: say so (hub_problem)."""
    hub = None if local.exists() else hub_problem(err, wanted=str(local))
    return hub if hub is not None else otherwise


def load_tokenizer(path: str | os.PathLike):
    """The tokenizer of a checkpoint folder or hub id (no weights are read or fetched)."""
    return AutoTokenizer.from_pretrained(str(checkpoint_folder(path, "checkpoint", weights=False)))


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


def write_safetensors_streaming(path: Path, specs: dict[str, tuple[str, tuple[int, ...]]], produce,
                                metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file whose tensors are produced one at a time by `produce(name)`, so that only one
    tensor is in memory. `specs` maps each name to its (safetensors dtype, shape), known before any data: the
    header (8-byte little-endian length, then JSON with each tensor's byte range) is written first."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt", **(metadata or {})}}
    offset = 0
    for name, (dtype, shape) in specs.items():
        numel = 1
        for d in shape:
            numel *= d
        size = numel * SAFETENSORS_DTYPES[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for name, (_, shape) in specs.items():
            tensor = produce(name)
            if tuple(tensor.shape) != tuple(shape):
                raise MinitronError(f"tensor '{name}' has shape {tuple(tensor.shape)}, expected {tuple(shape)}")
            f.write(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().data)  # no copy
            del tensor  # released before the next one is read


WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"


def shard_plan(sizes: dict[str, int], limit: int) -> list[list[str]]:
    """Group tensor names, in order, into shards of at most `limit` bytes (a larger tensor gets its own)."""
    shards: list[list[str]] = [[]]
    used = 0
    for name, size in sizes.items():
        if shards[-1] and used + size > limit:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += size
    return shards


def write_weights_streaming(folder: Path, specs: dict[str, tuple[str, tuple[int, ...]]], produce,
                            max_shard_size: int | str = "5GB") -> None:
    """The weights of a checkpoint in `folder` as `save_pretrained` lays them out (one `model.safetensors`, or
    `model-0000i-of-0000n.safetensors` and `model.safetensors.index.json` above `max_shard_size`), each tensor
    produced by `produce(name)` in the order of `specs` and written before the next (`write_safetensors_streaming`)."""
    sizes = {}
    for name, (dtype, shape) in specs.items():
        numel = 1
        for d in shape:
            numel *= d
        sizes[name] = numel * SAFETENSORS_DTYPES[dtype]
    shards = shard_plan(sizes, parse_size(max_shard_size))
    files = [WEIGHTS] if len(shards) == 1 else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for names, file in zip(shards, files):
        write_safetensors_streaming(folder / file, {n: specs[n] for n in names}, produce)
        weight_map.update({n: file for n in names})
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(sizes.values())}, "weight_map": dict(sorted(weight_map.items()))}
        (folder / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def save_zero3_partitioned(model: PreTrainedModel, folder: Path, *, write: bool, max_shard_size: int | str = "5GB") -> bool:
    """`save_pretrained` of a model whose parameters DeepSpeed ZeRO-3 partitions over the ranks, without ever
    holding it whole. False (nothing done) when the model's family has no adapter: the caller saves it another way.

    transformers saves such a model by gathering its whole state dict into rank 0's memory first
    (`stage3_gather_16bit_weights_on_model_save`): a whole model on one rank, the peak of a partitioned run. Here
    every rank gathers the parameters one at a time, in the same order (each gather is a collective call), and the
    rank with `write` appends each to its shard file and lets it go: no rank holds more than one whole tensor (and
    its stored parts). Keys and layout are the family's checkpoint layout (`FamilyAdapter.to_stored`, e.g. one key
    per expert for a fused MoE parameter), tied weights once; the config and generation config as save_pretrained
    writes them, with the config's dtype that of the saved floats. Every rank must call this.
    """
    import deepspeed

    try:
        adapter = get_adapter(model)
    except MinitronError:
        return False
    params = dict(model.named_parameters())  # tied weights once, under their first name (as save_pretrained keeps)
    kept = set(model.state_dict())
    buffers = {n: b for n, b in model.named_buffers() if n in kept}  # persistent buffers: whole on every rank
    tensors = {**params, **buffers}
    to_name = {v: k for k, v in FLOAT_DTYPES.items()}
    specs: dict[str, tuple[str, tuple[int, ...]]] = {}
    owner: dict[str, str] = {}  # stored key -> the model tensor it is part of
    for name, tensor in tensors.items():
        shape = tuple(getattr(tensor, "ds_shape", tensor.shape))
        if tensor.dtype not in to_name:
            raise MinitronError(f"cannot save '{name}' of dtype {tensor.dtype} from a ZeRO-3 partitioned model")
        for key, stored in adapter.stored_shapes(name, shape).items():
            specs[key], owner[key] = (to_name[tensor.dtype], tuple(stored)), name
    pending: dict[str, dict[str, torch.Tensor]] = {}

    def produce(key: str) -> torch.Tensor:
        name = owner[key]
        if name not in pending:
            tensor = tensors[name]
            with deepspeed.zero.GatheredParameters([tensor] if name in params else [], modifier_rank=None):
                whole = tensor.data.detach().to("cpu", copy=True) if write else None
            if not write:
                return None
            pending[name] = adapter.to_stored(name, whole)
        part = pending[name].pop(key)
        if not pending[name]:
            del pending[name]
        return part

    if not write:
        for key in specs:  # the same gathers, in the same order, as the writing rank
            produce(key)
        return True
    folder.mkdir(parents=True, exist_ok=True)
    write_weights_streaming(folder, specs, produce, max_shard_size)
    floats = {tensor.dtype for tensor in tensors.values() if tensor.is_floating_point()}
    config = model.config
    config.architectures = [type(model).__name__]
    if len(floats) == 1:
        config.dtype = str(next(iter(floats))).removeprefix("torch.")
    config.save_pretrained(folder)
    if model.can_generate() and getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(folder)
    return True


def rewrite_safetensors(file: Path, new_dtype: Callable[[str, str], str | None]) -> bool:
    """Rewrite the safetensors `file` in place, tensor by tensor: `new_dtype(name, dtype)` gives each tensor's
    safetensors dtype in the new file (its own to keep it, another to cast it) or None to drop it. Decided from the
    header alone: when nothing changes the file is not read or written (False). Otherwise one tensor is in memory
    at a time (the old file mapped for one tensor at a time), neither the file's tensors nor the new ones ever whole,
    and the file is replaced atomically (True)."""
    with safe_open(str(file), "pt") as f:
        metadata = f.metadata()
        specs, changed = {}, False
        for k in f.keys():
            piece = f.get_slice(k)
            kind = piece.get_dtype()
            new = new_dtype(k, kind)
            changed = changed or new != kind
            if new is not None:
                specs[k] = (new, tuple(piece.get_shape()))
    if not changed:
        return False

    def produce(name: str) -> torch.Tensor:
        # the file opened for this tensor only: a memory map kept open for the whole rewrite would hold every page
        # read so far in the resident set, the whole file by the end
        with safe_open(str(file), "pt") as one:
            tensor = one.get_tensor(name)
        to = FLOAT_DTYPES.get(specs[name][0])
        return tensor if to is None else tensor.to(to)

    with atomic_path(file) as tmp:
        write_safetensors_streaming(tmp, specs, produce, metadata)
    return True


def cast_checkpoint(folder: str | os.PathLike, dtype: str) -> None:
    """Rewrite the floating-point tensors of the safetensors checkpoint in `folder` in `dtype`, and its config's dtype,
    in place (each file replaced atomically; the config last). Training keeps float32 master weights under bf16
    mixed precision; this saves the result in the dtype a run asked for, leaving the folder's other files alone."""
    torch_dtype = check_dtype(dtype)
    folder = Path(folder)
    wanted = next(name for name, d in FLOAT_DTYPES.items() if d == torch_dtype)
    for file in sorted(folder.glob("*.safetensors")):
        rewrite_safetensors(file, lambda name, kind: wanted if kind in SAFETENSORS_FLOATS else kind)
    config = json.loads((folder / "config.json").read_text())
    if config.get("dtype", config.get("torch_dtype")) != dtype:
        config["dtype"] = dtype
        config.pop("torch_dtype", None)
        with atomic_path(folder / "config.json") as tmp:
            tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


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
