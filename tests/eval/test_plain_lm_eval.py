"""The stock `lm_eval` command on a saved checkpoint with our generated tiny tasks gives the in-process numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from minitron.config import compose
from minitron.evaluate import evaluate


@pytest.mark.slow
def test_lm_eval_cli_matches_evaluate(checkpoint, small_eval, tmp_path):
    cache = next(o.split("=", 1)[1] for o in small_eval if o.startswith("cache_dir="))
    env = {**os.environ, "MINITRON_CACHE": cache}
    bindir = Path(sys.executable).parent
    folder = subprocess.run(
        [str(bindir / "python"), "-m", "minitron.evaluate", *[o for o in small_eval if not o.startswith("cache_dir=")]],
        env=env, capture_output=True, text=True, check=True, timeout=300,
    ).stdout.strip()
    assert (Path(folder) / "minitron_tiny_mc.yaml").is_file()
    subprocess.run(
        [str(bindir / "lm_eval"), "--model", "hf", "--model_args", f"pretrained={checkpoint},dtype=float32",
         "--tasks", "minitron_tiny_bpb,minitron_tiny_mc", "--include_path", folder, "--device", "cpu",
         "--batch_size", "4", "--output_path", str(tmp_path / "out")],
        env=env, capture_output=True, text=True, check=True, timeout=600,
    )
    [saved] = list((tmp_path / "out").rglob("results_*.json"))
    theirs = json.loads(saved.read_text())["results"]

    cfg = compose("eval", small_eval)
    ours = evaluate(AutoModelForCausalLM.from_pretrained(checkpoint), AutoTokenizer.from_pretrained(checkpoint), cfg.eval,
                    data_cfg=cfg.data, cache_dir=cfg.cache_dir, batch_size=4)
    assert ours["tiny_bpb"] == pytest.approx(theirs["minitron_tiny_bpb"]["bits_per_byte,none"], rel=1e-6)
    assert ours["tiny_mc_acc"] == theirs["minitron_tiny_mc"]["acc,none"]
    assert ours["tiny_mc_acc_norm"] == theirs["minitron_tiny_mc"]["acc_norm,none"]
