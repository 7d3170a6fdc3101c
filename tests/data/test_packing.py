"""Packing: every token kept, in order, in fixed-length blocks; only batch tails padded."""

from __future__ import annotations

import random

import datasets
import pytest

from minitron.data import build_datasets, load_corpus, pack, stdlib_root, train_tokenizer
from minitron.errors import MinitronError


@pytest.fixture(scope="module")
def tokenizer():
    texts = [(stdlib_root() / f).read_text() for f in ("textwrap.py", "string.py", "json/encoder.py")]
    return train_tokenizer(texts, 320)


@pytest.fixture(scope="module")
def documents() -> list[str]:
    """Short documents, empty ones, and one spanning many blocks, in a seeded order."""
    rng = random.Random(0)
    words = ["def", "class", "return", "self", "x", "=", "(", ")", ":", "\n", "    ", "é", "🐍", "import", "0"]
    docs = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 40))) for _ in range(60)]
    docs[7] = ""
    docs[30] = (stdlib_root() / "textwrap.py").read_text()[:6000]  # hundreds of tokens
    docs.append("a")
    return docs


def _expected(tokenizer, docs, add_eos=True):
    ids = []
    for doc in docs:
        if doc:
            ids += tokenizer(doc, add_special_tokens=False)["input_ids"] + ([tokenizer.eos_token_id] if add_eos else [])
    return ids


def _check_blocks(packed, tokenizer, seq_len, expected, max_padded):
    ids, masks = list(packed["input_ids"]), list(packed["attention_mask"])
    flat, padded = [], 0
    for block, mask in zip(ids, masks):
        assert len(block) == len(mask) == seq_len
        real = sum(mask)
        assert real > 0 and mask == [1] * real + [0] * (seq_len - real)  # padding only at the end
        assert block[real:] == [tokenizer.pad_token_id] * (seq_len - real)
        padded += real < seq_len
        flat += block[:real]
    assert flat == expected  # nothing lost, duplicated or reordered at block edges
    assert padded <= max_padded
    return padded


@pytest.mark.parametrize("num_proc", [1, 2])
@pytest.mark.parametrize("add_eos", [True, False])
@pytest.mark.parametrize("seq_len", [2, 16, 64])
def test_pack_keeps_every_token(tokenizer, documents, tmp_path, num_proc, add_eos, seq_len):
    source = datasets.Dataset.from_dict({"text": documents, "other": list(range(len(documents)))})
    batch_size = 16
    packed = pack(source, tokenizer, seq_len, num_proc=num_proc, add_eos=add_eos, batch_size=batch_size)
    assert packed.column_names == ["input_ids", "attention_mask"]
    expected = _expected(tokenizer, documents, add_eos)
    batches = -(-len(documents) // batch_size)
    _check_blocks(packed, tokenizer, seq_len, expected, max_padded=batches)
    assert len(packed) >= len(expected) // seq_len


def test_long_document_spans_many_blocks_and_last_block_is_padded(tokenizer):
    long_doc = (stdlib_root() / "textwrap.py").read_text()[:4000]
    expected = _expected(tokenizer, [long_doc])
    packed = pack(datasets.Dataset.from_dict({"text": [long_doc]}), tokenizer, 32)
    assert len(packed) == -(-len(expected) // 32) >= 5
    assert len(expected) % 32 != 0
    assert _check_blocks(packed, tokenizer, 32, expected, max_padded=1) == 1
    last = packed[-1]
    assert last["attention_mask"][-1] == 0 and last["input_ids"][sum(last["attention_mask"]) - 1] == 2


def test_short_documents_share_a_block(tokenizer):
    docs = ["x = 1", "y = 2", "z"]
    expected = _expected(tokenizer, docs)
    packed = pack(datasets.Dataset.from_dict({"text": docs}), tokenizer, 64)
    assert len(packed) == 1 and sum(packed[0]["attention_mask"]) == len(expected) < 64
    assert packed[0]["input_ids"][: len(expected)] == expected


def test_file_backed_packing_is_cached(tokenizer, documents, tmp_path):
    datasets.Dataset.from_dict({"text": documents}).save_to_disk(str(tmp_path / "docs"))
    source = datasets.load_from_disk(str(tmp_path / "docs"))
    first = pack(source, tokenizer, 16, num_proc=2, batch_size=16)
    again = pack(datasets.load_from_disk(str(tmp_path / "docs")), tokenizer, 16, num_proc=2, batch_size=16)
    assert first._fingerprint == again._fingerprint
    assert [f["filename"] for f in first.cache_files] == [f["filename"] for f in again.cache_files]
    assert list(first["input_ids"]) == list(again["input_ids"])
    other = pack(source, tokenizer, 32, num_proc=2, batch_size=16)
    assert other._fingerprint != first._fingerprint
    _check_blocks(first, tokenizer, 16, _expected(tokenizer, documents), max_padded=4)


def test_streaming_dataset_packs_the_same_way(tokenizer, documents):
    eager = pack(datasets.Dataset.from_dict({"text": documents}), tokenizer, 16, batch_size=16)
    stream = datasets.Dataset.from_dict({"text": documents}).to_iterable_dataset()
    lazy = pack(stream, tokenizer, 16, batch_size=16)
    assert isinstance(lazy, datasets.IterableDataset)
    assert [r["input_ids"] for r in lazy] == list(eager["input_ids"])
    assert [r["attention_mask"] for r in lazy] == list(eager["attention_mask"])


def test_pack_errors(tokenizer):
    ds = datasets.Dataset.from_dict({"body": ["x"]})
    with pytest.raises(MinitronError) as excinfo:
        pack(ds, tokenizer, 1, text_field="body")
    assert "data.seq_len" in str(excinfo.value)
    with pytest.raises(MinitronError) as excinfo:
        pack(ds, tokenizer, 16)
    assert "data.text_field" in str(excinfo.value) and "body" in str(excinfo.value)


def test_build_datasets(tokenizer, tmp_path):
    for i in range(50):
        (tmp_path / f"doc{i:02d}.txt").write_text(f"document {i}: " + "word " * (i + 1))
    cfg = {"source": "local", "path": str(tmp_path), "seq_len": 16, "num_proc": 2, "validation_fraction": 0.1}
    corpus = load_corpus(cfg)
    packed = build_datasets(cfg, tokenizer, corpus=corpus)
    assert set(packed) == {"train", "validation"}
    for split in packed:
        _check_blocks(packed[split], tokenizer, 16, _expected(tokenizer, corpus.splits[split]["text"]), max_padded=2)
    capped = build_datasets({**cfg, "max_train_docs": 5}, tokenizer, splits=("train",), corpus=corpus)
    assert set(capped) == {"train"}
    assert len(capped["train"]) < len(packed["train"])
    again = build_datasets({**cfg, "max_train_docs": 5}, tokenizer, splits=("train",))
    assert list(again["train"]["input_ids"]) == list(capped["train"]["input_ids"])
    with pytest.raises(MinitronError) as excinfo:
        build_datasets(cfg, tokenizer, splits=("dev",), corpus=corpus)
    assert "dev" in str(excinfo.value)
    with pytest.raises(MinitronError) as excinfo:
        build_datasets({**cfg, "max_train_docs": 0}, tokenizer, corpus=corpus)
    assert "data.max_train_docs" in str(excinfo.value)
