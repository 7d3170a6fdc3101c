"""Tiny seeded random models of every supported family, for tests, examples and benchmarks.

    >>> from minitron.models.tiny import tiny_model
    >>> model = tiny_model("nemotron")           # 2 layers, hidden 64, 4 query heads in 2 KV groups
    >>> model = tiny_model("llama", seed=1, num_hidden_layers=4)

Every model has vocab 128, hidden 64, 2 layers, 4 query heads sharing 2 KV heads (GQA), head_dim 16 and
intermediate 128, in float32, unless overridden. `gemma3` is the text-only `Gemma3ForCausalLM`. `mixtral` and
`qwen3_moe` have 4 experts of 48 neurons, 2 routed per token; `nemotron_h` repeats the blocks Mamba, MLP, attention, MLP. Building one never touches the network or the global RNG.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    GraniteConfig,
    LlamaConfig,
    MistralConfig,
    MixtralConfig,
    NemotronConfig,
    NemotronHConfig,
    Olmo2Config,
    Phi3Config,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
    Qwen3Config,
    Qwen3MoeConfig,
    SmolLM3Config,
)

from minitron.errors import MinitronError

_CONFIGS: dict[str, type[PretrainedConfig]] = {
    "nemotron": NemotronConfig,
    "llama": LlamaConfig,
    "mistral": MistralConfig,
    "qwen2": Qwen2Config,
    "qwen3": Qwen3Config,
    "olmo2": Olmo2Config,
    "gemma2": Gemma2Config,
    "gemma3": Gemma3TextConfig,
    "phi3": Phi3Config,
    "granite": GraniteConfig,
    "smollm3": SmolLM3Config,
    "mixtral": MixtralConfig,
    "qwen3_moe": Qwen3MoeConfig,
    "nemotron_h": NemotronHConfig,
}

_COMMON: dict[str, Any] = dict(
    vocab_size=128,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    max_position_embeddings=512,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
    tie_word_embeddings=False,
)

# Qwen2, OLMo-2 and Phi-3 configs have no `head_dim`: their head size is hidden_size / num_attention_heads
# (64 / 4 = 16). Each family keeps its quirks switched on at this size: Gemma's soft-capping and a sliding
# window shorter than the test sequences, Granite's multipliers away from 1, a SmolLM3 NoPE layer every second.
_GEMMA = dict(head_dim=16, query_pre_attn_scalar=16, sliding_window=4, tie_word_embeddings=True)
_FAMILY: dict[str, dict[str, Any]] = {
    "nemotron": dict(head_dim=16),
    "llama": dict(head_dim=16),
    "mistral": dict(head_dim=16, sliding_window=None),
    "qwen2": dict(),
    "qwen3": dict(head_dim=16),
    "olmo2": dict(),
    "gemma2": dict(_GEMMA, final_logit_softcapping=30.0, attn_logit_softcapping=50.0),
    "gemma3": dict(_GEMMA, sliding_window_pattern=2, final_logit_softcapping=30.0),
    "phi3": dict(),
    "granite": dict(embedding_multiplier=4.0, residual_multiplier=0.5, attention_multiplier=0.125, logits_scaling=2.0),
    "smollm3": dict(no_rope_layer_interval=2, tie_word_embeddings=True),
    # 4 experts, 2 per token; Qwen3-MoE's experts are narrower than its (unused) dense intermediate_size.
    "mixtral": dict(head_dim=16, sliding_window=None, num_local_experts=4, num_experts_per_tok=2, intermediate_size=48),
    "qwen3_moe": dict(head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=48, norm_topk_prob=True),
    # A Mamba block, an MLP, attention, an MLP (the released pattern "M-*-" in short; 4 blocks by default, so that
    # every type is there); `num_hidden_layers=n` takes the first n of the repeated pattern. 8 Mamba heads of 8
    # channels in 2 groups, state 16.
    "nemotron_h": dict(num_hidden_layers=4, head_dim=16, mamba_num_heads=8, mamba_head_dim=8, n_groups=2, ssm_state_size=16, conv_kernel=4,
                       chunk_size=16),
}
_HYBRID_PATTERN = ("linear_attention", "mlp", "full_attention", "mlp")

TINY_FAMILIES: tuple[str, ...] = tuple(_CONFIGS)


def tiny_config(family: str, **overrides: Any) -> PretrainedConfig:
    """The config of a tiny `family` model; `overrides` are HF config fields (e.g. `num_hidden_layers=8`)."""
    if family not in _CONFIGS:
        raise MinitronError(f"unknown tiny model family '{family}'; expected one of {', '.join(TINY_FAMILIES)}")
    fields = {**_COMMON, **_FAMILY[family], **overrides}
    if family == "nemotron_h" and "layers_block_type" not in fields:  # its layer count is its pattern's length
        layers = fields.pop("num_hidden_layers")
        fields["layers_block_type"] = [_HYBRID_PATTERN[i % len(_HYBRID_PATTERN)] for i in range(layers)]
    elif family == "nemotron_h":
        fields.pop("num_hidden_layers", None)
    config = _CONFIGS[family](**fields)
    config.dtype = torch.float32
    return config


def tiny_model(family: str, seed: int = 0, **overrides: Any) -> PreTrainedModel:
    """A tiny random causal LM of `family`, initialised from `seed` in eval mode (float32 unless overridden)."""
    config = tiny_config(family, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=config.dtype)
    return model.eval()
