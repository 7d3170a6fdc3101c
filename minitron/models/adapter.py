"""Family adapters: the one place that knows module names and which tensors each prunable axis touches.

An adapter is built from a model config alone (no weights), so the same description serves an in-memory
model, a streaming pass over safetensors shards, and a dry run on the meta device. Every name it returns is a
state-dict key or a module path of the stock `transformers` class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from minitron.errors import MinitronError

Axis = Literal["hidden", "heads", "kv_groups", "mlp", "layers"]
AXES: tuple[str, ...] = ("hidden", "heads", "kv_groups", "mlp", "layers")


@dataclass(frozen=True)
class TensorSlice:
    """One tensor touched by an axis: `name` is the state-dict key, `dim` the dimension indexed by the axis,
    and `unit` the number of consecutive elements one axis index owns (e.g. `head_dim` rows per head)."""

    name: str
    dim: int
    unit: int = 1


class FamilyAdapter:
    """Names and axis maps of one decoder-only family. Subclasses set the class attributes below."""

    family: str = ""
    model_types: tuple[str, ...] = ()
    gated_mlp: bool = False
    norm_has_bias: bool = False

    prefix = "model"
    embed = "model.embed_tokens"
    final_norm = "model.norm"
    lm_head = "lm_head"
    rotary_emb = "model.rotary_emb"  # the shared rotary module (non-persistent buffers, not in checkpoints)
    layer_norm_names = ("input_layernorm", "post_attention_layernorm")

    def __init__(self, config: PretrainedConfig):
        self.config = config
        self.validate()

    # ---- shapes -----------------------------------------------------------------------------------
    @property
    def num_hidden_layers(self) -> int:
        return self.config.num_hidden_layers

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def intermediate_size(self) -> int:
        return self.config.intermediate_size

    @property
    def num_attention_heads(self) -> int:
        return self.config.num_attention_heads

    @property
    def num_key_value_heads(self) -> int:
        kv = getattr(self.config, "num_key_value_heads", None)
        return self.num_attention_heads if kv is None else kv

    @property
    def heads_per_group(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    @property
    def head_dim(self) -> int:
        hd = getattr(self.config, "head_dim", None)
        return hd if hd else self.hidden_size // self.num_attention_heads

    @property
    def tied_embeddings(self) -> bool:
        return bool(getattr(self.config, "tie_word_embeddings", False))

    @property
    def attention_bias(self) -> bool:
        return bool(getattr(self.config, "attention_bias", False))

    @property
    def mlp_bias(self) -> bool:
        return bool(getattr(self.config, "mlp_bias", False))

    def kv_group_of_head(self, head: int) -> int:
        """Query head `head` reads the K/V head of this group (transformers' `repeat_kv` layout)."""
        return head // self.heads_per_group

    def validate(self) -> None:
        if self.num_attention_heads % self.num_key_value_heads:
            raise MinitronError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of num_key_value_heads="
                f"{self.num_key_value_heads}: every KV group must serve the same number of query heads"
            )

    # ---- module paths -----------------------------------------------------------------------------
    def layer(self, i: int) -> str:
        self._check_layer(i)
        return f"{self.prefix}.layers.{i}"

    def norms(self, i: int) -> list[str]:
        """The per-layer norms whose outputs feed attention and the MLP (the embedding-channel sites)."""
        return [f"{self.layer(i)}.{n}" for n in self.layer_norm_names]

    def q_proj(self, i: int) -> str:
        return f"{self.layer(i)}.self_attn.q_proj"

    def k_proj(self, i: int) -> str:
        return f"{self.layer(i)}.self_attn.k_proj"

    def v_proj(self, i: int) -> str:
        return f"{self.layer(i)}.self_attn.v_proj"

    def o_proj(self, i: int) -> str:
        return f"{self.layer(i)}.self_attn.o_proj"

    def up_proj(self, i: int) -> str:
        return f"{self.layer(i)}.mlp.up_proj"

    def gate_proj(self, i: int) -> str | None:
        return f"{self.layer(i)}.mlp.gate_proj" if self.gated_mlp else None

    def down_proj(self, i: int) -> str:
        return f"{self.layer(i)}.mlp.down_proj"

    def mlp_in(self, i: int) -> list[str]:
        """Projections whose output rows are MLP neurons (up, and gate for gated MLPs)."""
        gate = self.gate_proj(i)
        return [self.up_proj(i)] + ([gate] if gate else [])

    def module(self, model: nn.Module, path: str) -> nn.Module:
        return model.get_submodule(path)

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return model.get_submodule(f"{self.prefix}.layers")

    # ---- axis maps ----------------------------------------------------------------------------------
    def _linear(self, path: str, dim: int, unit: int, bias: bool) -> list[TensorSlice]:
        out = [TensorSlice(f"{path}.weight", dim, unit)]
        if bias and dim == 0:  # a bias follows the output rows only
            out.append(TensorSlice(f"{path}.bias", 0, unit))
        return out

    def _norm(self, path: str) -> list[TensorSlice]:
        out = [TensorSlice(f"{path}.weight", 0)]
        if self.norm_has_bias:
            out.append(TensorSlice(f"{path}.bias", 0))
        return out

    def axis_tensors(self, axis: Axis, layer: int | None = None) -> list[TensorSlice]:
        """Every tensor that an index on `axis` selects from.

        `hidden` spans the whole model (pass no layer); `heads`, `kv_groups` and `mlp` are per layer;
        `layers` lists every tensor of one decoder layer (all are dropped together).
        """
        if axis == "hidden":
            if layer is not None:
                raise ValueError("the hidden axis spans every layer; call axis_tensors('hidden') without a layer")
            out = [TensorSlice(f"{self.embed}.weight", 1)]
            for i in range(self.num_hidden_layers):
                for n in self.norms(i):
                    out += self._norm(n)
                for p in (self.q_proj(i), self.k_proj(i), self.v_proj(i), *self.mlp_in(i)):
                    out.append(TensorSlice(f"{p}.weight", 1))
                out += self._linear(self.o_proj(i), 0, 1, self.attention_bias)
                out += self._linear(self.down_proj(i), 0, 1, self.mlp_bias)
            out += self._norm(self.final_norm)
            if not self.tied_embeddings:
                out.append(TensorSlice(f"{self.lm_head}.weight", 1))
            return out
        if layer is None:
            raise ValueError(f"axis '{axis}' is per layer; pass layer=i")
        self._check_layer(layer)
        hd = self.head_dim
        if axis == "heads":
            return self._linear(self.q_proj(layer), 0, hd, self.attention_bias) + [
                TensorSlice(f"{self.o_proj(layer)}.weight", 1, hd)
            ]
        if axis == "kv_groups":
            group_q = hd * self.heads_per_group
            return (
                self._linear(self.k_proj(layer), 0, hd, self.attention_bias)
                + self._linear(self.v_proj(layer), 0, hd, self.attention_bias)
                + self._linear(self.q_proj(layer), 0, group_q, self.attention_bias)
                + [TensorSlice(f"{self.o_proj(layer)}.weight", 1, group_q)]
            )
        if axis == "mlp":
            out: list[TensorSlice] = []
            for p in self.mlp_in(layer):
                out += self._linear(p, 0, 1, self.mlp_bias)
            return out + [TensorSlice(f"{self.down_proj(layer)}.weight", 1)]
        if axis == "layers":
            return [TensorSlice(name, 0) for name in self.layer_tensor_names(layer)]
        raise ValueError(f"unknown axis '{axis}'; expected one of {', '.join(AXES)}")

    def layer_tensor_names(self, i: int) -> list[str]:
        """State-dict keys of decoder layer i, from the config alone."""
        names = []
        for n in self.norms(i):
            names += [t.name for t in self._norm(n)]
        for p in (self.q_proj(i), self.k_proj(i), self.v_proj(i)):
            names += [f"{p}.weight"] + ([f"{p}.bias"] if self.attention_bias else [])
        names += [f"{self.o_proj(i)}.weight"] + ([f"{self.o_proj(i)}.bias"] if self.attention_bias else [])
        for p in (*self.mlp_in(i), self.down_proj(i)):
            names += [f"{p}.weight"] + ([f"{p}.bias"] if self.mlp_bias else [])
        return names

    def tensor_names(self) -> list[str]:
        """Every state-dict key a checkpoint of this config holds (tied `lm_head` left out)."""
        names = [f"{self.embed}.weight"]
        for i in range(self.num_hidden_layers):
            names += self.layer_tensor_names(i)
        names += [t.name for t in self._norm(self.final_norm)]
        if not self.tied_embeddings:
            names.append(f"{self.lm_head}.weight")
        return names

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of every tensor in `tensor_names()`, from the config alone (no model is built)."""
        h, ffn, hd = self.hidden_size, self.intermediate_size, self.head_dim
        q, kv, vocab = self.num_attention_heads * hd, self.num_key_value_heads * hd, self.config.vocab_size
        known: dict[str, tuple[int, ...]] = {f"{self.embed}.weight": (vocab, h), f"{self.lm_head}.weight": (vocab, h)}
        norms = [self.final_norm] + [n for i in range(self.num_hidden_layers) for n in self.norms(i)]
        for norm in norms:
            known.update({t.name: (h,) for t in self._norm(norm)})
        for i in range(self.num_hidden_layers):
            linears = [(self.q_proj(i), q, h), (self.k_proj(i), kv, h), (self.v_proj(i), kv, h), (self.o_proj(i), h, q)]
            linears += [(p, ffn, h) for p in self.mlp_in(i)] + [(self.down_proj(i), h, ffn)]
            for path, rows, cols in linears:
                known[f"{path}.weight"] = (rows, cols)
                known[f"{path}.bias"] = (rows,)
        return {name: known[name] for name in self.tensor_names()}

    def num_parameters(self) -> int:
        """The exact parameter count of this config (a tied `lm_head` counted once), without building a model."""
        total = 0
        for shape in self.tensor_shapes().values():
            n = 1
            for d in shape:
                n *= d
            total += n
        return total

    def _check_layer(self, i: int) -> None:
        if not 0 <= i < self.num_hidden_layers:
            raise MinitronError(f"layer index {i} is out of range: the model has {self.num_hidden_layers} layers (0..{self.num_hidden_layers - 1})")

    def check_model(self, model: PreTrainedModel) -> None:
        """Assert that a loaded model holds exactly the tensors this adapter names, with the expected shapes."""
        state = dict(model.state_dict())
        expected = set(self.tensor_names())
        got = set(state) - ({f"{self.lm_head}.weight"} if self.tied_embeddings else set())
        if expected != got:
            raise MinitronError(
                f"{type(model).__name__} does not match the {self.family} adapter: "
                f"missing {sorted(expected - got)[:4]}, unexpected {sorted(got - expected)[:4]}"
            )

    def __repr__(self) -> str:
        c = self
        return (
            f"{type(self).__name__}(layers={c.num_hidden_layers}, hidden={c.hidden_size}, ffn={c.intermediate_size}, "
            f"heads={c.num_attention_heads}, kv_heads={c.num_key_value_heads}, head_dim={c.head_dim})"
        )


def dtype_of(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype
