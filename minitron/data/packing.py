"""Tokenize documents and pack them into fixed-length blocks, losing no token at block edges."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

from datasets import Dataset, DatasetDict, Features, IterableDataset, IterableDatasetDict, List, Value
from datasets.fingerprint import Hasher

from minitron.data.corpus import SPLITS, Corpus, _int_field, _unit, load_corpus
from minitron.errors import MinitronError

# Bump when the packed layout changes, so that old datasets caches are not reused.
_PACK_VERSION = 1


def _features(seq_len: int) -> Features:
    # int64 so that input_ids can serve directly as labels for cross-entropy.
    return Features(
        {
            "input_ids": List(Value("int64"), length=seq_len),
            "attention_mask": List(Value("int64"), length=seq_len),
        }
    )


def _pack_batch(
    batch: dict[str, list],
    *,
    tokenizer: Any,
    seq_len: int,
    text_field: str,
    eos_id: int | None,
    pad_id: int,
) -> dict[str, list[list[int]]]:
    # None and "" rows are not documents (e.g. the blank lines of wikitext): no lone eos for them.
    texts = [t for t in batch[text_field] if t]
    if not texts:
        return {"input_ids": [], "attention_mask": []}
    encoded = tokenizer(
        texts, add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False, verbose=False
    )["input_ids"]
    flat: list[int] = []
    for ids in encoded:
        flat.extend(ids)
        if eos_id is not None:
            flat.append(eos_id)
    blocks = [flat[i : i + seq_len] for i in range(0, len(flat), seq_len)]
    masks = [[1] * seq_len for _ in blocks]
    if blocks and len(blocks[-1]) < seq_len:
        real = len(blocks[-1])
        blocks[-1] = blocks[-1] + [pad_id] * (seq_len - real)
        masks[-1] = [1] * real + [0] * (seq_len - real)
    return {"input_ids": blocks, "attention_mask": masks}


def tokenizer_digest(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return hashlib.sha256(backend.to_str().encode()).hexdigest()
    return Hasher.hash(tokenizer)


@contextlib.contextmanager
def _forked_tokenizers(active: bool) -> Iterator[None]:
    """Worker processes tokenize single-threaded (and without the fork warning); the parent is restored."""
    if not active or "TOKENIZERS_PARALLELISM" in os.environ:
        yield
        return
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        os.environ.pop("TOKENIZERS_PARALLELISM", None)


def pack(
    dataset: Dataset | IterableDataset,
    tokenizer: Any,
    seq_len: int,
    *,
    num_proc: int = 1,
    text_field: str = "text",
    add_eos: bool = True,
    batch_size: int = 256,
) -> Dataset | IterableDataset:
    """Blocks of `seq_len` tokens ("input_ids", "attention_mask") from the documents of `dataset`.

    Documents are concatenated in order (each followed by eos when add_eos) and cut every seq_len
    tokens; the last block of each map batch is padded (pad id, mask 0) rather than dropped, so
    the non-padding tokens of the blocks, in order, are exactly the tokenized documents.
    """
    if int(seq_len) < 2:
        raise MinitronError(f"data.seq_len: {seq_len} must be at least 2 (an input and its next token); use e.g. 256")
    seq_len = int(seq_len)
    eos_id = tokenizer.eos_token_id
    if add_eos and eos_id is None:
        raise MinitronError("tokenizer: it has no eos_token to separate documents; set tokenizer.eos_token")
    pad_id = tokenizer.pad_token_id
    if pad_id is None:  # e.g. Llama tokenizers: the mask, not the id, marks padding
        pad_id = eos_id if eos_id is not None else 0
    columns = dataset.column_names
    if columns is not None and text_field not in columns:
        raise MinitronError(
            f"data.text_field: '{text_field}' is not a column of the dataset (columns: {', '.join(columns)}); "
            f"set data.text_field"
        )
    fn_kwargs = {
        "tokenizer": tokenizer,
        "seq_len": seq_len,
        "text_field": text_field,
        "eos_id": eos_id if add_eos else None,
        "pad_id": pad_id,
    }
    if isinstance(dataset, IterableDataset):
        return dataset.select_columns([text_field]).map(
            _pack_batch,
            batched=True,
            batch_size=batch_size,
            remove_columns=[text_field],
            features=_features(seq_len),
            fn_kwargs=fn_kwargs,
        )
    # More workers than batches only adds start-up cost.
    procs = max(1, min(int(num_proc or 1), math.ceil(len(dataset) / batch_size)))
    # Explicit fingerprint: hashing the tokenizer object is slow and not stable across runs;
    # block edges depend on batch_size and on the shard boundaries (procs).
    fingerprint = hashlib.sha256(
        json.dumps(
            [_PACK_VERSION, dataset._fingerprint, tokenizer_digest(tokenizer), fn_kwargs["eos_id"], pad_id,
             seq_len, text_field, batch_size, procs]
        ).encode()
    ).hexdigest()[:32]
    with _forked_tokenizers(procs > 1):
        return dataset.map(
            _pack_batch,
            batched=True,
            batch_size=batch_size,
            remove_columns=dataset.column_names,
            features=_features(seq_len),
            fn_kwargs=fn_kwargs,
            num_proc=procs if procs > 1 else None,
            new_fingerprint=fingerprint,
            desc=f"Packing into blocks of {seq_len}",
        )


def _cap(ds: Dataset | IterableDataset, limit: int) -> Dataset | IterableDataset:
    """At most `limit` documents: a hash-ranked subset (spread over the whole corpus), kept in corpus order.

    Unseeded on purpose: it depends only on the corpus and the limit, which is what callers key caches on.
    """
    if isinstance(ds, IterableDataset):
        return ds.take(limit)
    if limit >= len(ds):
        return ds
    chosen = sorted(range(len(ds)), key=lambda i: _unit(f"cap:{i}"))[:limit]
    return ds.select(sorted(chosen))


def build_datasets(
    cfg: Any,
    tokenizer: Any,
    *,
    splits: Sequence[str] = ("train", "validation"),
    corpus: Corpus | None = None,
) -> DatasetDict | IterableDatasetDict:
    """Packed blocks of each requested split of the corpus that `cfg` (the data group) names."""
    seq_len = _int_field(cfg, "seq_len", 256, 2)
    max_train_docs = _int_field(cfg, "max_train_docs", None, 1)
    num_proc = _int_field(cfg, "num_proc", 1, 1) or 1
    text_field = "text"  # a Corpus always names its column "text"
    if corpus is None:
        corpus = load_corpus(cfg)
    out = {}
    for split in splits:
        if split not in corpus.splits:
            raise MinitronError(
                f"data: split '{split}' is not in the corpus (it has {', '.join(corpus.splits)}); "
                f"ask for one of {', '.join(SPLITS)}"
            )
        ds = corpus.splits[split]
        if split == "train" and max_train_docs is not None:
            ds = _cap(ds, max_train_docs)
        out[split] = pack(ds, tokenizer, seq_len, num_proc=num_proc, text_field=text_field)
    streaming = any(isinstance(ds, IterableDataset) for ds in out.values())
    return IterableDatasetDict(out) if streaming else DatasetDict(out)

