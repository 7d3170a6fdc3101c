"""The supported families. Adding one means a subclass here and an entry in `FAMILIES`."""

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
    norm_has_bias = False

    @property
    def attention_bias(self) -> bool:
        # Qwen2 always carries q/k/v biases and no o_proj bias; its config has no `attention_bias` field.
        if self.config.model_type == "qwen2":
            return True
        return super().attention_bias

    def layer_tensor_names(self, i: int) -> list[str]:
        names = super().layer_tensor_names(i)
        if self.config.model_type == "qwen2":
            names.remove(f"{self.o_proj(i)}.bias")
        return names

    def _linear(self, path, dim, unit, bias):
        if self.config.model_type == "qwen2" and path.endswith("o_proj"):
            bias = False
        return super()._linear(path, dim, unit, bias)


FAMILIES: tuple[type[FamilyAdapter], ...] = (NemotronAdapter, LlamaAdapter)
