"""`minitron pretrain`: train a model from scratch with the causal-LM loss.

    minitron pretrain                                  # the embedded default teacher (cached)
    minitron pretrain train.max_steps=50 out=/tmp/m    # a quick one into a folder of your choice
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from minitron.commands._run import prepare_run_dir
from minitron.train.pretrain import PretrainResult, pretrain


def run(cfg: DictConfig, run_dir: str | Path | None = None) -> PretrainResult:
    return pretrain(cfg, prepare_run_dir(cfg, run_dir))
