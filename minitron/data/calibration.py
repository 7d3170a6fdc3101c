"""Packed splits cached on disk, and the calibration batches that importance scoring reads.

Every verb gets its data here: `packed_data(data_cfg, cache_dir, tokenizer)` tokenizes and packs the corpus
that the `data` group names into train/validation/test blocks (cached under a key of corpus, tokenizer and
layout), and `calibration_batches` draws the seeded calibration sample from the train blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
from omegaconf import OmegaConf
from transformers import AutoTokenizer

from minitron.config import stable_hash, to_plain
from minitron.data.corpus import Corpus, load_corpus
from minitron.data.packing import build_datasets, tokenizer_digest
from minitron.data.tokenizer import train_default_tokenizer
from minitron.errors import MinitronError
from minitron.io import atomic_path, build_once


@dataclass(frozen=True)
class Calibration:
    """How the calibration sample is drawn: `samples` blocks of `seq_len` tokens, `batch_size` blocks per forward."""

    samples: int
    seq_len: int
    batch_size: int

    def __post_init__(self) -> None:
        for key, minimum, hint in (
            ("samples", 1, "the paper uses 1024"),
            ("seq_len", 2, "an input and its next token at least; e.g. 256"),
            ("batch_size", 1, "e.g. 8"),
        ):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise MinitronError(f"calib.{key}={value} must be an integer of at least {minimum} ({hint})")

    @classmethod
    def from_config(cls, calib: Any, seq_len: int) -> Calibration:
        """From a `calib` config node; `seq_len` is the block length when the node sets none (the data's)."""
        return cls(samples=calib.get("samples"), seq_len=calib.get("seq_len", seq_len), batch_size=calib.get("batch_size"))

    def batches(self, train_split, seed: int) -> list[dict]:
        """The calibration batches drawn from `train_split` (packed blocks of `seq_len` tokens)."""
        return calibration_batches(train_split, self.samples, self.batch_size, seed)


def cache_root(cache_dir: Any) -> Path:
    """The cache folder (`cache_dir` of the config, `~` expanded)."""
    return Path(str(cache_dir)).expanduser()


def packed_splits(data_cfg: Any, cache_dir: Any, tokenizer, tokenizer_key: str, corpus: Corpus):
    """Tokenized and packed train/validation blocks of `corpus`, cached under a key of corpus, tokenizer and layout."""
    key = stable_hash(corpus.key, tokenizer_key, data_cfg.seq_len, data_cfg.get("max_train_docs"))
    path = cache_root(cache_dir) / "packed" / key

    def build() -> None:
        print(f"packing the corpus into blocks of {data_cfg.seq_len} tokens (cached in {path})")
        packed = build_datasets(data_cfg, tokenizer, corpus=corpus)
        for split, ds in packed.items():
            _check_not_empty(split, ds, corpus)
        with atomic_path(path) as tmp:
            packed.save_to_disk(str(tmp))

    build_once(path, (path / "dataset_dict.json").is_file, build, what="the packed data")
    return datasets.load_from_disk(str(path))


def _check_not_empty(split: str, ds, corpus: Corpus) -> None:
    """An empty packed split is never written (datasets cannot read one back): say which split and what to do."""
    if not isinstance(ds, datasets.Dataset) or len(ds) > 0:
        return
    rows = corpus.fingerprint.get("split_rows", {}).get(split)
    fix = f"raise data.{split}_fraction above 0 or use more data" if split != "train" else "use more data"
    raise MinitronError(
        f"data: the {split} split of the corpus holds no text ({rows if rows is not None else 0} documents) and "
        f"packs into 0 blocks; {fix}"
    )


def packed_data(data_cfg: Any, cache_dir: Any, tokenizer, *, seq_len: int | None = None):
    """The corpus of `data_cfg` tokenized with `tokenizer` and packed into blocks of `seq_len` (default
    `data_cfg.seq_len`) tokens: a DatasetDict with train and validation, cached on disk."""
    if seq_len is not None and int(seq_len) != int(data_cfg.seq_len):
        data_cfg = OmegaConf.merge(data_cfg, {"seq_len": int(seq_len)})
    corpus = load_corpus(data_cfg)
    return packed_splits(data_cfg, cache_dir, tokenizer, tokenizer_digest(tokenizer), corpus)


def cached_bpe_tokenizer(data_cfg: Any, cache_dir: Any, corpus: Corpus):
    """A byte-level BPE tokenizer trained on the corpus's train split (`data_cfg.tokenizer` sets vocabulary and
    bytes), cached under a key of corpus and settings; returns (tokenizer, key)."""
    tok_cfg = data_cfg.tokenizer
    key = f"bpe{tok_cfg.vocab_size}-{stable_hash(corpus.key, to_plain(tok_cfg))}"
    path = cache_root(cache_dir) / "tokenizers" / key

    def build() -> None:
        print(f"training a byte-level BPE tokenizer (vocab {tok_cfg.vocab_size}) on the {data_cfg.source} train split")
        tokenizer = train_default_tokenizer(corpus, tok_cfg.vocab_size, tok_cfg.train_bytes)
        with atomic_path(path) as tmp:
            tokenizer.save_pretrained(str(tmp))

    build_once(path, (path / "tokenizer.json").is_file, build, what="the tokenizer")
    return AutoTokenizer.from_pretrained(str(path)), key


def calibration_batches(dataset, samples: int, batch_size: int, seed: int = 0) -> list[dict]:
    """`samples` packed blocks drawn at random (seeded) from `dataset`, in batches of `batch_size` rows.

    Each batch is a dict with `input_ids`, plus `attention_mask` where a block is padded (the last block of a
    packing batch may be), so that padding never enters the statistics.
    """
    if samples <= 0:
        raise MinitronError(f"calib.samples={samples} must be positive; the paper uses 1024")
    if samples > len(dataset):
        raise MinitronError(
            f"calib.samples={samples} exceeds the {len(dataset)} packed blocks of the train split; "
            "lower calib.samples or calib.seq_len, or use more data"
        )
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(int(seed)))
    picked = dataset.select(sorted(order[:samples].tolist()))
    ids = torch.tensor(picked["input_ids"], dtype=torch.long)
    mask = torch.tensor(picked["attention_mask"], dtype=torch.long)
    batches = []
    for b_ids, b_mask in zip(ids.split(batch_size), mask.split(batch_size)):
        batches.append({"input_ids": b_ids} if bool(b_mask.all()) else {"input_ids": b_ids, "attention_mask": b_mask})
    return batches
