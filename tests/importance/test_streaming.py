"""`estimate_streaming` equals `estimate`, and its memory does not grow with the number of layers."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from minitron.errors import MinitronError
from minitron.importance import StreamingStats, estimate, estimate_streaming
from minitron.models import get_adapter
from minitron.models.tiny import tiny_model


def calibration_batches(vocab: int = 128, seq: int = 10) -> list:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (3, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[1, seq // 2 :] = 0
    mask[2, 3:] = 0
    return [
        {"input_ids": ids, "attention_mask": mask},
        torch.randint(3, vocab, (2, seq), generator=g),
    ]


def assert_same_scores(got, want) -> None:
    assert set(got.tensors()) == set(want.tensors())
    for name, tensor in want.tensors().items():
        tol = 1e-5 * float(tensor.abs().max())
        torch.testing.assert_close(getattr(got, name), tensor, rtol=1e-5, atol=tol, msg=name)
    assert got.metadata() == want.metadata()


@pytest.mark.parametrize(
    "family, overrides, sharded, options",
    [
        ("nemotron", {}, False, {}),
        ("nemotron", {}, True, dict(seq_agg="var", batch_agg="var", mlp_site="pre", skip_caches=2)),
        ("llama", {}, True, dict(seq_agg="l2", batch_agg="mean")),
        ("qwen2", dict(tie_word_embeddings=True), False, dict(skip_caches=3)),
    ],
    ids=["nemotron-single-file", "nemotron-sharded", "llama-sharded", "qwen2-tied"],
)
def test_streaming_equals_in_memory(tmp_path, family, overrides, sharded, options):
    model = tiny_model(family, seed=1, num_hidden_layers=3, **overrides)
    model.save_pretrained(tmp_path, max_shard_size="40KB" if sharded else "1GB")
    assert (tmp_path / "model.safetensors.index.json").exists() == sharded
    batches = calibration_batches()
    width = {k: v for k, v in options.items() if k != "skip_caches"}
    want = estimate(model, batches, progress=False, **width)
    stats = StreamingStats()
    got = estimate_streaming(tmp_path, batches, progress=False, stats=stats, **options)
    assert_same_scores(got, want)
    skip_caches = options.get("skip_caches", 1)
    assert stats.passes == -(-3 // skip_caches)


def layer_bytes(model, i: int) -> int:
    return sum(p.nbytes for p in get_adapter(model).layers(model)[i].parameters())


@pytest.mark.parametrize("skip_caches", [1, 2])
def test_peak_memory_does_not_grow_with_depth(tmp_path, skip_caches):
    """Counted from the tensors actually materialised in the skeleton and held in the activation caches."""
    stats, models = {}, {}
    width = dict(hidden_size=128, intermediate_size=512, vocab_size=256, num_attention_heads=4, head_dim=32)
    batches = calibration_batches(vocab=256, seq=16)
    for n in (2, 8):
        models[n] = model = tiny_model("nemotron", num_hidden_layers=n, **width)
        model.save_pretrained(tmp_path / str(n))
        stats[n] = StreamingStats()
        estimate_streaming(tmp_path / str(n), batches, progress=False, stats=stats[n], skip_caches=skip_caches)
    model, adapter = models[8], get_adapter(models[8])
    embed = model.get_submodule(adapter.embed).weight.nbytes
    head = sum(p.nbytes for p in model.get_submodule(adapter.final_norm).parameters()) + model.lm_head.weight.nbytes
    rotary = sum(b.nbytes for b in model.get_submodule(adapter.rotary_emb).buffers())
    largest = max(layer_bytes(model, 0), embed, head) + rotary
    assert stats[2].peak_weight_bytes == stats[8].peak_weight_bytes == largest
    assert largest < sum(p.nbytes for p in model.parameters()) / 4
    cache = sum(b["input_ids"].numel() if isinstance(b, dict) else b.numel() for b in batches) * 128 * 4
    assert stats[2].peak_cache_bytes == stats[8].peak_cache_bytes == (1 + skip_caches) * cache
    assert (stats[2].passes, stats[8].passes) == (-(-2 // skip_caches), -(-8 // skip_caches))


RSS_PROBE = textwrap.dedent(
    """
    import resource, sys, torch
    from minitron.importance import estimate_streaming
    ids = torch.randint(3, 512, (4, 32), generator=torch.Generator().manual_seed(0))
    estimate_streaming(sys.argv[1], [ids[:1]], depth=(), progress=False)  # warm up allocator and imports
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    estimate_streaming(sys.argv[1], [ids], depth=("bi",), progress=False)
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
    """
)


@pytest.mark.slow  # two fresh interpreters; the tensor-level count above runs in the fast suite
def test_resident_memory_does_not_grow_with_depth(tmp_path):
    """The process's peak RSS, in a fresh interpreter per checkpoint, with layers big enough to dominate."""
    width = dict(hidden_size=512, intermediate_size=2048, vocab_size=512, num_attention_heads=8, head_dim=64,
                 num_key_value_heads=4)
    growth, per_layer = {}, 0
    for n in (2, 8):
        model = tiny_model("nemotron", num_hidden_layers=n, **width)
        per_layer = layer_bytes(model, 0)
        model.save_pretrained(tmp_path / str(n))
        del model
        out = subprocess.run(
            [sys.executable, "-c", RSS_PROBE, str(tmp_path / str(n))], capture_output=True, text=True, check=True
        )
        growth[n] = int(out.stdout.strip().splitlines()[-1])
    # holding all layers would add 6 more layers (about 50 MB) to the 8-layer run
    assert growth[8] - growth[2] < 2 * per_layer, json.dumps({**growth, "per_layer": per_layer})


def test_missing_checkpoint_is_a_one_line_error(tmp_path):
    tiny_model("llama").config.save_pretrained(tmp_path)
    with pytest.raises(MinitronError, match="holds neither model.safetensors"):
        estimate_streaming(tmp_path, calibration_batches(), progress=False)


def test_dtype_casts_the_weights_as_they_are_read(tmp_path):
    model = tiny_model("llama", seed=2)
    model.save_pretrained(tmp_path)
    batches = calibration_batches()
    # as `from_pretrained(dtype=...)` loads it: bf16 weights, float32 rotary frequencies
    reloaded = type(model).from_pretrained(tmp_path, dtype=torch.bfloat16)
    want = estimate(reloaded, batches, depth=("bi",), progress=False)
    stats = StreamingStats()
    got = estimate_streaming(tmp_path, batches, depth=("bi",), dtype=torch.bfloat16, progress=False, stats=stats)
    float32 = estimate_streaming(tmp_path, batches, depth=("bi",), progress=False)
    assert_same_scores(got, want)
    assert stats.peak_weight_bytes < sum(p.nbytes for p in tiny_model("llama").parameters())  # 2 bytes a weight
    assert any(not torch.equal(getattr(float32, n), t) for n, t in got.tensors().items())
