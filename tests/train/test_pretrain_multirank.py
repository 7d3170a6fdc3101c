"""Slow: `minitron pretrain` under torchrun with 2 CPU ranks against 1 rank at the same global batch.

Every rank takes part in the final save, rank 0 alone writes the model folder and the run files; the 2-rank
run sees the same global batches as the 1-rank run with 2 accumulation steps, so its losses agree to 1e-5.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from small_runs import SMALL_ARCH, SMALL_DATA

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
RUN = [
    *SMALL_ARCH,
    *SMALL_DATA,
    "train.max_steps=6",
    "train.warmup_steps=2",
    "train.logging_steps=1",
    "train.eval_batches=2",
    "train.save_steps=3",
    "cache=false",
]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pretrain(ranks: int, root: Path, name: str, *extra: str) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "torchrun"), "--nproc_per_node", str(ranks), "--master_port", str(_port()), "-m", "minitron",
           "pretrain", *RUN, *extra, f"out={root / name}", f"hydra.run.dir={root / (name + '_run')}"]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def _losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


def test_two_ranks_save_once_and_match_one_rank(tmp_path):
    one = _pretrain(1, tmp_path, "one", "train.batch_size=2", "train.gradient_accumulation_steps=2")
    two = _pretrain(2, tmp_path, "two", "train.batch_size=2")
    assert one.stdout.count("training NemotronForCausalLM") == two.stdout.count("training NemotronForCausalLM") == 1  # rank 0 prints
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [
        "config.json", "generation_config.json", "minitron_pretrain.json", "model.safetensors", "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "one_run", "two", "two_run"]  # no partial folder
    l1, l2 = _losses(tmp_path / "one_run"), _losses(tmp_path / "two_run")
    assert len(l1) == len(l2) == 6
    assert l2 == pytest.approx(l1, rel=1e-5)
    s1 = json.loads((tmp_path / "one" / "minitron_pretrain.json").read_text())
    s2 = json.loads((tmp_path / "two" / "minitron_pretrain.json").read_text())
    assert s1["tokens"] == s2["tokens"] == 6 * 4 * 64
    assert s2["val_loss"] == pytest.approx(s1["val_loss"], rel=1e-5)
    a, b = load_file(str(tmp_path / "one" / "model.safetensors")), load_file(str(tmp_path / "two" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=f"{k} differs between 1 and 2 ranks")
