"""Shared fixtures: every test gets its own cache and run folders, and no test reaches the network."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# the train configs log to wandb (offline) by default; tests do not need its files or its start-up time
os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MINITRON_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("MINITRON_RUNS", str(tmp_path_factory.getbasetemp() / "runs"))


# What `minitron.train.trainer.one_process_rendezvous` sets when a test runs DeepSpeed in this process
LAUNCH_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def _launch_env_restored():
    """A test that runs DeepSpeed in the test process leaves no launch environment to the next one."""
    saved = {key: os.environ.get(key) for key in LAUNCH_ENV}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def smollm2_folder(tmp_path_factory):
    """SmolLM2-135M converted once per test session into the session's cache (the folder MINITRON_CACHE points
    every test at), so the real-model tests and the notebook that uses it share one conversion (~20 s). Tests that
    ask for it skip when the package is missing outside CI (`needs_smollm2`)."""
    from minitron.real_models import materialise

    return materialise("smollm2_135m", tmp_path_factory.getbasetemp() / "cache")
