"""A catalogue of bad inputs through the real CLI.

Each case checks what a user can rely on: a non-zero exit, one line on stderr that names the field or file
and says what to do, no traceback (unless debug=true), and no partial output left behind.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from minitron.cli import main
from minitron.data import train_tokenizer
from minitron.models.tiny import tiny_model

# a target that fits the tiny checkpoints below (hidden 64, MLP 128, 8 query heads in 4 KV groups)
FITS = ["target.hidden_size=32", "target.intermediate_size=64", "target.num_attention_heads=4", "calib.samples=4",
        "calib.seq_len=32"]
TEXTS = [f"def f{i}(x):\n    return x * {i} + {i % 7}\n" for i in range(400)]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS, 320)


def _checkpoint(folder: Path, tokenizer, *, seed: int = 0, **overrides) -> Path:
    overrides = {"vocab_size": len(tokenizer), "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 8,
                 **overrides}
    model = tiny_model("nemotron", seed=seed, **overrides)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory, tokenizer):
    """Checkpoints, data and score files shared by the cases (read-only for them)."""
    root = tmp_path_factory.mktemp("bad")
    teacher = _checkpoint(root / "teacher", tokenizer)
    other = _checkpoint(root / "other", tokenizer, seed=1, num_hidden_layers=3)
    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(30):
        (corpus / f"doc{i}.txt").write_text(TEXTS[i] * 20)
    (root / "empty").mkdir()
    return root, teacher, other, corpus


def cli(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_line_error(code, err, *words):
    assert code != 0, "a bad input must exit non-zero"
    lines = [line for line in err.strip().splitlines() if line.strip()]
    errors = [line for line in lines if ": error: " in line]
    assert len(errors) == 1, f"expected one error line, got:\n{err}"
    assert "Traceback" not in err, err
    for word in words:
        assert word in errors[0], f"{word!r} not in {errors[0]!r}"


def _run_dir(tmp_path: Path) -> str:
    return f"hydra.run.dir={tmp_path / 'run'}"


def assert_nothing_written(tmp_path: Path, *paths: Path):
    run = tmp_path / "run"
    leftovers = [p.name for p in run.iterdir()] if run.exists() else []
    assert not [n for n in leftovers if n not in (".hydra", "config.yaml") and not n.endswith(".log")], leftovers
    for p in paths:
        assert not p.exists(), f"{p} was written"


# -- configuration ------------------------------------------------------------------------------------------
def test_unknown_config_key(capsys, tmp_path):
    code, _, err = cli(capsys, "pretrain", "train.max_stepz=3", _run_dir(tmp_path))
    assert_one_line_error(code, err, "train.max_stepz")
    assert not (tmp_path / "run").exists()


def test_wrong_type(capsys, tmp_path):
    code, _, err = cli(capsys, "pretrain", "train.batch_size=lots", _run_dir(tmp_path))
    assert_one_line_error(code, err, "train.batch_size", "integer")


def test_unknown_group_member(capsys, tmp_path):
    code, _, err = cli(capsys, "pretrain", "model=gpt5", _run_dir(tmp_path))
    assert_one_line_error(code, err, "model", "tiny_nemotron")


@pytest.mark.parametrize("lr", ["0", "-1e-3"])
def test_learning_rate_must_be_positive(capsys, tmp_path, world, lr):
    _, _, _, corpus = world
    out = tmp_path / "model"
    code, _, err = cli(capsys, "pretrain", f"train.lr={lr}", "data=local", f"data.path={corpus}",
                       "data.tokenizer.vocab_size=300", f"out={out}", _run_dir(tmp_path))
    assert_one_line_error(code, err, "train.lr")
    assert not out.exists()


def test_seq_len_above_max_positions(capsys, tmp_path, world):
    _, _, _, corpus = world
    code, _, err = cli(capsys, "pretrain", "data.seq_len=4096", "data=local", f"data.path={corpus}",
                       "data.tokenizer.vocab_size=300", _run_dir(tmp_path))
    assert_one_line_error(code, err, "data.seq_len", "max_position_embeddings")


def test_bad_aggregator(capsys, tmp_path, world):
    _, teacher, _, _ = world
    code, _, err = cli(capsys, "score", f"teacher={teacher}", "batch_agg=median", _run_dir(tmp_path))
    assert_one_line_error(code, err, "batch_agg", "median")
    assert_nothing_written(tmp_path)


def test_zero_calibration_samples(capsys, tmp_path, world):
    _, teacher, _, corpus = world
    code, _, err = cli(capsys, "score", f"teacher={teacher}", "calib.samples=0", "data=local", f"data.path={corpus}",
                       _run_dir(tmp_path))
    assert_one_line_error(code, err, "samples")
    assert not (tmp_path / "run" / "importance.safetensors").exists()


# -- data ---------------------------------------------------------------------------------------------------
def test_data_path_that_does_not_exist(capsys, tmp_path):
    code, _, err = cli(capsys, "pretrain", "data=local", f"data.path={tmp_path / 'nowhere'}", _run_dir(tmp_path))
    assert_one_line_error(code, err, "data.path", "nowhere")
    assert_nothing_written(tmp_path)


def test_empty_corpus(capsys, tmp_path, world):
    root, _, _, _ = world
    code, _, err = cli(capsys, "pretrain", "data=local", f"data.path={root / 'empty'}", _run_dir(tmp_path))
    assert_one_line_error(code, err, "data.path")
    assert_nothing_written(tmp_path)


def test_corpus_too_small_for_the_calibration_sample(capsys, tmp_path, world):
    _, teacher, _, _ = world
    one = tmp_path / "one"
    one.mkdir()
    (one / "a.txt").write_text("hello tiny world!\n")  # one 18-byte document
    code, out, err = cli(capsys, "score", f"teacher={teacher}", "data=local", f"data.path={one}", "calib.samples=4",
                         "calib.seq_len=32", _run_dir(tmp_path))
    assert_one_line_error(code, err, "calib.samples=4", "1 packed blocks")  # what is needed, what is there
    assert "too few to split by document" in out
    assert_nothing_written(tmp_path)


def test_corpus_too_small_to_split(capsys, tmp_path):
    one = tmp_path / "one"
    one.mkdir()
    (one / "a.txt").write_text("x")
    code, _, err = cli(capsys, "pretrain", "data=local", f"data.path={one}", _run_dir(tmp_path))
    assert_one_line_error(code, err, "data.path", "1 characters", "at least 3")
    assert_nothing_written(tmp_path)


def test_empty_validation_split_is_never_written(capsys, tmp_path, world):
    _, _, _, corpus = world
    code, _, err = cli(capsys, "pretrain", "data=local", f"data.path={corpus}", "data.validation_fraction=0",
                       "data.tokenizer.vocab_size=300", "data.seq_len=32", _run_dir(tmp_path))
    assert_one_line_error(code, err, "validation", "data.validation_fraction")
    assert_nothing_written(tmp_path)


def test_paper_suite_without_hub_access_names_the_dataset(capsys, tmp_path, world, monkeypatch):
    _, teacher, _, _ = world
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = cli(capsys, "eval", "eval=paper", f"model_path={teacher}", "limit=2", _run_dir(tmp_path))
    assert_one_line_error(code, err, "mmlu", "hub access", "eval=tiny")
    assert "cannot use the path" not in err
    assert_nothing_written(tmp_path)


# -- checkpoints --------------------------------------------------------------------------------------------
def test_missing_teacher_path(capsys, tmp_path):
    code, _, err = cli(capsys, "prune", f"teacher={tmp_path / 'no-such-teacher'}", _run_dir(tmp_path))
    assert_one_line_error(code, err, "teacher", "no-such-teacher")
    assert_nothing_written(tmp_path)


def test_truncated_safetensors(capsys, tmp_path, world):
    _, teacher, _, _ = world
    broken = tmp_path / "broken"
    shutil.copytree(teacher, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    code, _, err = cli(capsys, "eval", f"model_path={broken}", _run_dir(tmp_path))
    assert_one_line_error(code, err, str(broken))
    assert_nothing_written(tmp_path)


def test_corrupt_safetensors_header(capsys, tmp_path, world):
    _, teacher, _, _ = world
    broken = tmp_path / "garbage"
    shutil.copytree(teacher, broken)
    (broken / "model.safetensors").write_bytes(b"\x00" * 64)
    code, _, err = cli(capsys, "prune", f"teacher={broken}", *FITS, _run_dir(tmp_path))
    assert_one_line_error(code, err, str(broken))
    assert not (tmp_path / "run" / "pruned").exists()


def test_unsupported_architecture(capsys, tmp_path, world):
    _, teacher, _, _ = world
    gpt2 = tmp_path / "gpt2"
    shutil.copytree(teacher, gpt2)
    config = json.loads((gpt2 / "config.json").read_text())
    config.update(model_type="gpt2", architectures=["GPT2LMHeadModel"])
    (gpt2 / "config.json").write_text(json.dumps(config))
    code, _, err = cli(capsys, "prune", f"teacher={gpt2}", _run_dir(tmp_path))
    assert_one_line_error(code, err, "gpt2", "nemotron")


def test_pickle_checkpoint_is_refused(capsys, tmp_path, world):
    _, teacher, _, _ = world
    pickled = tmp_path / "pickled"
    shutil.copytree(teacher, pickled)
    (pickled / "model.safetensors").unlink()
    torch.save({"x": torch.zeros(1)}, pickled / "pytorch_model.bin")
    code, _, err = cli(capsys, "eval", f"model_path={pickled}", _run_dir(tmp_path))
    assert_one_line_error(code, err, "safetensors")


def test_remote_code_needed_but_not_granted(capsys, tmp_path, world):
    _, teacher, _, _ = world
    custom = tmp_path / "custom"
    shutil.copytree(teacher, custom)
    config = json.loads((custom / "config.json").read_text())
    config.update(model_type="my_custom_lm", auto_map={"AutoModelForCausalLM": "modeling_custom.CustomLM"})
    (custom / "config.json").write_text(json.dumps(config))
    (custom / "modeling_custom.py").write_text("raise SystemExit('remote code must not run')\n")
    code, _, err = cli(capsys, "eval", f"model_path={custom}", _run_dir(tmp_path))
    assert_one_line_error(code, err, "trust_remote_code")


def test_tokenizer_mismatch(capsys, tmp_path, world):
    _, teacher, _, _ = world
    other_tok = train_tokenizer([t.upper() for t in TEXTS], 300)
    student = _checkpoint(tmp_path / "student", other_tok)
    code, _, err = cli(capsys, "distill", f"teacher={teacher}", f"student={student}", _run_dir(tmp_path))
    assert_one_line_error(code, err, "tokenizer")
    assert not (tmp_path / "run" / "student").exists()


def test_distill_without_student(capsys, tmp_path, world):
    _, teacher, _, _ = world
    code, _, err = cli(capsys, "distill", f"teacher={teacher}", _run_dir(tmp_path))
    assert_one_line_error(code, err, "student")


# -- pruning targets ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "override, words",
    [
        ("target.hidden_size=4096", ["hidden_size", "4096"]),
        ("target.num_attention_heads=6", ["num_attention_heads"]),
        ("target.num_key_value_heads=3", ["num_key_value_heads"]),
        ("target.drop_layers=[7]", ["7"]),
        ("target.intermediate_size=1.5", ["intermediate_size"]),
    ],
    ids=["larger-than-source", "heads-not-multiple-of-groups", "groups-not-dividing-heads", "layer-out-of-range",
         "fraction-above-one"],
)
def test_impossible_targets(capsys, tmp_path, world, override, words):
    _, teacher, _, corpus = world
    out = tmp_path / "pruned"
    code, _, err = cli(capsys, "prune", f"teacher={teacher}", *FITS, override, "data=local", f"data.path={corpus}",
                       f"out={out}", _run_dir(tmp_path))
    assert_one_line_error(code, err, *words)
    assert not out.exists()


def test_scores_file_from_another_model(capsys, tmp_path, world):
    from minitron.importance import estimate

    _, teacher, other, _ = world
    from transformers import AutoModelForCausalLM

    scores = estimate(AutoModelForCausalLM.from_pretrained(other), [torch.randint(0, 300, (2, 16))], progress=False)
    scores.save(tmp_path / "other.safetensors")
    out = tmp_path / "pruned"
    code, _, err = cli(capsys, "prune", f"teacher={teacher}", f"scores={tmp_path / 'other.safetensors'}", *FITS, f"out={out}",
                       _run_dir(tmp_path))
    assert_one_line_error(code, err, "scores", "another model")
    assert not out.exists()


def test_scores_file_that_is_not_safetensors(capsys, tmp_path, world):
    _, teacher, _, _ = world
    bogus = tmp_path / "scores.safetensors"
    bogus.write_text("not a tensor file")
    code, _, err = cli(capsys, "prune", f"teacher={teacher}", f"scores={bogus}", *FITS, _run_dir(tmp_path))
    assert_one_line_error(code, err, "scores.safetensors")


# -- outputs ------------------------------------------------------------------------------------------------
def test_output_folder_not_empty(capsys, tmp_path, world):
    _, teacher, _, _ = world
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    code, _, err = cli(capsys, "prune", f"teacher={teacher}", *FITS, f"out={out}", _run_dir(tmp_path))
    assert_one_line_error(code, err, "out=", "overwrite=true")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_output_folder_cannot_be_written(capsys, tmp_path, world):
    _, teacher, _, _ = world
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out = blocker / "pruned"
    code, _, err = cli(capsys, "prune", f"teacher={teacher}", *FITS, f"out={out}", _run_dir(tmp_path))
    assert_one_line_error(code, err, "a-file")


def test_deepspeed_batch_contradicting_the_trainer(capsys, tmp_path, world):
    _, teacher, _, corpus = world
    code, _, err = cli(capsys, "distill", f"teacher={teacher}", f"student={teacher}", "deepspeed=zero2",
                       "+deepspeed.train_micro_batch_size_per_gpu=3", "train.batch_size=4", "data=local",
                       f"data.path={corpus}", "data.seq_len=32", _run_dir(tmp_path))
    assert_one_line_error(code, err, "batch")
    assert not (tmp_path / "run" / "student").exists()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(capsys, tmp_path, world):
    _, _, _, corpus = world
    out = tmp_path / "model"
    code, _, err = cli(capsys, "pretrain", "train.lr=1e12", "train.warmup_steps=0", "train.max_steps=40",
                       "train.save_steps=1", "train.batch_size=2", "data.seq_len=32", "data=local", f"data.path={corpus}",
                       "data.tokenizer.vocab_size=300", "model.arch.hidden_size=32", "model.arch.num_hidden_layers=1",
                       "model.arch.intermediate_size=64", "model.arch.head_dim=4", f"out={out}", _run_dir(tmp_path))
    assert_one_line_error(code, err, "train.lr")
    assert not out.exists()
    kept = sorted((tmp_path / "run" / "checkpoints").glob("checkpoint-*"))
    assert kept and (kept[-1] / "model.safetensors").is_file()


def test_debug_shows_the_traceback(capsys, tmp_path):
    code, _, err = cli(capsys, "prune", f"teacher={tmp_path / 'missing'}", "debug=true", _run_dir(tmp_path))
    assert code != 0 and "Traceback" in err
