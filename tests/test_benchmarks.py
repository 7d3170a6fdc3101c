"""`benchmarks/run_all.py`: every benchmark runs and its figures land in the one table (the smallest settings)."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from minitron.workflows.pipeline import stage

ROOT = Path(__file__).resolve().parents[1]
RUN_ALL = ROOT / "benchmarks" / "run_all.py"
EVAL_SPEED = ROOT / "benchmarks" / "eval_speed.py"
NUMBER = re.compile(r"\d+(\.\d+)?")


def _run_all_module():
    if "run_all" not in sys.modules:
        spec = importlib.util.spec_from_file_location("run_all", RUN_ALL)
        sys.modules["run_all"] = importlib.util.module_from_spec(spec)  # its dataclasses look their module up there
        spec.loader.exec_module(sys.modules["run_all"])
    return sys.modules["run_all"]


def _pipeline_folder(root: Path) -> Path:
    """A run folder with stage records written by the pipeline's own `stage` (not a full pipeline run: minutes)."""
    for name in ("teacher", "importance", "prune"):
        stage(root, name, lambda: {"checkpoint": str(root / name)})
    return root


def _rows(table: str) -> list[list[str]]:
    lines = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| benchmark ")]
    return [[c.strip() for c in line.strip().strip("|").split(" | ")] for line in lines]


def _figures(rows: list[list[str]], benchmark: str) -> dict[str, str]:
    return {figure: measured for bench, figure, measured, _, _ in rows if bench.startswith(benchmark)}


