"""ZeRO-3 memory: the peak memory of each rank of `minitron distill` on 2 CPU ranks under ZeRO-3, against one
process without DeepSpeed (`deepspeed=none`).

    python benchmarks/zero3_memory.py                     # a 513M-parameter teacher and its width-pruned student
    python benchmarks/zero3_memory.py --json zero3.json   # also write every figure and setting as JSON
    python benchmarks/zero3_memory.py --hidden 256 --intermediate 512 --layers 2 --heads 4   # a quick smoke run
    python benchmarks/zero3_memory.py --bf16              # both runs with train.bf16=true (teacher loaded in bfloat16)

Setup, once per settings in `--work`: a byte-level BPE tokenizer trained on the embedded corpus; a random Llama
teacher (default hidden 2,048, MLP 5,632, 11 layers, 16 query / 4 KV heads of 128: 513M parameters) saved in
float32; its width-pruned student (`minitron.prune` on importance scores from 8 calibration blocks: hidden, MLP
and query heads halved, 138M parameters). Then the same `minitron distill` (forward KL, chunked loss, `--steps`
steps of 1 block of 128 tokens per rank) runs twice: one plain process with `deepspeed=none`, and
`torchrun --nproc_per_node 2` with `deepspeed=zero3` and DS_ACCELERATOR=cpu. With `--bf16` both runs train in
bfloat16 (`train.bf16=true`: the teacher is loaded in bfloat16, the student keeps float32 master weights).

Each process records, as it exits, its peak resident set (VmHWM: every page it had resident, including the
file pages of the safetensors it memory-maps while loading) and the peak of its anonymous memory (RssAnon,
sampled every 10 ms: what it allocated itself, which the kernel cannot reclaim; file pages it can). The figure
is the largest rank's peak over the single process's, for both; target <= 0.6.
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

TARGET = 0.6
ROOT = Path(__file__).resolve().parents[1]
DATA = ["data.seq_len=128", "data.max_train_docs=200", "data.num_proc=1", "data.tokenizer.vocab_size=4096",
        "data.tokenizer.train_bytes=2000000"]


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _child(out_dir: Path, argv: list[str]) -> int:
    """Run `minitron ARGV` in this process and record its peak memory in OUT_DIR/rank{RANK}.json on exit."""
    peak_anon = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak_anon[0] = max(peak_anon[0], _status_kib("RssAnon"))
            done.wait(0.01)

    def record() -> None:
        done.set()
        peak_anon[0] = max(peak_anon[0], _status_kib("RssAnon"))
        rank = os.environ.get("RANK", "0")
        (out_dir / f"rank{rank}.json").write_text(json.dumps(
            {"rank": int(rank), "peak_rss_bytes": _status_kib("VmHWM") * 1024, "peak_anon_bytes": peak_anon[0] * 1024}))

    threading.Thread(target=sample, daemon=True).start()
    atexit.register(record)
    from minitron.cli import main  # after the sampler starts: the import is part of the process's memory

    return main(argv)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _setup(work: Path, a: argparse.Namespace) -> tuple[Path, Path]:
    """(teacher, student) folders, built once per settings."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from minitron.checkpoint import save_checkpoint
    from minitron.config import compose
    from minitron.data import load_corpus
    from minitron.data.calibration import Calibration, cached_bpe_tokenizer, packed_data
    from minitron.importance import score_model
    from minitron.prune import prune

    teacher_dir, student_dir = work / "teacher", work / "student"
    if (student_dir / "config.json").is_file():
        return teacher_dir, student_dir
    cfg = compose("distill", DATA + [f"cache_dir={work / 'cache'}"])
    tokenizer, _ = cached_bpe_tokenizer(cfg.data, cfg.cache_dir, load_corpus(cfg.data))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=a.hidden, intermediate_size=a.intermediate,
                         num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.heads // 4,
                         head_dim=a.hidden // a.heads, max_position_embeddings=1024, tie_word_embeddings=False,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    teacher = LlamaForCausalLM(config).eval()
    print(f"teacher: {teacher.num_parameters():,} parameters")
    save_checkpoint(teacher, tokenizer, teacher_dir, overwrite=True)
    data = packed_data(cfg.data, cfg.cache_dir, tokenizer)
    scores = score_model(teacher, data["train"], Calibration(samples=8, seq_len=128, batch_size=4), seed=0)
    target = {"hidden_size": a.hidden // 2, "intermediate_size": a.intermediate // 2,
              "num_attention_heads": a.heads // 2, "num_key_value_heads": None, "num_hidden_layers": None}
    student = prune(teacher, scores, target)
    print(f"student: {student.num_parameters():,} parameters")
    save_checkpoint(student, tokenizer, student_dir, overwrite=True)
    return teacher_dir, student_dir


def _run(mode: str, teacher: Path, student: Path, work: Path, steps: int, bf16: bool = False) -> dict:
    out = work / f"peaks_{mode}{'_bf16' if bf16 else ''}"
    out.mkdir(parents=True, exist_ok=True)
    for f in out.glob("rank*.json"):
        f.unlink()
    argv = ["distill", f"teacher={teacher}", f"student={student}", f"cache_dir={work / 'cache'}",
            f"hydra.run.dir={work / ('run_' + mode)}", "resume=false", f"deepspeed={mode}", f"train.max_steps={steps}",
            "train.batch_size=1", "train.save_steps=0", "train.eval_batches=1", "train.logging_steps=1",
            f"train.bf16={str(bf16).lower()}", *DATA]
    me = [str(Path(__file__).resolve()), "--child", str(out), "--"]
    # a fixed mmap threshold makes glibc hand large freed blocks back at once, so the resident set tracks live
    # tensors (as in distill_loss.py), in both runs: zero.Init creates each module whole and frees it once partitioned
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": str(1 << 20),
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    if mode == "none":
        cmd = [sys.executable, *me, *argv, "train.gradient_accumulation_steps=2"]  # the same global batch as 2 ranks
    else:
        torchrun = Path(sys.executable).parent / "torchrun"
        cmd = [str(torchrun), "--nproc_per_node", "2", "--master_port", str(_port()), *me, *argv]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    ranks = sorted((json.loads(f.read_text()) for f in out.glob("rank*.json")), key=lambda r: r["rank"])
    return {"mode": mode, "seconds": seconds, "ranks": ranks,
            "peak_rss_bytes": max(r["peak_rss_bytes"] for r in ranks),
            "peak_anon_bytes": max(r["peak_anon_bytes"] for r in ranks)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        return _child(Path(argv[1]), argv[3:])  # --child OUT -- ARGS
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--intermediate", type=int, default=5632)
    p.add_argument("--layers", type=int, default=11)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_zero3")
    p.add_argument("--bf16", action="store_true", help="train in bfloat16 (train.bf16=true) in both runs")
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    work = a.work / f"h{a.hidden}-i{a.intermediate}-l{a.layers}-a{a.heads}"
    teacher, student = _setup(work, a)
    runs = {mode: _run(mode, teacher, student, work, a.steps, a.bf16) for mode in ("none", "zero3")}
    gib = 2**30
    report = {"date": str(datetime.date.today()), "target": TARGET, "settings": vars(a) | {"work": str(work)},
              "runs": runs}
    for what in ("peak_rss_bytes", "peak_anon_bytes"):
        report[what.replace("_bytes", "_ratio")] = runs["zero3"][what] / runs["none"][what]
    for mode, r in runs.items():
        per_rank = ", ".join(f"rank {x['rank']} {x['peak_rss_bytes'] / gib:.2f} / {x['peak_anon_bytes'] / gib:.2f}"
                             for x in r["ranks"])
        print(f"deepspeed={mode}{' bf16' if a.bf16 else ''}: {r['seconds']:.0f} s; peak RSS / peak anonymous GiB: {per_rank}")
    print(f"zero3 (largest rank) / none: peak RSS {report['peak_rss_ratio']:.3f}x, peak anonymous "
          f"{report['peak_anon_ratio']:.3f}x (target <= {TARGET})")
    if a.json:
        a.json.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
