"""`minitron ablate` on a very small teacher: every study runs, the page is built from the cells, re-runs reuse them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from minitron.cli import main
from minitron.errors import MinitronError
from minitron.importance import random_scores, weight_magnitude
from minitron.models.tiny import tiny_model
from minitron.workflows.ablate.cells import _work

TEACHER = [
    "model.arch.hidden_size=64", "model.arch.intermediate_size=128", "model.arch.num_hidden_layers=4",
    "model.arch.num_attention_heads=4", "model.arch.num_key_value_heads=2", "model.arch.head_dim=16",
    "data.seq_len=64", "data.max_train_docs=12", "data.num_proc=1", "data.tokenizer.vocab_size=320",
    "data.tokenizer.train_bytes=200000", "train.max_steps=6", "train.batch_size=4", "train.warmup_steps=2",
    "train.eval_batches=2", "train.logger=none",
]
DATA = ["data.seq_len=64", "data.max_train_docs=12", "data.num_proc=1", "data.tokenizer.vocab_size=320",
        "data.tokenizer.train_bytes=200000"]
SMALL = [
    "teacher.overrides=[" + ",".join(f"'{t}'" for t in TEACHER) + "]", *DATA,
    "shapes.width={hidden_size:48,intermediate_size:96,num_attention_heads:2}",
    "shapes.depth={num_hidden_layers:2}",
    "shapes.width_depth={num_hidden_layers:3,hidden_size:56,intermediate_size:96,num_attention_heads:2}",
    "shapes.iterative_mid={hidden_size:56,intermediate_size:112,num_attention_heads:4}",
    "budget.steps=4", "budget.long_steps=8", "train.batch_size=2", "train.logging_steps=2", "calib.samples=4",
    "calib.batch_size=2",
    "eval_batches=2", "eval_batch_size=2", "curve_every=2", "curve_batches=1",
]


@pytest.fixture(scope="module")
def criteria(tmp_path_factory):
    root = tmp_path_factory.mktemp("criteria")
    common = SMALL + [f"results_dir={root / 'results'}", f"cache_dir={root / 'cache'}"]
    assert main(["ablate", "-m", "study=criteria", "seed=0,1", f"hydra.sweep.dir={root / 'sweep'}", *common]) == 0
    return root, common


def test_the_criteria_study_gives_a_table_with_spread_and_a_plot(criteria):
    root, _ = criteria
    folder = root / "results" / "cells"
    cells = {p.parent.name: json.loads(p.read_text()) for p in [*folder.glob("*/seed1.json"), *folder.glob("*/deterministic.json")]}
    assert sorted(cells) == sorted([f"criteria-{b}-{s}" for b in ("l2", "mean", "var") for s in ("l2", "mean", "var")]
                                   + ["criteria-magnitude", "criteria-random", "teacher"])
    # weight magnitude and the teacher's loss depend on no seed: one cell each, not one per seed
    assert sorted(p.parent.name for p in folder.glob("*/deterministic.json")) == ["criteria-magnitude", "teacher"]
    assert not (folder / "criteria-magnitude" / "seed0.json").exists()
    # the same pruned shape for every criterion
    assert len({c["parameters"] for n, c in cells.items() if n.startswith("criteria-")}) == 1
    page = (root / "results" / "results.md").read_text()
    assert "## 1. Importance criteria" in page and "±" in page and "## 2." not in page
    assert "**Paper:** batch L2 with sequence mean is best" in page
    # the compute line says how many torch threads the cells ran with (two single-thread jobs side by side differ
    # from one two-thread job)
    threads = {c["threads"] for c in cells.values()}
    assert threads == {torch.get_num_threads()} and f"with {threads.pop()} torch thread" in page
    assert (root / "results" / "results-criteria.png").stat().st_size > 0


def test_a_changed_setting_recomputes_only_the_cells_it_decides(criteria, tmp_path, capsys):
    root, common = criteria
    capsys.readouterr()
    assert main(["ablate", "study=criteria", "seed=1", f"hydra.run.dir={tmp_path / 'same'}", *common]) == 0
    out = capsys.readouterr().out
    assert ": running" not in out and out.count(": cached") == 12  # the criteria and the teacher's
    assert main(["ablate", "study=criteria", "seed=0", f"hydra.run.dir={tmp_path / 'r'}", *common, "calib.samples=6"]) == 0
    out = capsys.readouterr().out
    # magnitude and random need no calibration, nor does the teacher's loss
    assert out.count(": running") == 9 and out.count(": cached") == 3, out


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablate")
    common = SMALL + [f"results_dir={root / 'results'}", f"cache_dir={root / 'cache'}"]
    code = main(["ablate", "-m", "study=criteria,shapes,losses,scratch,iterative,depth,correction,shapes_long", "seed=0,1",
                 f"hydra.sweep.dir={root / 'sweep'}", *common])
    assert code == 0
    return root, common


@pytest.mark.slow
def test_every_study_writes_its_cells_and_the_page_has_every_table(swept):
    root, _ = swept
    cells = sorted(p.parent.name for p in (root / "results" / "cells").glob("*/seed0.json"))
    # criteria (magnitude and the teacher's loss are deterministic cells), shapes, extra losses, scratch x1/x4, split
    # and chain, hidden in 1/2/4 steps, depth block, correction off/on, width and depth past the crossover
    assert len(cells) == 10 + 3 + 3 + 2 + 2 + 3 + 1 + 2 + 2
    assert all((root / "results" / "cells" / c / "seed1.json").is_file() for c in cells)
    page = (root / "results" / "results.md").read_text()
    for heading in ("## 1. Importance criteria", "## 2. Width vs depth", "## 3. Retraining loss",
                    "## 4. Pruned and distilled vs random init", "## 5. One-shot vs iterative",
                    "## 6. Which layers a depth cut drops", "### Past the crossover: 8 steps",
                    "## 7. Teacher correction on a shifted corpus"):
        assert heading in page
    assert "±" in page  # two seeds: mean and standard error
    assert "no test: 2 seed(s), at least 3 needed" in page  # and too few seeds for a verdict
    assert (root / "results" / "results-criteria.png").stat().st_size > 0
    assert (root / "results" / "results-curves.png").stat().st_size > 0
    assert (root / "results" / "results-curves-long.png").stat().st_size > 0
    width = json.loads((root / "results" / "cells" / "distill-width-kl" / "seed0.json").read_text())
    assert [s for s, _ in width["curve"]] == [0, 2, 4]
    assert width["val_loss"] < width["zero_shot"]  # distillation helps even in 4 steps


@pytest.mark.slow
def test_a_rerun_reuses_every_cell_and_report_rebuilds_the_page(swept, tmp_path, capsys):
    root, common = swept
    capsys.readouterr()
    assert main(["ablate", "study=all", "seed=1", f"hydra.run.dir={tmp_path / 'again'}", *common]) == 0
    out = capsys.readouterr().out
    # the width/KL cell serves four studies, the teacher's cell every job
    assert ": running" not in out and out.count(": cached") == 34
    page = tmp_path / "page.md"
    assert main(["ablate", "study=report", f"page={page}", f"hydra.run.dir={tmp_path / 'report'}", *common]) == 0
    # the same page, but its plots are named after it and written beside it
    assert page.read_text().replace("](./page-", "](./results-") == (root / "results" / "results.md").read_text()
    assert (tmp_path / "page-criteria.png").stat().st_size > 0 and (tmp_path / "page-curves.png").stat().st_size > 0
    assert (tmp_path / "page-curves-long.png").stat().st_size > 0


def test_bad_study_and_impossible_shape_are_one_line_errors(tmp_path, capsys):
    assert main(["ablate", "study=everything", f"hydra.run.dir={tmp_path / 'a'}"]) == 2
    assert "study=everything is not a study" in capsys.readouterr().err
    root = tmp_path / "x"
    args = SMALL + [f"results_dir={root / 'results'}", f"cache_dir={root / 'cache'}", "shapes.depth={num_hidden_layers:9}"]
    assert main(["ablate", "study=criteria", f"hydra.run.dir={tmp_path / 'b'}", *args]) == 2
    assert "shapes.depth" in capsys.readouterr().err
    assert not (root / "results" / "cells").exists()


def test_report_without_results_says_what_to_run(tmp_path, capsys):
    assert main(["ablate", "study=report", f"results_dir={tmp_path / 'none'}", f"hydra.run.dir={tmp_path / 'r'}"]) == 2
    assert "run a study first" in capsys.readouterr().err


@pytest.mark.parametrize("family", ["nemotron", "llama"])
def test_weight_magnitude_scores_are_the_norms_of_the_weights_each_index_owns(family):
    model = tiny_model(family, 0)
    scores = weight_magnitude(model)
    mlp = model.model.layers[1].mlp
    expected = mlp.down_proj.weight[:, 5].pow(2).sum() + mlp.up_proj.weight[5].pow(2).sum()
    if family == "llama":
        expected = expected + mlp.gate_proj.weight[5].pow(2).sum()
    torch.testing.assert_close(scores.mlp[1, 5], expected.sqrt().detach(), rtol=1e-5, atol=1e-6)
    assert scores.heads.shape == (2, 4) and scores.layers.shape == (2,)
    assert (scores.hidden > 0).all()


def test_random_scores_are_seeded_and_shaped_like_the_model():
    config = tiny_model("nemotron", 0).config
    a, b, c = random_scores(config, 1), random_scores(config, 1), random_scores(config, 2)
    assert all(torch.equal(x, y) for x, y in zip(a.tensors().values(), b.tensors().values()))
    assert not torch.equal(a.mlp, c.mlp)
    a.check_model(config)
    with pytest.raises(MinitronError):
        a.check_model(tiny_model("nemotron", 0, hidden_size=32).config)


def test_the_page_leaves_out_cells_of_other_settings(criteria, tmp_path, capsys):
    root, common = criteria
    page = tmp_path / "page.md"
    assert main(["ablate", "study=report", f"page={page}", f"hydra.run.dir={tmp_path / 'r'}", *common, "eval_batches=3"]) == 0
    assert "of other settings left out" in capsys.readouterr().out
    assert "## 1." not in page.read_text()  # no criteria cell was computed with eval_batches=3


def test_two_jobs_on_the_same_cell_get_their_own_work_folders_and_dead_ones_are_cleared(tmp_path):
    ctx = SimpleNamespace(results=tmp_path, seed=3)
    host = socket.gethostname()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    stale = tmp_path / "work" / f"distill-width-kl-seed3-{host}-{dead}"
    alive = tmp_path / "work" / f"distill-width-kl-seed3-{host}-{os.getppid()}"  # another job still running
    other_host = tmp_path / "work" / "distill-width-kl-seed3-elsewhere-1"
    for folder in (stale, alive, other_host):
        (folder / "checkpoints").mkdir(parents=True)
    path = _work(ctx, "distill-width-kl")
    assert path == tmp_path / "work" / f"distill-width-kl-seed3-{host}-{os.getpid()}"
    assert not stale.exists() and alive.is_dir() and other_host.is_dir()
