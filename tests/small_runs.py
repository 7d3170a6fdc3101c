"""Override lists for very small `minitron pretrain` runs (a 2-layer Nemotron of a few hundred kB on a sliver of
the embedded corpus, a 320-token BPE tokenizer: seconds on a CPU), shared by the tests of every package."""

SMALL_DATA = [
    "data.seq_len=64",
    "data.max_train_docs=12",
    "data.num_proc=1",
    "data.tokenizer.vocab_size=320",
    "data.tokenizer.train_bytes=200000",
]
SMALL_ARCH = [
    "model.arch.hidden_size=32",
    "model.arch.intermediate_size=64",
    "model.arch.num_hidden_layers=2",
    "model.arch.num_attention_heads=4",
    "model.arch.num_key_value_heads=2",
    "model.arch.head_dim=8",
]

# A small local corpus for streamed runs (`data=local data.streaming=true`): one .jsonl file of standard-library
# modules, so that validation and test are held out of the stream by the hash of each row's running index.
STREAM_DATA = [
    "data=local",
    "data.streaming=true",
    "data.seq_len=64",
    "data.num_proc=1",
    "data.max_eval_docs=6",
    "data.validation_fraction=0.1",
    "data.test_fraction=0.05",
    "data.tokenizer.vocab_size=320",
    "data.tokenizer.train_bytes=200000",
]


def write_stream_corpus(path, documents: int = 60) -> str:
    """`documents` standard-library modules (sorted, a fixed prefix) as rows of one .jsonl file; returns its path."""
    import json
    import sysconfig
    from pathlib import Path

    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py") if 2000 < p.stat().st_size < 40000)[:documents]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": p.read_text(errors="replace")}) + "\n" for p in files))
    return str(path)
