"""A tiny random checkpoint with its own byte-level BPE tokenizer, and a small three-split text corpus."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from minitron.data import train_tokenizer
from minitron.models.tiny import tiny_model



def _document(split: str, index: int) -> str:
    """A small Python-like file whose every line names its split and document (so tests can trace any text)."""
    lines = [f"# {split} document {index}\n"]
    for j in range(12 + index % 5):
        lines.append(f"def {split}_{index}_function_{j}(value):\n")
        lines.append(f"    return value * {j + index} + {split!r}.count('{index}')\n")
    return "".join(lines)


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    """train/validation/test jsonl files: 30 / 8 / 8 documents."""
    root = tmp_path_factory.mktemp("corpus")
    for split, count in (("train", 30), ("validation", 8), ("test", 8)):
        rows = [json.dumps({"text": _document(split, i)}) for i in range(count)]
        (root / f"{split}.jsonl").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, corpus_dir) -> Path:
    """A 2-layer Nemotron with a 300-token BPE trained on the corpus's train split, saved with save_pretrained."""
    texts = [json.loads(line)["text"] for line in (corpus_dir / "train.jsonl").read_text().splitlines()]
    tokenizer = train_tokenizer(texts, 300)
    model = tiny_model("nemotron", seed=0, vocab_size=len(tokenizer), max_position_embeddings=1024)
    path = tmp_path_factory.mktemp("ckpt")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def small_eval(corpus_dir, tmp_path) -> list[str]:
    """`minitron eval` overrides: the local corpus, a fresh cache, and a tiny suite shrunk to take a few seconds."""
    return [
        "data=local",
        f"data.path={corpus_dir}",
        f"cache_dir={tmp_path / 'cache'}",
        "eval.generate.docs=6",
        "eval.generate.doc_chars=600",
        "eval.generate.mc_items=12",
        "eval.generate.context_chars=200",
    ]
