"""`minitron search` re-run in its run folder: finished scores, zero-shot losses and retrained students are kept.

The fast tests cut a finished run back to what a kill would have left and re-run it in-process; the slow one
SIGKILLs the real CLI twice (during the zero-shot ranking, then during the retraining) and resumes it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prune_helpers import DATA

from minitron.commands.search import run
from minitron.config import compose
from minitron.prune.search import Candidate
from minitron.workflows.search import append_zero_shot, read_zero_shot

BIN = Path(sys.executable).parent
RETRAIN = ["search.retrain_steps=4", "search.top_k=2", "train.batch_size=2", "train.eval_batches=2",
           "train.logging_steps=1", "train.save_steps=2"]


def _overrides(teacher_dir, *extra: str) -> list[str]:
    return [f"teacher={teacher_dir}", "calib.samples=8", "calib.seq_len=64", "search.eval_batches=2",
            "search.max_candidates=5", *DATA, *extra]


def _search(teacher_dir, *extra: str):
    return compose("search", _overrides(teacher_dir, *extra))


def _journal(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "zero_shot.jsonl").read_text().splitlines()]


def test_zero_shot_journal_skips_a_torn_last_line_and_other_keys(tmp_path):
    path = tmp_path / "zero_shot.jsonl"
    a, b = Candidate(2, 32, 64, 4, 2, 100, zero_shot_loss=5.25), Candidate(1, 32, 64, 4, 2, 50, zero_shot_loss=6.5)
    append_zero_shot(path, "k1", a)
    append_zero_shot(path, "other", b)
    append_zero_shot(path, "k1", b)
    whole = path.read_text()
    path.write_text(whole + '{"key": "k1", "label": "L9-h1-ffn1-q1-kv1", "zero_sh')  # a kill during the write
    assert read_zero_shot(path, "k1") == {a.label: 5.25, b.label: 6.5}
    # the file is repaired, so the next record starts on a line of its own
    assert [json.loads(line)["key"] for line in path.read_text().splitlines()] == ["k1", "k1"]
    append_zero_shot(path, "k1", Candidate(1, 16, 64, 4, 2, 40, zero_shot_loss=7.0))
    assert len(read_zero_shot(path, "k1")) == 3
    assert read_zero_shot(tmp_path / "absent.jsonl", "k1") == {}


def test_a_rerun_keeps_the_finished_work_and_gives_the_same_table(teacher_dir, tmp_path, capsys):
    cfg = _search(teacher_dir, *RETRAIN)
    straight = tmp_path / "straight"
    run(cfg, run_dir=straight)
    expected = (straight / "candidates.csv").read_text()
    assert len(_journal(straight)) == 5
    capsys.readouterr()

    # what a kill during the second retraining leaves: two zero-shot lines and a torn third, the first student
    cut = tmp_path / "cut"
    shutil.copytree(straight, cut)
    lines = (cut / "zero_shot.jsonl").read_text().splitlines()
    (cut / "zero_shot.jsonl").write_text(lines[0] + "\n" + lines[1] + "\n" + lines[2][:20])
    for name in ("candidates.csv", "candidates.md", "candidates.png", "best.json"):
        (cut / name).unlink()
    second = cut / "retrain" / list(csv.DictReader(io.StringIO(expected)))[1]["label"]
    shutil.rmtree(second / "student")
    (second / "metrics.json").unlink()
    scores = cut / "importance.safetensors"
    mtime = scores.stat().st_mtime_ns

    result = run(cfg, run_dir=cut)
    out = capsys.readouterr().out
    assert (cut / "candidates.csv").read_text() == expected
    assert "reusing the importance scores" in out and scores.stat().st_mtime_ns == mtime
    assert "zero-shot ranking: reusing 2 of 5 candidates" in out
    assert "retraining: reusing 1 of 2 candidates" in out
    # the unfinished one continues from its last checkpoint before the end (from the end the Trainer would overshoot)
    assert f"resuming from {second / 'checkpoints' / 'checkpoint-2'}" in out
    assert sorted(r["label"] for r in _journal(cut)) == sorted(r["label"] for r in result["table"])  # no repeats

    # resume=false ignores all of it
    again = run(_search(teacher_dir, *RETRAIN, "resume=false"), run_dir=cut)
    out = capsys.readouterr().out
    assert "reusing" not in out and "resuming from" not in out
    assert (cut / "candidates.csv").read_text() == expected and again["table"] == result["table"]
    assert len(_journal(cut)) == 5


def test_scores_of_other_settings_are_not_reused(teacher_dir, tmp_path, capsys):
    run(_search(teacher_dir), run_dir=tmp_path)
    capsys.readouterr()
    run(_search(teacher_dir, "calib.samples=4"), run_dir=tmp_path)
    out = capsys.readouterr().out
    assert "not reusing" in out and "scoring" in out
    assert "zero-shot ranking: reusing" not in out  # other scores: the earlier losses do not apply


@pytest.mark.slow
def test_a_search_killed_twice_resumes_to_the_same_table(teacher_dir, tmp_path):
    extra = ["search.eval_batches=150", "search.eval_batch_size=2", "search.max_candidates=null",
             "search.retrain_steps=30", "search.top_k=2", "train.batch_size=2", "train.gradient_accumulation_steps=4",
             "train.eval_batches=2", "train.logging_steps=1", "train.save_steps=5", "train.save_total_limit=10"]
    cmd = lambda folder: [str(BIN / "python"), "-m", "minitron", "search", f"teacher={teacher_dir}",  # noqa: E731
                          "calib.samples=8", "calib.seq_len=64", *DATA, *extra, f"hydra.run.dir={folder}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight = subprocess.run(cmd(tmp_path / "straight"), env=env, capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stdout[-3000:] + straight.stderr[-3000:]
    total = len(_journal(tmp_path / "straight"))
    assert total > 4

    folder = tmp_path / "killed"

    def kill_when(ready, log: Path) -> str:
        with open(log, "w") as f:
            victim = subprocess.Popen(cmd(folder), env=env, stdout=f, stderr=subprocess.DEVNULL)
            deadline = time.time() + 300
            while not ready() and victim.poll() is None and time.time() < deadline:
                time.sleep(0.005)
            victim.send_signal(signal.SIGKILL)
            victim.wait()
        assert not (folder / "candidates.csv").exists(), "the search finished before it could be killed"
        return log.read_text()

    def ranking_half_done():
        path = folder / "zero_shot.jsonl"
        return path.exists() and path.read_text().count("\n") >= 2

    kill_when(ranking_half_done, tmp_path / "first.log")
    assert 2 <= len(_journal(folder)) < total

    def second_retraining_checkpointed():
        done = list(folder.glob("retrain/*/student/minitron_distill.json"))
        saved = [p for p in folder.glob("retrain/*/checkpoints/checkpoint-*/trainer_state.json")
                 if not (p.parents[2] / "student").exists()]
        return bool(done) and bool(saved)

    second = kill_when(second_retraining_checkpointed, tmp_path / "second.log")
    assert "zero-shot ranking: reusing" in second

    resumed = subprocess.run(cmd(folder), env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"zero-shot ranking: reusing {total} of {total} candidates" in resumed.stdout
    assert "retraining: reusing 1 of 2 candidates" in resumed.stdout and "resuming from" in resumed.stdout
    assert (folder / "candidates.csv").read_text() == (tmp_path / "straight" / "candidates.csv").read_text()
