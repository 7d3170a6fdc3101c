"""Fixtures shared by the data tests."""

from __future__ import annotations

import datasets
import pytest


@pytest.fixture(autouse=True, scope="module")
def _datasets_cache(tmp_path_factory):
    """Keep the Arrow files that `datasets` writes out of the user's cache (one folder per test module)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf_datasets")))
        yield
