"""Which process of a torchrun / DeepSpeed launch this is, read before any Trainer or process group exists."""

from __future__ import annotations

import os


def rank() -> int:
    """This process's global rank (0 when not launched on several ranks)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """The number of ranks of the launch (1 when not launched on several ranks)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Whether this process is the first of its launch (or the only one): the one that writes shared files."""
    return rank() == 0
