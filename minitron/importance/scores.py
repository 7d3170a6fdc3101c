"""The scores of one importance run, and their file: one safetensors file, tensors plus JSON metadata.

Tensor names are the axes: `hidden`, `heads`, `mlp`, `kv_groups`, `experts` (MoE families only), `mamba_heads` and
`mamba_groups` (hybrids with Mamba blocks only), the depth scores that were computed
(`layers`, `layers_loss`) and the block scores (`blocks_loss`, `blocks_bi`, for blocks of `block_layers` layers).
Every metadata value is a JSON string; files without block scores read as before.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor
from transformers import PretrainedConfig

from minitron.errors import MinitronError, first_line
from minitron.io import atomic_path
from minitron.models import get_adapter

FILE_KIND = "minitron-importance"
FILE_VERSION = 1
WIDTH_AXES: tuple[str, ...] = ("hidden", "heads", "mlp", "kv_groups")
EXPERT_AXIS = "experts"  # present only for mixture-of-experts models
MAMBA_AXES: tuple[str, ...] = ("mamba_heads", "mamba_groups")  # present only for hybrids with Mamba blocks
DEPTH_AXES: dict[str, str] = {"bi": "layers", "loss": "layers_loss"}  # `depth` option -> tensor name
BLOCK_AXES: dict[str, str] = {"loss": "blocks_loss", "bi": "blocks_bi"}  # `blocks` option -> tensor name
_VOLATILE_CONFIG_FIELDS = ("transformers_version", "_name_or_path", "torch_dtype", "dtype", "architectures")


def config_hash(config: PretrainedConfig) -> str:
    """A short hash of the architecture fields of `config`; unchanged by a save/load round trip or a dtype cast."""
    fields = json.loads(config.to_json_string(use_diff=False))
    for key in _VOLATILE_CONFIG_FIELDS:
        fields.pop(key, None)
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Importance:
    """Importance scores, all float32 on the CPU; depth scores that were not requested are None.

    hidden      [hidden_size]                         summed over the two per-layer norms of every layer
    heads       [num_hidden_layers, num_attention_heads]
    mlp         [num_hidden_layers, intermediate_size], or [num_hidden_layers, num_experts, intermediate_size]
                for an MoE model (each expert's own neurons)
    experts     [num_hidden_layers, num_experts] for an MoE model, else None
    kv_groups   [num_hidden_layers, num_key_value_heads]
    mamba_heads [num_hidden_layers, mamba_num_heads] for a hybrid, else None (rows of non-Mamba blocks are 0)
    mamba_groups [num_hidden_layers, n_groups] for a hybrid, else None
                In a hybrid, the rows of `heads`, `kv_groups` and `mlp` of blocks without that axis are 0 too.
    layers      [num_hidden_layers]  Block Importance, 1 - mean cos(layer input, layer output)
    layers_loss [num_hidden_layers]  LM loss with that one layer skipped
    blocks_loss [num_hidden_layers - block_layers + 1]  LM loss with layers s .. s + block_layers - 1 skipped
    blocks_bi   [num_hidden_layers - block_layers + 1]  1 - mean cos(input of layer s, output of s + block_layers - 1)
    """

    hidden: Tensor
    heads: Tensor
    mlp: Tensor
    kv_groups: Tensor
    layers: Tensor | None
    layers_loss: Tensor | None
    batch_agg: str
    seq_agg: str
    mlp_site: str
    num_samples: int
    num_tokens: int
    seq_len: int
    config_hash: str
    corpus_fingerprint: str
    blocks_loss: Tensor | None = None
    blocks_bi: Tensor | None = None
    block_layers: int | None = None
    experts: Tensor | None = None
    mamba_heads: Tensor | None = None
    mamba_groups: Tensor | None = None

    def __post_init__(self) -> None:
        num_layers = self.heads.shape[0]
        has_blocks = self.blocks_loss is not None or self.blocks_bi is not None
        if has_blocks != (self.block_layers is not None):
            raise MinitronError("importance block scores and block_layers come together; set both or neither")
        for name, tensor in self.tensors().items():
            if tensor.dtype != torch.float32:
                raise MinitronError(f"importance tensor '{name}' is {tensor.dtype}, expected torch.float32")
            if name in BLOCK_AXES.values():
                if tensor.shape != (num_layers - self.block_layers + 1,):
                    raise MinitronError(
                        f"importance tensor '{name}' has shape {tuple(tensor.shape)}, expected one score per start of a "
                        f"{self.block_layers}-layer block in {num_layers} layers ({num_layers - self.block_layers + 1},)"
                    )
            elif name != "hidden" and tensor.shape[0] != num_layers:
                raise MinitronError(
                    f"importance tensor '{name}' has {tensor.shape[0]} layers but 'heads' has {num_layers}"
                )

    def tensors(self) -> dict[str, Tensor]:
        """The scores that are present, by name."""
        names = (*WIDTH_AXES, EXPERT_AXIS, *MAMBA_AXES, *DEPTH_AXES.values(), *BLOCK_AXES.values())
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    def block_scores(self, metric: str) -> Tensor | None:
        """The block scores of `metric` ("loss" or "bi"), by block start; None when not computed."""
        return getattr(self, BLOCK_AXES[metric])

    def metadata(self) -> dict[str, Any]:
        return {
            "kind": FILE_KIND,
            "version": FILE_VERSION,
            "batch_agg": self.batch_agg,
            "seq_agg": self.seq_agg,
            "mlp_site": self.mlp_site,
            "depth": [opt for opt, name in DEPTH_AXES.items() if getattr(self, name) is not None],
            "blocks": [opt for opt, name in BLOCK_AXES.items() if getattr(self, name) is not None],
            "block_layers": self.block_layers,
            "experts": self.experts is not None,
            "mamba": self.mamba_heads is not None,
            "num_samples": self.num_samples,
            "num_tokens": self.num_tokens,
            "seq_len": self.seq_len,
            "config_hash": self.config_hash,
            "corpus_fingerprint": self.corpus_fingerprint,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the scores to `path` atomically (a temporary sibling, then a rename)."""
        tensors = {n: t.detach().cpu().contiguous() for n, t in self.tensors().items()}
        metadata = {k: json.dumps(v) for k, v in self.metadata().items()}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Importance:
        path = Path(path)
        if not path.is_file():
            raise MinitronError(f"importance file {path} does not exist; run `minitron score` first")
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                raw = f.metadata() or {}
                tensors = {name: f.get_tensor(name) for name in f.keys()}
            meta = {k: json.loads(v) for k, v in raw.items() if k != "format"}
        except (OSError, ValueError, SafetensorError) as e:  # JSONDecodeError is a ValueError
            first = first_line(e)
            raise MinitronError(
                f"{path} is not a readable importance file ({first}); pass a file written by `minitron score`"
            ) from None
        if meta.get("kind") != FILE_KIND:
            raise MinitronError(f"{path} is not a minitron importance file (metadata 'kind' is {meta.get('kind')!r})")
        expected = set(WIDTH_AXES) | {DEPTH_AXES[d] for d in meta.get("depth", [])}
        expected |= {BLOCK_AXES[b] for b in meta.get("blocks", [])}
        expected |= {EXPERT_AXIS} if meta.get("experts") else set()
        expected |= set(MAMBA_AXES) if meta.get("mamba") else set()
        if set(tensors) != expected:
            raise MinitronError(
                f"{path} holds tensors {sorted(tensors)}, expected {sorted(expected)} (metadata depth={meta.get('depth')})"
            )
        return cls(
            **{name: tensors.get(name) for name in (*WIDTH_AXES, *DEPTH_AXES.values())},
            **{k: meta[k] for k in ("batch_agg", "seq_agg", "mlp_site", "num_samples", "num_tokens", "seq_len")},
            config_hash=meta["config_hash"],
            corpus_fingerprint=meta["corpus_fingerprint"],
            **{name: tensors.get(name) for name in BLOCK_AXES.values()},
            block_layers=meta.get("block_layers"),
            experts=tensors.get(EXPERT_AXIS),
            **{name: tensors.get(name) for name in MAMBA_AXES},
        )

    def check_model(self, config: PretrainedConfig) -> None:
        """Fail with a one-line MinitronError unless these scores were computed for a model with this config:
        first the shapes (the message names the tensor), then the hash of every architecture field."""
        a = get_adapter(config)
        expected = {
            "hidden": (a.hidden_size,),
            "heads": (a.num_hidden_layers, a.num_attention_heads),
            "mlp": (a.num_hidden_layers, *((a.num_experts,) if a.moe else ()), a.intermediate_size),
            "kv_groups": (a.num_hidden_layers, a.num_key_value_heads),
            EXPERT_AXIS: (a.num_hidden_layers, a.num_experts),
            "layers": (a.num_hidden_layers,),
            "layers_loss": (a.num_hidden_layers,),
        }
        if a.hybrid:
            expected.update(mamba_heads=(a.num_hidden_layers, a.mamba_num_heads), mamba_groups=(a.num_hidden_layers, a.n_groups))
            if self.mamba_heads is None or self.mamba_groups is None:
                raise MinitronError(
                    f"the scores file has no Mamba head scores but this {a.family} model has Mamba blocks; "
                    "re-run `minitron score` on it"
                )
        if self.block_layers is not None:
            for name in BLOCK_AXES.values():
                expected[name] = (a.num_hidden_layers - self.block_layers + 1,)
        if a.moe and self.experts is None:
            raise MinitronError(
                f"the scores file has no 'experts' scores but this {a.family} model has experts; "
                "re-run `minitron score` on it"
            )
        for name, tensor in self.tensors().items():
            if tuple(tensor.shape) != expected[name]:
                raise MinitronError(
                    f"importance tensor '{name}' has shape {tuple(tensor.shape)} but this model needs "
                    f"{expected[name]}: the scores file was computed for another model; re-run `minitron score` on it"
                )
        mine = config_hash(config)
        if mine != self.config_hash:
            raise MinitronError(
                f"the scores file was computed for another model (config hash {self.config_hash}, this model {mine}); "
                "re-run `minitron score` on it"
            )
