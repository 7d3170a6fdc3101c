"""Every recipe composes and dry-runs from its config alone; shapes, counts and budgets match the papers."""

from __future__ import annotations

from pathlib import Path

import pytest

from minitron.config import compose, config_dir
from minitron.workflows.pipeline import format_plan, plan

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted(p.stem for p in (ROOT / "recipes").glob("*.yaml"))
# recipes whose teacher is a packaged model: their dry run converts it first (tens of seconds, `make real`)
REAL = {"smollm2_135m": (134_515_008, 67_558_272), "smollm2_135m_depth": (134_515_008, 81_413_568)}

# recipe -> (teacher parameters, student parameters, student shape (layers, hidden, ffn, heads, kv), tokens)
PAPER = {
    "minitron_8b": (15_628_775_424, 8_271_699_968, (32, 4096, 16384, 48, 8), 94e9),
    "minitron_4b": (15_628_775_424, 4_190_509_056, (32, 3072, 9216, 24, 8), 94e9),
    "minitron_4b_from_8b": (8_271_699_968, 4_190_509_056, (32, 3072, 9216, 24, 8), 94e9),
    "llama31_minitron_4b_width": (8_030_261_248, 4_512_746_496, (32, 3072, 9216, 32, 8), 94e9),
    "llama31_minitron_4b_depth": (8_030_261_248, 4_540_469_248, (16, 4096, 14336, 32, 8), 94e9),
    "mistral_nemo_minitron_8b": (12_247_782_400, 8_414_105_600, (40, 4096, 11520, 32, 8), 380e9),
    "mistral_nemo_minitron_8b_corrected": (12_247_782_400, 8_414_105_600, (40, 4096, 11520, 32, 8), 380e9),
}


def test_the_recipe_group_is_the_recipes_folder():
    assert (config_dir() / "recipe").resolve() == (ROOT / "recipes").resolve()
    assert set(PAPER) | {"tiny", "tiny_depth"} | set(REAL) == set(RECIPES)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in REAL else n for n in RECIPES])
def test_recipe_dry_run(name):
    cfg = compose("pipeline", [f"recipe={name}", "dry_run=true"])
    p = plan(cfg)
    assert p["tokens_per_step"] == p["global_batch"] * p["seq_len"]
    assert p["tokens"] == p["steps"] * p["tokens_per_step"]
    assert abs(p["tokens"] - cfg.recipe.tokens) < p["tokens_per_step"], "the budget is off by more than one step"
    assert format_plan(p).count("\n") > 8
    if name in REAL:
        assert (p["source_parameters"], p["pruned_parameters"]) == REAL[name]
        return
    if name not in PAPER:
        assert p["pruned_parameters"] < p["source_parameters"]
        return
    teacher, student, shape, tokens = PAPER[name]
    assert (p["source_parameters"], p["pruned_parameters"]) == (teacher, student)
    s = p["pruned_shape"]
    assert (s["num_hidden_layers"], s["hidden_size"], s["intermediate_size"], s["num_attention_heads"],
            s["num_key_value_heads"]) == shape
    # the papers' settings: 1024 calibration samples, logits-only forward KL at T=1, LR 1e-4 -> 1e-5 with 40
    # warmup steps, global batch 1152
    assert p["calibration_samples"] == 1024
    assert p["loss"].startswith("kl (T=1, CE weight 0") and "intermediate" not in p["loss"]
    assert p["lr"] == "0.0001 -> 1e-05 cosine, 40 warmup steps"
    assert p["global_batch"] == 1152
    assert cfg.recipe.tokens == tokens
    assert (p["teacher_correction_steps"] > 0) == name.endswith("_corrected")


def test_readme_lists_every_recipe():
    readme = (ROOT / "README.md").read_text()
    for name in RECIPES:
        assert f"recipe={name}" in readme, name


def test_multirun_sweep_over_recipes(tmp_path, monkeypatch, capsys):
    """`minitron pipeline -m recipe=a,b dry_run=true`: one job folder per recipe, each with its plan."""
    import json

    from minitron.cli import main

    monkeypatch.setenv("MINITRON_RUNS", str(tmp_path))
    code = main(["pipeline", "-m", "recipe=minitron_8b,minitron_4b,llama31_minitron_4b_depth", "dry_run=true"])
    assert code == 0, capsys.readouterr().err
    plans = sorted(tmp_path.glob("pipeline-multirun/*/*/plan.json"))
    assert len(plans) == 3
    counts = {json.loads(p.read_text())["target"]: json.loads(p.read_text())["pruned_parameters"] for p in plans}
    assert counts == {"minitron_8b": 8_271_699_968, "minitron_4b": 4_190_509_056,
                      "llama31_minitron_4b_depth": 4_540_469_248}
