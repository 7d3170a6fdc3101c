"""Architecture search: the candidate grid and budget, and the verb on a tiny trained teacher."""

from __future__ import annotations

import csv
import json

import pytest
from prune_helpers import DATA

from minitron.commands.search import run
from minitron.config import compose
from minitron.errors import MinitronError
from minitron.models import get_adapter
from minitron.models.tiny import tiny_config
from minitron.prune.search import Candidate, enumerate_candidates, grid
from minitron.prune.target import Target


def test_grid_is_the_whole_fractions_of_the_source():
    assert grid(32, 8) == [4, 8, 12, 16, 20, 24, 28, 32]
    assert grid(4, 8) == [1, 2, 3, 4]
    assert grid(6, 4) == [3, 6]


@pytest.mark.parametrize("family, extra", [("nemotron", {}), ("llama", {"tie_word_embeddings": True}),
                                            ("qwen2", {}), ("llama", {"attention_bias": True, "mlp_bias": True}),
                                            ("qwen3", {}), ("olmo2", {}), ("gemma2", {}), ("gemma3", {}), ("phi3", {}),
                                            ("granite", {}), ("smollm3", {})])
def test_candidate_counts_equal_the_resolved_configs(family, extra):
    config = tiny_config(family, num_hidden_layers=4, **extra)
    budget = get_adapter(config).num_parameters() // 2
    found = enumerate_candidates(config, budget, tolerance=0.1, steps=4)
    assert found
    for c in found:
        resolved = Target(**c.shape.as_dict()).resolve(config)
        assert get_adapter(resolved).num_parameters() == c.parameters
        assert budget * 0.9 <= c.parameters <= budget * 1.1
    assert [c.parameters for c in found] == sorted((c.parameters for c in found), reverse=True)


def test_candidates_respect_the_options_and_the_budget():
    config = tiny_config("nemotron", num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2)
    budget = get_adapter(config).num_parameters() // 2
    width_only = enumerate_candidates(config, budget, steps=8, search_depth=False)
    assert width_only and all(c.num_hidden_layers == 4 for c in width_only)
    assert {c.num_attention_heads for c in enumerate_candidates(config, budget, steps=8)} <= {2, 4, 6, 8}
    assert all(c.num_attention_heads == 8 for c in enumerate_candidates(config, budget, search_heads=False))
    with pytest.raises(MinitronError, match="larger than the source model"):
        enumerate_candidates(config, budget * 3)
    assert Candidate(2, 32, 64, 4, 2, 0).label == "L2-h32-ffn64-q4-kv2"


def test_search_verb_writes_a_ranked_table(teacher_dir, tmp_path):
    cfg = compose("search", [f"teacher={teacher_dir}", "calib.samples=8", "calib.seq_len=64",
                             "search.eval_batches=2", "search.max_candidates=6", *DATA])
    result = run(cfg, run_dir=tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {"candidates.csv", "candidates.md", "candidates.png", "best.json",
                                                     "config.yaml", "importance.safetensors"}
    with open(tmp_path / "candidates.csv") as f:
        rows = list(csv.DictReader(f))
    assert 1 <= len(rows) <= 6
    losses = [float(r["zero_shot_loss"]) for r in rows]
    assert losses == sorted(losses) and all(loss > 0 for loss in losses)
    assert [int(r["rank"]) for r in rows] == list(range(1, len(rows) + 1))
    source = get_adapter(_config(teacher_dir)).num_parameters()
    for r in rows:
        assert abs(int(r["parameters"]) - source / 2) <= 0.05 * source / 2
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["label"] == rows[0]["label"] == result["table"][0]["label"]
    md = (tmp_path / "candidates.md").read_text()
    assert md.count("\n| ") == len(rows) + 1 and rows[0]["label"] in md
    assert (tmp_path / "candidates.png").read_bytes()[:4] == b"\x89PNG"


def test_retraining_distills_the_top_k_and_reranks(teacher_dir, tmp_path):
    cfg = compose("search", [f"teacher={teacher_dir}", "calib.samples=8", "calib.seq_len=64", "search.eval_batches=2",
                             "search.max_candidates=4", "search.retrain_steps=2", "search.top_k=2",
                             "train.batch_size=2", "train.eval_batches=2", "train.logging_steps=1", *DATA])
    result = run(cfg, run_dir=tmp_path)
    table = result["table"]
    retrained = [r for r in table if r["retrained_loss"] is not None]
    assert len(retrained) == 2 and table[:2] == retrained  # the retrained ones lead, best retrained loss first
    assert retrained[0]["retrained_loss"] <= retrained[1]["retrained_loss"]
    for r in retrained:
        student = tmp_path / "retrain" / r["label"] / "student"
        assert (student / "config.json").is_file()
        assert json.loads((tmp_path / "retrain" / r["label"] / "metrics.json").read_text())["steps"] == 2
    with open(tmp_path / "candidates.csv") as f:
        assert [row["label"] for row in csv.DictReader(f)] == [r["label"] for r in table]


def _config(path):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path)
