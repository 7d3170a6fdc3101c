"""Several runs at once, as a script, a SLURM array or two terminals start them: one run folder each, one build of
a shared cache entry, and every run ending as it would alone.

The four-process test runs the real CLI in subprocesses (same verb, same MINITRON_RUNS and MINITRON_CACHE): two
`minitron score` runs that succeed and two that fail on bad input, started together.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from minitron.config import run_id
from minitron.data import train_tokenizer
from minitron.io import build_once, file_lock, lock_path
from minitron.models.tiny import tiny_model

TEXTS = [f"def f{i}(x):\n    return x * {i} + {i % 7}\n" for i in range(400)]


# -- the lock, in processes -----------------------------------------------------------------------------------
def _build_slowly(entry: str, log: str) -> None:
    def build() -> None:
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(1.0)
        Path(entry).mkdir()
        (Path(entry) / "done").write_text("yes")

    build_once(entry, lambda: (Path(entry) / "done").is_file(), build)
    assert (Path(entry) / "done").read_text() == "yes"


def test_processes_needing_one_entry_build_it_once(tmp_path):
    entry, log = tmp_path / "cache" / "entry", tmp_path / "builds.log"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_build_slowly, args=(str(entry), str(log))) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert len(log.read_text().split()) == 1  # one builder; the three others waited and reused its entry


def _hold_lock_forever(entry: str, ready: str) -> None:
    with file_lock(entry):
        Path(ready).write_text("held")
        time.sleep(600)


def test_a_lock_held_by_a_killed_process_is_taken_over(tmp_path):
    entry, ready = tmp_path / "entry", tmp_path / "ready"
    holder = multiprocessing.get_context("spawn").Process(target=_hold_lock_forever, args=(str(entry), str(ready)))
    holder.start()
    deadline = time.monotonic() + 60
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert str(holder.pid) in lock_path(entry).read_text()
    # a temporary that the killed builder was writing
    stale = entry.with_name(f".{entry.name}.tmp-deadbeef")
    stale.mkdir()
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(10)
    start = time.monotonic()
    built = build_once(entry, entry.is_dir, entry.mkdir)
    assert built and entry.is_dir() and time.monotonic() - start < 5  # the kernel released the dead holder's lock
    assert not stale.exists()
    assert str(os.getpid()) in lock_path(entry).read_text()


def test_run_ids_differ_per_run_and_agree_within_a_launch(monkeypatch):
    assert len({run_id() for _ in range(50)}) == 50
    for key, value in {"WORLD_SIZE": "2", "MASTER_ADDR": "node1", "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("RANK", "0")
    first = run_id()
    monkeypatch.setenv("RANK", "1")
    assert run_id() == first
    monkeypatch.setenv("MASTER_PORT", "29501")  # another launch on the same node
    assert run_id() != first


# -- four runs of the real CLI at once -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("concurrent")
    tokenizer = train_tokenizer(TEXTS, 320)
    teacher = root / "teacher"
    model = tiny_model("nemotron", seed=0, vocab_size=len(tokenizer), num_attention_heads=8, num_key_value_heads=4,
                       head_dim=8)
    model.save_pretrained(teacher)
    tokenizer.save_pretrained(teacher)
    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(30):
        (corpus / f"doc{i}.txt").write_text(TEXTS[i] * 20)
    (root / "not-a-checkpoint.txt").write_text("hello")
    return root, teacher, corpus


def _start(args: list[str], runs: Path, cache: Path) -> subprocess.Popen:
    env = {**os.environ, "MINITRON_RUNS": str(runs), "MINITRON_CACHE": str(cache), "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "minitron", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("round_", range(2))
def test_four_runs_at_once(world, tmp_path, round_):
    root, teacher, corpus = world
    runs, cache = tmp_path / "runs", tmp_path / "cache"
    good = [f"teacher={teacher}", "data=local", f"data.path={corpus}", "calib.samples=4", "calib.seq_len=32",
            "data.seq_len=32", "calib.batch_size=2"]
    jobs = {
        "good-a": good + ["seed=1"],
        "good-b": good + ["seed=2"],
        "bad-agg": good + ["batch_agg=median"],
        "bad-teacher": [f"teacher={root / 'not-a-checkpoint.txt'}", *good[1:]],
    }
    procs = {name: _start(["score", *args], runs, cache) for name, args in jobs.items()}
    done = {name: (p.wait(300), *p.communicate()) for name, p in procs.items()}

    for name in ("good-a", "good-b"):
        code, out, err = done[name]
        assert code == 0, f"{name}: {err}"
        assert "Traceback" not in err
    for name, word in (("bad-agg", "batch_agg"), ("bad-teacher", "not-a-checkpoint.txt")):
        code, out, err = done[name]
        errors = [line for line in err.splitlines() if ": error: " in line]
        assert code == 2 and len(errors) == 1 and word in errors[0], f"{name}: {err}"
        assert "Traceback" not in err, f"{name}: {err}"

    # one folder per successful run, each with its own config and scores; the failed runs left none
    folders = sorted((runs / "score").iterdir())
    assert len(folders) == 2, [f.name for f in folders]
    assert sorted(f.name[:19] for f in folders) == [f.name[:19] for f in folders]  # named by time first
    seeds = sorted(int((f / "config.yaml").read_text().split("seed: ")[1].split()[0]) for f in folders)
    assert seeds == [1, 2]
    for folder in folders:
        assert (folder / "importance.safetensors").is_file()
        assert str(folder) in "".join(done["good-a"][1] + done["good-b"][1])

    # the packed data the runs needed was built by one of them; the others waited for it or found it
    packs = sum(out.count("packing the corpus") for _, out, _ in done.values())
    assert packs == 1, {name: out for name, (_, out, _) in done.items()}
    assert len([p for p in (cache / "packed").iterdir() if not p.name.startswith(".")]) == 1
