"""A tiny pretrained teacher (seconds), shared by the distillation tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from distill_helpers import TEACHER

from minitron.config import compose


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory) -> tuple[Path, Path]:
    """(teacher folder, cache_dir) of a 2-layer Nemotron pretrained for 6 steps on the stdlib corpus."""
    from minitron.commands.pretrain import run

    root = tmp_path_factory.mktemp("teacher")
    cfg = compose("pretrain", TEACHER + [f"cache_dir={root / 'cache'}", f"out={root / 'teacher'}"])
    result = run(cfg, run_dir=root / "run")
    return Path(result.path), root / "cache"
