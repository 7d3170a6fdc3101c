"""Distillation benchmarks, measured side by side in one run on this machine.

    python -m minitron.distill.benchmark                  # everything at the sizes of the README table
    python -m minitron.distill.benchmark --only step      # (a) only
    python -m minitron.distill.benchmark --vocab 32000 --tokens 512 --hidden 256   # a quick (b)/(c)

(a) step: one distillation optimizer step (student forward + backward with the chunked forward-KL loss, teacher
    forward under no_grad) against the sum of a plain cross-entropy step of the student and a no_grad forward of
    the teacher, on the tiny models (the embedded teacher's shape and a half-width student); target <= 1.10.
(b) vocab: the chunked KD loss against the plain full-logits loss, forward and backward, at vocabulary V,
    T tokens and hidden size H for both models: peak memory above the inputs and time; targets <= 0.15x memory,
    <= 1.3x time.
(c) the same for TRL's generalized JSD loss (the peer), when `trl` imports here.
Memory in (b)/(c) is the peak resident set of a fresh child process above its size once the inputs exist (CPU),
or the CUDA allocator's peak above the inputs (GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch


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
    return {"distill_step_s": kd_s, "student_ce_step_s": ce_s, "teacher_forward_s": tf_s,
            "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}


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
        base = _rss_bytes()
        _reset_peak_rss()
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
    return {"kind": kind, "seconds": statistics.median(times), "peak_bytes": peak - base}


def vocab_loss(vocab: int, tokens: int, hidden: int, chunk: int, repeats: int, device: str, kinds: list[str]) -> dict:
    results = {}
    for kind in kinds:
        cmd = [sys.executable, "-m", "minitron.distill.benchmark", "--child", kind, "--vocab", str(vocab), "--tokens",
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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", choices=["step", "vocab"], default=None)
    p.add_argument("--vocab", type=int, default=256_000)
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--chunk", type=int, default=128, help="tokens per chunk in (b)/(c)")
    p.add_argument("--step-chunk", type=int, default=256, help="tokens per chunk in (a); 0: the full-logits loss")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--kinds", default=None, help="comma-separated subset of plain,chunked,trl_jsd,chunked_jsd")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(_vocab_child(a.child, a.vocab, a.tokens, a.hidden, a.chunk, a.repeats, a.device)))
        return
    print(f"device: {a.device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    if a.only in (None, "step"):
        r = step_overhead(chunk=a.step_chunk)
        print(f"(a) chunk {a.step_chunk}: distill step {r['distill_step_s'] * 1e3:.1f} ms / (student CE step {r['student_ce_step_s'] * 1e3:.1f} ms"
              f" + teacher forward {r['teacher_forward_s'] * 1e3:.1f} ms): median of per-round ratios {r['ratio']:.3f} "
              f"(range {r['ratio_min']:.2f}-{r['ratio_max']:.2f}; target <= 1.10)")
    if a.only in (None, "vocab"):
        kinds = ["plain", "chunked"] + (["trl_jsd", "chunked_jsd"] if _trl_available() else [])
        if a.kinds:
            kinds = [k for k in a.kinds.split(",") if k in kinds]
        r = vocab_loss(a.vocab, a.tokens, a.hidden, a.chunk, a.repeats, a.device, kinds)
        print(f"(b) KD loss forward+backward, vocab {a.vocab:,}, {a.tokens:,} tokens, hidden {a.hidden:,}, chunk {a.chunk}:")
        for kind, v in r.items():
            if "error" in v:
                print(f"    {kind:8s} failed: {v['error']}")
            else:
                print(f"    {kind:8s} {v['seconds']:8.2f} s   peak {v['peak_bytes'] / 2**30:7.2f} GiB above the inputs")
        if {"plain", "chunked"} <= r.keys() and "error" not in r["plain"] and "error" not in r["chunked"]:
            print(f"    chunked / plain: memory {r['chunked']['peak_bytes'] / r['plain']['peak_bytes']:.3f}x (target <= 0.15), "
                  f"time {r['chunked']['seconds'] / r['plain']['seconds']:.3f}x (target <= 1.3)")
        if "trl_jsd" not in r:
            print("(c) TRL is not installed here (or not asked for): no peer measurement")
        elif "error" not in r["trl_jsd"] and "error" not in r["chunked_jsd"]:
            print(f"(c) chunked JSD / TRL generalized JSD: memory "
                  f"{r['chunked_jsd']['peak_bytes'] / r['trl_jsd']['peak_bytes']:.3f}x, "
                  f"time {r['chunked_jsd']['seconds'] / r['trl_jsd']['seconds']:.3f}x")


if __name__ == "__main__":
    main()
