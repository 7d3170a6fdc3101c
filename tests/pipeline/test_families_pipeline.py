"""`minitron pipeline` with a tiny random teacher of each family added in issue 18: scores, prunes every width axis,
evaluates, distills, and writes a student that the family's stock class loads. One tokenizer (trained by the
data layer on the embedded corpus) serves every teacher, so all runs share one packed-data cache."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from minitron.commands.pipeline import run
from minitron.config import compose
from minitron.data import load_corpus, train_default_tokenizer
from minitron.models.tiny import tiny_model

FAMILIES = ("qwen3", "olmo2", "gemma2", "gemma3", "phi3", "granite", "smollm3")
PIPELINE = [
    "data.seq_len=64",
    "data.max_train_docs=12",
    "data.num_proc=1",
    "target.hidden_size=48",
    "target.intermediate_size=96",
    "target.num_attention_heads=2",
    "calib.samples=8",
    "calib.batch_size=4",
    "train.max_steps=3",
    "train.batch_size=4",
    "train.warmup_steps=1",
    "train.logging_steps=1",
    "train.save_steps=0",
    "train.eval_batches=2",
    "eval_batches=2",
    "eval_batch_size=4",
    "eval.generate.docs=4",
    "eval.generate.doc_chars=256",
    "eval.generate.mc_items=4",
    "eval.generate.context_chars=64",
    "baseline.enabled=false",
]


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """(root folder, cache override, tokenizer) shared by every family's run."""
    root = tmp_path_factory.mktemp("families_pipeline")
    cache = f"cache_dir={root / 'cache'}"
    cfg = compose("pipeline", PIPELINE + [cache])
    tokenizer = train_default_tokenizer(load_corpus(cfg.data), 320, 200_000)
    return root, cache, tokenizer


def _teacher(shared, family: str):
    """A tiny random teacher of `family` with the shared tokenizer, saved under the family's folder."""
    root, _, tokenizer = shared
    ids = {t: tokenizer.convert_tokens_to_ids(getattr(tokenizer, f"{t}_token")) for t in ("pad", "bos", "eos")}
    teacher = tiny_model(family, seed=0, vocab_size=len(tokenizer), **{f"{t}_token_id": i for t, i in ids.items()})
    teacher_dir = root / family / "teacher"
    teacher.save_pretrained(teacher_dir)
    tokenizer.save_pretrained(teacher_dir)
    return teacher, teacher_dir


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_pipeline_runs_with_a_tiny_teacher_of_the_family(shared, family):
    root, cache, _ = shared
    teacher, teacher_dir = _teacher(shared, family)

    result = run(compose("pipeline", PIPELINE + [cache, f"teacher={teacher_dir}"]), run_dir=root / family / "run")

    stages, ev = result["stages"], result["eval"]
    assert stages["prune"]["params"] < teacher.num_parameters()
    student = AutoModelForCausalLM.from_pretrained(stages["distill"]["path"])
    assert type(student) is type(teacher)
    config = student.config
    assert (config.hidden_size, config.intermediate_size, config.num_attention_heads) == (48, 96, 2)
    assert student.num_parameters() == stages["prune"]["params"]
    for name in ("teacher", "pruned", "distilled"):
        assert torch.isfinite(torch.tensor(ev[name]["val_loss"])), name
    report = (root / family / "run" / "report.md").read_text()
    assert "| teacher |" in report and "| distilled |" in report
    assert json.loads((root / family / "run" / "stages" / "distill.json").read_text())["steps"] == 3


# Mixture of experts (tiny teachers with 4 experts, 2 per token): experts 4->3 and expert neurons 48->32, each
# under the family's own config key, on top of the hidden and head targets above.
EXPERT_SIZE = {"mixtral": "intermediate_size", "qwen3_moe": "moe_intermediate_size"}


@pytest.mark.slow
@pytest.mark.parametrize("family", EXPERT_SIZE)
def test_pipeline_runs_with_a_tiny_moe_teacher(shared, family):
    root, cache, _ = shared
    teacher, teacher_dir = _teacher(shared, family)
    size = EXPERT_SIZE[family]
    # the default target's dense MLP size is no key of Qwen3-MoE's: cleared, then the family's own key is set
    overrides = [o for o in PIPELINE if not o.startswith("target.intermediate_size=")]
    overrides += [cache, f"teacher={teacher_dir}", "target.intermediate_size=null", "target.num_experts=3", f"target.{size}=32"]

    result = run(compose("pipeline", overrides), run_dir=root / family / "run")

    stages, ev = result["stages"], result["eval"]
    student = AutoModelForCausalLM.from_pretrained(stages["distill"]["path"])
    assert type(student) is type(teacher)
    config = student.config
    assert (config.hidden_size, config.num_attention_heads, config.num_experts, getattr(config, size)) == (48, 2, 3, 32)
    assert config.num_experts_per_tok == 2
    assert student.num_parameters() == stages["prune"]["params"] < teacher.num_parameters()
    for name in ("teacher", "pruned", "distilled"):
        assert torch.isfinite(torch.tensor(ev[name]["val_loss"])), name
    assert json.loads((root / family / "run" / "stages" / "distill.json").read_text())["steps"] == 3


# The Nemotron-H hybrid (blocks Mamba, MLP, attention, MLP, Mamba): every width axis of every block type at once,
# Mamba heads 8 -> 4 (2 in each of the 2 groups), and one MLP block dropped by its depth score.
@pytest.mark.slow
def test_pipeline_runs_with_a_tiny_hybrid_teacher(shared):
    root, cache, tokenizer = shared
    ids = {t: tokenizer.convert_tokens_to_ids(getattr(tokenizer, f"{t}_token")) for t in ("pad", "bos", "eos")}
    teacher = tiny_model("nemotron_h", seed=0, vocab_size=len(tokenizer), num_hidden_layers=5,
                         **{f"{t}_token_id": i for t, i in ids.items()})
    teacher_dir = root / "nemotron_h" / "teacher"
    teacher.save_pretrained(teacher_dir)
    tokenizer.save_pretrained(teacher_dir)
    overrides = PIPELINE + [cache, f"teacher={teacher_dir}", "target.mamba_num_heads=4", "target.num_hidden_layers=4",
                            "target.drop_block_types=[mlp]"]

    result = run(compose("pipeline", overrides), run_dir=root / "nemotron_h" / "run")

    stages, ev = result["stages"], result["eval"]
    student = AutoModelForCausalLM.from_pretrained(stages["distill"]["path"])
    assert type(student) is type(teacher)
    config = student.config
    assert (config.hidden_size, config.intermediate_size, config.num_attention_heads, config.mamba_num_heads) == (48, 96, 2, 4)
    assert config.layers_block_type.count("mlp") == 1 and len(config.layers_block_type) == 4
    assert student.num_parameters() == stages["prune"]["params"] < teacher.num_parameters()
    for name in ("teacher", "pruned", "distilled"):
        assert torch.isfinite(torch.tensor(ev[name]["val_loss"])), name
    assert json.loads((root / "nemotron_h" / "run" / "stages" / "distill.json").read_text())["steps"] == 3
