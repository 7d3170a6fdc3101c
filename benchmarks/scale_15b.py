"""Prune a Nemotron-4-15B-shaped checkpoint on a machine with far less memory than the model: the scale benchmark.

    .venv/bin/python benchmarks/scale_15b.py                       # about 31 GB written, ~7 minutes on 2 cores
    .venv/bin/python benchmarks/scale_15b.py --dir /big/disk --keep --json scale.json

1. write: a seeded random checkpoint with the exact shapes of Nemotron-4 15B (`configs/model/nemotron4_15b.yaml`),
   bf16 safetensors in 5 GB shards with an index, plus the embedded default's BPE tokenizer (its ids are a subset of
   the 256,000-token vocabulary), so that the stock CLI can read calibration text through it;
2. score: `minitron score streaming=true` on a small calibration set of the embedded corpus (one decoder layer
   resident at a time, width scores and Block Importance);
3. prune: `minitron prune streaming=true` to `target=minitron_8b` and `target=minitron_4b` (tensor by tensor);
4. check: stock `transformers` builds each output from its `config.json` on the meta device, and the model's
   tensor names and shapes equal those listed by the output's safetensors index and headers.

Every stage runs as its own process (the real CLI for score and prune); its wall time and peak resident memory
(the kernel's maximum RSS of that process, file pages it mapped included) are printed, with the parameter counts of
both outputs against the paper's (8,271,699,968 and 4,190,509,056). The script checks for free disk space first
and removes everything it made when done (unless --keep). The weights are random: the figures are about time and
memory, not about the quality of the pruned models.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAPER_PARAMETERS = {"minitron_8b": 8_271_699_968, "minitron_4b": 4_190_509_056}
MEMORY_TARGET_GIB = 8.0
GIB = 2**30


TOKENIZER_VOCAB = 4096  # the embedded default's BPE tokenizer (configs/data/stdlib.yaml)


def _source_config(model: str):
    """The config of `configs/model/<model>.yaml` (Nemotron-4 15B by default), as the CLI composes it."""
    from transformers import AutoModelForCausalLM

    from minitron.config import compose
    from minitron.prune.dry_run import config_from_arch

    config = config_from_arch(compose("prune", [f"model={model}"]).model.arch, vocab_size=TOKENIZER_VOCAB)
    config.architectures = [AutoModelForCausalLM._model_mapping[type(config)].__name__]
    config.dtype = "bfloat16"
    return config


def _expected_parameters(model: str, target: str) -> int:
    """The pruned parameter count from the config alone (`minitron prune dry_run=true`)."""
    from minitron.config import compose
    from minitron.prune.dry_run import dry_run
    from minitron.workflows.prune import target_of

    return dry_run(_source_config(model), target_of(compose("prune", [f"target={target}", f"model={model}"])))["pruned_parameters"]


# ---- stages (each runs in its own process) ------------------------------------------------------------------
def stage_write(folder: Path, model: str, seed: int, shard_size: str) -> dict:
    """Random bf16 weights with the source's exact tensor names and shapes, written shard by shard."""
    import torch
    from tqdm.auto import tqdm

    from minitron.checkpoint import write_weights_streaming
    from minitron.config import compose
    from minitron.data import load_corpus
    from minitron.models import get_adapter
    from minitron.train.pretrain import (
        load_tokenizer,
        teacher_path,  # noqa: F401  (the CLI's own imports, warmed up once)
    )

    config = _source_config(model)
    adapter = get_adapter(config)
    shapes = adapter.tensor_shapes()
    std = float(config.initializer_range)
    specs = {name: ("BF16", tuple(shape)) for name, shape in shapes.items()}
    sizes = {name: 2 * math.prod(shape) for name, shape in shapes.items()}
    bar = tqdm(total=sum(sizes.values()), unit="B", unit_scale=True, desc="write random 15B checkpoint")

    def produce(name: str) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        tensor = torch.empty(shapes[name], dtype=torch.bfloat16)
        if tensor.dim() == 1:  # norms (Nemotron's LayerNorm1P keeps weight - 1) and biases: small values
            tensor.normal_(0.0, 0.02, generator=generator)
        else:
            tensor.normal_(0.0, std, generator=generator)
        bar.update(sizes[name])
        return tensor

    tmp = folder.with_name(folder.name + ".partial")
    tmp.mkdir(parents=True)
    write_weights_streaming(tmp, specs, produce, shard_size)
    bar.close()
    cfg = compose("pretrain", [])
    tokenizer, _ = load_tokenizer(cfg, load_corpus(cfg.data))
    tokenizer.save_pretrained(str(tmp))
    config.save_pretrained(str(tmp))
    os.replace(tmp, folder)
    return {"parameters": adapter.num_parameters(), "bytes": sum(sizes.values()),
            "shards": len(list(folder.glob("*.safetensors")))}


