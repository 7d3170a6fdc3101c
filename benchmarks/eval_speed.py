"""Cost of the validation-loss pass against a plain no-grad forward over the same batches.

    .venv/bin/python benchmarks/eval_speed.py                          # both models at their eval shapes
    .venv/bin/python benchmarks/eval_speed.py --models smollm2_135m --batches 4   # the real teacher, 4 of its 16 batches
    .venv/bin/python benchmarks/eval_speed.py --quick                  # the tiny model at small settings (a smoke run)
    .venv/bin/python benchmarks/eval_speed.py --json eval.json         # also write every figure as JSON

Models (`--models`, comma-separated):
- `tiny`: the embedded default teacher's architecture (configs/model/tiny_nemotron.yaml, vocabulary 4096) with
  random weights, on seeded random blocks, at the default pipeline's evaluation shape (32 batches x 16 x 256).
- `smollm2_135m`: the real teacher (`make real`): its converted checkpoint (converted once into `--cache-dir`)
  and the held-out blocks of `minitron pipeline recipe=smollm2_135m`, loaded as the pipeline loads them, at the
  recipe's evaluation shape (16 batches x 8 x 256). Without the package installed it is skipped, with the reason.

On the same blocks, each round times
- `forward`: `model(input_ids=ids, use_cache=False)` under `torch.no_grad()` in eval mode, on batches made
  beforehand (the full causal LM, float32 logits over the vocabulary included);
- `decoder`: the decoder stack alone (`model.get_decoder()`), a floor no loss pass can go below;
- `before`: the validation-loss pass as it was before `minitron.train.validation` (a faithful copy is below:
  the blocks read row by row and stacked, the model's full logits, their shifted float32 copy and the
  cross-entropy over them);
- `after`: `minitron.train.validation.lm_loss`, the pass every validation loss now goes through.
The passes read the blocks from the dataset themselves (that is part of their cost); `forward` does not. The
settings run interleaved within a round, so that a noisy neighbour slows them all alike, after one warm-up round
on the first batch. Reported: the median wall-clock and process CPU seconds over the rounds, each pass's ratio to
`forward` per round (mean, standard error and range over the rounds; the target is at most 1.2 for `after`),
Welch tests of after against before over the rounds (wall-clock and CPU seconds; on a shared machine the CPU
time is the steadier), and both passes' losses, which must agree to 1e-5.

`--tiles` also times the loss alone at each model's output-layer shape (random hidden states and targets, one
batch of tokens): the logits alone (`F.linear`), the logits and `F.cross_entropy` over them (the old pass's
loss), and `minitron.train.validation.logits_cross_entropy_sum` at several tile shapes (tokens x vocabulary), the
measurement behind its TILE_ROWS x TILE_VOCAB.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from itertools import islice
from pathlib import Path
from typing import Any

import datasets
import torch
from omegaconf import OmegaConf
from torch.nn import functional as F
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM

from minitron.errors import MinitronError
from minitron.io import write_json
from minitron.prune.dry_run import config_from_arch
from minitron.train.trainer import collate
from minitron.train import validation
from minitron.train.validation import lm_loss
from minitron.workflows.ablate.stats import Comparison, Summary

ROOT = Path(__file__).resolve().parents[1]
ARCH_FILE = ROOT / "configs" / "model" / "tiny_nemotron.yaml"
DEFAULT_VOCAB = 4096  # the default teacher's tokenizer size (data.tokenizer.vocab_size); the arch says null
TARGET = 1.2  # after / forward
MODELS = ("tiny", "smollm2_135m")
SETTINGS = ("forward", "decoder", "before", "after")
TILES = ((128, 1024), (256, 1024), (512, 512), (512, 1024), (1024, 1024), (512, 4096), (4096, 8192))


# ---- the pass as it was (minitron/train/trainer.py before minitron/train/validation.py), kept to compare ----


def _old_chunks(rows: Iterable[dict], size: int, limit: int | None) -> Iterable[list[dict]]:
    it = iter(rows)
    while limit is None or limit > 0:
        chunk = list(islice(it, size))
        if not chunk:
            return
        yield chunk
        limit = None if limit is None else limit - 1


@torch.no_grad()
def old_lm_loss(model, dataset, *, batch_size: int = 8, max_batches: int | None = None) -> float:
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    n = math.ceil(len(dataset) / batch_size) if hasattr(dataset, "__len__") else None
    total_batches = n if max_batches is None else max_batches if n is None else min(n, max_batches)
    for rows in tqdm(_old_chunks(dataset, batch_size, max_batches), total=total_batches, desc="eval", leave=False,
                     dynamic_ncols=True):
        batch = {k: v.to(device) for k, v in collate(rows).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"][:, 1:].flatten()
        total += F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels, ignore_index=-100, reduction="sum").item()
        count += int((labels != -100).sum())
    model.train(was_training)
    if count == 0:
        raise MinitronError("the validation split has no tokens; lower data.seq_len or check data.validation_fraction")
    return total / count


# ---- models and blocks ----------------------------------------------------------------------------------


def tiny_teacher(seed: int = 0) -> torch.nn.Module:
    config = config_from_arch(OmegaConf.load(ARCH_FILE).arch, vocab_size=DEFAULT_VOCAB)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


def random_blocks(vocab: int, blocks: int, seq_len: int, seed: int = 0) -> datasets.Dataset:
    """`blocks` packed blocks of seeded random tokens, stored as the pipeline stores its held-out split."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (blocks, seq_len), generator=g)
    return datasets.Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})


