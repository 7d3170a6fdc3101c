"""Kill-and-resume of `minitron pretrain` on a stream (`data=local data.streaming=true`).

The Trainer reads the stream in one fixed order and, resumed, skips the global_step x accumulation batches it had
consumed before the checkpoint (without training on them); the resumed run must end with the weights and logged
losses of a run that was never interrupted. The stream is shorter than the run, so it also wraps around.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from minitron.train.trainer import checkpoint_step
from small_runs import SMALL_ARCH, STREAM_DATA, write_stream_corpus

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
SAVE_EVERY = 4
STEPS = 40


def _cmd(root: Path, corpus: str, name: str) -> list[str]:
    return [str(BIN / "python"), "-m", "minitron", "pretrain", *SMALL_ARCH, *STREAM_DATA, f"data.path={corpus}",
            # 3 documents of train data: 124 blocks of 64 tokens, 31 steps of 2 x 2 blocks, so the stream wraps
            # around before the checkpoint the run is killed after, and the resumed run skips across the wrap
            "data.max_train_docs=3", f"train.max_steps={STEPS}", "train.batch_size=2",
            "train.gradient_accumulation_steps=2", "train.warmup_steps=2", "train.logging_steps=1",
            "train.eval_batches=2", f"train.save_steps={SAVE_EVERY}", "train.save_total_limit=2", "cache=false",
            f"out={root / name / 'model'}", f"hydra.run.dir={root / name / 'run'}"]


def _losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


@pytest.mark.slow
def test_a_streamed_pretrain_killed_mid_way_resumes_to_the_same_final_weights(tmp_path):
    corpus = write_stream_corpus(tmp_path / "corpus.jsonl", documents=30)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    straight = subprocess.run(_cmd(tmp_path, corpus, "straight"), env=env, capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr[-4000:]
    assert "on a stream of blocks" in straight.stdout

    kill_at = 8 * SAVE_EVERY
    victim = subprocess.Popen(_cmd(tmp_path, corpus, "killed"), env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    marker = tmp_path / "killed" / "run" / "checkpoints" / f"checkpoint-{kill_at}" / "trainer_state.json"
    deadline = time.time() + 300
    while not marker.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert marker.exists(), f"the run ended before its checkpoint at step {kill_at} appeared"
    assert not (tmp_path / "killed" / "model").exists(), "the run finished before it could be killed"

    resumed = subprocess.run(_cmd(tmp_path, corpus, "killed"), env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    line = next(ln for ln in resumed.stdout.splitlines() if ln.startswith("resuming from"))
    assert kill_at <= checkpoint_step(line.split()[-1]) < STEPS
    a = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "model" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=f"{k} differs after resume")
    assert _losses(tmp_path / "killed" / "run") == _losses(tmp_path / "straight" / "run")
    assert len(_losses(tmp_path / "straight" / "run")) == STEPS
