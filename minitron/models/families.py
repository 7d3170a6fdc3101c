"""The supported families. Adding one means a subclass here and an entry in `FAMILIES`; each subclass states
only where its decoder layer differs from the Llama layout the base class describes."""

from __future__ import annotations

from minitron.models.adapter import FamilyAdapter


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


FAMILIES: tuple[type[FamilyAdapter], ...] = (NemotronAdapter, LlamaAdapter)
