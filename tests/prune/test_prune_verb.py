"""`minitron prune` end to end on a tiny trained teacher: scores computed or given, in-memory or streaming export,
and one-line errors that leave nothing behind."""

from __future__ import annotations

import json

import pytest
import torch
from prune_helpers import DATA, fake_importance
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from minitron.cli import main
from minitron.commands.prune import run
from minitron.config import compose
from minitron.errors import MinitronError
from minitron.importance import Importance
from minitron.models.tiny import tiny_model

SMALL_TARGET = ["target.hidden_size=24", "target.intermediate_size=32", "target.num_attention_heads=2"]
CALIB = ["calib.samples=8", "calib.seq_len=64", "calib.batch_size=4", *DATA]


def tensors(folder):
    out = {}
    for f in folder.glob("*.safetensors"):
        out.update(load_file(str(f)))
    return out


@pytest.fixture(scope="module")
def pruned_run(teacher_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("prune_run")
    report = run(compose("prune", [f"teacher={teacher_dir}", *SMALL_TARGET, *CALIB]), run_dir=run_dir)
    return run_dir, report


def test_prune_verb_computes_scores_and_writes_a_loadable_checkpoint(pruned_run, teacher_dir, capsys):
    run_dir, report = pruned_run
    out = run_dir / "pruned"
    assert {p.name for p in run_dir.iterdir()} == {"config.yaml", "importance.safetensors", "prune.json", "pruned"}
    model = AutoModelForCausalLM.from_pretrained(out)
    assert (model.config.hidden_size, model.config.intermediate_size, model.config.num_attention_heads) == (24, 32, 2)
    assert model.num_parameters() == report["pruned_parameters"] < report["source_parameters"]
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.get_vocab() == AutoTokenizer.from_pretrained(teacher_dir).get_vocab()
    saved = json.loads((run_dir / "prune.json").read_text())
    assert saved["pruned_parameters"] == report["pruned_parameters"] and saved["out"] == str(out)
    imp = Importance.load(run_dir / "importance.safetensors")
    assert imp.num_samples == 8 and imp.layers is not None


def test_given_scores_and_streaming_give_the_same_checkpoint(pruned_run, teacher_dir, tmp_path):
    run_dir, _ = pruned_run
    scores = run_dir / "importance.safetensors"
    common = [f"teacher={teacher_dir}", f"scores={scores}", *SMALL_TARGET, *DATA]
    run(compose("prune", common + ["streaming=true", f"out={tmp_path / 'stream'}"]), run_dir=tmp_path / "a")
    run(compose("prune", common + [f"out={tmp_path / 'memory'}"]), run_dir=tmp_path / "b")
    a, b, first = tensors(tmp_path / "stream"), tensors(tmp_path / "memory"), tensors(run_dir / "pruned")
    assert a.keys() == b.keys() == first.keys()
    assert all(torch.equal(a[k], b[k]) and torch.equal(a[k], first[k]) for k in a)
    assert not (tmp_path / "a" / "importance.safetensors").exists()  # given scores are not recomputed


def test_depth_metric_override_picks_the_layer_from_the_scores(pruned_run, teacher_dir, tmp_path):
    run_dir, _ = pruned_run
    scores = run_dir / "importance.safetensors"
    report = run(compose("prune", [f"teacher={teacher_dir}", f"scores={scores}", "target.hidden_size=null",
                                   "target.intermediate_size=null", "target.num_attention_heads=null",
                                   "target.num_hidden_layers=1", "depth_metric=contiguous", "target.block_metric=sum",
                                   *DATA]), run_dir=tmp_path)
    layers = Importance.load(scores).layers
    assert report["target"]["depth_metric"] == "contiguous"
    assert report["dropped_layers"] == [int(torch.argmin(layers))]


def test_contiguous_prune_computes_block_scores_for_the_target_block_length(teacher_dir, tmp_path):
    """Without a scores file, `contiguous` asks importance for the LM loss with each 1-layer block skipped and
    drops the block whose loss is lowest; a scores file without block scores is refused in one line."""
    shape = ["target.hidden_size=null", "target.intermediate_size=null", "target.num_attention_heads=null",
             "target.num_hidden_layers=1", "depth_metric=contiguous", *DATA]
    report = run(compose("prune", [f"teacher={teacher_dir}", *shape]), run_dir=tmp_path / "a")
    imp = Importance.load(tmp_path / "a" / "importance.safetensors")
    assert imp.block_layers == 1 and imp.blocks_loss is not None and imp.blocks_bi is None
    assert report["dropped_layers"] == [int(torch.argmin(imp.blocks_loss))]
    plain = tmp_path / "plain.safetensors"
    imp.blocks_loss, imp.block_layers = None, None
    imp.save(plain)
    with pytest.raises(MinitronError, match="target.block_metric=loss needs block scores for blocks of 1 layers"):
        run(compose("prune", [f"teacher={teacher_dir}", f"scores={plain}", *shape]), run_dir=tmp_path / "b")


def test_depth_only_target_needs_no_scores(teacher_dir, tmp_path):
    run(compose("prune", [f"teacher={teacher_dir}", "target.hidden_size=null", "target.intermediate_size=null",
                          "target.num_attention_heads=null", "target.drop_layers=[0]", *DATA]), run_dir=tmp_path)
    assert not (tmp_path / "importance.safetensors").exists()
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir)
    assert model.config.num_hidden_layers == 1
    assert torch.equal(model.model.layers[0].mlp.up_proj.weight, teacher.model.layers[1].mlp.up_proj.weight)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["target.hidden_size=64"], "target.hidden_size=64 is larger than the source model's hidden_size=32"),
        (["target.num_attention_heads=3"], "not a multiple of the kept KV groups"),
        (["target.drop_layers=[2]", "target.hidden_size=null"], "layer index 2 is out of range"),
        (["scores=OTHER"], "computed for another model"),
        (["depth_metric=cos"], "is not a depth metric"),
    ],
)
def test_impossible_requests_fail_in_one_line_and_write_nothing(teacher_dir, tmp_path, capsys, monkeypatch, overrides, message):
    other = tmp_path / "other.safetensors"
    fake_importance(tiny_model("nemotron")).save(other)
    overrides = [o.replace("OTHER", str(other)) for o in overrides]
    out = tmp_path / "out"
    runs = tmp_path / "runs"
    monkeypatch.setenv("MINITRON_RUNS", str(runs))
    try:
        code = main(["prune", f"teacher={teacher_dir}", f"out={out}", *SMALL_TARGET, *CALIB, *overrides])
    except SystemExit as e:  # errors raised inside the Hydra app exit from there
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("minitron prune: error: ") and message in err[-1]
    assert not out.exists()
    assert not runs.exists() or not any(p.is_file() for p in runs.rglob("*"))  # the run folder is removed too


def test_refuses_a_non_empty_out(teacher_dir, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(MinitronError, match="is not empty; pass overwrite=true"):
        run(compose("prune", [f"teacher={teacher_dir}", f"out={tmp_path / 'out'}", *SMALL_TARGET, *CALIB]), run_dir=tmp_path / "r")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


@pytest.mark.slow
def test_default_prune_of_the_embedded_teacher(tmp_path):
    """`minitron prune` with no arguments: the embedded teacher to target=tiny (about half its parameters)."""
    report = run(compose("prune"), run_dir=tmp_path)
    assert report["pruned_parameters"] == 2_436_192 and report["source_parameters"] == 4_854_272
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
    assert (model.config.hidden_size, model.config.intermediate_size, model.config.num_attention_heads) == (176, 512, 4)
    tok = AutoTokenizer.from_pretrained(tmp_path / "pruned")
    ids = tok("import os\nimport sys\n\ndef main():\n    return 0\n", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()
