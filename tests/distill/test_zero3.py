"""Slow: ZeRO-3 on 2 CPU ranks creates teacher and student partitioned, and the chunked loss runs under it.

The probe (`zero3_probe.py`) checks creation and one loss + backward; the CLI runs check whole distillations.
Tolerances: float32, 1e-5 relative (only the order of floating-point sums differs between the plain and the
chunked loss); bfloat16, 2e-2 of the largest gradient entry (bf16 keeps 8 bits of mantissa, ~0.4% per
rounding, and the student's backward runs in bf16).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest
import torch
from distill_helpers import make_student
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from test_multirank import BIN, _args, _check, _env, _losses, _port

pytestmark = pytest.mark.slow

PROBE = Path(__file__).with_name("zero3_probe.py")


@pytest.fixture(scope="module")
def models(tiny_teacher, tmp_path_factory):
    teacher, cache = tiny_teacher
    student = make_student(teacher, tmp_path_factory.mktemp("student") / "s", num_hidden_layers=1)
    return teacher, cache, student


def _torchrun(*argv: str, cache: Path) -> subprocess.CompletedProcess:
    env = _env(cache)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).parents[2]), env.get("PYTHONPATH")) if p)
    return subprocess.run([str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(_port()), *argv],
                          env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("bf16", [False, True])
def test_models_are_created_partitioned_and_the_chunked_loss_equals_the_plain_one(models, tmp_path, bf16):
    teacher, cache, student = models
    out = tmp_path / "probe.json"
    _check(_torchrun(str(PROBE), str(teacher), str(student), str(out), "1" if bf16 else "0", cache=cache))
    records = json.loads(out.read_text())
    assert [r["rank"] for r in records] == [0, 1]
    for record in records:
        for which in ("teacher", "student"):
            params = record[which]
            assert params, which
            for p in params:
                # right after creation, before any engine: no rank holds the weight, each holds its half
                assert p["numel"] == 0 and p["status"] == "ZeroParamStatus.NOT_AVAILABLE", (which, p)
                assert p["partition"] == math.ceil(p["ds_numel"] / 2), (which, p)
        assert record["read_by_partition"] and record["max_diff"] == {"teacher": 0.0, "student": 0.0}, record["max_diff"]
        assert record["generation_config"] == [True, True]  # the folders' generation settings, as from_pretrained
        # the teacher in the training dtype (bf16 when bf16 is on), never in float32 then
        assert {p["dtype"] for p in record["teacher"]} == {"torch.bfloat16" if bf16 else "torch.float32"}
    # saved one gathered tensor at a time: the same files as transformers' whole-model save, loaded by stock
    # from_pretrained with the same weights
    assert records[0]["saved_by_tensor"]
    by_tensor, whole = load_file(str(tmp_path / "saved_by_tensor" / "model.safetensors")), load_file(
        str(tmp_path / "saved_whole" / "model.safetensors"))
    assert by_tensor.keys() == whole.keys()
    for k in whole:
        assert by_tensor[k].dtype == whole[k].dtype == (torch.bfloat16 if bf16 else torch.float32), k
        assert torch.equal(by_tensor[k], whole[k]), k
    configs = [json.loads((tmp_path / d / "config.json").read_text()) for d in ("saved_by_tensor", "saved_whole")]
    assert configs[0] == configs[1]
    assert (tmp_path / "saved_by_tensor" / "generation_config.json").read_text() == (
        tmp_path / "saved_whole" / "generation_config.json").read_text()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved_by_tensor")
    for k, v in loaded.state_dict().items():
        if k not in whole:  # a tied output weight: save_pretrained keeps only the embedding
            assert loaded.config.tie_word_embeddings and k == "lm_head.weight", k
            continue
        assert torch.equal(v, whole[k].to(v.dtype)), k
    rtol = 2e-2 if bf16 else 1e-5
    for kind, (plain, chunked, again) in records[0]["losses"].items():
        assert (plain["chunk"], chunked["chunk"]) == (0, 16)
        assert again["loss"] == plain["loss"] and again["grads"] == plain["grads"], "gradients leak between runs"
        assert chunked["loss"] == pytest.approx(plain["loss"], rel=1e-5 if not bf16 else 1e-3), kind
        assert plain["grads"].keys() == chunked["grads"].keys()
        for name, g in plain["grads"].items():
            a, b = torch.tensor(g), torch.tensor(chunked["grads"][name])
            scale = float(a.abs().max())
            assert scale > 0, f"{kind}: no gradient reached {name}"
            torch.testing.assert_close(b, a, rtol=0, atol=rtol * scale, msg=f"{kind}: {name}")


def test_zero3_distillation_with_the_chunked_loss_equals_the_plain_loss(models, tmp_path):
    """Whole `minitron distill` runs on 2 ranks under ZeRO-3: the chunked loss (no fallback) and full logits give
    the same logged losses and the same final student weights."""
    teacher, cache, student = models
    steps = ["train.max_steps=4", "train.save_steps=0", "deepspeed=zero3", "train.batch_size=2"]
    runs = {}
    for name, chunk in (("chunked", 16), ("plain", 0)):
        proc = _torchrun("-m", "minitron", "distill",
                         *_args(teacher, cache, student, tmp_path / name, *steps, f"distill.chunk_size={chunk}"), cache=cache)
        _check(proc)
        assert "created partitioned over 2 ranks by ZeRO-3" in proc.stdout
        assert "WARNING" not in proc.stdout
        runs[name] = proc
    chunked, plain = _losses(tmp_path / "chunked"), _losses(tmp_path / "plain")
    assert len(chunked) == 4 and chunked == pytest.approx(plain, rel=1e-5)
    a = load_file(str(tmp_path / "plain" / "student" / "model.safetensors"))
    b = load_file(str(tmp_path / "chunked" / "student" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6, msg=f"{k} differs between chunked and plain")
