"""`minitron score` end to end on a tiny saved checkpoint and a small local corpus."""

from __future__ import annotations

import random

import pytest
import torch
from PIL import Image

from minitron.cli import main
from minitron.commands.score import run
from minitron.importance import SCORES_FILE
from minitron.config import compose
from minitron.data import train_tokenizer
from minitron.errors import MinitronError
from minitron.importance import Importance, estimate
from minitron.importance.plots import PLOT_FILES
from minitron.models.tiny import tiny_model

WORDS = "alpha beta gamma delta import return while lambda yield class object value index layer head".split()


def cli(*args: str) -> int:
    """The exit status of `minitron ARGS`: errors inside the Hydra app leave through SystemExit."""
    try:
        return main(list(args))
    except SystemExit as e:
        return int(e.code)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny Nemotron checkpoint with its own byte-level BPE, and a one-file corpus of 120 paragraphs."""
    root = tmp_path_factory.mktemp("score")
    rng = random.Random(0)
    paragraphs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 30))) for _ in range(120)]
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(paragraphs) + "\n")
    tokenizer = train_tokenizer(paragraphs, 300)
    model = tiny_model("nemotron", seed=3, vocab_size=len(tokenizer), max_position_embeddings=64)
    ckpt = root / "teacher"
    model.save_pretrained(ckpt)
    tokenizer.save_pretrained(ckpt)
    overrides = [
        f"teacher={ckpt}",
        "data=local",
        f"data.path={corpus}",
        "data.num_proc=1",
        "calib.samples=6",
        "calib.seq_len=32",
        "calib.batch_size=4",
    ]
    return root, ckpt, overrides


def test_cli_writes_scores_and_plots(setup, tmp_path, monkeypatch, capsys):
    root, ckpt, overrides = setup
    monkeypatch.setenv("MINITRON_RUNS", str(tmp_path / "runs"))
    assert cli("score", *overrides, "mlp_site=pre", "seq_agg=l2") == 0
    (run_dir,) = (tmp_path / "runs" / "score").iterdir()
    assert {p.name for p in run_dir.iterdir()} == {".hydra", "score.log", "config.yaml", SCORES_FILE, *PLOT_FILES}
    imp = Importance.load(run_dir / SCORES_FILE)
    model = type(tiny_model("nemotron")).from_pretrained(ckpt)
    imp.check_model(model.config)
    assert (imp.seq_agg, imp.batch_agg, imp.mlp_site) == ("l2", "l2", "pre")
    assert (imp.num_samples, imp.seq_len) == (6, 32)
    assert imp.heads.shape == (2, 4) and imp.mlp.shape == (2, 128) and imp.layers_loss is not None
    for name in PLOT_FILES:
        with Image.open(run_dir / name) as png:
            assert png.format == "PNG" and png.size[0] > 100
    out = capsys.readouterr().out
    assert str(run_dir / SCORES_FILE) in out and str(run_dir / "heads.png") in out


def test_run_scores_the_same_blocks_as_estimate(setup, tmp_path):
    """In memory and streaming give the library's scores on the seeded calibration draw."""
    from transformers import AutoTokenizer

    from minitron.data.calibration import calibration_batches, packed_data

    _, ckpt, overrides = setup
    cfg = compose("score", overrides + ["depth=[bi]"])
    result = run(cfg, run_dir=tmp_path / "memory")
    streamed = run(compose("score", overrides + ["depth=[bi]", "streaming=true"]), run_dir=tmp_path / "stream")
    got, got_streamed = Importance.load(result.path), Importance.load(streamed.path)
    assert got.layers_loss is None and got.layers is not None

    blocks = packed_data(cfg.data, cfg.cache_dir, AutoTokenizer.from_pretrained(ckpt), seq_len=32)["train"]
    batches = calibration_batches(blocks, 6, 4, seed=0)
    model = type(tiny_model("nemotron")).from_pretrained(ckpt)
    want = estimate(model, batches, depth=("bi",), progress=False)
    for name, tensor in want.tensors().items():
        torch.testing.assert_close(getattr(got, name), tensor, rtol=0, atol=0, msg=name)
        torch.testing.assert_close(getattr(got_streamed, name), tensor, rtol=1e-5, atol=1e-6, msg=name)
    assert got.corpus_fingerprint == want.corpus_fingerprint == got_streamed.corpus_fingerprint


@pytest.mark.parametrize(
    "override, message",
    [
        ("calib.samples=0", "calib.samples=0 must be an integer of at least 1 (the paper uses 1024)"),
        ("calib.seq_len=100", "calib.seq_len=100 exceeds max_position_embeddings=64 of the teacher"),
        ("batch_agg=median", "batch_agg='median' is not an aggregator; expected one of mean, l2, var"),
        ("seq_agg=max", "seq_agg='max' is not an aggregator"),
        ("depth=[bi,ppl]", "depth='ppl' is not a depth score"),
        ("calib.samples=100000", "calib.samples=100000 exceeds the"),
    ],
)
def test_bad_input_is_a_one_line_error(setup, tmp_path, monkeypatch, capsys, override, message):
    _, _, overrides = setup
    monkeypatch.setenv("MINITRON_RUNS", str(tmp_path / "runs"))
    assert cli("score", *overrides, override) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("minitron score: error: ") and message in err and "\n" not in err
    assert not any((tmp_path / "runs" / "score").iterdir())  # a failed run leaves no folder behind
    with pytest.raises(MinitronError, match="^" + message.split("(")[0]):
        run(compose("score", [*overrides, override]), run_dir=tmp_path / "direct")


@pytest.mark.slow  # trains the embedded default teacher first (minutes) unless it is cached
def test_default_teacher_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("MINITRON_RUNS", str(tmp_path / "runs"))
    assert cli("score", "calib.samples=16", "calib.batch_size=8") == 0
    (run_dir,) = (tmp_path / "runs" / "score").iterdir()
    imp = Importance.load(run_dir / SCORES_FILE)
    assert imp.heads.shape == (4, 8) and imp.kv_groups.shape == (4, 2) and imp.mlp.shape == (4, 1024)
    assert imp.hidden.shape == (256,) and imp.num_samples == 16 and imp.seq_len == 256
    assert imp.layers is not None and imp.layers_loss is not None
    # a trained model's layers are not interchangeable: the depth scores must tell them apart
    assert float(imp.layers.max() - imp.layers.min()) > 1e-3
