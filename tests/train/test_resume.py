"""Kill-and-resume of `minitron pretrain`, and the checkpoint helpers shared with `minitron distill`.

The real CLI runs in subprocesses; one is SIGKILLed right after a checkpoint (a seeded random one) appears and
re-run in the same run folder. The resumed run must end with bit-identical weights and the same logged losses
as a run that was never interrupted.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from minitron.train.trainer import checkpoint_step, last_checkpoint, trim_metrics
from small_runs import SMALL_ARCH, SMALL_DATA

BIN = Path(sys.executable).parent
SAVE_EVERY = 5
RUN = [
    *SMALL_ARCH,
    *SMALL_DATA,
    # 4 micro-batches per step keep a step long enough for the poll below to kill the run before it ends
    "train.max_steps=60",
    "train.batch_size=2",
    "train.gradient_accumulation_steps=4",
    "train.warmup_steps=2",
    "train.logging_steps=1",
    "train.eval_batches=2",
    f"train.save_steps={SAVE_EVERY}",
    "train.save_total_limit=3",
    "cache=false",
]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}  # MINITRON_CACHE: the session's test cache (conftest)


def _cmd(root: Path, name: str) -> list[str]:
    return [str(BIN / "python"), "-m", "minitron", "pretrain", *RUN, f"out={root / name / 'model'}",
            f"hydra.run.dir={root / name / 'run'}"]


def _losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


def _check(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


def test_a_pretrain_killed_mid_way_resumes_to_the_same_final_weights(tmp_path):
    env = _env()
    straight = subprocess.run(_cmd(tmp_path, "straight"), env=env, capture_output=True, text=True, timeout=600)
    _check(straight)
    assert "resuming from" not in straight.stdout

    kill_at = random.Random(0).choice(range(SAVE_EVERY, 35, SAVE_EVERY))
    victim = subprocess.Popen(_cmd(tmp_path, "killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = tmp_path / "killed" / "run" / "checkpoints" / f"checkpoint-{kill_at}" / "trainer_state.json"
    deadline = time.time() + 300
    while not marker.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert marker.exists(), f"the run ended before its checkpoint at step {kill_at} appeared"
    assert not (tmp_path / "killed" / "model").exists(), "the run finished before it could be killed"

    resumed = subprocess.run(_cmd(tmp_path, "killed"), env=env, capture_output=True, text=True, timeout=600)
    _check(resumed)
    line = next(ln for ln in resumed.stdout.splitlines() if ln.startswith("resuming from"))
    assert checkpoint_step(line.split()[-1]) >= kill_at
    a = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=f"{k} differs after resume")
    assert _losses(tmp_path / "killed" / "run") == _losses(tmp_path / "straight" / "run")
    assert len(_losses(tmp_path / "straight" / "run")) == 60
    summary = json.loads((tmp_path / "killed" / "model" / "minitron_pretrain.json").read_text())
    assert summary["tokens"] == 60 * 2 * 4 * 64
    assert sorted(p.name for p in (tmp_path / "killed").iterdir()) == ["model", "run"]  # no partial folder left


def test_resume_false_starts_afresh(tmp_path, capsys):
    """With resume=false the old checkpoints are removed and the metrics file starts over."""
    from minitron.commands.pretrain import run
    from minitron.config import compose

    short = [a for a in RUN if not a.startswith(("train.max_steps", "train.gradient_accumulation_steps"))]
    short += ["train.max_steps=10", f"out={tmp_path / 'model'}"]
    run_dir = tmp_path / "run"
    run(compose("pretrain", short), run_dir=run_dir)
    assert checkpoint_step(last_checkpoint(run_dir / "checkpoints")) == 10
    (run_dir / "checkpoints" / "checkpoint-10" / "marker").write_text("old")
    capsys.readouterr()
    run(compose("pretrain", short + ["resume=false", "overwrite=true"]), run_dir=run_dir)
    assert "resuming from" not in capsys.readouterr().out
    assert not (run_dir / "checkpoints" / "checkpoint-10" / "marker").exists()
    assert len(_losses(run_dir)) == 10
    # resumed instead (a kill after the last checkpoint), it trains the last stretch again to the same weights
    final = load_file(str(tmp_path / "model" / "model.safetensors"))
    losses = _losses(run_dir)
    run(compose("pretrain", short + ["overwrite=true"]), run_dir=run_dir)
    assert "resuming from " + str(run_dir / "checkpoints" / "checkpoint-5") in capsys.readouterr().out
    assert _losses(run_dir) == losses
    again = load_file(str(tmp_path / "model" / "model.safetensors"))
    for k in final:
        torch.testing.assert_close(again[k], final[k], rtol=0, atol=0, msg=f"{k} differs after resume")


def test_last_checkpoint_skips_one_cut_short(tmp_path):
    assert last_checkpoint(tmp_path / "missing") is None
    for step, complete in [(5, True), (10, True), (15, False)]:
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if complete:
            (folder / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-x").mkdir()
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")
    assert last_checkpoint(tmp_path, before=10) == str(tmp_path / "checkpoint-5")
    assert last_checkpoint(tmp_path, before=5) is None
    assert checkpoint_step(last_checkpoint(tmp_path)) == 10 and checkpoint_step(None) == 0


def test_trim_metrics_keeps_records_up_to_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    records = [{"step": s, "loss": 1.0 / s} for s in range(1, 8)] + [{"step": 7, "train_runtime": 1.0}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 8, "lo')  # a line cut by a kill
    trim_metrics(path, 5)
    assert [json.loads(line) for line in path.read_text().splitlines()] == records[:5]
    trim_metrics(tmp_path / "absent.jsonl", 3)
    assert not (tmp_path / "absent.jsonl").exists()
