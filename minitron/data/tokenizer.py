"""A byte-level BPE tokenizer trained from scratch, saved as a plain Hugging Face tokenizer folder."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from minitron.data.corpus import Corpus
from minitron.errors import MinitronError

PAD_TOKEN, BOS_TOKEN, EOS_TOKEN = "<|pad|>", "<|bos|>", "<|eos|>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN)  # ids 0, 1, 2
# 256 byte symbols + the special tokens: the smallest vocabulary a byte-level BPE can have.
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    *,
    min_frequency: int = 2,
    show_progress: bool = False,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE (GPT-2 style pre-tokenisation, no prefix space, so decode(encode(x)) == x)."""
    if int(vocab_size) < MIN_VOCAB_SIZE:
        raise MinitronError(
            f"data.tokenizer.vocab_size: {vocab_size} is too small for a byte-level BPE; use at least {MIN_VOCAB_SIZE}"
        )
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=int(vocab_size),
        min_frequency=int(min_frequency),
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    # model_max_length stays "unbounded": packing, not the tokenizer, decides the sequence length.
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        clean_up_tokenization_spaces=False,
    )


def _prefix(texts: Iterable[str], max_bytes: int) -> Iterator[str]:
    """Whole documents in order until max_bytes (UTF-8); the one that crosses the limit is cut."""
    left = max_bytes
    for text in texts:
        if left <= 0:
            return
        if not text:
            continue
        data = text.encode("utf-8")
        if len(data) > left:
            yield data[:left].decode("utf-8", errors="ignore")
            return
        left -= len(data)
        yield text


def train_default_tokenizer(corpus: Corpus, vocab_size: int, train_bytes: int) -> PreTrainedTokenizerFast:
    """Train on the first `train_bytes` of the train split (documents in corpus order: deterministic)."""
    if int(train_bytes) <= 0:
        raise MinitronError(f"data.tokenizer.train_bytes: {train_bytes} must be positive; use e.g. 8000000")
    train = corpus.splits["train"]
    texts = (row["text"] for row in train)
    return train_tokenizer(_prefix(texts, int(train_bytes)), vocab_size, show_progress=True)
