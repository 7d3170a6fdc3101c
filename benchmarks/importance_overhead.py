"""Overhead of importance scoring over a plain forward pass, on the default teacher's architecture.

    .venv/bin/python benchmarks/importance_overhead.py                 # about a minute on one CPU core
    .venv/bin/python benchmarks/importance_overhead.py --threads 0 --repeats 9 --batches 8 --seq-len 512
    .venv/bin/python benchmarks/importance_overhead.py --json importance.json   # also every figure as JSON

The model is the embedded default teacher's architecture (configs/model/tiny_nemotron.yaml, vocab 4096) with
random weights. For each setting the same calibration batches are timed through

- `forward`: `model(input_ids)` under `torch.no_grad()` (the full causal LM, logits included);
- `decoder`: the decoder stack alone (`model.model(...)`), which is what the scoring pass runs;
- `estimate` with `depth=()`, `depth=("bi",)` and `depth=("bi", "loss")`.

Each timing is the median over `--repeats` rounds (after warm-up rounds), the settings interleaved within a
round so that a noisy neighbour slows them all alike; both wall-clock time and the process's CPU time are
taken (on a shared machine CPU time is the steadier of the two, best with `--threads 1`). The ratios are
estimate / forward (the target is at most 1.15 for width + Block Importance scoring) and estimate / decoder,
the hooks' own cost. The last line is a row for the table in benchmarks/README.md; `--json` writes every figure.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM

from minitron.importance import estimate
from minitron.io import write_json
from minitron.prune.dry_run import config_from_arch

ARCH_FILE = Path(__file__).resolve().parents[1] / "configs" / "model" / "tiny_nemotron.yaml"
DEFAULT_VOCAB = 4096  # the default teacher's tokenizer size (data.tokenizer.vocab_size); the arch says null
TARGET = 1.15  # estimate(depth=("bi",)) / forward


def default_teacher(seed: int = 0) -> torch.nn.Module:
    config = config_from_arch(OmegaConf.load(ARCH_FILE).arch, vocab_size=DEFAULT_VOCAB)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall-clock, process CPU) seconds of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (0: torch's default); 1 is steadiest on a shared machine"
    )
    parser.add_argument("--json", type=Path, help="also write every figure and setting to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = default_teacher()
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    batches = [torch.randint(3, vocab, (args.batch_size, args.seq_len), generator=g) for _ in range(args.batches)]

    def forward() -> None:
        with torch.no_grad():
            for ids in batches:
                model(input_ids=ids, use_cache=False)

    def decoder() -> None:
        with torch.no_grad():
            for ids in batches:
                model.model(input_ids=ids, use_cache=False)

    def scoring(depth: tuple[str, ...]) -> Callable[[], object]:
        return lambda: estimate(model, batches, depth=depth, progress=False)

    settings: dict[str, Callable[[], object]] = {
        "forward": forward,
        "decoder": decoder,
        "width": scoring(()),
        "width+bi": scoring(("bi",)),
        "width+bi+loss": scoring(("bi", "loss")),
    }
    for _ in range(args.warmup):
        for fn in settings.values():
            fn()
    wall: dict[str, list[float]] = {name: [] for name in settings}
    cpu: dict[str, list[float]] = {name: [] for name in settings}
    for _ in range(args.repeats):
        for name, fn in settings.items():
            w, c = timed(fn)
            wall[name].append(w)
            cpu[name].append(c)
    med = {name: statistics.median(ts) for name, ts in wall.items()}
    med_cpu = {name: statistics.median(ts) for name, ts in cpu.items()}

    tokens = args.batches * args.batch_size * args.seq_len
    threads = torch.get_num_threads()
    print(f"{args.batches} batches x {args.batch_size} x {args.seq_len} tokens, {threads} threads, "
          f"median of {args.repeats}")
    print(f"  {'':<14} {'wall ms':>9} {'range':>11} {'CPU ms':>9}   {'/ forward (wall, CPU)':<22} / decoder (wall, CPU)")
    for name in settings:
        spread = f"{min(wall[name]) * 1e3:.0f}-{max(wall[name]) * 1e3:.0f}"
        line = f"  {name:<14} {med[name] * 1e3:9.1f} {spread:>11} {med_cpu[name] * 1e3:9.1f}"
        if name not in ("forward", "decoder"):
            line += (f"   {med[name] / med['forward']:.3f}, {med_cpu[name] / med_cpu['forward']:.3f}"
                     f"{'':<10} {med[name] / med['decoder']:.3f}, {med_cpu[name] / med_cpu['decoder']:.3f}")
        print(line)
    print(f"  ({tokens / med['forward']:,.0f} tok/s for the plain forward)")

    bi, bi_cpu = med["width+bi"] / med["forward"], med_cpu["width+bi"] / med_cpu["forward"]
    loss = med["width+bi+loss"] / med["forward"]
    hooks_cpu = med_cpu["width+bi"] / med_cpu["decoder"]
    verdict = "meets" if bi <= TARGET else "misses"
    print(f"estimate(depth=('bi',)) / forward = {bi:.3f} wall, {bi_cpu:.3f} CPU ({verdict} the {TARGET} target); "
          f"with 'loss' {loss:.3f}; over the decoder stack alone {hooks_cpu:.3f} CPU")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {threads} threads, load {load:.1f}"
    command = (f"`python benchmarks/importance_overhead.py --threads {threads} --batches {args.batches} "
               f"--batch-size {args.batch_size} --seq-len {args.seq_len} --repeats {args.repeats}`")
    print("| date | machine | command | width+BI / fwd (wall) | width+BI / fwd (CPU) | width+BI+loss / fwd (wall) "
          "| width+BI / decoder (CPU) |")
    print(f"| {datetime.date.today()} | {machine} | {command} | {bi:.3f} | {bi_cpu:.3f} | {loss:.3f} | {hooks_cpu:.3f} |")
    if args.json:
        write_json(args.json, {
            "date": str(datetime.date.today()),
            "settings": {"batches": args.batches, "batch_size": args.batch_size, "seq_len": args.seq_len,
                         "repeats": args.repeats, "warmup": args.warmup, "threads": threads, "tokens": tokens},
            "load": load,
            "vocab": vocab,
            "wall_s": med,
            "cpu_s": med_cpu,
            "wall_range_s": {name: [min(ts), max(ts)] for name, ts in wall.items()},
            "over_forward": {name: {"wall": med[name] / med["forward"], "cpu": med_cpu[name] / med_cpu["forward"]}
                             for name in settings if name not in ("forward", "decoder")},
            "over_decoder": {name: {"wall": med[name] / med["decoder"], "cpu": med_cpu[name] / med_cpu["decoder"]}
                             for name in settings if name not in ("forward", "decoder")},
            "forward_tokens_per_s": tokens / med["forward"],
            "target": TARGET,
            "meets_target": bi <= TARGET,
        })

if __name__ == "__main__":
    main()
