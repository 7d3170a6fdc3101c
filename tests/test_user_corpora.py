"""The corpora a user's first try often is, through every verb that packs data: one 18-byte .txt file, one file of
100 kB of random bytes, one file of 3,000 lines without a blank line. Each works, or stops with one line that says
how much text there is and how much is needed; none ends in a traceback."""

from __future__ import annotations

import random

import pytest

from minitron.cli import main
from minitron.data import train_tokenizer
from minitron.models.tiny import tiny_model

TEXTS = [f"def f{i}(x):\n    return x * {i} + {i % 7}\n" for i in range(400)]
CALIB = ["calib.samples=4", "calib.seq_len=32"]
TINY_MODEL = ["model.arch.hidden_size=32", "model.arch.num_hidden_layers=1", "model.arch.intermediate_size=64",
              "model.arch.head_dim=4", "data.tokenizer.vocab_size=300"]
VERBS = {
    "score": CALIB,
    "prune": [*CALIB, "target.hidden_size=32", "target.intermediate_size=64", "target.num_attention_heads=4"],
    "distill": ["data.seq_len=32", "train.max_steps=2", "train.batch_size=2"],
    "pretrain": ["data.seq_len=32", "train.max_steps=2", "train.batch_size=2", *TINY_MODEL],
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("user_corpora")
    tokenizer = train_tokenizer(TEXTS, 320)
    teacher = root / "teacher"
    model = tiny_model("nemotron", seed=0, vocab_size=len(tokenizer), num_attention_heads=8, num_key_value_heads=4,
                       head_dim=8)
    model.save_pretrained(teacher)
    tokenizer.save_pretrained(teacher)
    corpora = {name: root / name for name in ("tiny", "random", "lines")}
    for folder in corpora.values():
        folder.mkdir()
    (corpora["tiny"] / "a.txt").write_text("hello tiny world!\n")
    (corpora["random"] / "rand.txt").write_bytes(random.Random(0).randbytes(100_000))
    (corpora["lines"] / "code.txt").write_text("".join(f"    x{i} = step(x{i - 1}, {i % 17})\n" for i in range(3000)))
    return teacher, corpora


@pytest.mark.slow
@pytest.mark.parametrize("corpus", ["tiny", "random", "lines"])
@pytest.mark.parametrize("verb", list(VERBS))
def test_one_file_corpus(world, tmp_path, capsys, verb, corpus):
    teacher, corpora = world
    models = [] if verb == "pretrain" else [f"teacher={teacher}"] + ([f"student={teacher}"] if verb == "distill" else [])
    run = tmp_path / "run"
    code = main([verb, *models, "data=local", f"data.path={corpora[corpus]}", *VERBS[verb], f"hydra.run.dir={run}"])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err, captured.err
    assert "too few to split by document" in captured.out
    if corpus == "tiny" and verb in ("score", "prune"):  # 18 bytes pack into one block; the sample asks for four
        errors = [line for line in captured.err.splitlines() if ": error: " in line]
        assert code == 2 and len(errors) == 1 and "calib.samples=4" in errors[0] and "1 packed blocks" in errors[0]
        return
    assert code == 0, captured.err
    assert (run / "config.yaml").is_file()
