"""Slow: ZeRO-3 on 2 CPU ranks against 1 rank, a 2-node run on loopback, and kill-and-resume.

Runs the real CLI in subprocesses (`torchrun ... -m minitron distill`) with DS_ACCELERATOR=cpu.
Tolerance for rank-count parity: 1e-5 relative on every logged loss and on the final validation loss (the
2-rank run sees the same global batches; only the order of floating-point reductions differs).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from distill_helpers import DATA, distill_cfg, make_student
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from minitron.data.calibration import packed_data
from minitron.train.validation import lm_loss

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
COMMON = DATA + ["train.warmup_steps=1", "train.logging_steps=1", "train.eval_batches=2", "train.lr=1e-3"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(cache: Path) -> dict[str, str]:
    return {**os.environ, "DS_ACCELERATOR": "cpu", "MINITRON_CACHE": str(cache), "OMP_NUM_THREADS": "1"}


def _args(teacher: Path, cache: Path, student: Path, run_dir: Path, *extra: str) -> list[str]:
    return [f"teacher={teacher}", f"student={student}", f"cache_dir={cache}", f"hydra.run.dir={run_dir}", *COMMON, *extra]


def _losses(run_dir: Path) -> list[float]:
    return [json.loads(l)["loss"] for l in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]


def _check(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


@pytest.fixture(scope="module")
def models(tiny_teacher, tmp_path_factory):
    teacher, cache = tiny_teacher
    student = make_student(teacher, tmp_path_factory.mktemp("student") / "s", num_hidden_layers=1)
    return teacher, cache, student


@pytest.mark.parametrize("stage", ["zero3", "zero2"])  # zero3: partitioned models, the chunked loss in the output layer
def test_two_ranks_match_one_rank_at_the_same_global_batch(models, tmp_path, stage):
    teacher, cache, student = models
    steps = ["train.max_steps=4", "train.save_steps=0", f"deepspeed={stage}"]
    one = subprocess.run(
        [str(BIN / "torchrun"), "--nproc_per_node", "1", "--master_port", str(_port()), "-m", "minitron", "distill",
         *_args(teacher, cache, student, tmp_path / "one", *steps, "train.batch_size=2", "train.gradient_accumulation_steps=2")],
        env=_env(cache), capture_output=True, text=True, timeout=600,
    )
    _check(one)
    two = subprocess.run(
        [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(_port()), "-m", "minitron", "distill",
         *_args(teacher, cache, student, tmp_path / "two", *steps, "train.batch_size=2")],
        env=_env(cache), capture_output=True, text=True, timeout=600,
    )
    _check(two)
    l1, l2 = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(l1) == len(l2) == 4
    assert l2 == pytest.approx(l1, rel=1e-5)
    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert m2["val_loss"] == pytest.approx(m1["val_loss"], rel=1e-5) and m2["tokens"] == m1["tokens"] == 4 * 4 * 64
    # the validation losses taken on the ranks (under ZeRO-3 with the output weight gathered for the loss) are those
    # of the saved student and of the teacher in one plain process, on the same blocks
    data = packed_data(distill_cfg(teacher, cache, student).data, cache, AutoTokenizer.from_pretrained(teacher))
    for name, path in (("val_loss", tmp_path / "two" / "student"), ("teacher_val_loss", teacher)):
        expected = lm_loss(AutoModelForCausalLM.from_pretrained(path), data["validation"], batch_size=2, max_batches=2)
        assert m1[name] == pytest.approx(expected, rel=1e-5) and m2[name] == pytest.approx(expected, rel=1e-5), name
    # the gathered ZeRO-3 student is a complete stock checkpoint
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "two" / "student")
    assert model.config.num_hidden_layers == 1


def test_two_nodes_on_loopback_match_two_local_ranks(models, tmp_path):
    teacher, cache, student = models
    port = _port()
    steps = ["train.max_steps=3", "train.save_steps=0", "deepspeed=zero3", "train.batch_size=2"]
    node = lambda rank, folder: subprocess.Popen(  # noqa: E731
        [str(BIN / "torchrun"), "--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(rank),
         "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "minitron", "distill",
         *_args(teacher, cache, student, folder, *steps)],
        env=_env(cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    # each "node" has its own run folder, as on a cluster without a shared disk; rank 0 writes the results
    procs = [node(0, tmp_path / "node0"), node(1, tmp_path / "node1")]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, out[-3000:] + err[-5000:]
    local = subprocess.run(
        [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(_port()), "-m", "minitron", "distill",
         *_args(teacher, cache, student, tmp_path / "local", *steps)],
        env=_env(cache), capture_output=True, text=True, timeout=600,
    )
    _check(local)
    assert _losses(tmp_path / "node0") == pytest.approx(_losses(tmp_path / "local"), rel=1e-5)
    assert not (tmp_path / "node1" / "metrics.jsonl").exists() or not _losses(tmp_path / "node1")


def test_a_run_killed_mid_way_resumes_to_the_same_final_weights(models, tmp_path):
    teacher, cache, student = models
    steps = ["train.max_steps=30", "train.save_steps=5", "train.save_total_limit=10", "train.batch_size=2"]
    cmd = lambda folder: [str(BIN / "python"), "-m", "minitron", "distill",  # noqa: E731
                          *_args(teacher, cache, student, folder, *steps)]
    _check(subprocess.run(cmd(tmp_path / "straight"), env=_env(cache), capture_output=True, text=True, timeout=600))

    victim = subprocess.Popen(cmd(tmp_path / "killed"), env=_env(cache), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = tmp_path / "killed" / "checkpoints" / "checkpoint-10" / "trainer_state.json"
    deadline = time.time() + 300
    while not marker.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert marker.exists(), "the run ended before its checkpoint at step 10 appeared"
    assert not (tmp_path / "killed" / "student").exists(), "the run finished before it could be killed"

    resumed = subprocess.run(cmd(tmp_path / "killed"), env=_env(cache), capture_output=True, text=True, timeout=600)
    _check(resumed)
    assert "resuming from" in resumed.stdout
    a = load_file(str(tmp_path / "straight" / "student" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "student" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=f"{k} differs after resume")
    assert _losses(tmp_path / "killed") == pytest.approx(_losses(tmp_path / "straight"), rel=1e-6)
