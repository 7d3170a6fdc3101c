"""Distillation benchmarks, measured side by side in one run on this machine.

    python benchmarks/distill_loss.py                  # everything at the sizes of the README table
    python benchmarks/distill_loss.py --only step      # (a) only
    python benchmarks/distill_loss.py --vocab 32000 --tokens 512 --hidden 256   # a quick (b)/(c)
    python benchmarks/distill_loss.py --json distill.json   # also write every figure and setting as JSON

(a) step: one distillation optimizer step (student forward + backward with the chunked forward-KL loss, teacher
    forward under no_grad) against the sum of a plain cross-entropy step of the student and a no_grad forward of
    the teacher, on the tiny models (the embedded teacher's shape and a half-width student); target <= 1.10.
(b) vocab: the chunked KD loss against the plain full-logits loss, forward and backward, at vocabulary V,
    T tokens and hidden size H for both models: peak memory above the inputs and time; targets <= 0.10x memory,
    <= 1.3x time.
(c) the chunked generalized JSD against TRL's `generalized_jsd_loss` (the peer), when `trl` imports here;
    targets <= 0.2x memory, <= 1.0x time.
The targets are in TARGETS (and in the JSON). Memory in (b)/(c) is the peak resident set of a fresh child process above its size once the inputs exist (CPU),
or the CUDA allocator's peak above the inputs (GPU).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from minitron.io import write_json

# (a) step ratio; (b) chunked / plain memory and time; (c) chunked JSD / TRL's generalized JSD, memory and time
# (TRL is the peer, measured side by side in the same run).
TARGETS = {"step_ratio": 1.10, "memory_ratio": 0.10, "time_ratio": 1.3, "peer_memory_ratio": 0.2, "peer_time_ratio": 1.0}


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ---- (a) step overhead ---------------------------------------------------------------------------------


def step_overhead(batch: int = 16, seq: int = 256, repeats: int = 9, seed: int = 0, chunk: int = 256) -> dict[str, float]:
    from transformers import AutoModelForCausalLM, NemotronConfig

    from minitron.distill.losses import DistillLossSpec
    from minitron.distill.trainer import DistillLoss
    from minitron.train.trainer import causal_lm_loss

    shape = dict(vocab_size=4096, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2, head_dim=32,
                 partial_rotary_factor=0.5, hidden_act="relu2", max_position_embeddings=1024, tie_word_embeddings=False)
    torch.manual_seed(seed)
    teacher = AutoModelForCausalLM.from_config(NemotronConfig(hidden_size=256, intermediate_size=1024, **shape)).eval()
    student = AutoModelForCausalLM.from_config(NemotronConfig(hidden_size=128, intermediate_size=512, **shape)).train()
    teacher.requires_grad_(False)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4)
    ids = torch.randint(0, 4096, (batch, seq), generator=torch.Generator().manual_seed(seed))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    kd = DistillLoss(teacher, DistillLossSpec(chunk_size=chunk))

    def step(loss_fn):
        def run():
            opt.zero_grad(set_to_none=True)
            loss, _ = loss_fn(student, inputs)
            loss.backward()
            opt.step()
        return run

    def teacher_forward():
        with torch.no_grad():
            teacher(input_ids=ids, attention_mask=inputs["attention_mask"])

    # interleave the three so that machine load drifts affect them alike
    kd_t, ce_t, tf_t = [], [], []
    for _ in range(repeats):
        kd_t.append(_timed(step(kd), 1))
        ce_t.append(_timed(step(causal_lm_loss), 1))
        tf_t.append(_timed(teacher_forward, 1))
    kd_s, ce_s, tf_s = (statistics.median(x) for x in (kd_t, ce_t, tf_t))
    # the ratio of each round, then the median: robust to load that drifts between rounds on a shared machine
    ratios = [k / (c + t) for k, c, t in zip(kd_t, ce_t, tf_t)]
    return {"batch": batch, "seq_len": seq, "repeats": repeats, "chunk": chunk,
            "distill_step_s": kd_s, "student_ce_step_s": ce_s, "teacher_forward_s": tf_s,
            "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "target": TARGETS["step_ratio"]}


# ---- (b)/(c) vocabulary loss ---------------------------------------------------------------------------


def _rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # "5" resets the high-water mark VmHWM (Linux)
        f.write("5")


def _peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _vocab_child(kind: str, vocab: int, tokens: int, hidden: int, chunk: int, repeats: int, device: str) -> dict:
    """Runs in a fresh process: build inputs, run forward+backward `repeats` times, report time and peak memory."""
    from minitron.distill.chunked import chunked_logit_loss
    from minitron.distill.losses import LogitLossSpec, logit_loss

    torch.manual_seed(0)
    dev = torch.device(device)
    h_s = torch.randn(tokens, hidden, device=dev).requires_grad_()
    w_s = (torch.randn(vocab, hidden, device=dev) * hidden**-0.5).requires_grad_()
    h_t = torch.randn(tokens, hidden, device=dev)
    w_t = torch.randn(vocab, hidden, device=dev) * hidden**-0.5
    labels = torch.randint(0, vocab, (tokens,), device=dev)
    spec = LogitLossSpec(kind="jsd", beta=0.5) if kind.endswith("jsd") else LogitLossSpec()

    if kind == "trl_jsd":
        GKDTrainer = _trl_gkd()

        def run():
            s_logits = h_s @ w_s.t()
            with torch.no_grad():
                t_logits = h_t @ w_t.t()
            loss = GKDTrainer.generalized_jsd_loss(s_logits[None], t_logits[None], labels=labels[None], beta=0.5)
            loss.backward()
    elif kind == "plain":

        def run():
            s_logits = h_s @ w_s.t()
            with torch.no_grad():
                t_logits = h_t @ w_t.t()
            loss, _ = logit_loss(s_logits, t_logits, labels, spec)
            loss.backward()
    else:

        def run():
            loss, _ = chunked_logit_loss(h_s, w_s, h_t, w_t, labels, spec, chunk_size=chunk)
            loss.backward()

    def clear():
        h_s.grad = None
        w_s.grad = None

    run()  # warm-up: kernel workspaces and thread pools are not the loss's memory
    clear()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        # reset first, then read the base: the high-water mark starts at the resident size it was reset at, so the
        # peak can never read below the base (read the other way round, memory freed in between made it negative)
        _reset_peak_rss()
        base = _rss_bytes()
    times = []
    for _ in range(repeats):
        clear()
        start = time.perf_counter()
        run()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _peak_rss()
    return {"kind": kind, "seconds": statistics.median(times), "peak_bytes": max(peak - base, 0)}


def vocab_loss(vocab: int, tokens: int, hidden: int, chunk: int, repeats: int, device: str, kinds: list[str]) -> dict:
    results = {}
    for kind in kinds:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--vocab", str(vocab), "--tokens",
               str(tokens), "--hidden", str(hidden), "--chunk", str(chunk), "--repeats", str(repeats), "--device", device]
        # a fixed mmap threshold makes glibc hand large freed blocks back at once, so RSS tracks live tensors
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["failed"])[-1]
            results[kind] = {"kind": kind, "error": last}
            continue
        results[kind] = json.loads(proc.stdout.strip().splitlines()[-1])
    return results


def _trl_gkd():
    """TRL's GKD trainer class (its generalized JSD loss is a static method); it moved to trl.experimental in 0.2x."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # it warns that trl.experimental may change: known
    try:
        from trl.experimental.gkd import GKDTrainer
    except ImportError:
        from trl import GKDTrainer
    return GKDTrainer


