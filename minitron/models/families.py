"""The supported families. Adding one means a subclass here and an entry in `FAMILIES`; each subclass states
only where its decoder layer differs from the Llama layout the base class describes."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor

from minitron.errors import MinitronError
from minitron.models.adapter import FamilyAdapter, HybridAdapter, MoEAdapter


class NemotronAdapter(FamilyAdapter):
    """`NemotronForCausalLM`: LayerNorm1P (zero-centred weight, with bias), relu2 MLP without a gate,
    partial rotary embedding, GQA and an explicit `head_dim`."""

    family = "nemotron"
    model_types = ("nemotron",)
    gated_mlp = False
    norm_has_bias = True


class LlamaAdapter(FamilyAdapter):
    """Llama, Mistral and Qwen2: RMSNorm (no bias) and a gated MLP (`gate_proj`, `up_proj`, `down_proj`)."""

    family = "llama"
    model_types = ("llama", "mistral", "qwen2")
    gated_mlp = True

    @property
    def qkv_bias(self) -> bool:
        # Qwen2 always carries q/k/v biases and no o_proj bias; its config has no `attention_bias` field.
        return True if self.config.model_type == "qwen2" else super().qkv_bias

    @property
    def o_bias(self) -> bool:
        return False if self.config.model_type == "qwen2" else super().o_bias


class Qwen3Adapter(FamilyAdapter):
    """`Qwen3ForCausalLM`: the Llama layer plus RMSNorms on each query and key head (`q_norm`, `k_norm`, one
    weight of `head_dim` shared by all heads, so head and KV-group pruning leave them whole)."""

    family = "qwen3"
    model_types = ("qwen3",)
    gated_mlp = True
    qk_norm = "head"


class Olmo2Adapter(FamilyAdapter):
    """`Olmo2ForCausalLM`: norms after attention and after the MLP (none before), and q/k RMSNorms over the
    whole query and key projections, so their weights are sliced with the heads and KV groups (the pruned norm's
    RMS then runs over the kept heads only, as a hidden-pruned RMSNorm runs over the kept channels)."""

    family = "olmo2"
    model_types = ("olmo2",)
    gated_mlp = True
    layer_norm_names = ("post_attention_layernorm", "post_feedforward_layernorm")
    qk_norm = "projection"

    def hidden_sites(self, i: int) -> list[tuple[str, str]]:
        # No norm precedes attention or the MLP: both read the residual stream itself, so the channels are
        # scored on what the projections read (the role the paper gives the pre-norm outputs).
        return [(self.q_rows(i).path, "in"), (self.up_rows(i).path, "in")]


class Gemma2Adapter(FamilyAdapter):
    """`Gemma2ForCausalLM`: RMSNorms with a (1 + weight) gain before and after both attention and the MLP, an
    embedding scaled by sqrt(hidden_size) inside the embedding module, tied embeddings by default, logit
    soft-capping and alternating sliding-window layers (the last two live in the config and carry over)."""

    family = "gemma2"
    model_types = ("gemma2",)
    gated_mlp = True
    layer_norm_names = ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm")
    hidden_site_norms = ("input_layernorm", "pre_feedforward_layernorm")

    def logits(self, logits: Tensor) -> Tensor:
        cap = getattr(self.config, "final_logit_softcapping", None)
        return logits if cap is None else torch.tanh(logits / cap) * cap

    def derived_buffers(self) -> dict[str, Tensor]:
        # Gemma2TextScaledWordEmbedding: `embed_scale = hidden_size**0.5`, a non-persistent buffer.
        return {f"{self.embed}.embed_scale": torch.tensor(self.hidden_size**0.5)}

    def hidden_transforms(self, kept: int) -> dict[str, Callable[[Tensor], Tensor]]:
        # The model multiplies the embedding output by sqrt(hidden_size) (Gemma Team 2024, arXiv:2403.08295,
        # sec. 2; `embed_scale` in transformers' Gemma2/Gemma3TextScaledWordEmbedding), so a pruned config
        # would scale it by sqrt(kept) instead. Folding the constant ratio into the weights, as SliceGPT
        # (Ashkboos et al. 2024, arXiv:2401.15024, sec. 3) folds norm gains into adjacent matrices, keeps the
        # residual stream equal to the source's kept channels. A tied LM head reads the same matrix, so the
        # final norm's gain (1 + weight) is divided by the same ratio: the head's logits are unchanged.
        source = self.hidden_size

        def ratio(dtype: torch.dtype) -> float:
            # the model casts the scale to the weight dtype before multiplying: compensate that exact value
            scale = lambda h: float(torch.tensor(h**0.5, dtype=torch.float64).to(dtype))
            return scale(source) / scale(kept)

        def embedding(w: Tensor) -> Tensor:
            return (w.double() * ratio(w.dtype)).to(w.dtype)

        def final_norm(w: Tensor) -> Tensor:
            return ((1 + w.double()) / ratio(w.dtype) - 1).to(w.dtype)

        out = {f"{self.embed}.weight": embedding}
        if self.tied_embeddings:
            out[f"{self.final_norm}.weight"] = final_norm
        return out


class Gemma3Adapter(Gemma2Adapter):
    """`Gemma3ForCausalLM` (text only, `Gemma3TextConfig`): the Gemma 2 layer with per-head q/k RMSNorms over
    `head_dim` (left whole by head pruning) and sliding-window layers set by `layer_types`."""

    family = "gemma3"
    model_types = ("gemma3_text",)
    qk_norm = "head"


class Phi3Adapter(FamilyAdapter):
    """`Phi3ForCausalLM`: one fused `qkv_proj` (query, key and value rows one block after another) and one fused
    `gate_up_proj` (gate rows, then up rows); every axis slices its block of those rows."""

    family = "phi3"
    model_types = ("phi3",)
    gated_mlp = True
    fused_qkv = "self_attn.qkv_proj"
    fused_gate_up = "mlp.gate_up_proj"


class GraniteAdapter(FamilyAdapter):
    """`GraniteForCausalLM`: the Llama layout with embedding, residual, attention and logit multipliers taken
    from the config (they carry over to the pruned config unchanged)."""

    family = "granite"
    model_types = ("granite",)
    gated_mlp = True

    def embed_output(self, embeds: Tensor) -> Tensor:
        return embeds * self.config.embedding_multiplier  # GraniteModel.forward

    def logits(self, logits: Tensor) -> Tensor:
        return logits / self.config.logits_scaling  # GraniteForCausalLM.forward


class SmolLM3Adapter(FamilyAdapter):
    """`SmolLM3ForCausalLM`: the Llama layout where some layers use no rotary embedding (NoPE); the per-layer
    flags `no_rope_layers` follow the kept layers when depth is pruned."""

    family = "smollm3"
    model_types = ("smollm3",)
    gated_mlp = True
    per_layer_config_fields = ("layer_types", "no_rope_layers")


class MixtralAdapter(MoEAdapter):
    """`MixtralForCausalLM`: the Mistral layer with a sparse MoE in place of the MLP; every expert is
    `intermediate_size` neurons wide and the expert count is `num_local_experts` (alias `num_experts`)."""

    family = "mixtral"
    model_types = ("mixtral",)
    # Mixtral checkpoints keep the original release's names: `block_sparse_moe`, with w1 (gate), w3 (up), w2 (down)
    stored_block = "block_sparse_moe"
    stored_experts = ("w1", "w3", "w2")


class Qwen3MoeAdapter(MoEAdapter):
    """`Qwen3MoeForCausalLM`: the Qwen3 layer (per-head `q_norm`/`k_norm`) with a sparse MoE whose experts are
    `moe_intermediate_size` neurons wide (`intermediate_size` is the width of dense MLP layers, which this
    adapter refuses: every layer must be sparse so that one layout describes them all)."""

    family = "qwen3_moe"
    model_types = ("qwen3_moe",)
    qk_norm = "head"
    mlp_size_field = "moe_intermediate_size"

    def validate(self) -> None:
        super().validate()
        c = self.config
        if c.mlp_only_layers or c.decoder_sparse_step != 1:
            raise MinitronError(
                f"qwen3_moe with dense MLP layers (mlp_only_layers={list(c.mlp_only_layers or [])}, "
                f"decoder_sparse_step={c.decoder_sparse_step}) is not supported; every layer must be sparse "
                "(mlp_only_layers=[] and decoder_sparse_step=1)"
            )


class NemotronHAdapter(HybridAdapter):
    """`NemotronHForCausalLM`: Nemotron-H (NVIDIA 2025, arXiv 2504.03624) stacks Mamba-2 blocks
    (`linear_attention`), attention blocks without positional embedding and without biases (`full_attention`) and
    relu2 MLP blocks without a gate (`mlp`), each behind one RMSNorm, in the order of `layers_block_type` (the
    `hybrid_override_pattern` "M-M-M-M*-..." of the released configs). Depth pruning drops blocks and their entries
    of `layers_block_type` together. Mixture-of-experts blocks (`moe`, in later Nemotron models) are not supported."""

    family = "nemotron_h"
    model_types = ("nemotron_h",)
    gated_mlp = False
    embed = "model.embeddings"
    final_norm = "model.norm_f"
    rotary_emb = None  # its attention has no positional embedding
    per_layer_config_fields = ("layers_block_type",)
    block_kinds: ClassVar[dict[str, str]] = {"linear_attention": "mamba", "full_attention": "attention", "mlp": "mlp"}

    # Checkpoints keep the original release's `backbone.` prefix (transformers renames it to `model.` on load).
    def stored_shapes(self, name: str, shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        return {self._stored(name): shape}

    def to_stored(self, name: str, tensor: Tensor) -> dict[str, Tensor]:
        return {self._stored(name): tensor}

    @staticmethod
    def _stored(name: str) -> str:
        return "backbone." + name[len("model."):] if name.startswith("model.") else name

    @property
    def qkv_bias(self) -> bool:
        return False  # NemotronHAttention builds q/k/v/o without biases whatever `attention_bias` says

    @property
    def o_bias(self) -> bool:
        return False


FAMILIES: tuple[type[FamilyAdapter], ...] = (
    NemotronAdapter,
    LlamaAdapter,
    Qwen3Adapter,
    Olmo2Adapter,
    Gemma2Adapter,
    Gemma3Adapter,
    Phi3Adapter,
    GraniteAdapter,
    SmolLM3Adapter,
    MixtralAdapter,
    Qwen3MoeAdapter,
    NemotronHAdapter,
)
