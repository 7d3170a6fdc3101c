"""The studies `shapes_long` (width vs depth past the paper's crossover) and `correction` (teacher correction on a
shifted corpus): their page sections from fabricated cells, the tested crossover, and both studies run end to end
on a very small teacher."""

from __future__ import annotations

import json

import pytest
from test_ablate import SMALL

from minitron.cli import main
from minitron.config import compose
from minitron.workflows.ablate import write_results
from minitron.workflows.ablate.cells import cell_specs
from minitron.workflows.ablate.page import crossover, significant_crossover


def _curves(name: str, finals: list[float], curve: dict[int, list[float]], zero_shot: float, steps: int) -> list[dict]:
    """One fabricated distillation cell per seed: `curve[step][seed]` the validation curve, `finals[seed]` the loss."""
    return [{"seed": i, "seconds": 1.0, "val_loss": v, "zero_shot": zero_shot + 0.001 * i, "parameters": 1000,
             "tokens": steps * 2048, "spec": {"steps": steps},
             "curve": [[0, zero_shot + 0.001 * i], *[[s, vs[i]] for s, vs in sorted(curve.items())]]}
            for i, v in enumerate(finals)]


def test_the_significant_crossover_waits_for_the_step_the_test_supports():
    # the means cross at step 20, but at step 20 the seeds overlap: the test puts width below depth from step 30 on
    cells = {"w": _curves("w", [3.0, 3.01, 2.99], {10: [4.5, 4.51, 4.49], 20: [4.0, 4.3, 3.6], 30: [3.5, 3.51, 3.49],
                                                   40: [3.0, 3.01, 2.99]}, 5.0, 40),
             "d": _curves("d", [3.5, 3.51, 3.49], {10: [4.2, 4.21, 4.19], 20: [4.05, 4.0, 4.1], 30: [3.8, 3.81, 3.79],
                                                   40: [3.5, 3.51, 3.49]}, 4.4, 40)}
    assert crossover(cells, "w", "d") == 20
    assert significant_crossover(cells, "w", "d") == 30
    assert significant_crossover(cells, "d", "w") is None


def _long_cells(width_final: list[float], depth_final: list[float]) -> dict:
    cells = {}
    for name, final, before in (("width", width_final, 4.9), ("depth", depth_final, 4.3)):
        short = [v + 0.05 for v in final]
        cells[f"distill-{name}-kl"] = _curves(name, short, {50: [v + 0.1 for v in short], 100: short}, before, 100)
        cells[f"long-{name}-kl"] = _curves(name, final, {100: [v + 0.2 for v in final], 200: [v + 0.1 for v in final],
                                                         400: final}, before, 400)
    return cells


def test_past_the_crossover_width_wins_only_when_the_test_says_so(tmp_path):
    cfg = compose("ablate")
    clear = _long_cells([4.00, 4.01, 3.99], [4.20, 4.21, 4.19])
    page = write_results(cfg, clear, {"params": 1000}, tmp_path / "results.md").read_text()
    assert "### Past the crossover: 400 steps" in page and "The long run below continues past that point." in page
    # the paper's crossover (half-way through its retraining) scaled to this budget: half of budget.steps
    half = cfg.budget.steps // 2
    assert f"that is step {half}, and 400 steps run {400 / half:g}x past it" in page
    assert "width 4.000 vs depth 4.200 (Welch t = " in page and "width wins past the crossover, as in the paper" in page
    assert ("stays below depth's from step 100 on; the test (Welch at every recorded step, p < 0.05) supports it from "
            "step 100 on") in page
    assert (tmp_path / "results-curves-long.png").stat().st_size > 0

    noisy = _long_cells([4.00, 4.25, 3.90], [4.05, 4.20, 3.95])
    page = write_results(cfg, noisy, {"params": 1000}, tmp_path / "results.md").read_text()
    assert "no difference after 400 steps" in page and "width wins" not in page
    assert "does not put it significantly below from any step on (at its last point, step 400: Welch t = " in page


def _correction_cells(off: list[float], on: list[float], teacher_on: list[float]) -> dict:
    spec = {"data": {"source": "package", "name": "numpy"}, "steps": 100}
    cells = {"teacher": [{"seed": None, "seconds": 1.0, "val_loss": 4.5}]}
    for name, finals, teacher in (("off", off, [5.6] * 3), ("on", on, teacher_on)):
        s = dict(spec, **({"correction": {"steps": 100, "lr": 6e-4, "warmup_steps": 10}} if name == "on" else {}))
        cells[f"correction-{name}"] = [
            {"seed": i, "seconds": 1.0, "val_loss": v, "zero_shot": 6.0, "teacher_loss": teacher[i], "parameters": 1000,
             "tokens": 204800, "correction_tokens": 204800 if name == "on" else 0, "spec": s}
            for i, v in enumerate(finals)]
    return cells


