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