def _run(args: list[str], timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(RUN_ALL), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def _check_table(text: str, *, scale: bool) -> list[list[str]]:
    heading = next(line for line in text.splitlines() if line.startswith("Benchmarks of "))
    assert re.search(r"\d{4}-\d\d-\d\d on .+ \d+ cores, \d+ GiB memory, GPU: .+; torch \d", heading), heading
    rows = _rows(text[text.index(heading):])
    assert all(len(row) == 5 for row in rows), rows
    importance = _figures(rows, "importance overhead")
    assert any(f.startswith("width+BI / forward, wall") for f in importance)
    assert {"width+BI / forward, CPU time", "width+BI+loss / forward, CPU time",
            "plain forward, wall"} <= importance.keys()
    distill = _figures(rows, "distillation")
    assert [f[:3] for f in distill] == ["(a)", "(b)", "(b)", "(c)", "(c)"]
    evaluation = _figures(rows, "validation loss")
    assert any(f.startswith("tiny: validation-loss pass / plain forward, wall (") for f in evaluation)
    assert {"tiny: validation-loss pass / plain forward, CPU time", "tiny: the old pass / plain forward, wall",
            "tiny: the old pass / plain forward, CPU time"} <= evaluation.keys()
    assert {"stage teacher, seconds", "stage importance, seconds", "stage prune, seconds",
            "all stages, seconds"} == _figures(rows, "pipeline").keys()
    scale_rows = _figures(rows, "scale")
    if scale:
        assert {"peak RSS of the scoring and pruning stages", "score (streaming): wall, peak RSS",
                "parameters of tiny (NemotronForCausalLM from its config.json)"} <= scale_rows.keys()
    else:
        assert scale_rows == {"all figures": "skipped: --skip-scale"}
        rows = [row for row in rows if not row[0].startswith("scale")]
    for bench, figure, measured, target, command in rows:
        if measured == "TRL not installed":
            assert figure.startswith("(c)") and importlib.util.find_spec("trl") is None
            continue
        assert NUMBER.match(measured), (figure, measured)  # every figure is a number, none failed or skipped
        assert command.startswith("`") and len(command) > 2
        if "<=" in target:
            assert NUMBER.search(target)
    return rows


def test_run_all_prints_every_figure_at_the_smallest_settings(tmp_path):
    """Every benchmark but the scale run, in its own process at the smallest settings; the table has every figure."""
    pipeline = _pipeline_folder(tmp_path / "pipeline")
    out = tmp_path / "table.md"
    proc = _run(["--sizes", "tiny", "--skip-scale", "--pipeline", str(pipeline), "--work", str(tmp_path / "work"),
                 "--out", str(out)], timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = _check_table(proc.stdout, scale=False)
    assert out.read_text() in proc.stdout  # the file holds the printed table, heading included
    # every cell comes from the JSON the benchmarks wrote
    importance = json.loads((tmp_path / "work" / "importance.json").read_text())
    distill = json.loads((tmp_path / "work" / "distill.json").read_text())
    evaluation = json.loads((tmp_path / "work" / "eval.json").read_text())["models"]["tiny"]
    figures = {figure: measured for _, figure, measured, _, _ in rows}
    wall = next(m for f, m in figures.items() if f.startswith("width+BI / forward, wall"))
    assert float(wall) == pytest.approx(importance["over_forward"]["width+bi"]["wall"], abs=5e-4)
    assert float(figures["(b) chunked / plain KD loss, time"].split()[0]) == pytest.approx(
        distill["vocab"]["chunked_over_plain"]["time"], abs=5e-4)
    assert distill["vocab"]["results"]["plain"]["peak_bytes"] > 0
    assert float(figures["tiny: validation-loss pass / plain forward, CPU time"]) == pytest.approx(
        evaluation["over_forward"]["after"]["cpu"], abs=5e-4)
    records = sorted((pipeline / "stages").glob("*.json"))
    total = sum(json.loads(p.read_text())["seconds"] for p in records)
    assert float(figures["all stages, seconds"]) == pytest.approx(total, abs=0.05)


def _eval_speed_module():
    if "eval_speed" not in sys.modules:
        spec = importlib.util.spec_from_file_location("eval_speed", EVAL_SPEED)
        sys.modules["eval_speed"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["eval_speed"])
    return sys.modules["eval_speed"]


def _check_eval_speed(figures: dict, batches: int, batch_size: int, seq_len: int, repeats: int) -> None:
    r = figures["models"]["tiny"]
    assert (r["batches"], r["batch_size"], r["seq_len"], r["repeats"]) == (batches, batch_size, seq_len, repeats)
    assert r["tokens"] == batches * batch_size * seq_len and r["vocab"] == 4096
    for setting in ("forward", "decoder", "before", "after"):
        assert r["wall_s"][setting] > 0 and r["cpu_s"][setting] > 0
        assert len(r["wall_rounds_s"][setting]) == len(r["cpu_rounds_s"][setting]) == repeats
    for setting in ("decoder", "before", "after"):
        assert r["over_forward"][setting]["wall"] > 0 and r["over_forward"][setting]["cpu"] > 0
    assert r["loss"]["after"] == pytest.approx(r["loss"]["before"], rel=1e-5)  # the same loss, both passes
    assert r["meets_target"] == (r["over_forward"]["after"]["wall"] <= r["target"] == 1.2)


def test_eval_speed_times_both_passes_against_the_forward_at_the_smallest_settings(tmp_path, capsys):
    out = tmp_path / "eval.json"
    args = ["--models", "tiny", "--batches", "2", "--batch-size", "2", "--seq-len", "16", "--repeats", "1",
            "--warmup", "0", "--tiles", "--json", str(out)]
    assert _eval_speed_module().main(args) == 0
    figures = json.loads(out.read_text())
    _check_eval_speed(figures, 2, 2, 16, 1)
    assert set(figures["models"]["tiny"]["tiles_cpu_s"]) >= {"logits only", "logits + F.cross_entropy", "tiles 512 x 1024"}
    printed = capsys.readouterr().out
    assert "validation-loss pass / forward = " in printed
    assert "| python benchmarks/eval_speed.py --models tiny" not in printed  # the command is quoted in its row
    assert "`python benchmarks/eval_speed.py --models tiny --batches 2" in printed


def test_eval_speed_refuses_an_unknown_model(capsys):
    with pytest.raises(SystemExit):
        _eval_speed_module().main(["--models", "tiny,gpt5"])
    assert "--models: gpt5; choose from tiny, smollm2_135m" in capsys.readouterr().err


@pytest.mark.slow
def test_eval_speed_quick_mode(tmp_path):
    """`eval_speed.py --quick` as a user runs it (the tiny model, 4 x 8 x 128 tokens, 3 rounds)."""
    out = tmp_path / "eval.json"
    proc = subprocess.run([sys.executable, str(EVAL_SPEED), "--quick", "--json", str(out)], check=False, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _check_eval_speed(json.loads(out.read_text()), 4, 8, 128, 3)


def test_a_failed_benchmark_is_a_row_and_a_non_zero_exit(tmp_path):
    run_all = _run_all_module()
    failing = [sys.executable, "-c", "import sys; print('out of patience'); sys.exit(3)"]
    outcome = run_all.run_script("importance", failing, tmp_path / "importance.json")
    assert outcome.failed and outcome.error == "exit status 3: out of patience"
    skipped = run_all.Outcome("scale", "python benchmarks/scale_15b.py", skipped="--skip-scale")
    table = run_all.render([outcome, skipped], "tiny", "2026-01-01", "a machine")
    assert _rows(table) == [
        ["importance overhead", "run", "FAILED, exit status 3: out of patience", "-",
         "`python -c import sys; print('out of patience'); sys.exit(3)`"],
        ["scale", "all figures", "skipped: --skip-scale", "-", "`python benchmarks/scale_15b.py`"],
    ]


def test_a_scale_run_without_the_disk_space_is_skipped_with_its_reason(tmp_path):
    """scale_15b.py refuses before writing anything when the disk is too small (its message, exit status 1):
    run_all shows the message as the reason and does not count it as a failure."""
    run_all = _run_all_module()
    message = "--dir /small: 12.0 GB free, the scale run needs 49.7 GB; point --dir at a larger disk"
    refusing = [sys.executable, "-c", f"raise SystemExit({message!r})"]
    outcome = run_all.run_script("scale", refusing, tmp_path / "scale.json")
    assert not outcome.failed and outcome.skipped == f"not enough disk space: {message}"
    crashing = [sys.executable, "-c", "raise SystemExit('stage failed (exit 1): minitron score')"]
    assert run_all.run_script("scale", crashing, tmp_path / "scale.json").failed


def test_pipeline_option_needs_stage_records(tmp_path):
    proc = _run(["--sizes", "tiny", "--pipeline", str(tmp_path)], timeout=120)
    assert proc.returncode != 0 and "no stages/*.json" in proc.stderr


@pytest.mark.slow
def test_run_all_quick_prints_every_figure(tmp_path):
    """`run_all.py --quick` as a user runs it, the tiny scale run included (several minutes on 2 cores)."""
    pipeline = _pipeline_folder(tmp_path / "pipeline")
    proc = _run(["--quick", "--pipeline", str(pipeline), "--scale-dir", str(tmp_path)], timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _check_table(proc.stdout, scale=True)
