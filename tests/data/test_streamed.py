"""Streamed data (`data=local data.streaming=true`, the same code as a streamed hub dataset): held-out splits,
packing on the fly, the cached validation split, calibration from a stream, and the losses that read it."""

from __future__ import annotations

import datasets
import pytest
import torch
from omegaconf import OmegaConf
from transformers import LlamaConfig, LlamaForCausalLM

from minitron.config import compose
from minitron.data import load_corpus
from minitron.data.calibration import calibration_batches, packed_data
from minitron.data.tokenizer import train_default_tokenizer
from minitron.errors import MinitronError
from minitron.train.trainer import unigram_loss
from minitron.train.validation import lm_loss
from small_runs import STREAM_DATA, write_stream_corpus


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    return write_stream_corpus(tmp_path_factory.mktemp("stream") / "corpus.jsonl", documents=40)


def data_cfg(path, *extra: str):
    return compose("pretrain", [*STREAM_DATA, f"data.path={path}", *extra]).data


def texts(ds) -> list[str]:
    return [row["text"] for row in ds]


@pytest.fixture(scope="module")
def tokenizer(corpus_file):
    return train_default_tokenizer(load_corpus(data_cfg(corpus_file)), 320, 200_000)


def test_streamed_splits_are_disjoint_deterministic_and_match_the_unstreamed_ones(corpus_file):
    streamed = load_corpus(data_cfg(corpus_file))
    assert all(isinstance(ds, datasets.IterableDataset) for ds in streamed.splits.values())
    parts = {s: texts(ds) for s, ds in streamed.splits.items()}
    assert parts == {s: texts(ds) for s, ds in load_corpus(data_cfg(corpus_file)).splits.items()}
    everything = [line for line in texts(datasets.load_dataset("json", data_files=corpus_file, split="train"))]
    assert sorted(parts["train"] + parts["validation"] + parts["test"]) == sorted(everything)
    assert parts["validation"] and parts["test"] and not set(parts["train"]) & set(parts["validation"] + parts["test"])
    # the held-out rows are those of the unstreamed run: both hash each row's running index with the seed
    whole = load_corpus(data_cfg(corpus_file, "data.streaming=false"))
    assert parts == {s: texts(ds) for s, ds in whole.splits.items()}
    other = load_corpus(data_cfg(corpus_file, "data.seed=1"))
    assert texts(other.splits["validation"]) != parts["validation"]
    assert streamed.key != whole.key


def test_packed_stream_and_its_cached_validation(corpus_file, tokenizer, tmp_path):
    cfg = data_cfg(corpus_file, "data.max_eval_docs=2")
    data = packed_data(cfg, tmp_path, tokenizer)
    assert isinstance(data["train"], datasets.IterableDataset)
    assert isinstance(data["validation"], datasets.Dataset)
    held_out = texts(load_corpus(cfg).splits["validation"])[:2]
    tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) + 1 for t in held_out)  # + eos
    assert sum(sum(m) for m in data["validation"]["attention_mask"]) == tokens
    cached = sorted((tmp_path / "packed").iterdir())
    assert [p.name.startswith(".") and p.name.endswith(".lock") for p in cached] == [True, False]  # the entry, its lock
    again = packed_data(cfg, tmp_path, tokenizer)
    assert again["validation"]["input_ids"] == data["validation"]["input_ids"]
    assert sorted((tmp_path / "packed").iterdir()) == cached
    first = [row["input_ids"] for _, row in zip(range(5), data["train"])]
    assert first == [row["input_ids"] for _, row in zip(range(5), again["train"])]
    assert all(len(ids) == 64 for ids in first)


def test_calibration_from_a_stream(corpus_file, tokenizer, tmp_path):
    train = packed_data(data_cfg(corpus_file), tmp_path, tokenizer)["train"]
    a = calibration_batches(train, 12, 4, seed=0)
    assert [b["input_ids"].shape for b in a] == [torch.Size([4, 64])] * 3
    b = calibration_batches(train, 12, 4, seed=0)
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, b))
    c = calibration_batches(train, 12, 4, seed=1)
    assert not all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, c))
    with pytest.raises(MinitronError, match=r"calib.samples=100000 exceeds the \d+ packed blocks of the train stream"):
        calibration_batches(train, 100_000, 4, seed=0)


def test_losses_read_a_stream_as_they_read_a_dataset(corpus_file, tokenizer, tmp_path):
    data = packed_data(data_cfg(corpus_file), tmp_path, tokenizer)
    validation = data["validation"]
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         head_dim=8))
    whole = lm_loss(model, validation, batch_size=3, max_batches=4)
    streamed = lm_loss(model, validation.to_iterable_dataset(), batch_size=3, max_batches=4)
    assert streamed == pytest.approx(whole, rel=1e-6)
    assert lm_loss(model, validation, batch_size=3, max_batches=1) != pytest.approx(whole, rel=1e-6)
    first = datasets.Dataset.from_list([row for _, row in zip(range(20), data["train"])])
    assert unigram_loss(data["train"], validation, len(tokenizer), max_train_blocks=20) == pytest.approx(
        unigram_loss(first, validation, len(tokenizer)))


def test_stdlib_cannot_stream():
    with pytest.raises(MinitronError, match="data.streaming=true applies to data=hf and data=local"):
        load_corpus(OmegaConf.create({"source": "stdlib", "streaming": True}))