def load(name: str, args: argparse.Namespace) -> tuple[torch.nn.Module, Any, dict[str, int]]:
    """(model, held-out blocks, evaluation shape) of `name`; the shape's defaults are those of its pipeline."""
    if name == "tiny":
        cfg = {"batches": 32, "batch_size": 16, "seq_len": 256}  # configs/pipeline.yaml, configs/data/*.yaml
        shape = {k: getattr(args, k) or v for k, v in cfg.items()}
        model = tiny_teacher()
        return model, random_blocks(model.config.vocab_size, shape["batches"] * shape["batch_size"], shape["seq_len"]), shape
    from minitron.checkpoint import load_checkpoint
    from minitron.config import compose
    from minitron.data.calibration import packed_data
    from minitron.real_models import materialise

    cfg = compose("pipeline", [f"recipe={name}", f"cache_dir={args.cache_dir}"])
    if args.seq_len:
        cfg.data.seq_len = args.seq_len
    shape = {"batches": args.batches or int(cfg.eval_batches), "batch_size": args.batch_size or int(cfg.eval_batch_size),
             "seq_len": int(cfg.data.seq_len)}
    model, tokenizer = load_checkpoint(materialise(name, cfg.cache_dir), dtype=cfg.dtype)
    validation = packed_data(cfg.data, cfg.cache_dir, tokenizer)["validation"]
    return model.eval(), validation, shape


# ---- timing ---------------------------------------------------------------------------------------------


