"""Slow: `torchrun --nproc_per_node 2 -m minitron pipeline` on CPU runs every stage, on cached packed data and on a
stream. The packed data (or the stream's cached validation split) is built once, under the cache entry's lock,
into an empty cache while the other rank waits for it; training stages run on both ranks, the others on rank 0."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from minitron.commands import pretrain
from minitron.config import compose
from small_runs import SMALL_ARCH, SMALL_DATA, STREAM_DATA, write_stream_corpus

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
STAGES = ["distill", "eval_distilled", "eval_pruned", "eval_scratch", "eval_teacher", "importance", "prune",
          "scratch", "teacher"]
PIPELINE = ["target.hidden_size=16", "target.intermediate_size=32", "target.num_attention_heads=2",
            "calib.samples=8", "train.max_steps=4", "train.batch_size=2", "train.save_steps=0", "train.eval_batches=2",
            "eval_batches=2", "eval.generate.docs=4", "eval.generate.doc_chars=256", "eval.generate.mc_items=6",
            "eval.generate.context_chars=96"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("teacher")
    cfg = compose("pretrain", [*SMALL_ARCH, *SMALL_DATA, "train.max_steps=6", "train.batch_size=2",
                               "train.eval_batches=2", f"cache_dir={root / 'cache'}", f"out={root / 'model'}"])
    return pretrain.run(cfg, run_dir=root / "run").path


@pytest.mark.parametrize("streamed", [False, True], ids=["packed", "streamed"])
def test_two_rank_pipeline_runs_every_stage(teacher, tmp_path, streamed):
    data = SMALL_DATA
    if streamed:
        data = [*STREAM_DATA, f"data.path={write_stream_corpus(tmp_path / 'corpus.jsonl', documents=40)}"]
    cache = tmp_path / "cache"
    cmd = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(_port()), "-m", "minitron",
           "pipeline", f"teacher={teacher}", *data, *PIPELINE, f"cache_dir={cache}", f"hydra.run.dir={tmp_path / 'run'}"]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    run = tmp_path / "run"
    assert sorted(p.stem for p in (run / "stages").glob("*.json")) == STAGES
    assert proc.stdout.count("report: ") == 1  # rank 0 reports
    distill = json.loads((run / "stages" / "distill.json").read_text())
    assert distill["tokens"] == 4 * 2 * 2 * 64  # steps x batch x 2 ranks x seq_len
    report = (run / "report.md").read_text()
    assert all(f"| {name} |" in report for name in ("teacher", "pruned", "distilled", "scratch"))
    # one packed cache entry, complete, its lock file, and no temporary folder of a second builder left beside it
    entries = sorted((cache / "packed").iterdir())
    assert [p.name for p in entries] == [f".{entries[1].name}.lock", entries[1].name]
    entries = entries[1:]
    assert (entries[0] / ("dataset_info.json" if streamed else "dataset_dict.json")).is_file()