def _trl_available() -> bool:
    try:
        _trl_gkd()
    except Exception:
        return False
    return True


def _ratios(r: dict, num: str, den: str) -> dict[str, float] | None:
    """num / den for memory and time, when both ran."""
    if num not in r or den not in r or "error" in r[num] or "error" in r[den]:
        return None
    memory = r[num]["peak_bytes"] / r[den]["peak_bytes"] if r[den]["peak_bytes"] > 0 else None  # none at tiny sizes
    return {"memory": memory, "time": r[num]["seconds"] / r[den]["seconds"]}


def _x(ratio: float | None) -> str:
    return "n/a (no measurable peak)" if ratio is None else f"{ratio:.3f}x"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", choices=["step", "vocab"], default=None)
    p.add_argument("--vocab", type=int, default=256_000)
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--chunk", type=int, default=128, help="tokens per chunk in (b)/(c)")
    p.add_argument("--step-chunk", type=int, default=256, help="tokens per chunk in (a); 0: the full-logits loss")
    p.add_argument("--step-batch", type=int, default=16, help="sequences per step in (a)")
    p.add_argument("--step-seq", type=int, default=256, help="tokens per sequence in (a)")
    p.add_argument("--step-repeats", type=int, default=9, help="interleaved rounds in (a)")
    p.add_argument("--peer-tokens", type=int, default=None,
                   help="tokens for (c) (default: --tokens); TRL's loss needs about 17 GiB per 1,024 tokens at vocab 256,000")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--kinds", default=None, help="comma-separated subset of plain,chunked,trl_jsd,chunked_jsd")
    p.add_argument("--json", type=Path, help="also write every figure and setting to this JSON file")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(_vocab_child(a.child, a.vocab, a.tokens, a.hidden, a.chunk, a.repeats, a.device)))
        return 0
    report: dict = {"date": str(datetime.date.today()), "device": a.device, "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "targets": TARGETS}
    failed = False
    print(f"device: {a.device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    if a.only in (None, "step"):
        r = step_overhead(batch=a.step_batch, seq=a.step_seq, repeats=a.step_repeats, chunk=a.step_chunk)
        report["step"] = r
        print(f"(a) {a.step_batch} x {a.step_seq} tokens, chunk {a.step_chunk}: distill step {r['distill_step_s'] * 1e3:.1f} ms"
              f" / (student CE step {r['student_ce_step_s'] * 1e3:.1f} ms + teacher forward {r['teacher_forward_s'] * 1e3:.1f} ms):"
              f" median of per-round ratios {r['ratio']:.3f} (range {r['ratio_min']:.2f}-{r['ratio_max']:.2f};"
              f" target <= {TARGETS['step_ratio']:.2f})")
    if a.only in (None, "vocab"):
        trl = _trl_available()
        kd_kinds, peer_kinds = ["plain", "chunked"], (["trl_jsd", "chunked_jsd"] if trl else [])
        if a.kinds:
            asked = a.kinds.split(",")
            kd_kinds, peer_kinds = [k for k in kd_kinds if k in asked], [k for k in peer_kinds if k in asked]
        peer_tokens = a.peer_tokens or a.tokens
        r = vocab_loss(a.vocab, a.tokens, a.hidden, a.chunk, a.repeats, a.device, kd_kinds)
        r.update(vocab_loss(a.vocab, peer_tokens, a.hidden, a.chunk, a.repeats, a.device, peer_kinds))
        failed = any("error" in v for v in r.values())
        kd, peer = _ratios(r, "chunked", "plain"), _ratios(r, "chunked_jsd", "trl_jsd")
        report["vocab"] = {"vocab": a.vocab, "tokens": a.tokens, "peer_tokens": peer_tokens, "hidden": a.hidden,
                           "chunk": a.chunk, "repeats": a.repeats, "trl_installed": trl, "results": r,
                           "chunked_over_plain": kd, "chunked_jsd_over_trl_jsd": peer}
        print(f"(b) KD loss forward+backward, vocab {a.vocab:,}, {a.tokens:,} tokens ((c): {peer_tokens:,}), "
              f"hidden {a.hidden:,}, chunk {a.chunk}:")
        for kind, v in r.items():
            if "error" in v:
                print(f"    {kind:11s} failed: {v['error']}")
            else:
                print(f"    {kind:11s} {v['seconds']:8.2f} s   peak {v['peak_bytes'] / 2**30:7.2f} GiB above the inputs")
        if kd:
            print(f"    chunked / plain: memory {_x(kd['memory'])} (target <= {TARGETS['memory_ratio']}), "
                  f"time {_x(kd['time'])} (target <= {TARGETS['time_ratio']})")
        if not trl:
            print("(c) TRL is not installed here: no peer measurement")
        elif "trl_jsd" not in r:
            print("(c) TRL's generalized JSD was not asked for (--kinds): no peer measurement")
        elif peer:
            print(f"(c) chunked JSD / TRL generalized JSD: memory {_x(peer['memory'])} (target <= "
                  f"{TARGETS['peer_memory_ratio']}), time {_x(peer['time'])} (target <= {TARGETS['peer_time_ratio']})")
    if a.json:
        write_json(a.json, report)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