def test_the_correction_section_calls_a_difference_only_when_the_test_holds(tmp_path):
    cfg = compose("ablate")
    helped = _correction_cells([5.0, 5.01, 4.99], [4.7, 4.71, 4.69], [5.1, 5.11, 5.09])
    page = write_results(cfg, helped, {"params": 1000}, tmp_path / "results.md").read_text()
    assert "## 7. Teacher correction on a shifted corpus" in page and "the package `numpy`'s modules" in page
    assert "| corrected | 5.100 ± 0.006 | 6.000 ± 0.000 | 4.700 ± 0.006 |" in page
    assert "from 5.600 to 5.100 (Welch t = " in page and "for 100 steps (204,800 tokens) at LR 0.0006 (`correction.lr`" in page
    assert "the corrected teacher's student is better, as in the paper." in page

    tied = _correction_cells([5.0, 5.2, 4.8], [4.95, 5.15, 4.85], [5.1, 5.11, 5.09])
    page = write_results(cfg, tied, {"params": 1000}, tmp_path / "results.md").read_text()
    assert "with 4.983 (Welch t = " in page and "no difference at this budget." in page and "student is better" not in page


def test_bad_long_and_correction_settings_are_one_line_errors(tmp_path, capsys):
    for override, needle in (("budget.long_steps=0", "budget.long_steps=0 must be a positive number"),
                             ("correction.data.source=stdlib", "correction.data names the study's own corpus"),
                             ("correction.lr=null", "correction.lr is not set"),
                             ("correction.warmup_steps=-1", "correction.warmup_steps=-1")):
        assert main(["ablate", "study=report", f"results_dir={tmp_path / 'none'}", f"hydra.run.dir={tmp_path / 'r'}",
                     override]) == 2
        err = capsys.readouterr().err
        assert needle in err and err.strip().count("\n") == 0, err


def test_the_correction_cells_share_everything_but_the_correction():
    cfg = compose("ablate")
    specs = cell_specs(cfg)
    off, on = specs["correction-off"], specs["correction-on"]
    assert {k: v for k, v in on.items() if k != "correction"} == off
    assert on["correction"] == {"steps": cfg.budget.steps, "lr": 6e-4, "warmup_steps": 10}  # the budget, 1/5 of the teacher's peak
    assert off["data"]["source"] == "package" and off["shape"] == specs["distill-width-kl"]["shape"]
    assert specs["long-width-kl"]["steps"] == cfg.budget.long_steps and specs["long-depth-kl"]["shape"] == specs["distill-depth-kl"]["shape"]


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    root = tmp_path_factory.mktemp("correction")
    common = SMALL + [f"results_dir={root / 'results'}", f"cache_dir={root / 'cache'}",
                      "correction.steps=8", "correction.lr=3e-3", "correction.warmup_steps=1"]
    assert main(["ablate", "-m", "study=correction,shapes_long", "seed=0", f"hydra.sweep.dir={root / 'sweep'}",
                 *common]) == 0
    return root


@pytest.mark.slow
def test_correction_and_long_studies_write_their_cells_and_sections(ran):
    cells = {p.parent.name: json.loads(p.read_text()) for p in (ran / "results" / "cells").glob("*/seed0.json")}
    assert sorted(cells) == ["correction-off", "correction-on", "long-depth-kl", "long-width-kl"]
    off, on = cells["correction-off"], cells["correction-on"]
    # fine-tuning the teacher on the shifted corpus lowers its loss on that corpus's validation blocks
    assert on["teacher_loss"] < off["teacher_loss"]
    assert (on["correction_tokens"], off["correction_tokens"]) == (8 * 2 * 64, 0)
    assert on["parameters"] == off["parameters"] and on["tokens"] == off["tokens"] == 4 * 2 * 64
    assert on["spec"]["data"]["name"] == "numpy" and on["spec"]["data"] == off["spec"]["data"]
    for name in ("long-width-kl", "long-depth-kl"):
        assert [s for s, _ in cells[name]["curve"]] == [0, 2, 4, 6, 8]
    page = (ran / "results" / "results.md").read_text()
    assert "## 7. Teacher correction on a shifted corpus" in page and "no test: 1 seed(s), at least 3 needed" in page
    assert "### Past the crossover: 8 steps" in page and "## 1." not in page
    assert not list((ran / "results" / "work").glob("correction-on-seed0-*"))  # the corrected teacher is not kept
