"""The family adapters against stock transformers models: names, shapes, GQA groups and axis maps."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    NemotronConfig,
    Qwen2Config,
)

from minitron.errors import MinitronError
from minitron.models import SUPPORTED_MODEL_TYPES, LlamaAdapter, NemotronAdapter, get_adapter

# Distinct sizes so that a dimension's size tells which axis it belongs to.
HIDDEN, FFN, HEADS, KV, HEAD_DIM, VOCAB, LAYERS = 40, 72, 4, 2, 12, 100, 2

CASES = {
    "nemotron": (NemotronConfig, {}),
    "llama": (LlamaConfig, {}),
    "llama_biases_tied": (LlamaConfig, {"attention_bias": True, "mlp_bias": True, "tie_word_embeddings": True}),
    "mistral": (MistralConfig, {}),
    "qwen2": (Qwen2Config, {}),
}


def make(case: str, **overrides):
    cls, extra = CASES[case]
    kw = dict(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV, head_dim=HEAD_DIM, max_position_embeddings=64,
    )
    kw.update(extra)
    kw.update(overrides)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cls(**kw))


@pytest.mark.parametrize("case", CASES)
def test_names_match_the_stock_model(case):
    model = make(case)
    adapter = get_adapter(model)
    adapter.check_model(model)
    assert isinstance(adapter, NemotronAdapter if case == "nemotron" else LlamaAdapter)
    assert (adapter.num_hidden_layers, adapter.hidden_size, adapter.intermediate_size) == (LAYERS, HIDDEN, FFN)
    assert (adapter.num_attention_heads, adapter.num_key_value_heads, adapter.head_dim, adapter.heads_per_group) == (HEADS, KV, HEAD_DIM, 2)
    assert [adapter.kv_group_of_head(h) for h in range(HEADS)] == [0, 0, 1, 1]
    assert len(adapter.layers(model)) == LAYERS
    norm_cls = "NemotronLayerNorm1P" if case == "nemotron" else "RMSNorm"
    for i in range(LAYERS):
        for path in adapter.norms(i):
            assert type(adapter.module(model, path)).__name__.endswith(norm_cls)
        for path in (adapter.q_proj(i), adapter.k_proj(i), adapter.v_proj(i), adapter.o_proj(i), adapter.down_proj(i), *adapter.mlp_in(i)):
            assert isinstance(adapter.module(model, path), torch.nn.Linear)
        assert len(adapter.mlp_in(i)) == (1 if case == "nemotron" else 2)
    assert isinstance(adapter.module(model, adapter.embed), torch.nn.Embedding)
    assert isinstance(adapter.module(model, adapter.lm_head), torch.nn.Linear)


@pytest.mark.parametrize("case", CASES)
def test_axis_maps_name_every_tensor_of_that_size(case):
    """Each axis names exactly the tensors whose dimension has the axis's size (sizes are chosen distinct)."""
    model = make(case)
    adapter = get_adapter(model)
    state = model.state_dict()
    if adapter.tied_embeddings:
        state.pop("lm_head.weight")

    hidden = {(t.name, t.dim) for t in adapter.axis_tensors("hidden")}
    assert hidden == {(k, d) for k, v in state.items() for d, n in enumerate(v.shape) if n == HIDDEN}

    for i in range(LAYERS):
        prefix = f"model.layers.{i}."
        mlp = {(t.name, t.dim) for t in adapter.axis_tensors("mlp", i)}
        assert mlp == {(k, d) for k, v in state.items() if k.startswith(prefix) for d, n in enumerate(v.shape) if n == FFN}
        heads = {(t.name, t.dim) for t in adapter.axis_tensors("heads", i)}
        assert heads == {
            (k, d) for k, v in state.items() if k.startswith(prefix) for d, n in enumerate(v.shape) if n == HEADS * HEAD_DIM
        }
        kv = adapter.axis_tensors("kv_groups", i)
        for t in kv:
            assert state[t.name].shape[t.dim] == KV * t.unit, t
        assert {t.name for t in adapter.axis_tensors("layers", i)} == {k for k in state if k.startswith(prefix)}


def _slice(state, slices, keep):
    out = dict(state)
    for t in slices:
        idx = torch.cat([torch.arange(k * t.unit, (k + 1) * t.unit) for k in keep])
        out[t.name] = out[t.name].index_select(t.dim, idx)
    return out


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("axis", ["hidden", "heads", "kv_groups", "mlp"])
def test_slicing_by_the_axis_map_gives_a_loadable_smaller_model(case, axis):
    """Slicing what the adapter names, and nothing else, fits a config with the smaller size exactly."""
    model = make(case)
    adapter = get_adapter(model)
    state = model.state_dict()
    if axis == "hidden":
        keep = [0, 3, 5, 7, 11, 20, 30, 39]
        state = _slice(state, adapter.axis_tensors("hidden"), keep)
        small = make(case, hidden_size=len(keep))
    else:
        keep = {"heads": [0, 3], "kv_groups": [1], "mlp": list(range(0, FFN, 2))}[axis]
        for i in range(LAYERS):
            state = _slice(state, adapter.axis_tensors(axis, i), keep)
        size = {
            "heads": {"num_attention_heads": 2},
            "kv_groups": {"num_attention_heads": 2, "num_key_value_heads": 1},
            "mlp": {"intermediate_size": len(keep)},
        }[axis]
        small = make(case, **size)
    if adapter.tied_embeddings:  # the tied head is the embedding itself, not a tensor of its own
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    small.load_state_dict(state, strict=True)  # raises on any missing, unexpected or mis-shaped tensor
    out = small(torch.tensor([[1, 2, 3, 4]])).logits
    assert out.shape == (1, 4, VOCAB) and torch.isfinite(out).all()


def test_layers_axis_and_range_checks():
    adapter = get_adapter(make("nemotron"))
    with pytest.raises(MinitronError, match="layer index 2 is out of range"):
        adapter.axis_tensors("mlp", 2)
    with pytest.raises(ValueError, match="per layer"):
        adapter.axis_tensors("heads")
    with pytest.raises(ValueError, match="unknown axis"):
        adapter.axis_tensors("rows", 0)
    with pytest.raises(ValueError, match="axis 'experts' needs a mixture-of-experts family; nemotron is dense"):
        adapter.axis_tensors("experts", 0)


def test_config_alone_is_enough():
    config = NemotronConfig(hidden_size=HIDDEN, num_attention_heads=HEADS, num_key_value_heads=KV, head_dim=HEAD_DIM,
                            num_hidden_layers=3, intermediate_size=FFN, vocab_size=VOCAB)
    adapter = get_adapter(config)
    # embedding; per layer 2 norms x (weight, bias) + q, k, v, o + up, down; final norm weight and bias; lm_head
    assert len(adapter.tensor_names()) == 1 + 3 * 10 + 2 + 1


def test_unsupported_architecture_lists_the_supported_ones():
    types = ("nemotron, llama, mistral, qwen2, qwen3, olmo2, gemma2, gemma3_text, phi3, granite, smollm3, mixtral, qwen3_moe, nemotron_h")
    assert ", ".join(SUPPORTED_MODEL_TYPES) == types
    with pytest.raises(MinitronError, match=rf"model_type='gpt2'.*supported model types: {types}$"):
        get_adapter(GPT2Config())


def test_impossible_gqa_layout():
    config = NemotronConfig(hidden_size=48, num_attention_heads=6, num_key_value_heads=4, head_dim=8)
    with pytest.raises(MinitronError, match="not a multiple of num_key_value_heads"):
        get_adapter(config)
