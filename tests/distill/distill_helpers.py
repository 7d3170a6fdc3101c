"""Override lists and student builders shared by the distillation tests."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from minitron.config import compose
from small_runs import SMALL_ARCH, SMALL_DATA

DATA = SMALL_DATA
TEACHER = DATA + [
    *SMALL_ARCH,
    "train.max_steps=6",
    "train.batch_size=4",
    "train.warmup_steps=2",
    "train.logging_steps=2",
    "train.eval_batches=4",
]
TRAIN = ["train.batch_size=4", "train.warmup_steps=1", "train.logging_steps=1", "train.eval_batches=2", "train.lr=1e-3"]


def make_student(teacher: Path, folder: Path, *, seed: int = 1, copy: bool = False, **arch) -> Path:
    """A student with the teacher's tokenizer: an exact copy, or a random model of the teacher's config with `arch` changes."""
    if copy:
        model = AutoModelForCausalLM.from_pretrained(teacher)
    else:
        config = AutoConfig.from_pretrained(teacher)
        for k, v in arch.items():
            setattr(config, k, v)
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(teacher).save_pretrained(folder)
    return folder


def distill_cfg(teacher: Path, cache: Path, student: Path, *extra: str):
    return compose(
        "distill", DATA + TRAIN + [f"cache_dir={cache}", f"teacher={teacher}", f"student={student}", *extra]
    )
