"""The data layer: raw corpora, a from-scratch byte-level BPE tokenizer, and packed token blocks."""

from minitron.data.corpus import (
    SPLITS,
    Corpus,
    fingerprint_key,
    load_corpus,
    split_of,
    stdlib_files,
    stdlib_root,
)
from minitron.data.packing import build_datasets, pack
from minitron.data.tokenizer import (
    BOS_TOKEN,
    EOS_TOKEN,
    PAD_TOKEN,
    SPECIAL_TOKENS,
    train_default_tokenizer,
    train_tokenizer,
)

__all__ = [
    "BOS_TOKEN",
    "Corpus",
    "EOS_TOKEN",
    "PAD_TOKEN",
    "SPECIAL_TOKENS",
    "SPLITS",
    "build_datasets",
    "fingerprint_key",
    "load_corpus",
    "pack",
    "split_of",
    "stdlib_files",
    "stdlib_root",
    "train_default_tokenizer",
    "train_tokenizer",
]
