"""The results page's statistics: Welch's test decides every verdict, ties are called ties."""

from __future__ import annotations

import math

from minitron.config import compose
from minitron.workflows.ablate import write_results
from minitron.workflows.ablate.cells import AGGREGATORS
from minitron.workflows.ablate.stats import Comparison, Summary


def test_summary_is_mean_and_standard_error():
    s = Summary.of([1.0, 2.0, 3.0])
    assert (s.mean, s.n) == (2.0, 3) and math.isclose(s.se, 1.0 / math.sqrt(3))
    assert s.text() == "2.000 ± 0.577" and Summary.of([4.0]).text() == "4.000"


def test_a_clear_difference_is_called_and_noise_is_a_tie():
    clear = Comparison.of([1.00, 1.01, 0.99], [2.00, 2.02, 1.98])
    assert clear.a_lower and not clear.b_lower and clear.p < 0.001 and "Welch t = " in clear.test_text()
    noise = Comparison.of([1.00, 1.10, 0.90], [1.02, 0.95, 1.08])
    assert noise.tie and noise.p > 0.05
    two_seeds = Comparison.of([1.0, 1.01], [2.0, 2.01])  # far apart, but too few seeds to test
    assert two_seeds.tie and two_seeds.test_text() == "no test: 2 seed(s), at least 3 needed"
    exact = Comparison.of([1.0, 1.0, 1.0], [2.0, 2.0, 2.0])  # deterministic cells: no spread, the means decide
    assert exact.a_lower and Comparison.of([1.0] * 3, [1.0] * 3).tie


def _cells(values: dict[str, list[float]]) -> dict:
    return {name: [{"seed": i, "seconds": 1.0, "val_loss": v, "parameters": 1000} for i, v in enumerate(vs)]
            for name, vs in values.items()}


def test_the_criteria_verdict_says_when_the_test_cannot_separate_the_pairs(tmp_path):
    cfg = compose("ablate")
    noisy = {f"criteria-{b}-{s}": [5.0 + d for d in (0.05, -0.04, 0.01)] for b in AGGREGATORS for s in AGGREGATORS}
    noisy["criteria-var-var"] = [5.02, 4.95, 5.06]
    noisy |= {"criteria-magnitude": [4.80, 4.80, 4.80], "criteria-random": [6.0, 6.2, 5.9], "teacher": [4.5] * 3}
    page = write_results(cfg, _cells(noisy), {"params": 1000}, tmp_path / "results.md").read_text()
    assert "cannot separate even the best and the worst pair" in page
    assert "activation scores lose to weight magnitude" in page and "beat random scores" in page
    assert "4.500 ± 0.000 on the students' blocks" in page

    separated = dict(noisy, **{"criteria-var-var": [6.0, 6.01, 5.99]})
    page = write_results(cfg, _cells(separated), {"params": 1000}, tmp_path / "results.md").read_text()
    assert "cannot separate" not in page and "sequence var (6.000; Welch t = " in page


def test_width_vs_depth_applies_the_tie_rule_and_states_the_budget(tmp_path):
    cfg = compose("ablate")
    records = _cells({})
    for name, after, before in (("distill-width-kl", [4.30, 4.25, 4.28], 4.9), ("distill-depth-kl", [4.27, 4.29, 4.24], 4.3)):
        records[name] = [{"seed": i, "seconds": 1.0, "val_loss": v, "zero_shot": before + 0.01 * i, "parameters": 1000,
                          "curve": [[10, v + 0.1], [20, v]]} for i, v in enumerate(after)]
    page = write_results(cfg, records, {"params": 1000}, tmp_path / "results.md").read_text()
    assert "no difference after retraining at this budget" in page and "This budget ends at step 20" in page
    assert f"`study=shapes_long` retrains both for budget.long_steps={cfg.budget.long_steps}" in page


def test_a_depth_comparison_of_the_same_layers_says_it_cannot_tell_them_apart(tmp_path):
    cfg = compose("ablate")

    def depth(kept_block: list[int], after_block: list[float]) -> dict:
        records = _cells({})
        for name, kept, after in (("distill-depth-kl", [0, 1, 7], [4.25, 4.26, 4.24]),
                                  ("distill-depth_block-kl", kept_block, after_block)):
            records[name] = [{"seed": i, "seconds": 1.0, "val_loss": v, "zero_shot": 4.3, "parameters": 1000,
                              "kept_layers": kept} for i, v in enumerate(after)]
        return records

    same = write_results(cfg, depth([0, 1, 7], [4.25, 4.26, 4.24]), {"params": 1000}, tmp_path / "r.md").read_text()
    assert "both choices keep the same layers for every seed (seed 0: [0, 1, 7]" in same and "Welch t = 0.00" not in same
    other = write_results(cfg, depth([0, 6, 7], [4.10, 4.11, 4.09]), {"params": 1000}, tmp_path / "r.md").read_text()
    assert "cannot tell the two apart" not in other and "the block is better, as in the paper" in other
