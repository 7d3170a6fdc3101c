"""Family adapters: the one place that knows module names and which tensors each prunable axis touches.

An adapter is built from a model config alone (no weights), so the same description serves an in-memory
model, a streaming pass over safetensors shards, and a dry run on the meta device. Every name it returns is a
state-dict key or a module path of the stock `transformers` class.

A family describes its decoder layer declaratively: which per-layer norms span the hidden size, whether the
query/key/value and gate/up projections are fused into one matrix (their rows then come in blocks), whether the
attention has q/k norms and what they span, and which config fields hold one entry per layer. The few
computations some families do outside their modules (an embedding multiplier, logit soft-capping) are methods.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn
from transformers import PretrainedConfig, PreTrainedModel

from minitron.errors import MinitronError

Axis = Literal["hidden", "heads", "kv_groups", "mlp", "experts", "mamba_heads", "mamba_groups", "layers"]
AXES: tuple[str, ...] = ("hidden", "heads", "kv_groups", "mlp", "experts", "mamba_heads", "mamba_groups", "layers")
# The axes a decoder layer may have; a homogeneous family has the first three in every layer (a hybrid's layer has
# the axes of its block type only, see `FamilyAdapter.has_axis`).
LAYER_AXES: tuple[str, ...] = ("heads", "kv_groups", "mlp", "experts", "mamba_heads", "mamba_groups")


@dataclass(frozen=True)
class TensorSlice:
    """One tensor touched by an axis: `name` is the state-dict key, `dim` the dimension indexed by the axis,
    and `unit` the number of consecutive elements one axis index owns (e.g. `head_dim` rows per head).

    A fused projection holds several blocks along `dim` (Phi-3's `qkv_proj` rows are the query, key and value
    blocks one after another): the axis then indexes the `length` elements from `offset` on, and the rest of
    the dimension is left to the other blocks. `length=None` means the whole dimension.

    `per_expert`: the tensor stacks one matrix per expert along dimension 0 and the axis picks different indices
    in each (every expert's neurons are its own), so the kept index is one row per kept expert."""

    name: str
    dim: int
    unit: int = 1
    offset: int = 0
    length: int | None = None
    per_expert: bool = False

    @property
    def key(self) -> tuple[str, int, int]:
        """What identifies the block (two axes may slice different blocks of one tensor)."""
        return (self.name, self.dim, self.offset)


@dataclass(frozen=True)
class Rows:
    """A block of output rows of a linear layer: `length` rows from `offset` of the module at `path`."""

    path: str
    offset: int
    length: int


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
    rotary_emb: str | None = "model.rotary_emb"  # the shared rotary module (non-persistent buffers, not in checkpoints)
    # Every per-layer norm over the hidden size (all are sliced by hidden pruning).
    layer_norm_names: tuple[str, ...] = ("input_layernorm", "post_attention_layernorm")
    # The norms whose outputs feed attention and the MLP, where hidden channels are scored; None: all of the above.
    hidden_site_norms: tuple[str, ...] | None = None
    # Module names inside a layer, relative to it; a fused projection replaces the separate ones.
    fused_qkv: str | None = None
    fused_gate_up: str | None = None
    # q/k norms inside attention: None, "head" (one weight of head_dim shared by every head) or "projection"
    # (one weight over the whole query or key projection, so its elements belong to heads and KV groups).
    qk_norm: Literal["head", "projection"] | None = None
    # Config fields that hold one entry per decoder layer (sliced like the layers when depth is pruned).
    per_layer_config_fields: tuple[str, ...] = ("layer_types",)
    # Mixture of experts: the MLP of every layer is a router and `num_experts` expert MLPs (see MoEAdapter).
    moe: bool = False
    # The config field that holds the neurons of one MLP (of one expert in an MoE family).
    mlp_size_field: str = "intermediate_size"
    # A hybrid stacks blocks of several types (see HybridAdapter); every layer of the others has the same tensors.
    hybrid: bool = False

    def __init__(self, config: PretrainedConfig):
        self.config = config
        self._sizes: dict[str, int] = {}
        self.validate()

    def with_sizes(self, **sizes: int) -> FamilyAdapter:
        """This adapter with other axis sizes (the `Shape` names: `intermediate_size` is the neurons per MLP or
        expert, `num_experts` the experts per layer), for counting shapes without building a config. `head_dim`
        stays the source's, as `Target.resolve` writes it."""
        other = copy.copy(self)
        other._sizes = {**self._sizes, "head_dim": self.head_dim, **sizes}
        return other

    def _field(self, name: str, hf_name: str | None = None):
        return self._sizes[name] if name in self._sizes else getattr(self.config, hf_name or name, None)

    # ---- shapes -----------------------------------------------------------------------------------
    @property
    def num_hidden_layers(self) -> int:
        return self._field("num_hidden_layers")

    @property
    def hidden_size(self) -> int:
        return self._field("hidden_size")

    @property
    def intermediate_size(self) -> int:
        """The neurons of one MLP (of one expert, in an MoE family)."""
        return self._field("intermediate_size", self.mlp_size_field)

    @property
    def num_experts(self) -> int | None:
        """Experts per MoE layer; None for a dense family."""
        return self._field("num_experts") if self.moe else None

    @property
    def num_attention_heads(self) -> int:
        return self._field("num_attention_heads")

    @property
    def num_key_value_heads(self) -> int:
        kv = self._field("num_key_value_heads")
        return self.num_attention_heads if kv is None else kv

    @property
    def heads_per_group(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    @property
    def head_dim(self) -> int:
        hd = self._field("head_dim")
        return hd if hd else self.hidden_size // self.num_attention_heads

    @property
    def tied_embeddings(self) -> bool:
        return bool(getattr(self.config, "tie_word_embeddings", False))

    @property
    def attention_bias(self) -> bool:
        return bool(getattr(self.config, "attention_bias", False))

    @property
    def qkv_bias(self) -> bool:
        """Whether the query, key and value projections carry biases."""
        return self.attention_bias

    @property
    def o_bias(self) -> bool:
        return self.attention_bias

    @property
    def mlp_bias(self) -> bool:
        return bool(getattr(self.config, "mlp_bias", False))

    def has_axis(self, axis: str, i: int) -> bool:
        """Whether decoder layer i has prunable units on `axis` (every layer of a homogeneous family has heads, KV
        groups and MLP neurons, and experts in an MoE family)."""
        if axis in ("heads", "kv_groups", "mlp"):
            return True
        return axis == "experts" and self.moe

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
        """Every per-layer norm over the hidden size (sliced by hidden pruning)."""
        return [f"{self.layer(i)}.{n}" for n in self.layer_norm_names]

    def hidden_sites(self, i: int) -> list[tuple[str, Literal["in", "out"]]]:
        """Where layer i's hidden channels are scored: (module path, "out" for its output or "in" for its input).
        The Minitron paper scores embedding channels on the LayerNorm outputs that feed attention and the MLP."""
        names = self.layer_norm_names if self.hidden_site_norms is None else self.hidden_site_norms
        return [(f"{self.layer(i)}.{n}", "out") for n in names]

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

    def q_norm(self, i: int) -> str:
        return f"{self.layer(i)}.self_attn.q_norm"

    def k_norm(self, i: int) -> str:
        return f"{self.layer(i)}.self_attn.k_norm"

    def q_rows(self, i: int) -> Rows:
        q = self.num_attention_heads * self.head_dim
        if self.fused_qkv:
            return Rows(f"{self.layer(i)}.{self.fused_qkv}", 0, q)
        return Rows(self.q_proj(i), 0, q)

    def k_rows(self, i: int) -> Rows:
        q, kv = self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        if self.fused_qkv:
            return Rows(f"{self.layer(i)}.{self.fused_qkv}", q, kv)
        return Rows(self.k_proj(i), 0, kv)

    def v_rows(self, i: int) -> Rows:
        q, kv = self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        if self.fused_qkv:
            return Rows(f"{self.layer(i)}.{self.fused_qkv}", q + kv, kv)
        return Rows(self.v_proj(i), 0, kv)

    def up_rows(self, i: int) -> Rows:
        ffn = self.intermediate_size
        if self.fused_gate_up:  # gate first, then up (Phi3MLP: `gate, up_states = up_states.chunk(2, dim=-1)`)
            return Rows(f"{self.layer(i)}.{self.fused_gate_up}", ffn, ffn)
        return Rows(self.up_proj(i), 0, ffn)

    def gate_rows(self, i: int) -> Rows | None:
        if self.fused_gate_up:
            return Rows(f"{self.layer(i)}.{self.fused_gate_up}", 0, self.intermediate_size)
        gate = self.gate_proj(i)
        return Rows(gate, 0, self.intermediate_size) if gate else None

    def mlp_blocks(self, i: int) -> list[Rows]:
        """Row blocks that are MLP neurons (up, and gate for gated MLPs)."""
        gate = self.gate_rows(i)
        return [self.up_rows(i)] + ([gate] if gate else [])

    def attention_in(self, i: int) -> list[str]:
        """The projections that read the hidden states in attention (q, k, v, or one fused qkv)."""
        return list(dict.fromkeys(r.path for r in (self.q_rows(i), self.k_rows(i), self.v_rows(i))))

    def mlp_in(self, i: int) -> list[str]:
        """Projections whose output rows are MLP neurons (up, and gate for gated MLPs; or one fused gate_up)."""
        return list(dict.fromkeys(r.path for r in self.mlp_blocks(i)))

    def module(self, model: nn.Module, path: str) -> nn.Module:
        return model.get_submodule(path)

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return model.get_submodule(f"{self.prefix}.layers")

    # ---- the checkpoint layout ------------------------------------------------------------------------
    # transformers 5 converts some parameters when it loads and saves (`conversion_mapping.py`): a checkpoint
    # stores them as other keys than the model's state dict. These map one model tensor onto its stored keys, so
    # the streaming readers and the streaming export see and write what `save_pretrained` would.
    def stored_shapes(self, name: str, shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        """The checkpoint keys and shapes that hold model tensor `name` of `shape`."""
        return {name: shape}

    def from_stored(self, name: str, parts: list[Tensor]) -> Tensor:
        """Model tensor `name` from its stored parts (in the order of `stored_shapes`)."""
        return parts[0]

    def to_stored(self, name: str, tensor: Tensor) -> dict[str, Tensor]:
        """Model tensor `name` as the checkpoint stores it."""
        return {name: tensor}

    def read_stored(self, name: str, stored: Callable[[str], bool], read: Callable[[str], Tensor], shape=None) -> Tensor:
        """Model tensor `name` from a checkpoint holding either it under its own key or its stored parts
        (`stored(key)` says whether the checkpoint has a key, `read(key)` reads it)."""
        parts = list(self.stored_shapes(name, shape or ()))
        if stored(name) or not all(stored(p) for p in parts):
            return read(name)  # a missing tensor is reported by `read` under its model name
        return self.from_stored(name, [read(p) for p in parts])

    # ---- computations outside the modules -----------------------------------------------------------
    def embed_output(self, embeds: Tensor) -> Tensor:
        """What the base model does to the embedding module's output before the first layer."""
        return embeds

    def logits(self, logits: Tensor) -> Tensor:
        """What the causal-LM class does to the LM head's output."""
        return logits

    def derived_buffers(self) -> dict[str, Tensor]:
        """Non-persistent buffers outside the layers and the rotary module that the model computes from its
        config (never stored in checkpoints): a pruned model computes its own rather than copying the source's."""
        return {}

    def hidden_transforms(self, kept: int) -> dict[str, Callable[[Tensor], Tensor]]:
        """Element-wise rewrites of sliced tensors that keeping `kept` of the hidden channels needs."""
        return {}

    # ---- axis maps ----------------------------------------------------------------------------------
    def _rows(self, rows: Rows, unit: int, bias: bool) -> list[TensorSlice]:
        out = [TensorSlice(f"{rows.path}.weight", 0, unit, rows.offset, rows.length)]
        if bias:
            out.append(TensorSlice(f"{rows.path}.bias", 0, unit, rows.offset, rows.length))
        return out

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
                out += self._hidden_layer_tensors(i)
            out += self._norm(self.final_norm)
            if not self.tied_embeddings:
                out.append(TensorSlice(f"{self.lm_head}.weight", 1))
            return out
        if layer is None:
            raise ValueError(f"axis '{axis}' is per layer; pass layer=i")
        self._check_layer(layer)
        hd = self.head_dim
        projection_norms = self.qk_norm == "projection"
        if axis == "heads":
            out = self._rows(self.q_rows(layer), hd, self.qkv_bias)
            if projection_norms:
                out.append(TensorSlice(f"{self.q_norm(layer)}.weight", 0, hd))
            return out + [TensorSlice(f"{self.o_proj(layer)}.weight", 1, hd)]
        if axis == "kv_groups":
            group_q = hd * self.heads_per_group
            out = self._rows(self.k_rows(layer), hd, self.qkv_bias) + self._rows(self.v_rows(layer), hd, self.qkv_bias)
            if projection_norms:
                out.append(TensorSlice(f"{self.k_norm(layer)}.weight", 0, hd))
            out += self._rows(self.q_rows(layer), group_q, self.qkv_bias)
            if projection_norms:
                out.append(TensorSlice(f"{self.q_norm(layer)}.weight", 0, group_q))
            return out + [TensorSlice(f"{self.o_proj(layer)}.weight", 1, group_q)]
        if axis == "mlp":
            return self._mlp_tensors(layer)
        if axis == "layers":
            return [TensorSlice(name, 0) for name in self.layer_tensor_names(layer)]
        if axis == "experts":
            return self._expert_tensors(layer)
        raise ValueError(f"unknown axis '{axis}'; expected one of {', '.join(AXES)}")

    def _hidden_layer_tensors(self, i: int) -> list[TensorSlice]:
        """The tensors of layer i's mixers (not its norms) that span the hidden size."""
        return self._attention_hidden_tensors(i) + self._mlp_hidden_tensors(i)

    def _attention_hidden_tensors(self, i: int) -> list[TensorSlice]:
        """The tensors of layer i's attention that span the hidden size."""
        out = [TensorSlice(f"{p}.weight", 1) for p in self.attention_in(i)]
        return out + self._linear(self.o_proj(i), 0, 1, self.o_bias)

    def _mlp_hidden_tensors(self, i: int) -> list[TensorSlice]:
        """The tensors of layer i's MLP that span the hidden size."""
        out = [TensorSlice(f"{p}.weight", 1) for p in self.mlp_in(i)]
        return out + self._linear(self.down_proj(i), 0, 1, self.mlp_bias)

    def _mlp_tensors(self, i: int) -> list[TensorSlice]:
        out: list[TensorSlice] = []
        for rows in self.mlp_blocks(i):
            out += self._rows(rows, 1, self.mlp_bias)
        return out + [TensorSlice(f"{self.down_proj(i)}.weight", 1)]

    def _expert_tensors(self, i: int) -> list[TensorSlice]:
        raise ValueError(f"axis 'experts' needs a mixture-of-experts family; {self.family} is dense")

    def _mlp_shapes(self, i: int) -> dict[str, tuple[int, ...]]:
        h, ffn = self.hidden_size, self.intermediate_size
        out: dict[str, tuple[int, ...]] = {}
        rows: dict[str, int] = {}
        for block in self.mlp_blocks(i):
            rows[block.path] = rows.get(block.path, 0) + block.length
        for path, n in rows.items():
            out[f"{path}.weight"] = (n, h)
            if self.mlp_bias:
                out[f"{path}.bias"] = (n,)
        out[f"{self.down_proj(i)}.weight"] = (h, ffn)
        if self.mlp_bias:
            out[f"{self.down_proj(i)}.bias"] = (h,)
        return out

    # ---- names and shapes ---------------------------------------------------------------------------
    def layer_tensor_shapes(self, i: int) -> dict[str, tuple[int, ...]]:
        """State-dict keys of decoder layer i and their shapes, from the config alone."""
        out = self._norm_shapes(i)
        out.update(self._attention_shapes(i))
        out.update(self._mlp_shapes(i))
        return out

    def _norm_shapes(self, i: int) -> dict[str, tuple[int, ...]]:
        return {t.name: (self.hidden_size,) for n in self.norms(i) for t in self._norm(n)}

    def _attention_shapes(self, i: int) -> dict[str, tuple[int, ...]]:
        h, hd = self.hidden_size, self.head_dim
        q, kv = self.num_attention_heads * hd, self.num_key_value_heads * hd
        out: dict[str, tuple[int, ...]] = {}
        rows: dict[str, int] = {}
        for block in (self.q_rows(i), self.k_rows(i), self.v_rows(i)):
            rows[block.path] = rows.get(block.path, 0) + block.length
        for path, n in rows.items():
            out[f"{path}.weight"] = (n, h)
            if self.qkv_bias:
                out[f"{path}.bias"] = (n,)
        if self.qk_norm == "head":
            out[f"{self.q_norm(i)}.weight"] = out[f"{self.k_norm(i)}.weight"] = (hd,)
        elif self.qk_norm == "projection":
            out[f"{self.q_norm(i)}.weight"], out[f"{self.k_norm(i)}.weight"] = (q,), (kv,)
        out[f"{self.o_proj(i)}.weight"] = (h, q)
        if self.o_bias:
            out[f"{self.o_proj(i)}.bias"] = (h,)
        return out

    def layer_tensor_names(self, i: int) -> list[str]:
        """State-dict keys of decoder layer i, from the config alone."""
        return list(self.layer_tensor_shapes(i))

    def _outside_shapes(self) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
        h, vocab = self.hidden_size, self.config.vocab_size
        before = {f"{self.embed}.weight": (vocab, h)}
        after = {t.name: (h,) for t in self._norm(self.final_norm)}
        if not self.tied_embeddings:
            after[f"{self.lm_head}.weight"] = (vocab, h)
        return before, after

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of every tensor a checkpoint of this config holds (tied `lm_head` left out), from the
        config alone (no model is built)."""
        before, after = self._outside_shapes()
        out = dict(before)
        for i in range(self.num_hidden_layers):
            out.update(self.layer_tensor_shapes(i))
        out.update(after)
        return out

    def tensor_names(self) -> list[str]:
        """Every state-dict key a checkpoint of this config holds (tied `lm_head` left out)."""
        return list(self.tensor_shapes())

    def num_parameters(self) -> int:
        """The exact parameter count of this config (a tied `lm_head` counted once), without building a model."""
        numel = lambda shapes: sum(_prod(s) for s in shapes.values())
        before, after = self._outside_shapes()
        if not self.hybrid:  # every layer has the same tensors (pruning keeps one size per axis)
            return numel(before) + numel(after) + self.num_hidden_layers * numel(self.layer_tensor_shapes(0))
        return numel(before) + numel(after) + sum(numel(self.layer_tensor_shapes(i)) for i in range(self.num_hidden_layers))

    def _check_layer(self, i: int) -> None:
        if not 0 <= i < self.num_hidden_layers:
            raise MinitronError(f"layer index {i} is out of range: the model has {self.num_hidden_layers} layers (0..{self.num_hidden_layers - 1})")

    def check_model(self, model: PreTrainedModel) -> None:
        """Assert that a loaded model holds exactly the tensors this adapter names, with the expected shapes."""
        state = dict(model.state_dict())
        expected = self.tensor_shapes()
        got = set(state) - ({f"{self.lm_head}.weight"} if self.tied_embeddings else set())
        if set(expected) != got:
            raise MinitronError(
                f"{type(model).__name__} does not match the {self.family} adapter: "
                f"missing {sorted(set(expected) - got)[:4]}, unexpected {sorted(got - set(expected))[:4]}"
            )
        wrong = [n for n, shape in expected.items() if tuple(state[n].shape) != shape]
        if wrong:
            raise MinitronError(
                f"{type(model).__name__} does not match the {self.family} adapter: tensor '{wrong[0]}' has shape "
                f"{tuple(state[wrong[0]].shape)}, expected {expected[wrong[0]]}"
            )

    def __repr__(self) -> str:
        c = self
        return (
            f"{type(self).__name__}(layers={c.num_hidden_layers}, hidden={c.hidden_size}, ffn={c.intermediate_size}, "
            f"heads={c.num_attention_heads}, kv_heads={c.num_key_value_heads}, head_dim={c.head_dim}"
            + (f", experts={c.num_experts})" if c.moe else ")")
        )


class MoEAdapter(FamilyAdapter):
    """A decoder whose MLP is a sparse mixture of experts in transformers 5's layout: `mlp.gate` is the router
    (`weight` [num_experts, hidden], one row of logits per expert) and `mlp.experts` holds every expert's gated
    MLP fused in two 3-D parameters, `gate_up_proj` [num_experts, 2 * ffn, hidden] (gate rows, then up rows:
    `chunk(2, dim=-1)` in the experts' forward) and `down_proj` [num_experts, hidden, ffn].

    The `experts` axis slices dimension 0 of the three together (the router's rows stay aligned with the kept
    experts); the `mlp` axis keeps the same number of neurons in each kept expert but chooses them per expert."""

    moe = True
    gated_mlp = True
    # How checkpoints store the MoE block: its module name and each expert's (gate, up, down) linear layers,
    # one key per expert (transformers' conversion mapping merges them into the fused parameters on load).
    stored_block: str = "mlp"
    stored_experts: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj")
    _FUSED = re.compile(r"^(?P<layer>.*\.layers\.\d+)\.mlp\.(?P<what>gate\.weight|experts\.gate_up_proj|experts\.down_proj)$")

    def validate(self) -> None:
        super().validate()
        top_k = self.config.num_experts_per_tok
        if not 1 <= top_k <= self.num_experts:
            raise MinitronError(
                f"num_experts_per_tok={top_k} must be between 1 and num_experts={self.num_experts}; "
                "set num_experts_per_tok to at most the experts a layer has"
            )

    @property
    def experts_field(self) -> str:
        """The config key that stores the expert count (`num_experts` is an alias of it in both configs)."""
        return type(self.config).attribute_map.get("num_experts", "num_experts")

    @property
    def num_experts_per_tok(self) -> int:
        return self.config.num_experts_per_tok

    def router(self, i: int) -> str:
        return f"{self.layer(i)}.mlp.gate"

    def experts(self, i: int) -> str:
        return f"{self.layer(i)}.mlp.experts"

    def mlp_in(self, i: int) -> list[str]:
        raise MinitronError(f"the {self.family} MLP is a mixture of experts with no up projection module; use experts(i)")

    def down_proj(self, i: int) -> str:
        raise MinitronError(f"the {self.family} MLP is a mixture of experts with no down projection module; use experts(i)")

    def _mlp_hidden_tensors(self, i: int) -> list[TensorSlice]:
        e = self.experts(i)
        return [TensorSlice(f"{self.router(i)}.weight", 1), TensorSlice(f"{e}.gate_up_proj", 2), TensorSlice(f"{e}.down_proj", 1)]

    def _mlp_tensors(self, i: int) -> list[TensorSlice]:
        e, ffn = self.experts(i), self.intermediate_size
        return [
            TensorSlice(f"{e}.gate_up_proj", 1, 1, 0, ffn, per_expert=True),
            TensorSlice(f"{e}.gate_up_proj", 1, 1, ffn, ffn, per_expert=True),
            TensorSlice(f"{e}.down_proj", 2, per_expert=True),
        ]

    def _expert_tensors(self, i: int) -> list[TensorSlice]:
        e = self.experts(i)
        return [TensorSlice(f"{self.router(i)}.weight", 0), TensorSlice(f"{e}.gate_up_proj", 0), TensorSlice(f"{e}.down_proj", 0)]

    def stored_shapes(self, name: str, shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        m = self._FUSED.match(name)
        if m is None:
            return {name: shape}
        block = f"{m['layer']}.{self.stored_block}"
        if m["what"] == "gate.weight":
            return {f"{block}.gate.weight": shape}
        n = shape[0] if shape else self.num_experts
        gate, up, down = self.stored_experts
        key = lambda e, which: f"{block}.experts.{e}.{which}.weight"
        if m["what"] == "experts.down_proj":
            return {key(e, down): tuple(shape[1:]) for e in range(n)}
        rows = (shape[1] // 2, shape[2]) if shape else ()
        return {key(e, which): rows for e in range(n) for which in (gate, up)}

    def from_stored(self, name: str, parts: list[Tensor]) -> Tensor:
        m = self._FUSED.match(name)
        if m is None or m["what"] == "gate.weight":
            return parts[0]
        if m["what"] == "experts.down_proj":
            return torch.stack(parts)
        return torch.stack([torch.cat(parts[2 * e : 2 * e + 2]) for e in range(len(parts) // 2)])

    def to_stored(self, name: str, tensor: Tensor) -> dict[str, Tensor]:
        keys = list(self.stored_shapes(name, tuple(tensor.shape)))
        m = self._FUSED.match(name)
        if m is None or m["what"] == "gate.weight":
            return {keys[0]: tensor}
        if m["what"] == "experts.down_proj":
            parts = list(tensor.unbind(0))
        else:
            parts = [half for expert in tensor.unbind(0) for half in expert.chunk(2)]
        return {k: p.contiguous() for k, p in zip(keys, parts)}

    def _mlp_shapes(self, i: int) -> dict[str, tuple[int, ...]]:
        h, ffn, n, e = self.hidden_size, self.intermediate_size, self.num_experts, self.experts(i)
        return {f"{self.router(i)}.weight": (n, h), f"{e}.gate_up_proj": (n, 2 * ffn, h), f"{e}.down_proj": (n, h, ffn)}


class HybridAdapter(FamilyAdapter):
    """A stack of blocks of several types, each a pre-norm and one mixer (Nemotron-H's layout): a Mamba-2 mixer, an
    attention mixer or an MLP, chosen per layer by the config's per-layer type list. An axis lives only in the
    blocks that have it: heads and KV groups in attention blocks, neurons in MLP blocks, Mamba heads and groups in
    Mamba blocks; the hidden size spans them all.

    A Mamba-2 mixer (Dao & Gu 2024, arXiv 2405.21060) with `nh` heads of `hd` channels in `G` groups of state size
    `N` (I = nh * hd) holds, per head, `hd` rows of each of the z (gate) and x blocks of `in_proj`, one row of its dt
    block, `hd` channels of `conv1d` (the x channels come first), of the gated norm and of `out_proj`'s input, and one
    entry of `dt_bias`, `A_log` and `D`; per group, `N` rows of each of the B and C blocks of `in_proj` and `conv1d`.
    `in_proj` rows are [z (I) | x (I) | B (G N) | C (G N) | dt (nh)]. Head h reads the B and C of group
    h // (nh / G), and the gated norm normalises each group's I / G channels on their own, so keeping the same
    number of heads in every group (group-aware pruning, Taghibakhshi et al. 2025, "Efficient Hybrid Language
    Model Compression through Group-Aware SSM Pruning", arXiv 2504.11409) keeps every kept head with its own group's
    B, C and norm group."""

    hybrid = True
    layer_norm_names = ("norm",)
    types_field = "layers_block_type"
    # block type -> the kind of mixer it holds ("mamba", "attention" or "mlp")
    block_kinds: ClassVar[dict[str, str]] = {}
    mixer = "mixer"

    # ---- blocks ------------------------------------------------------------------------------------
    @property
    def block_types(self) -> list[str]:
        return list(self._sizes.get(self.types_field) or getattr(self.config, self.types_field))

    def block_type(self, i: int) -> str:
        self._check_layer(i)
        return self.block_types[i]

    def kind(self, i: int) -> str:
        return self.block_kinds[self.block_type(i)]

    @property
    def num_hidden_layers(self) -> int:
        return len(self.block_types)

    def has_axis(self, axis: str, i: int) -> bool:
        kind = self.kind(i)
        return {"heads": "attention", "kv_groups": "attention", "mlp": "mlp",
                "mamba_heads": "mamba", "mamba_groups": "mamba"}.get(axis) == kind

    def validate(self) -> None:
        super().validate()
        unknown = sorted(set(self.block_types) - set(self.block_kinds))
        if unknown:
            raise MinitronError(
                f"{self.family} block type '{unknown[0]}' is not supported (supported: {', '.join(self.block_kinds)}); "
                f"use a model whose {self.types_field} holds only those"
            )
        if self.mamba_num_heads % self.n_groups:
            raise MinitronError(
                f"mamba_num_heads={self.mamba_num_heads} is not a multiple of n_groups={self.n_groups}: every Mamba "
                "group must hold the same number of heads"
            )

    # ---- Mamba shapes ------------------------------------------------------------------------------
    @property
    def mamba_num_heads(self) -> int:
        return self._field("mamba_num_heads")

    @property
    def n_groups(self) -> int:
        return self._field("n_groups")

    @property
    def mamba_head_dim(self) -> int:
        return self.config.mamba_head_dim

    @property
    def ssm_state_size(self) -> int:
        return self.config.ssm_state_size

    @property
    def mamba_heads_per_group(self) -> int:
        return self.mamba_num_heads // self.n_groups

    def mamba_group_of_head(self, head: int) -> int:
        return head // self.mamba_heads_per_group

    @property
    def mamba_bias(self) -> bool:
        return bool(self.config.use_bias)

    @property
    def conv_bias(self) -> bool:
        return bool(self.config.use_conv_bias)

    # ---- module paths ------------------------------------------------------------------------------
    def _mixer(self, i: int, name: str) -> str:
        return f"{self.layer(i)}.{self.mixer}.{name}"

    def q_proj(self, i: int) -> str:
        return self._mixer(i, "q_proj")

    def k_proj(self, i: int) -> str:
        return self._mixer(i, "k_proj")

    def v_proj(self, i: int) -> str:
        return self._mixer(i, "v_proj")

    def o_proj(self, i: int) -> str:
        return self._mixer(i, "o_proj")

    def up_proj(self, i: int) -> str:
        return self._mixer(i, "up_proj")

    def gate_proj(self, i: int) -> str | None:
        return self._mixer(i, "gate_proj") if self.gated_mlp else None

    def down_proj(self, i: int) -> str:
        return self._mixer(i, "down_proj")

    def in_proj(self, i: int) -> str:
        return self._mixer(i, "in_proj")

    def out_proj(self, i: int) -> str:
        return self._mixer(i, "out_proj")

    # ---- axis maps ---------------------------------------------------------------------------------
    def _hidden_layer_tensors(self, i: int) -> list[TensorSlice]:
        kind = self.kind(i)
        if kind == "attention":
            return self._attention_hidden_tensors(i)
        if kind == "mlp":
            return self._mlp_hidden_tensors(i)
        return [TensorSlice(f"{self.in_proj(i)}.weight", 1), *self._linear(self.out_proj(i), 0, 1, self.mamba_bias)]

    def axis_tensors(self, axis: Axis, layer: int | None = None) -> list[TensorSlice]:
        if layer is None:  # the hidden axis, or the base's error for a per-layer axis
            return super().axis_tensors(axis, layer)
        if axis in LAYER_AXES and not self.has_axis(axis, layer):
            return []  # a block of another type: nothing of this axis to slice
        if axis == "mamba_heads":
            return self._mamba_head_tensors(layer, 1)
        if axis == "mamba_groups":
            n, size = self.ssm_state_size, self.n_groups * self.ssm_state_size
            inner = self.mamba_num_heads * self.mamba_head_dim
            out = self._rows(Rows(self.in_proj(layer), 2 * inner, size), n, self.mamba_bias)  # B
            out += self._rows(Rows(self.in_proj(layer), 2 * inner + size, size), n, self.mamba_bias)  # C
            conv = self._mixer(layer, "conv1d")
            for offset in (inner, inner + size):
                out.append(TensorSlice(f"{conv}.weight", 0, n, offset, size))
                if self.conv_bias:
                    out.append(TensorSlice(f"{conv}.bias", 0, n, offset, size))
            return out + self._mamba_head_tensors(layer, self.mamba_heads_per_group)
        return super().axis_tensors(axis, layer)

    def _mamba_head_tensors(self, i: int, heads: int) -> list[TensorSlice]:
        """The tensors a Mamba head owns, with `heads` consecutive heads per index (a group's, for groups)."""
        nh, hd = self.mamba_num_heads, self.mamba_head_dim
        inner, conv_dim = nh * hd, nh * hd + 2 * self.n_groups * self.ssm_state_size
        proj, conv = self.in_proj(i), self._mixer(i, "conv1d")
        out = self._rows(Rows(proj, 0, inner), heads * hd, self.mamba_bias)  # z, the gate
        out += self._rows(Rows(proj, inner, inner), heads * hd, self.mamba_bias)  # x
        out += self._rows(Rows(proj, inner + conv_dim, nh), heads, self.mamba_bias)  # dt
        out.append(TensorSlice(f"{conv}.weight", 0, heads * hd, 0, inner))
        if self.conv_bias:
            out.append(TensorSlice(f"{conv}.bias", 0, heads * hd, 0, inner))
        out += [TensorSlice(self._mixer(i, name), 0, heads) for name in ("dt_bias", "A_log", "D")]
        out.append(TensorSlice(f"{self._mixer(i, 'norm')}.weight", 0, heads * hd))
        return out + [TensorSlice(f"{self.out_proj(i)}.weight", 1, heads * hd)]

    # ---- names and shapes --------------------------------------------------------------------------
    def layer_tensor_shapes(self, i: int) -> dict[str, tuple[int, ...]]:
        h = self.hidden_size
        out = self._norm_shapes(i)
        kind = self.kind(i)
        if kind == "attention":
            out.update(self._attention_shapes(i))
        elif kind == "mlp":
            out.update(self._mlp_shapes(i))
        else:
            nh, inner = self.mamba_num_heads, self.mamba_num_heads * self.mamba_head_dim
            conv_dim = inner + 2 * self.n_groups * self.ssm_state_size
            out[f"{self.in_proj(i)}.weight"] = (inner + conv_dim + nh, h)
            if self.mamba_bias:
                out[f"{self.in_proj(i)}.bias"] = (inner + conv_dim + nh,)
            out[f"{self._mixer(i, 'conv1d')}.weight"] = (conv_dim, 1, self.config.conv_kernel)
            if self.conv_bias:
                out[f"{self._mixer(i, 'conv1d')}.bias"] = (conv_dim,)
            for name in ("dt_bias", "A_log", "D"):
                out[self._mixer(i, name)] = (nh,)
            out[f"{self._mixer(i, 'norm')}.weight"] = (inner,)
            out[f"{self.out_proj(i)}.weight"] = (h, inner)
            if self.mamba_bias:
                out[f"{self.out_proj(i)}.bias"] = (h,)
        return out

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(blocks={''.join(self.block_symbols)}, hidden={self.hidden_size}, "
            f"ffn={self.intermediate_size}, heads={self.num_attention_heads}, kv_heads={self.num_key_value_heads}, "
            f"mamba_heads={self.mamba_num_heads}, mamba_groups={self.n_groups})"
        )

    @property
    def block_symbols(self) -> list[str]:
        symbol = {"mamba": "M", "attention": "*", "mlp": "-"}
        return [symbol[self.block_kinds[t]] for t in self.block_types]


def _prod(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def dtype_of(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype
