"""Packed splits cached on disk, and the calibration batches that importance scoring reads.

Every verb gets its data here: `packed_data(data_cfg, cache_dir, tokenizer)` tokenizes and packs the corpus
that the `data` group names into train/validation/test blocks (cached under a key of corpus, tokenizer and
layout), and `calibration_batches` draws the seeded calibration sample from the train blocks.

Streamed data (`data.streaming=true`) is never cached whole: the train split is an `IterableDataset` tokenized and
packed on the fly as it is read, and only the validation split (the first `data.max_eval_docs` held-out documents)
is packed once and cached. A cache entry is built once under an inter-process lock (`minitron.io.build_once`): the
other ranks of a launch, and other runs sharing the cache, wait for it and reuse it.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import datasets
import torch
from omegaconf import OmegaConf
from transformers import AutoTokenizer

from minitron.config import stable_hash, to_plain
from minitron.data.corpus import Corpus, _int_field, load_corpus
from minitron.data.packing import build_datasets, pack, tokenizer_digest
from minitron.data.tokenizer import train_default_tokenizer
from minitron.errors import MinitronError
from minitron.io import atomic_path, build_once

# A streamed calibration sample is drawn through a shuffle buffer of this many times calib.samples blocks: the
# first (factor + 1) x samples blocks of the (shard-shuffled) stream are read, not the whole stream.
STREAM_CALIB_BUFFER = 4


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
    """Tokenized and packed train/validation blocks of `corpus`, cached under a key of corpus, tokenizer and layout;
    for a streamed corpus see `streamed_splits`."""
    if isinstance(corpus.splits["train"], datasets.IterableDataset):
        return streamed_splits(data_cfg, cache_dir, tokenizer, tokenizer_key, corpus)
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


def streamed_splits(data_cfg: Any, cache_dir: Any, tokenizer, tokenizer_key: str, corpus: Corpus) -> dict[str, Any]:
    """{"train": IterableDataset, "validation": Dataset} of a streamed corpus.

    train: blocks tokenized and packed on the fly, in stream order (documents held out for validation/test are
    filtered out of it by the hash of their running index, `corpus._complete_splits`), capped at
    `data.max_train_docs` documents; the Trainer cycles it (`build_trainer`). It is read in one fixed order, so a
    resumed Trainer skips exactly the blocks it consumed. validation: the first `data.max_eval_docs` held-out
    documents, packed once and cached.
    """
    seq_len = _int_field(data_cfg, "seq_len", 256, 2)
    max_eval = _int_field(data_cfg, "max_eval_docs", 1000, 1)
    max_train = _int_field(data_cfg, "max_train_docs", None, 1)
    key = stable_hash(corpus.key, tokenizer_key, seq_len, max_eval, "streamed-validation")
    path = cache_root(cache_dir) / "packed" / key

    def build() -> None:
        blocks = pack(corpus.splits["validation"].take(max_eval), tokenizer, seq_len)
        held_out = datasets.Dataset.from_list(list(blocks), features=blocks.features)
        _check_not_empty("validation", held_out, corpus)
        with atomic_path(path) as tmp:
            held_out.save_to_disk(str(tmp))

    build_once(path, (path / "dataset_info.json").is_file, build, what="the streamed validation split")
    train = corpus.splits["train"]
    if max_train is not None:
        train = train.take(max_train)
    return {"train": pack(train, tokenizer, seq_len), "validation": datasets.load_from_disk(str(path))}

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
    if isinstance(dataset, datasets.IterableDataset):
        # a stream has no length and no random access: a seeded shuffle buffer over its first blocks
        buffer = dataset.shuffle(seed=int(seed), buffer_size=STREAM_CALIB_BUFFER * samples)
        rows = list(islice(iter(buffer), samples))
        if len(rows) < samples:
            raise MinitronError(
                f"calib.samples={samples} exceeds the {len(rows)} packed blocks of the train stream; "
                "lower calib.samples or calib.seq_len, or use more data"
            )
        return _batches([r["input_ids"] for r in rows], [r["attention_mask"] for r in rows], batch_size)
    if samples > len(dataset):
        raise MinitronError(
            f"calib.samples={samples} exceeds the {len(dataset)} packed blocks of the train split; "
            "lower calib.samples or calib.seq_len, or use more data"
        )
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(int(seed)))
    picked = dataset.select(sorted(order[:samples].tolist()))
    return _batches(picked["input_ids"], picked["attention_mask"], batch_size)


def _batches(input_ids: list, attention_mask: list, batch_size: int) -> list[dict]:
    ids = torch.tensor(input_ids, dtype=torch.long)
    mask = torch.tensor(attention_mask, dtype=torch.long)
    batches = []
    for b_ids, b_mask in zip(ids.split(batch_size), mask.split(batch_size)):
        batches.append({"input_ids": b_ids} if bool(b_mask.all()) else {"input_ids": b_ids, "attention_mask": b_mask})
    return batches
