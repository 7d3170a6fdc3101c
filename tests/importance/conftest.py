"""Single-threaded torch for these tests: the models are tiny, and on a shared machine a second intra-op
thread mostly waits for a busy core (10x slower wall time under load, no gain when idle)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
