"""`minitron pipeline` end to end on a setting much smaller than the default, and its resume behaviour."""

from __future__ import annotations

import json
import re

import pytest

from minitron.commands.pipeline import run
from minitron.config import compose

# A teacher of hidden 64 / 2 layers trained for 30 steps, pruned to half its width, retrained for 12 steps.
TEACHER = [
    "model.arch.hidden_size=64",
    "model.arch.intermediate_size=256",
    "model.arch.num_hidden_layers=2",
    "model.arch.num_attention_heads=4",
    "model.arch.num_key_value_heads=2",
    "model.arch.head_dim=16",
    "data.seq_len=64",
    "data.max_train_docs=40",
    "data.num_proc=1",
    "data.tokenizer.vocab_size=384",
    "data.tokenizer.train_bytes=300000",
    "train.max_steps=30",
    "train.batch_size=8",
    "train.warmup_steps=3",
    "train.logging_steps=5",
    "train.eval_batches=4",
]
PIPELINE = [
    "data.seq_len=64",
    "data.max_train_docs=40",
    "data.num_proc=1",
    "target.hidden_size=48",
    "target.intermediate_size=128",
    "target.num_attention_heads=2",
    "calib.samples=16",
    "train.max_steps=12",
    "train.batch_size=8",
    "train.warmup_steps=2",
    "train.logging_steps=4",
    "train.save_steps=0",
    "train.eval_batches=4",
    "eval_batches=4",
    "eval.generate.docs=8",
    "eval.generate.doc_chars=512",
    "eval.generate.mc_items=12",
    "eval.generate.context_chars=128",
]


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    from minitron.commands.pretrain import run as pretrain

    root = tmp_path_factory.mktemp("pipeline")
    cache = f"cache_dir={root / 'cache'}"
    teacher = pretrain(compose("pretrain", TEACHER + [cache]), run_dir=root / "teacher_run")
    cfg = compose("pipeline", PIPELINE + [cache, f"teacher={teacher.path}"])
    result = run(cfg, run_dir=root / "run")
    return cfg, result, root / "run"


def _table(report: str) -> dict[str, list[str]]:
    rows = {}
    for line in report.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 7 and cells[0] in {"teacher", "pruned", "distilled", "scratch"}:
            rows[cells[0]] = cells
    return rows


def test_report_table_has_every_model(pipeline_run):
    _, result, run_dir = pipeline_run
    rows = _table((run_dir / "report.md").read_text())
    assert set(rows) == {"teacher", "pruned", "distilled", "scratch"}
    params = {k: int(v[1].replace(",", "")) for k, v in rows.items()}
    assert params["pruned"] == params["distilled"] == params["scratch"] < params["teacher"]
    assert rows["distilled"][3] == rows["scratch"][3]  # the baseline saw the same number of tokens
    for name, row in rows.items():
        loss, se = (float(x) for x in row[4].split(" ± "))  # mean ± standard error over the validation batches
        assert loss == pytest.approx(result["eval"][name]["val_loss"], abs=5e-4) and 0 < se < loss
        assert se == pytest.approx(result["eval"][name]["val_loss_se"], abs=5e-4)
        assert float(row[5]) > 0 and 0 <= float(row[6]) <= 1
    assert re.search(r"\| distill \| \d+\.\d \|", (run_dir / "report.md").read_text())


def test_distillation_beats_the_pruned_student(pipeline_run):
    _, result, _ = pipeline_run
    ev = result["eval"]
    assert ev["distilled"]["val_loss"] < ev["pruned"]["val_loss"]
    assert ev["teacher"]["val_loss"] < ev["pruned"]["val_loss"]


def test_run_folder_holds_every_output(pipeline_run):
    _, _, run_dir = pipeline_run
    names = {p.name for p in run_dir.iterdir()}
    assert {"config.yaml", "report.md", "importance.safetensors", "pruned", "distilled", "scratch", "stages", "plots", "eval"} <= names
    plots = {p.name for p in (run_dir / "plots").iterdir()}
    assert "distill_loss.png" in plots and "scratch_loss.png" in plots and len(plots) >= 4
    for stage in ("teacher", "importance", "prune", "distill", "scratch", "eval_pruned", "eval_distilled"):
        assert "seconds" in json.loads((run_dir / "stages" / f"{stage}.json").read_text())


def test_rerun_in_the_same_folder_skips_finished_stages(pipeline_run, capsys):
    cfg, first, run_dir = pipeline_run
    again = run(cfg, run_dir=run_dir)
    out = capsys.readouterr().out
    assert out.count("already done in this run folder") == 9
    assert again["eval"] == first["eval"]