def timed(fn: Callable[[], object]) -> tuple[float, float, object]:
    """(wall-clock seconds, process CPU seconds, result) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def measure(model: torch.nn.Module, blocks, shape: dict[str, int], repeats: int, warmup: int) -> dict[str, Any]:
    b, n = shape["batch_size"], shape["batches"]
    if len(blocks) < b * n:
        raise MinitronError(f"--batches {n} x --batch-size {b} needs {b * n} blocks; the split holds {len(blocks)}")
    blocks = blocks.select(range(b * n)) if isinstance(blocks, datasets.Dataset) else blocks[: b * n]
    ids = torch.tensor(blocks["input_ids"], dtype=torch.long)
    batches = list(ids.split(b))
    decoder = model.get_decoder()

    @torch.no_grad()
    def forward(count: int = n) -> None:
        for x in batches[:count]:
            model(input_ids=x, use_cache=False)

    @torch.no_grad()
    def stack(count: int = n) -> None:
        for x in batches[:count]:
            decoder(input_ids=x, use_cache=False)

    def before(count: int = n) -> float:
        return old_lm_loss(model, blocks, batch_size=b, max_batches=count)

    def after(count: int = n) -> float:
        return lm_loss(model, blocks, batch_size=b, max_batches=count)

    fns = {"forward": forward, "decoder": stack, "before": before, "after": after}
    for _ in range(warmup):
        for fn in fns.values():
            fn(1)
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    losses: dict[str, float] = {}
    for r in range(repeats):
        for name, fn in fns.items():
            w, c, out = timed(fn)
            wall[name].append(w)
            cpu[name].append(c)
            if out is not None:
                losses[name] = float(out)
        print(f"  round {r + 1}/{repeats}: " + ", ".join(f"{k} {wall[k][-1]:.2f} s" for k in fns), flush=True)
    ratios = {}
    for name in ("decoder", "before", "after"):
        per_round = [p / f for p, f in zip(wall[name], wall["forward"])]
        per_round_cpu = [p / f for p, f in zip(cpu[name], cpu["forward"])]
        s, s_cpu = Summary.of(per_round), Summary.of(per_round_cpu)
        ratios[name] = {"wall": s.mean, "wall_se": s.se, "wall_range": [min(per_round), max(per_round)],
                        "cpu": s_cpu.mean, "cpu_se": s_cpu.se}
    versus = {"wall": Comparison.of(wall["after"], wall["before"]), "cpu": Comparison.of(cpu["after"], cpu["before"])}
    return {
        **shape,
        "tokens": b * n * shape["seq_len"],
        "vocab": int(model.config.vocab_size),
        "parameters": model.num_parameters(),
        "dtype": str(model.dtype).replace("torch.", ""),
        "repeats": repeats,
        "wall_s": {k: statistics.median(v) for k, v in wall.items()},
        "cpu_s": {k: statistics.median(v) for k, v in cpu.items()},
        "wall_rounds_s": wall,
        "cpu_rounds_s": cpu,
        "over_forward": ratios,
        "after_vs_before": {k: {"t": c.t, "p": c.p, "verdict": _verdict(c), "test": c.test_text()}
                            for k, c in versus.items()},
        "loss": losses,
        "loss_rel_diff": abs(losses["after"] - losses["before"]) / abs(losses["before"]),
        "target": TARGET,
        "meets_target": ratios["after"]["wall"] <= TARGET,
    }


def tile_sweep(model: torch.nn.Module, tokens: int, repeats: int) -> dict[str, float]:
    """Median CPU seconds of the loss alone at `model`'s output-layer shape, `tokens` rows, per way of computing it."""
    head = model.get_output_embeddings()
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(tokens, head.weight.shape[1], generator=g).to(head.weight.dtype)
    targets = torch.randint(0, head.weight.shape[0], (tokens,), generator=g)
    saved = validation.TILE_ROWS, validation.TILE_VOCAB

    def tiled(rows: int, vocab: int) -> Callable[[], object]:
        def run() -> object:
            validation.TILE_ROWS, validation.TILE_VOCAB = rows, vocab
            return validation.logits_cross_entropy_sum(hidden, targets, head.weight, head.bias)
        return run

    fns: dict[str, Callable[[], object]] = {
        "logits only": lambda: F.linear(hidden, head.weight, head.bias),
        "logits + F.cross_entropy": lambda: F.cross_entropy(F.linear(hidden, head.weight, head.bias).float(), targets,
                                                            reduction="sum"),
        **{f"tiles {r} x {v}": tiled(r, v) for r, v in TILES},
    }
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    with torch.no_grad():
        try:
            for _ in range(repeats):
                for name, fn in fns.items():
                    cpu[name].append(timed(fn)[1])
        finally:
            validation.TILE_ROWS, validation.TILE_VOCAB = saved
    return {k: statistics.median(v) for k, v in cpu.items()}


def _verdict(c: Comparison) -> str:
    if c.a_lower:
        return "after is faster"
    if c.b_lower:
        return "after is slower"
    return "tie" if c.testable else "untested"