def stage_check(folder: Path) -> dict:
    """Stock transformers builds the model from config.json on the meta device; names and shapes match the files."""
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(folder))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    index_file = folder / "model.safetensors.index.json"
    if index_file.is_file():
        index = json.loads(index_file.read_text())["weight_map"]
    else:  # a checkpoint below the shard size is one file
        with safe_open(str(folder / "model.safetensors"), framework="pt", device="cpu") as f:
            index = {name: "model.safetensors" for name in f.keys()}
    stored = {}
    for file in sorted(set(index.values())):
        with safe_open(str(folder / file), framework="pt", device="cpu") as f:
            for name in f.keys():
                stored[name] = tuple(f.get_slice(name).get_shape())
    if set(index) != set(stored):
        raise SystemExit(f"{folder}: the index lists {len(index)} tensors but the shards hold {len(stored)}")
    missing, extra = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
    wrong = sorted(k for k in set(expected) & set(stored) if expected[k] != stored[k])
    if missing or extra or wrong:
        raise SystemExit(f"{folder}: missing {missing[:3]}, unexpected {extra[:3]}, wrong shapes {wrong[:3]}")
    parameters = sum(p.numel() for p in model.parameters())
    stored_numel = sum(int(torch.Size(s).numel()) for s in stored.values())
    if parameters != stored_numel:
        raise SystemExit(f"{folder}: the model has {parameters:,} parameters, the files {stored_numel:,}")
    return {
        "class": type(model).__name__,
        "parameters": parameters,
        "tensors": len(stored),
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "num_hidden_layers": config.num_hidden_layers,
    }


# ---- the driver ----------------------------------------------------------------------------------------------
def _timed(command: list[str], log: Path, env: dict[str, str] | None = None) -> dict:
    """Run `command`, its output teed to the terminal and `log`; return its wall time and peak RSS."""
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        for line in proc.stdout:
            out.write(line)
            sys.stdout.write(line)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"stage failed (exit {proc.returncode}): {' '.join(command)}; its output is above")
    return {"seconds": seconds, "peak_rss_bytes": usage.ru_maxrss * 1024}


