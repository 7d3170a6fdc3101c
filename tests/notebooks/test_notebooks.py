"""The notebooks run headless on tiny settings and are saved without outputs. The real-model notebook (04) needs
the packaged SmolLM2-135M (`make real`) and a few minutes: it is a slow test, sharing the session's conversion."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from packaged_models import needs_smollm2

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))
REAL = {"04_real_model"}  # notebooks on the packaged real model


def test_there_are_notebooks():
    assert [p.stem for p in NOTEBOOKS] == ["01_importance", "02_prune_and_distill", "03_ablations", "04_real_model"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_saved_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name} holds outputs"


def _execute(path: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MINITRON_NOTEBOOK_FAST", "1")
    monkeypatch.setenv("MINITRON_NOTEBOOK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.delenv("MINITRON_SCORES", raising=False)
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if p.stem not in REAL], ids=lambda p: p.stem)
def test_runs_headless(path, tmp_path, monkeypatch):
    _execute(path, tmp_path, monkeypatch)


@pytest.mark.slow
@needs_smollm2
@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if p.stem in REAL], ids=lambda p: p.stem)
def test_the_real_model_notebook_runs_headless(path, smollm2_folder, tmp_path, monkeypatch):
    # smollm2_folder: converted into the session cache (MINITRON_CACHE), which the notebook's kernel inherits
    _execute(path, tmp_path, monkeypatch)