def report(name: str, r: dict[str, Any]) -> None:
    print(f"{name}: {r['batches']} batches x {r['batch_size']} x {r['seq_len']} tokens, vocabulary {r['vocab']:,}, "
          f"{r['parameters']:,} parameters, {r['dtype']}; median of {r['repeats']} round(s)")
    print(f"  {'':<8} {'wall s':>9} {'CPU s':>9}   / forward, wall (mean ± se, range)   / forward, CPU (mean ± se)")

    def pm(mean: float, se: float) -> str:
        return f"{mean:.3f}" if math.isnan(se) else f"{mean:.3f} ± {se:.3f}"

    for k in SETTINGS:
        line = f"  {k:<8} {r['wall_s'][k]:9.3f} {r['cpu_s'][k]:9.3f}"
        if k != "forward":
            o = r["over_forward"][k]
            wall = f"{pm(o['wall'], o['wall_se'])} ({o['wall_range'][0]:.3f}-{o['wall_range'][1]:.3f})"
            line += f"   {wall:<34} {pm(o['cpu'], o['cpu_se'])}"
        print(line)
    v = r["after_vs_before"]
    print(f"  after vs before: wall, {v['wall']['verdict']} ({v['wall']['test']}); CPU, {v['cpu']['verdict']} "
          f"({v['cpu']['test']})")
    print(f"  losses {r['loss']['before']:.6f} before, {r['loss']['after']:.6f} after (relative difference "
          f"{r['loss_rel_diff']:.1e})")
    verdict = "meets" if r["meets_target"] else "misses"
    print(f"  validation-loss pass / forward = {r['over_forward']['after']['wall']:.3f} wall ({verdict} the {TARGET} "
          f"target); the old pass {r['over_forward']['before']['wall']:.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--batches", type=int, help="validation batches (default: the model's pipeline setting)")
    parser.add_argument("--batch-size", type=int, help="blocks per batch (default: the model's pipeline setting)")
    parser.add_argument("--seq-len", type=int, help="tokens per block (default: the model's pipeline setting)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (the settings interleaved in each)")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up rounds, on the first batch only")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default, as the pipeline runs)")
    parser.add_argument("--cache-dir", default=os.environ.get("MINITRON_CACHE", "~/.cache/minitron"),
                        help="where the real teacher is converted and its blocks packed (the pipeline's cache_dir)")
    parser.add_argument("--tiles", action="store_true", help="also time the loss alone at several tile shapes")
    parser.add_argument("--quick", action="store_true", help="the tiny model, 4 batches x 8 x 128, 3 rounds")
    parser.add_argument("--json", type=Path, help="also write every figure and setting to this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        args.models = "tiny"
        args.batches, args.batch_size, args.seq_len = args.batches or 4, args.batch_size or 8, args.seq_len or 128
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in MODELS]
    if unknown or not names:
        parser.error(f"--models: {', '.join(unknown) or 'none given'}; choose from {', '.join(MODELS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    load_avg = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {threads} threads, load {load_avg:.1f}"
    print(f"eval speed, {datetime.date.today()}, {machine}, torch {torch.__version__}")

    results: dict[str, Any] = {}
    for name in names:
        try:
            model, blocks, shape = load(name, args)
        except MinitronError as e:
            if name != "smollm2_135m":
                raise
            results[name] = {"skipped": str(e)}
            print(f"{name}: skipped ({e})")
            continue
        results[name] = measure(model, blocks, shape, args.repeats, args.warmup)
        report(name, results[name])
        if args.tiles:
            tokens = shape["batch_size"] * (shape["seq_len"] - 1)
            sweep = results[name]["tiles_cpu_s"] = tile_sweep(model, tokens, args.repeats)
            print(f"  the loss alone at the output layer's shape ({tokens:,} tokens), median CPU seconds of "
                  f"{args.repeats}: " + ", ".join(f"{k} {v:.3f}" for k, v in sweep.items()))
        del model

    command = "python benchmarks/eval_speed.py " + " ".join(a for a in (argv if argv is not None else sys.argv[1:])
                                                             if not a.endswith(".json") and a != "--json")
    print("| date | machine | command | model | tokens | forward s | old pass s | new pass s | old / forward | new / forward |")
    for name, r in results.items():
        if "skipped" in r:
            continue
        print(f"| {datetime.date.today()} | {machine} | `{command.strip()}` | {name} | {r['tokens']:,} | "
              f"{r['wall_s']['forward']:.2f} | {r['wall_s']['before']:.2f} | {r['wall_s']['after']:.2f} | "
              f"{r['over_forward']['before']['wall']:.3f} | {r['over_forward']['after']['wall']:.3f} |")
    if args.json:
        write_json(args.json, {"date": str(datetime.date.today()), "machine": machine, "threads": threads,
                               "load": load_avg, "torch": torch.__version__, "target": TARGET, "models": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