def _self(stage: str, *args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--stage", stage, *args]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, default=ROOT, help="where to make the work folder (needs ~50 GB free)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--calib-samples", type=int, default=8)
    p.add_argument("--calib-seq-len", type=int, default=256)
    p.add_argument("--model", default="nemotron4_15b", help="the source shape: a configs/model entry")
    p.add_argument("--targets", default="minitron_8b,minitron_4b", help="configs/target entries, comma-separated")
    p.add_argument("--shard-size", default="5GB")
    p.add_argument("--keep", action="store_true", help="keep the work folder (source, scores, outputs)")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    p.add_argument("--stage", choices=["write", "check"], help=argparse.SUPPRESS)
    p.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args(argv)

    if a.stage:  # a child process: do one stage, print its result as the last line
        result = stage_write(a.folder, a.model, a.seed, a.shard_size) if a.stage == "write" else stage_check(a.folder)
        print("RESULT " + json.dumps(result))
        return 0

    from minitron.errors import MinitronError
    from minitron.models import get_adapter

    targets = [t for t in a.targets.split(",") if t]
    try:
        expected = {t: _expected_parameters(a.model, t) for t in targets}
        config = _source_config(a.model)
    except MinitronError as e:
        raise SystemExit(f"scale_15b: error: {e}") from None
    # The source and one output exist at once (each output is checked and removed before the next is written).
    need = 2 * get_adapter(config).num_parameters() + 2 * max(expected.values()) + 2 * 10**9
    a.dir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(a.dir).free
    if free < need:
        raise SystemExit(f"--dir {a.dir}: {free / 1e9:.1f} GB free, the scale run needs {need / 1e9:.1f} GB; "
                         "point --dir at a larger disk")
    work = Path(tempfile.mkdtemp(prefix=".scale15b-", dir=a.dir))
    env = {**os.environ, "MINITRON_RUNS": str(work / "runs")}
    source = work / f"{a.model}-random"
    rows, outputs = [], {}
    print(f"scale run in {work} ({free / 1e9:.0f} GB free, {need / 1e9:.0f} GB needed)")
    try:
        r = _timed(_self("write", "--folder", str(source), "--model", a.model, "--seed", str(a.seed), "--shard-size", a.shard_size),
                   work / "write.log")
        written = json.loads((work / "write.log").read_text().rsplit("RESULT ", 1)[1])
        rows.append(("write random checkpoint", r, f"{written['parameters']:,} parameters, {written['bytes'] / 1e9:.1f} GB in "
                                                    f"{written['shards']} shards"))
        score_dir = work / "runs" / "score"
        r = _timed([sys.executable, "-m", "minitron", "score", f"teacher={source}", "streaming=true", "dtype=bfloat16",
                    "depth=[bi]", f"calib.samples={a.calib_samples}", f"calib.seq_len={a.calib_seq_len}",
                    f"calib.batch_size={min(a.calib_samples, 4)}", f"seed={a.seed}", f"hydra.run.dir={score_dir}"],
                   work / "score.log", env)
        rows.append(("score (streaming)", r, f"{a.calib_samples} x {a.calib_seq_len} calibration tokens, bf16"))
        for target in targets:
            out = work / target
            r = _timed([sys.executable, "-m", "minitron", "prune", f"teacher={source}", f"target={target}", "streaming=true",
                        f"scores={score_dir / 'importance.safetensors'}", f"out={out}", f"max_shard_size={a.shard_size}",
                        f"hydra.run.dir={work / 'runs' / ('prune-' + target)}"], work / f"prune-{target}.log", env)
            rows.append((f"prune to {target} (streaming)", r, ""))
            c = _timed(_self("check", "--folder", str(out)), work / f"check-{target}.log")
            checked = json.loads((work / f"check-{target}.log").read_text().rsplit("RESULT ", 1)[1])
            outputs[target] = checked
            paper = PAPER_PARAMETERS.get(target)
            note = f"{checked['class']}: {checked['parameters']:,} parameters (dry run {expected[target]:,}"
            rows.append((f"check {target} in stock transformers", c, note + (f", paper {paper:,})" if paper else ")")))
            if not a.keep:
                shutil.rmtree(out)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)

    peak = max(r["peak_rss_bytes"] for name, r, _ in rows if not name.startswith("write"))
    print(f"\nscale run, {datetime.date.today()}, {platform.machine()}, {os.cpu_count()} CPUs, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / GIB:.0f} GiB memory")
    print("| stage | wall s | peak RSS GiB | notes |")
    print("|---|---|---|---|")
    for name, r, note in rows:
        print(f"| {name} | {r['seconds']:.0f} | {r['peak_rss_bytes'] / GIB:.2f} | {note} |")
    counts_ok = all(outputs[t]["parameters"] == expected[t] == PAPER_PARAMETERS.get(t, expected[t]) for t in targets)
    all_ok = counts_ok and peak <= MEMORY_TARGET_GIB * GIB
    print(f"peak RSS of the scoring and pruning stages: {peak / GIB:.2f} GiB (target <= {MEMORY_TARGET_GIB:.0f}); "
          f"parameter counts {'match' if counts_ok else 'DO NOT all match'} the dry run and the paper; "
          f"{'kept' if a.keep else 'removed'} {work}")
    if a.json:
        a.json.write_text(json.dumps({
            "date": str(datetime.date.today()),
            "stages": [{"stage": n, **r, "notes": note} for n, r, note in rows],
            "outputs": outputs,
            "peak_rss_bytes": peak,
            "model": a.model,
            "ok": all_ok,
        }, indent=2) + "\n")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
