"""`minitron eval` and `evaluate` on a tiny random checkpoint: the results files, the flat metrics, and
bits-per-byte recomputed by hand from the model's logits."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from minitron.commands.eval import run
from minitron.config import compose
from minitron.evaluate import evaluate, prepare_tiny_tasks

METRICS = {"tiny_bpb", "tiny_byte_ppl", "tiny_mc_acc", "tiny_mc_acc_norm"}


@pytest.fixture(scope="module")
def evaluated(checkpoint, corpus_dir, tmp_path_factory):
    """One `minitron eval` run (through `run`, as the CLI calls it) shared by the tests of this module."""
    root = tmp_path_factory.mktemp("eval")
    overrides = [
        "data=local", f"data.path={corpus_dir}", f"cache_dir={root / 'cache'}", f"model_path={checkpoint}",
        "eval.generate.docs=6", "eval.generate.doc_chars=600", "eval.generate.mc_items=12",
        "eval.generate.context_chars=200", "batch_size=4",
    ]
    cfg = compose("eval", overrides)
    metrics = run(cfg, run_dir=root / "run")
    return cfg, metrics, root / "run"


def test_flat_metrics_in_plausible_ranges(evaluated):
    _, metrics, _ = evaluated
    assert set(metrics) == METRICS
    assert 0 < metrics["tiny_bpb"] < 20 and math.isfinite(metrics["tiny_bpb"])
    # lm-eval reports both; bits per byte is log2 of the byte perplexity
    assert metrics["tiny_byte_ppl"] == pytest.approx(2 ** metrics["tiny_bpb"], rel=1e-9)
    for key in ("tiny_mc_acc", "tiny_mc_acc_norm"):
        assert 0 <= metrics[key] <= 1
        assert metrics[key] * 12 == pytest.approx(round(metrics[key] * 12))  # a whole number of 12 items


def test_run_folder_holds_results_json_and_markdown(evaluated, checkpoint, capsys):
    _, metrics, run_dir = evaluated
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml", "results.json", "results.md"]
    record = json.loads((run_dir / "results.json").read_text())
    assert record["metrics"] == metrics and record["suite"] == "tiny" and record["model"] == str(checkpoint)
    assert record["tasks"] == [{"task": "minitron_tiny_bpb", "num_fewshot": 0}, {"task": "minitron_tiny_mc", "num_fewshot": 0}]
    assert record["lm_eval"]["n-samples"]["minitron_tiny_bpb"]["effective"] == 6
    assert record["lm_eval"]["n-samples"]["minitron_tiny_mc"]["effective"] == 12
    assert record["lm_eval"]["results"]["minitron_tiny_bpb"]["bits_per_byte,none"] == metrics["tiny_bpb"]
    table = (run_dir / "results.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| tiny_")]
    assert [r.split("|")[1].strip() for r in rows] == ["tiny_bpb", "tiny_byte_ppl", "tiny_mc_acc", "tiny_mc_acc_norm"]
    assert f"{metrics['tiny_mc_acc']:.4f}" in rows[2]


def test_bits_per_byte_matches_a_direct_computation(evaluated, checkpoint):
    """Every document fits in one window: lm-eval scores its tokens after the BOS token; we do the same by hand."""
    cfg, metrics, _ = evaluated
    tasks = prepare_tiny_tasks(cfg.data, cfg.eval.generate, cfg.cache_dir)
    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    nats, size = 0.0, 0
    for line in (tasks.path / "text.jsonl").read_text().splitlines():
        text = json.loads(line)["text"]
        ids = [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]
        assert len(ids) <= model.config.max_position_embeddings
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, :-1].double()
        nats -= logits.log_softmax(-1).gather(1, torch.tensor(ids[1:])[:, None]).sum().item()
        size += len(text.encode("utf-8"))
    assert metrics["tiny_bpb"] == pytest.approx(nats / math.log(2) / size, rel=1e-4)


def test_library_call_leaves_the_callers_state_alone(checkpoint, small_eval, tmp_path):
    cfg = compose("eval", small_eval)
    model = AutoModelForCausalLM.from_pretrained(checkpoint).train()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    random.seed(7)
    torch.manual_seed(7)
    expected = (random.random(), torch.rand(1).item())
    random.seed(7)
    torch.manual_seed(7)
    metrics = evaluate(model, tokenizer, cfg.eval, None, data_cfg=cfg.data, cache_dir=cfg.cache_dir, limit=3, batch_size=2)
    assert (random.random(), torch.rand(1).item()) == expected
    assert model.training
    assert set(metrics) == METRICS
    assert not (tmp_path / "results.json").exists()
