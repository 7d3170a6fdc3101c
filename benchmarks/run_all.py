"""Run every benchmark of the project, one after another on this machine, and print what each measured.

    .venv/bin/python benchmarks/run_all.py               # importance overhead, distillation step and KD loss
    .venv/bin/python benchmarks/run_all.py --quick       # smaller settings, for a smoke run
    .venv/bin/python benchmarks/run_all.py --pipeline runs/pipeline/DATE    # add the stage times of a pipeline run

Each benchmark is a script that measures its ratios side by side in one process; this runner only starts them
in turn (so they do not compete for the cores), streams their output, and ends with a summary naming the date,
the machine and the command of each.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BENCHMARKS = {
    "importance overhead": ([sys.executable, "benchmarks/importance_overhead.py"], ["--repeats", "3", "--batches", "2"]),
    "distillation step and chunked KD loss": ([sys.executable, "-m", "minitron.distill.benchmark"],
                                              ["--vocab", "32000", "--tokens", "512", "--hidden", "256"]),
}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.get_device_name(0)}, {os.cpu_count()} CPU cores"
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return f"{cpu}, {os.cpu_count()} CPU cores, no GPU"


def pipeline_stages(run_dir: Path) -> list[str]:
    stages = sorted((run_dir / "stages").glob("*.json"), key=lambda p: p.stat().st_mtime)
    if not stages:
        raise SystemExit(f"--pipeline {run_dir}: no stages/*.json; pass a folder written by `minitron pipeline`")
    lines = ["| stage | seconds |", "|---|---|"]
    total = 0.0
    for record in stages:
        seconds = json.loads(record.read_text())["seconds"]
        total += seconds
        lines.append(f"| {record.stem} | {seconds:.1f} |")
    lines.append(f"| total | {total:.1f} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller settings (a smoke run, not for the README)")
    parser.add_argument("--pipeline", type=Path, help="a `minitron pipeline` run folder whose stage times to include")
    args = parser.parse_args()

    summary = []
    for name, (command, quick) in BENCHMARKS.items():
        command = command + (quick if args.quick else [])
        print(f"\n=== {name}: {' '.join(Path(c).name if i == 0 else c for i, c in enumerate(command))}", flush=True)
        start = time.perf_counter()
        code = subprocess.call(command, cwd=ROOT)
        seconds = time.perf_counter() - start
        summary.append((name, code, seconds))
        if code:
            print(f"{name} failed with exit status {code}", file=sys.stderr)
    if args.pipeline:
        print(f"\n=== pipeline stage times: {args.pipeline}")
        print("\n".join(pipeline_stages(args.pipeline)))

    print(f"\nbenchmarks run on {datetime.date.today()}, {machine()}, python {platform.python_version()}")
    for name, code, seconds in summary:
        print(f"  {name}: {'ok' if code == 0 else f'FAILED ({code})'} in {seconds:.0f} s")
    return 1 if any(code for _, code, _ in summary) else 0


if __name__ == "__main__":
    sys.exit(main())
