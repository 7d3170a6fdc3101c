"""`minitron distill`: retrain a student against a frozen teacher (forward KL on logits by default).

    minitron distill student=PATH                                  # the embedded default teacher, forward KL
    minitron distill student=PATH distill=kl_is deepspeed=zero3    # plus intermediate states, ZeRO-3
    minitron distill student=PATH teacher_correction.steps=100     # fine-tune the teacher on the data first
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from minitron.commands._run import prepare_run_dir
from minitron.distill.recipe import run_distill
from minitron.distill.trainer import DistillResult


def run(cfg: DictConfig, run_dir: str | Path | None = None) -> DistillResult:
    return run_distill(cfg, prepare_run_dir(cfg, run_dir))
