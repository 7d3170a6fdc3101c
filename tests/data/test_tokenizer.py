"""The from-scratch byte-level BPE: exact round trips, special tokens, a standard HF folder."""

from __future__ import annotations

import datasets
import pytest
from transformers import AutoTokenizer

from minitron.data import (
    SPECIAL_TOKENS,
    Corpus,
    load_corpus,
    stdlib_root,
    train_default_tokenizer,
    train_tokenizer,
)
from minitron.data.tokenizer import _prefix
from minitron.errors import MinitronError

SAMPLE_FILES = ("json/decoder.py", "json/encoder.py", "textwrap.py", "string.py", "csv.py", "difflib.py")
TRICKY = [
    "",
    " ",
    "def f(x):\n\treturn x  # tab, then two spaces\r\n",
    "  leading and trailing spaces  ",
    "héllo wörld — ünïcödé “quotes” 日本語 中文 🐍🚀 \u200b zero-width",
    "don 't , spaces . before ! punctuation ?",
    "literal special tokens: <|pad|><|bos|> and <|eos|>",
    "\x00\x01 control \x7f bytes \ufffd",
]


@pytest.fixture(scope="module")
def sample_texts() -> list[str]:
    return [(stdlib_root() / f).read_text(encoding="utf-8", errors="replace") for f in SAMPLE_FILES]


@pytest.fixture(scope="module")
def tokenizer(sample_texts):
    assert 100_000 < sum(len(t) for t in sample_texts) < 1_000_000
    return train_tokenizer(sample_texts, 512)


def test_vocab_and_special_tokens(tokenizer):
    assert len(tokenizer) == 512
    assert (tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token) == SPECIAL_TOKENS
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.unk_token is None
    assert tokenizer.convert_ids_to_tokens([0, 1, 2]) == list(SPECIAL_TOKENS)


def test_encode_adds_no_special_tokens(tokenizer):
    ids = tokenizer("hello world")["input_ids"]
    assert ids and not set(ids) & {0, 1, 2}
    assert tokenizer("<|eos|>", add_special_tokens=False)["input_ids"] == [2]


@pytest.mark.parametrize("text", TRICKY)
def test_round_trip_tricky_text(tokenizer, text):
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_round_trip_and_compression_on_python(tokenizer, sample_texts):
    held_out = (stdlib_root() / "shlex.py").read_text()
    for text in [*sample_texts, held_out]:
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.decode(ids) == text
    # Learned merges: far fewer tokens than bytes on unseen Python.
    assert len(tokenizer(held_out)["input_ids"]) < len(held_out.encode()) / 2


def test_training_is_deterministic(tokenizer, sample_texts):
    again = train_tokenizer(sample_texts, 512)
    assert again.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()


def test_save_pretrained_loads_with_auto_tokenizer(tokenizer, sample_texts, tmp_path):
    tokenizer.save_pretrained(str(tmp_path))
    loaded = AutoTokenizer.from_pretrained(str(tmp_path))
    assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id) == (0, 1, 2)
    assert len(loaded) == len(tokenizer)
    for text in [*TRICKY, sample_texts[0][:5000]]:
        ids = tokenizer(text)["input_ids"]
        assert loaded(text)["input_ids"] == ids
        assert loaded.decode(ids) == text


def test_vocab_too_small():
    with pytest.raises(MinitronError) as excinfo:
        train_tokenizer(["abc"], 100)
    assert "data.tokenizer.vocab_size" in str(excinfo.value)


def test_prefix_is_capped_in_bytes():
    docs = ["aaaa", "", "ééé", "bbbb"]  # "ééé" is 6 bytes
    assert list(_prefix(docs, 100)) == ["aaaa", "ééé", "bbbb"]
    assert list(_prefix(docs, 4)) == ["aaaa"]
    assert list(_prefix(docs, 7)) == ["aaaa", "é"]  # never a split character
    assert list(_prefix(docs, 0)) == []


def test_default_tokenizer_trains_on_a_prefix_of_the_train_split(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))
    root = tmp_path / "lib"
    for name in SAMPLE_FILES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text((stdlib_root() / name).read_text())
    corpus = load_corpus({"source": "stdlib"}, root=root)
    first = train_default_tokenizer(corpus, 300, 50_000)
    assert len(first) == 300 and first.eos_token_id == 2
    assert first.backend_tokenizer.to_str() == train_default_tokenizer(corpus, 300, 50_000).backend_tokenizer.to_str()
    # Only the first 50 kB of the train split count: a change after them leaves the tokenizer alone.
    def corpus_of(*docs: str) -> Corpus:
        return Corpus(datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": list(docs)})}), {})

    head = "".join((stdlib_root() / name).read_text() for name in SAMPLE_FILES)[:60_000]
    base = train_default_tokenizer(corpus_of(head, "x = 1\n" * 1000), 300, 50_000)
    same = train_default_tokenizer(corpus_of(head, "zzzz qqqq " * 5000), 300, 50_000)
    assert same.backend_tokenizer.to_str() == base.backend_tokenizer.to_str()
    wider = train_default_tokenizer(corpus_of(head, "zzzz qqqq " * 5000), 300, 120_000)
    assert wider.backend_tokenizer.to_str() != base.backend_tokenizer.to_str()
    with pytest.raises(MinitronError):
        train_default_tokenizer(corpus, 300, 0)
