"""Fixtures: a tiny trained teacher checkpoint with a tokenizer (config overrides in prune_helpers)."""

from __future__ import annotations

import pytest
from prune_helpers import TEACHER


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory):
    """A trained tiny Nemotron checkpoint folder (config, safetensors, tokenizer)."""
    from minitron.commands.pretrain import run
    from minitron.config import compose

    root = tmp_path_factory.mktemp("teacher")
    cfg = compose("pretrain", TEACHER + [f"cache_dir={root / 'cache'}"])
    return run(cfg, run_dir=root / "run").path
