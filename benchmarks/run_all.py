"""Run every benchmark of the project, one after another on this machine, and print one table of every figure.

    .venv/bin/python benchmarks/run_all.py --out table.md    # the README's figures (the scale run needs ~50 GB of disk)
    .venv/bin/python benchmarks/run_all.py --quick           # small settings, a smoke run (minutes, not for the README)
    .venv/bin/python benchmarks/run_all.py --pipeline runs/pipeline/DATE --skip-scale   # an existing run's stages

In order, each in its own process so that they do not compete for the cores: the importance-scoring overhead
(`benchmarks/importance_overhead.py`), the distillation benchmarks (a) step overhead, (b) chunked against plain KD
loss and (c) against TRL's generalized JSD (`python benchmarks/distill_loss.py`), the validation-loss pass against
a plain forward (`benchmarks/eval_speed.py`; SmolLM2-135M is skipped unless `make real` installed it), the default `minitron
pipeline` in a fresh run folder (or, with `--pipeline RUN`, the stage records of that run), and the scale run
(`benchmarks/scale_15b.py`; skipped with `--skip-scale`, or when the disk lacks the space it needs). Each writes
its figures as JSON (`--json`); every cell of the final table is read from those files, under a heading line
naming the date, the machine and the torch version. The exit status is non-zero when any benchmark failed.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30
KEYS = ("importance", "distill", "eval", "pipeline", "scale")

# Arguments of each script per size. "full" is each script's own defaults (the README's settings: the KD loss at
# vocabulary 256,000 and 2,048 tokens), except that TRL's generalized JSD, the peer in (c), runs at 1,024 tokens
# (it needs about 17 GiB per 1,024 tokens, and 2,048 would not fit in this project's 24 GiB build machine) and
# that (b)/(c) time one forward+backward after the warm-up (each takes a minute or more on 2 CPU cores).
# The validation-loss pass runs 4 of each model's evaluation batches (4 x 16 x 256 tokens for the tiny teacher, 4 x 8
# x 256 for SmolLM2-135M), 3 rounds on one thread (the steadiest on a shared machine).
# "quick" is a smoke run of a few minutes; "tiny" is the smallest that runs every code path (for tests: its
# figures mean nothing).
SIZES: dict[str, dict[str, list[str]]] = {
    "full": {"importance": [], "distill": ["--peer-tokens", "1024", "--repeats", "1"],
             "eval": ["--batches", "4", "--threads", "1"], "scale": []},
    "quick": {
        "importance": ["--repeats", "3", "--batches", "2"],
        "distill": ["--step-batch", "8", "--step-seq", "128", "--step-repeats", "5",
                    "--vocab", "32000", "--tokens", "512", "--hidden", "256"],
        "eval": ["--quick", "--threads", "1"],
        "scale": ["--model", "tiny_nemotron", "--targets", "tiny"],
    },
    "tiny": {
        "importance": ["--batches", "1", "--batch-size", "1", "--seq-len", "16", "--repeats", "1", "--warmup", "0"],
        "distill": ["--step-batch", "2", "--step-seq", "16", "--step-repeats", "1",
                    "--vocab", "8192", "--tokens", "64", "--hidden", "16", "--chunk", "16", "--repeats", "1"],
        "eval": ["--models", "tiny", "--batches", "2", "--batch-size", "2", "--seq-len", "32", "--repeats", "1",
                 "--warmup", "0"],
        "scale": ["--model", "tiny_nemotron", "--targets", "tiny", "--calib-samples", "2", "--calib-seq-len", "32"],
    },
}
# scale_15b.py's own way of saying the disk is too small for it (it then exits before writing anything)
NO_SPACE = re.compile(r"GB free, the scale run needs")


@dataclass
class Outcome:
    """What one benchmark left: its figures (the JSON it wrote), or why there are none."""

    key: str
    command: str  # as shown in the table
    data: dict[str, Any] | None = None
    code: int = 0
    skipped: str | None = None
    error: str | None = None
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return self.skipped is None and (self.code != 0 or self.data is None)


# ---- running ------------------------------------------------------------------------------------------------


def _shown(command: list[str]) -> str:
    """The command as a reader would type it from the repository root (without the --json output path)."""
    words, skip = [], False
    for i, word in enumerate(command):
        if skip:
            skip = False
            continue
        if word == "--json":
            skip = True
            continue
        if word.startswith("hydra.run.dir="):
            continue
        if i == 0:
            word = "python"
        elif Path(word).is_absolute() and Path(word).is_relative_to(ROOT):
            word = str(Path(word).relative_to(ROOT))
        words.append(word)
    return " ".join(words)


def _run(command: list[str]) -> tuple[int, list[str], float]:
    """Run `command` from the repository root, its output streamed through; return its status and last lines."""
    start = time.perf_counter()
    tail: list[str] = []
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            tail = (tail + [line.rstrip("\n")])[-20:]
    return proc.returncode, tail, time.perf_counter() - start


def _last_line(tail: list[str]) -> str:
    lines = [line.strip() for line in tail if line.strip()]
    return lines[-1] if lines else "no output"


def run_script(key: str, command: list[str], json_path: Path) -> Outcome:
    print(f"\n=== {key}: {_shown(command)}", flush=True)
    code, tail, seconds = _run(command + ["--json", str(json_path)])
    outcome = Outcome(key, _shown(command), code=code, seconds=seconds)
    if json_path.is_file():
        outcome.data = json.loads(json_path.read_text())
    if code != 0:
        if key == "scale" and outcome.data is None and any(NO_SPACE.search(line) for line in tail):
            outcome.skipped = f"not enough disk space: {_last_line(tail)}"
            outcome.code = 0
        else:
            outcome.error = f"exit status {code}: {_last_line(tail)}"
    return outcome


def pipeline_records(run_dir: Path) -> list[tuple[str, float]]:
    """(stage, seconds) of each stages/*.json record of a `minitron pipeline` run folder, in the order written."""
    records = sorted((run_dir / "stages").glob("*.json"), key=lambda p: p.stat().st_mtime)
    if not records:
        raise SystemExit(f"--pipeline {run_dir}: no stages/*.json; pass a folder written by `minitron pipeline`")
    return [(record.stem, float(json.loads(record.read_text())["seconds"])) for record in records]


def run_pipeline(work: Path, existing: Path | None, size: str) -> Outcome:
    if existing is not None:
        outcome = Outcome("pipeline", f"stage records of {existing}")
        outcome.data = {"run": str(existing), "stages": pipeline_records(existing)}
        return outcome
    if size != "full":
        return Outcome("pipeline", "minitron pipeline", skipped=f"--{size} runs no pipeline; pass --pipeline RUN")
    run_dir = work / "pipeline"
    command = [sys.executable, "-m", "minitron", "pipeline", f"hydra.run.dir={run_dir}"]
    print(f"\n=== pipeline: minitron pipeline (in {run_dir})", flush=True)
    code, tail, seconds = _run(command)
    outcome = Outcome("pipeline", "minitron pipeline", code=code, seconds=seconds)
    if code != 0:
        outcome.error = f"exit status {code}: {_last_line(tail)}"
    elif list((run_dir / "stages").glob("*.json")):
        outcome.data = {"run": str(run_dir), "stages": pipeline_records(run_dir)}
    else:
        outcome.error = f"{run_dir}: no stages/*.json written"
    return outcome


# ---- the table ----------------------------------------------------------------------------------------------


def _scale_constants() -> tuple[dict[str, int], float]:
    """The paper's parameter counts and the memory target, as benchmarks/scale_15b.py states them."""
    spec = importlib.util.spec_from_file_location("scale_15b", ROOT / "benchmarks" / "scale_15b.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.PAPER_PARAMETERS, module.MEMORY_TARGET_GIB


def _importance_rows(d: dict) -> list[tuple[str, str, str]]:
    s, t = d["settings"], d["target"]
    setting = f"{s['batches']} x {s['batch_size']} x {s['seq_len']} tokens, {s['threads']} thread(s)"
    bi, loss = d["over_forward"]["width+bi"], d["over_forward"]["width+bi+loss"]
    return [
        (f"width+BI / forward, wall ({setting})", f"{bi['wall']:.3f}", f"<= {t}"),
        ("width+BI / forward, CPU time", f"{bi['cpu']:.3f}", f"<= {t}"),
        ("width+BI+loss / forward, wall (skip-one-layer LM loss)", f"{loss['wall']:.3f}", "-"),
        ("width+BI+loss / forward, CPU time", f"{loss['cpu']:.3f}", "-"),
        ("width+BI / decoder stack, CPU time (the hooks' own cost)",
         f"{d['over_decoder']['width+bi']['cpu']:.3f}", "-"),
        ("plain forward, wall", f"{d['wall_s']['forward'] * 1e3:.1f} ms ({d['forward_tokens_per_s']:,.0f} tok/s)", "-"),
    ]


def _pair(results: dict, num: str, den: str, ratios: dict | None, what: str) -> str:
    for kind in (num, den):
        if "error" in results.get(kind, {"error": "not run"}):
            return f"{kind} failed: {results.get(kind, {}).get('error', 'not run')}"
    if what == "memory":
        if ratios["memory"] is None:
            return f"n/a ({den} peak 0 B above the inputs)"
        a, b = results[num]["peak_bytes"] / GIB, results[den]["peak_bytes"] / GIB
        return f"{ratios['memory']:.3f} ({a:.3f} / {b:.3f} GiB)"
    return f"{ratios['time']:.3f} ({results[num]['seconds']:.3f} / {results[den]['seconds']:.3f} s)"


def _distill_rows(d: dict) -> list[tuple[str, str, str]]:
    rows = []
    targets = d["targets"]
    if "step" in d:
        a = d["step"]
        rows.append((f"(a) distill step / (student CE step + teacher no_grad forward), tiny models, "
                     f"{a['batch']} x {a['seq_len']} tokens",
                     f"{a['ratio']:.3f} (range {a['ratio_min']:.2f}-{a['ratio_max']:.2f}; "
                     f"{a['distill_step_s'] * 1e3:.0f} / "
                     f"({a['student_ce_step_s'] * 1e3:.0f} + {a['teacher_forward_s'] * 1e3:.0f}) ms)",
                     f"<= {a['target']}"))
    if "vocab" in d:
        v, r = d["vocab"], d["vocab"]["results"]
        at = f"vocab {v['vocab']:,}, {v['tokens']:,} tokens, hidden {v['hidden']:,}, chunk {v['chunk']}, {d['device']}"
        rows.append((f"(b) chunked / plain KD loss, peak memory, forward+backward ({at})",
                     _pair(r, "chunked", "plain", v["chunked_over_plain"], "memory"), f"<= {targets['memory_ratio']}"))
        rows.append(("(b) chunked / plain KD loss, time", _pair(r, "chunked", "plain", v["chunked_over_plain"], "time"),
                     f"<= {targets['time_ratio']}"))
        for what in ("memory", "time"):
            figure = (f"(c) chunked JSD / TRL generalized JSD (beta 0.5, {v.get('peer_tokens', v['tokens']):,} tokens), "
                      f"{'peak memory' if what == 'memory' else what}")
            if not v["trl_installed"]:
                measured = "TRL not installed"
            elif "trl_jsd" not in r:
                measured = "not run (--kinds)"
            else:
                measured = _pair(r, "chunked_jsd", "trl_jsd", v["chunked_jsd_over_trl_jsd"], what)
            key = "peer_memory_ratio" if what == "memory" else "peer_time_ratio"
            rows.append((figure, measured, f"<= {targets[key]}" if key in targets else "- (the peer)"))
    return rows


def _eval_rows(d: dict) -> list[tuple[str, str, str]]:
    rows = []
    for model, r in d["models"].items():
        if "skipped" in r:
            rows.append((f"{model}: all figures", f"skipped: {r['skipped']}", "-"))
            continue
        o, s, target = r["over_forward"], r["wall_s"], f"<= {r['target']}"
        setting = f"{r['batches']} x {r['batch_size']} x {r['seq_len']} tokens, {d['threads']} thread(s)"
        rows += [
            (f"{model}: validation-loss pass / plain forward, wall ({setting})",
             f"{o['after']['wall']:.3f} ({s['after']:.2f} / {s['forward']:.2f} s)", target),
            (f"{model}: validation-loss pass / plain forward, CPU time", f"{o['after']['cpu']:.3f}", target),
            (f"{model}: the old pass / plain forward, wall", f"{o['before']['wall']:.3f} ({s['before']:.2f} s)", "-"),
            (f"{model}: the old pass / plain forward, CPU time", f"{o['before']['cpu']:.3f}", "-"),
        ]
    return rows


def _pipeline_rows(d: dict) -> list[tuple[str, str, str]]:
    rows = [(f"stage {name}, seconds", f"{seconds:.1f}", "-") for name, seconds in d["stages"]]
    rows.append(("all stages, seconds", f"{sum(seconds for _, seconds in d['stages']):.1f}", "-"))
    return rows


def _scale_rows(d: dict) -> list[tuple[str, str, str]]:
    paper, memory_target = _scale_constants()
    rows = [(f"{s['stage']}: wall, peak RSS", f"{s['seconds']:.0f} s, {s['peak_rss_bytes'] / GIB:.2f} GiB", "-")
            for s in d["stages"]]
    rows.append(("peak RSS of the scoring and pruning stages", f"{d['peak_rss_bytes'] / GIB:.2f} GiB",
                 f"<= {memory_target:g} GiB"))
    for target, out in d["outputs"].items():
        expected = f"{paper[target]:,} (paper)" if target in paper else "-"
        rows.append((f"parameters of {target} ({out['class']} from its config.json)", f"{out['parameters']:,}",
                     expected))
    return rows


ROWS = {"importance": ("importance overhead", _importance_rows), "distill": ("distillation", _distill_rows),
        "eval": ("validation loss", _eval_rows), "pipeline": ("pipeline", _pipeline_rows), "scale": (None, _scale_rows)}


def table_rows(outcomes: list[Outcome]) -> list[tuple[str, str, str, str, str]]:
    """(benchmark, figure, measured, target, command) for every figure of every outcome."""
    rows = []
    for o in outcomes:
        name, make = ROWS[o.key]
        if o.key == "scale":
            name = f"scale ({o.data.get('model', '?')})" if o.data else "scale"
        if o.skipped:
            rows.append((name, "all figures", f"skipped: {o.skipped}", "-", o.command))
            continue
        if o.data is not None:
            rows += [(name, figure, measured, target, o.command) for figure, measured, target in make(o.data)]
        if o.error:
            rows.append((name, "run", f"FAILED, {o.error}", "-", o.command))
    return rows


def machine() -> str:
    import torch

    cpu = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB memory, GPU: {gpu}; torch {torch.__version__}"


def render(outcomes: list[Outcome], size: str, date: str, where: str) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    heading = f"Benchmarks of {date} on {where}" + ("" if size == "full" else f" (--{size} settings)")
    lines = [heading, "", "| benchmark | figure | measured | target | command |", "|---|---|---|---|---|"]
    for bench, figure, measured, target, command in table_rows(outcomes):
        lines.append(f"| {cell(bench)} | {cell(figure)} | {cell(measured)} | {cell(target)} | `{cell(command)}` |")
    return "\n".join(lines) + "\n"


# ---- main ---------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="small settings (a smoke run, not for the README); no pipeline unless --pipeline")
    parser.add_argument("--sizes", choices=sorted(SIZES), default=None,
                        help="full (default), quick (= --quick) or tiny (the smallest settings, for tests)")
    parser.add_argument("--pipeline", type=Path, help="read the stage times of this `minitron pipeline` run folder "
                                                       "instead of running the default pipeline")
    parser.add_argument("--skip-scale", action="store_true", help="leave out the scale run (benchmarks/scale_15b.py)")
    parser.add_argument("--scale-dir", type=Path, help="the scale run's work folder (its --dir; default: its own)")
    parser.add_argument("--work", type=Path,
                        help="keep the JSON files and the pipeline run here (default: a temporary folder, removed)")
    parser.add_argument("--out", type=Path, help="also write the table (with its heading line) to this file")
    args = parser.parse_args(argv)
    if args.quick and args.sizes not in (None, "quick"):
        parser.error("--quick and --sizes disagree")
    size = "quick" if args.quick else (args.sizes or "full")
    if args.pipeline is not None:
        pipeline_records(args.pipeline)  # fail now, not after an hour of benchmarks

    date, where = str(datetime.date.today()), machine()
    work = args.work or Path(tempfile.mkdtemp(prefix="minitron-benchmarks-"))
    work.mkdir(parents=True, exist_ok=True)
    sizes = SIZES[size]
    try:
        outcomes = [
            run_script("importance", [sys.executable, str(ROOT / "benchmarks" / "importance_overhead.py"),
                                      *sizes["importance"]], work / "importance.json"),
            run_script("distill", [sys.executable, str(ROOT / "benchmarks" / "distill_loss.py"), *sizes["distill"]],
                       work / "distill.json"),
            run_script("eval", [sys.executable, str(ROOT / "benchmarks" / "eval_speed.py"), *sizes["eval"]],
                       work / "eval.json"),
            run_pipeline(work, args.pipeline, size),
        ]
        scale = [sys.executable, str(ROOT / "benchmarks" / "scale_15b.py"), *sizes["scale"]]
        if args.scale_dir is not None:
            scale += ["--dir", str(args.scale_dir)]
        if args.skip_scale:
            outcomes.append(Outcome("scale", _shown(scale), skipped="--skip-scale"))
        else:
            outcomes.append(run_script("scale", scale, work / "scale.json"))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)

    text = render(outcomes, size, date, where)
    print("\n" + text, end="")
    for o in outcomes:
        if o.skipped:
            print(f"{o.key}: skipped ({o.skipped})")
        elif o.failed:
            print(f"{o.key}: FAILED ({o.error or 'no figures written'})", file=sys.stderr)
    if args.out:
        from minitron.io import write_text

        write_text(args.out, text)
    return 1 if any(o.failed for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
