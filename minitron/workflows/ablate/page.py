"""The results page of `minitron ablate`, from the cells alone: each table with mean and spread over seeds, the
plots, the command, the compute, and the paper's finding beside ours."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
from pathlib import Path
from typing import Any

import matplotlib
import torch
from omegaconf import DictConfig

from minitron.config import to_plain
from minitron.io import atomic_path, write_text
from minitron.workflows.ablate.cells import AGGREGATORS, LOSSES, PAPER_BEST_AGGREGATION, SHAPES, fmt_loss


def _stats(values: list[float]) -> tuple[float, float, int]:
    mean = statistics.fmean(values)
    spread = statistics.stdev(values) if len(values) > 1 else float("nan")
    return mean, spread, len(values)


def _cell(cells: dict, name: str, field: str = "val_loss") -> str:
    values = [c[field] for c in cells.get(name, []) if c.get(field) is not None]
    if not values:
        return "-"
    mean, sd, n = _stats(values)
    return f"{mean:.3f}" if n == 1 else f"{mean:.3f} ± {sd:.3f}"


def _mean(cells: dict, name: str, field: str = "val_loss") -> float | None:
    values = [c[field] for c in cells.get(name, []) if c.get(field) is not None]
    return statistics.fmean(values) if values else None


def _sd(cells: dict, name: str, field: str = "val_loss") -> float:
    values = [c[field] for c in cells.get(name, []) if c.get(field) is not None]
    return statistics.stdev(values) if len(values) > 1 else 0.0




def mean_curve(cells: dict, name: str) -> list[tuple[int, float]]:
    """The validation curve of cell `name`, averaged over seeds at the steps all seeds recorded."""
    curves = [dict((int(s), v) for s, v in c.get("curve", [])) for c in cells.get(name, [])]
    if not curves:
        return []
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    return [(s, statistics.fmean(c[s] for c in curves)) for s in steps]


def crossover(cells: dict, a: str, b: str) -> int | None:
    """The first recorded step after which `a`'s mean validation loss stays below `b`'s; None if it never does."""
    ca, cb = dict(mean_curve(cells, a)), dict(mean_curve(cells, b))
    steps = sorted(set(ca) & set(cb))
    for i, s in enumerate(steps):
        if all(ca[t] < cb[t] for t in steps[i:]):
            return s
    return None


def _same(cells: dict, a: str, b: str) -> bool:
    """Whether the means of `a` and `b` are within the larger of their spreads (or 0.01 nats)."""
    return abs(_mean(cells, a) - _mean(cells, b)) <= max(_sd(cells, a), _sd(cells, b), 0.01)


def plot_criteria(cells: dict, path: Path) -> None:
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"): pyplot picks its backend when first imported

    grid = [[_mean(cells, f"criteria-{b}-{s}") or math.nan for s in AGGREGATORS] for b in AGGREGATORS]
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    im = ax.imshow(grid, cmap="viridis_r")
    ax.set_xticks(range(3), AGGREGATORS)
    ax.set_yticks(range(3), AGGREGATORS)
    ax.set_xlabel("aggregation over the sequence")
    ax.set_ylabel("over the batch")
    fig.colorbar(im, ax=ax, label="validation loss, no retraining")
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="w", fontsize=8)
    ax.set_title("importance aggregation (mean over seeds)")
    _save(fig, path)


def plot_curves(cells: dict, path: Path, basis: str = "the first curve_batches validation batches") -> None:
    """Validation loss during retraining, from the first recorded training step. The curve points are measured on
    `basis` (a few validation batches, every `curve_every` steps); a cell's step-0 point is its zero-shot loss on
    the full validation set, a different basis, so it is left out here (the tables hold it)."""
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"): pyplot picks its backend when first imported

    fig, ax = plt.subplots(figsize=(6, 3.8))
    series = [(f"distill-{s}-kl", s.replace("_", "+")) for s in SHAPES]
    series += [("iterative-kl", "width, two steps"), ("scratch-x1", "width, random init")]
    for name, label in series:
        curve = [(s, v) for s, v in mean_curve(cells, name) if s > 0]
        if curve:
            ax.plot([s for s, _ in curve], [v for _, v in curve], marker=".", label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(f"retraining, mean over seeds; on {basis}", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, path)


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt  # imported by the plot that made `fig`: no start-up cost here

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.tight_layout()
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_results(cfg: DictConfig, cells: dict, teacher: dict[str, Any], out: Path) -> Path:
    """The results page (markdown) and its plots beside it, from the cells alone."""
    out = Path(out)
    plots = {"criteria": out.with_name(out.stem + "-criteria.png"), "curves": out.with_name(out.stem + "-curves.png")}
    if any(n.startswith("criteria-") for n in cells):
        plot_criteria(cells, plots["criteria"])
    if any(n.startswith(("distill-", "scratch-", "iterative-")) for n in cells):
        plot_curves(cells, plots["curves"], f"the first {int(cfg.curve_batches)} x {int(cfg.eval_batch_size)} validation blocks")
    seeds = sorted({c["seed"] for group in cells.values() for c in group})
    seconds = sum(c["seconds"] for group in cells.values() for c in group)
    shapes = {s: to_plain(cfg.shapes[s]) for s in (*SHAPES, "iterative_mid")}
    tokens = int(cfg.budget.steps) * int(cfg.train.batch_size) * int(cfg.train.gradient_accumulation_steps) * int(cfg.data.seq_len)
    L: list[str] = []
    add = L.append
    add("# Reproducing the paper's findings at small scale")
    add("")
    add("Generated by `minitron ablate` from the cells in its results folder; every number below comes from them.")
    add("Re-run (resumable, finished cells are reused):")
    add("")
    add(f"    {cfg.command}")
    add("")
    add(f"Teacher: {teacher.get('params', 0):,} parameters ({_arch_line(teacher)}), trained from scratch on the embedded "
        f"corpus: {teacher.get('tokens', 0):,} tokens in {teacher.get('seconds', 0) / 60:.1f} min, validation loss "
        f"{fmt_loss(teacher.get('val_loss'))} (unigram {fmt_loss(teacher.get('unigram_loss'))}). Seeds: {', '.join(map(str, seeds))} "
        f"(calibration draw, data order, random scores and random init). Retraining budget per student: "
        f"{int(cfg.budget.steps)} steps = {tokens:,} tokens. Cells took {seconds / 60:.1f} min of compute in all "
        f"({_machine()}). Cells: mean ± standard deviation over seeds; validation loss in nats/token over "
        f"{int(cfg.eval_batches)} x {int(cfg.eval_batch_size)} blocks of {int(cfg.data.seq_len)} tokens; lower is better.")
    add("")
    L += _criteria_section(cells, shapes, plots["criteria"].name)
    L += _shapes_section(cells, shapes, plots["curves"].name)
    L += _losses_section(cells)
    L += _scratch_section(cells, tokens)
    L += _iterative_section(cells, shapes)
    write_text(out, "\n".join(L) + "\n")
    return out


def _machine() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, {gpu}"


_SHAPE_WORDS = {"num_hidden_layers": "layers", "hidden_size": "hidden", "intermediate_size": "MLP",
                "num_attention_heads": "heads", "num_key_value_heads": "KV heads"}


def _arch_line(teacher: dict[str, Any]) -> str:
    """The teacher's sizes, read from its config.json."""
    path = Path(str(teacher.get("path", ""))) / "config.json"
    if not path.is_file():
        return "architecture not recorded"
    c = json.loads(path.read_text())
    return (f"{c['model_type']}, {c['num_hidden_layers']} layers, hidden {c['hidden_size']}, MLP {c['intermediate_size']}, "
            f"{c['num_attention_heads']} heads / {c['num_key_value_heads']} KV heads, vocabulary {c['vocab_size']:,}")


def _shape_text(shape: dict[str, Any]) -> str:
    return ", ".join(f"{_SHAPE_WORDS.get(k, k)} {v}" for k, v in shape.items())


def _params(cells: dict, name: str) -> str:
    group = cells.get(name)
    return f"{group[0]['parameters']:,}" if group and group[0].get("parameters") else "-"


def _criteria_section(cells: dict, shapes: dict, plot: str) -> list[str]:
    if not any(n.startswith("criteria-") for n in cells):
        return []
    L = ["## 1. Importance criteria, no retraining (the paper's Table 13)", "",
         f"The teacher pruned to the width shape ({_shape_text(shapes['width'])}; {_params(cells, 'criteria-l2-mean')} "
         "parameters) with each criterion's scores; validation loss before any retraining.", "",
         "| batch \\ sequence | " + " | ".join(AGGREGATORS) + " |", "|---|---|---|---|"]
    for b in AGGREGATORS:
        L.append(f"| {b} | " + " | ".join(_cell(cells, f"criteria-{b}-{s}") for s in AGGREGATORS) + " |")
    L += ["", "| criterion | validation loss |", "|---|---|"]
    L += [f"| activations, batch L2 / sequence mean | {_cell(cells, 'criteria-l2-mean')} |",
          f"| weight magnitude | {_cell(cells, 'criteria-magnitude')} |",
          f"| random | {_cell(cells, 'criteria-random')} |", ""]
    pairs = {(b, s): _mean(cells, f"criteria-{b}-{s}") for b in AGGREGATORS for s in AGGREGATORS}
    pairs = {k: v for k, v in pairs.items() if v is not None}
    if pairs:
        best = min(pairs, key=pairs.get)
        paper = pairs.get(PAPER_BEST_AGGREGATION)
        agree = best == PAPER_BEST_AGGREGATION or (paper is not None and _same(cells, "criteria-l2-mean", f"criteria-{best[0]}-{best[1]}"))
        L.append(f"![criteria](./{plot})")
        L.append("")
        L.append(f"**Paper:** batch L2 with sequence mean is best (7.18 vs 7.21-10.55 on Nemotron-4 15B -> 8B). **Here:** "
                 f"the best pair is batch {best[0]} / sequence {best[1]} ({pairs[best]:.3f}); batch L2 / sequence mean gives "
                 f"{fmt_loss(paper)}. " + ("This agrees with the paper (within the spread over seeds)." if agree else
                                       "This disagrees with the paper."))
        act, mag, rnd = (_mean(cells, n) for n in ("criteria-l2-mean", "criteria-magnitude", "criteria-random"))
        if None not in (act, mag, rnd):
            L.append(f"Activation scores {'beat' if act < mag else 'do not beat'} weight magnitude ({act:.3f} vs {mag:.3f}) "
                     f"and {'beat' if act < rnd else 'do not beat'} random scores ({rnd:.3f}).")
        L.append("")
    return L


def _shapes_section(cells: dict, shapes: dict, plot: str) -> list[str]:
    names = [f"distill-{s}-kl" for s in SHAPES]
    if not any(n in cells for n in names):
        return []
    L = ["## 2. Width vs depth at equal size (the paper's Table 10)", "",
         "Activation scores (batch L2, sequence mean; layers dropped by Block Importance), then forward-KL distillation "
         "with the same budget.", "",
         "| axis | shape | parameters | before retraining | after retraining |", "|---|---|---|---|---|"]
    for s, n in zip(SHAPES, names):
        L.append(f"| {s.replace('_', '+')} | {_shape_text(shapes[s])} | {_params(cells, n)} | {_cell(cells, n, 'zero_shot')} "
                 f"| {_cell(cells, n)} |")
    L.append("")
    L.append(f"![retraining curves](./{plot})")
    L.append("")
    L.append("The curves are measured during retraining every few steps on the first few validation batches, which "
             "give lower losses than the whole set here; compare curves with curves and tables with tables.")
    L.append("")
    w, d = _mean(cells, names[0]), _mean(cells, names[1])
    w0, d0 = _mean(cells, names[0], "zero_shot"), _mean(cells, names[1], "zero_shot")
    if None not in (w, d, w0, d0):
        cross = crossover(cells, names[0], names[1])
        when = ("from the start" if cross == 0 else f"from step {cross} on" if cross is not None else "at no recorded step")
        L.append(f"**Paper:** width beats depth after retraining (2.049 vs 2.155-2.177 LM loss); width starts worse and "
                 f"overtakes after about 200 steps. **Here:** before retraining width {w0:.3f} vs depth {d0:.3f}; after, "
                 f"width {w:.3f} vs depth {d:.3f}; width's mean validation loss stays below depth's {when}. "
                 + ("Width wins after retraining, as in the paper" if w < d else "Depth wins after retraining, unlike the paper")
                 + ("; width also starts ahead, unlike the paper." if w0 < d0 else "; width starts behind, as in the paper."))
        L.append("")
    return L


def _losses_section(cells: dict) -> list[str]:
    names = {loss: f"distill-width-{loss}" for loss in LOSSES}
    if not any(n in cells for n in names.values()):
        return []
    labels = {"kl": "forward KL on logits (T=1)", "ce": "cross-entropy only", "kl_ce": "KL + cross-entropy",
              "kl_is": "KL + intermediate states (cosine, dynamic alpha)"}
    L = ["## 3. Retraining loss (the paper's Table 15)", "", "The width student, the same budget, each loss.", "",
         "| loss | validation loss |", "|---|---|"]
    L += [f"| {labels[k]} | {_cell(cells, n)} |" for k, n in names.items()]
    L.append("")
    means = {k: _mean(cells, n) for k, n in names.items() if _mean(cells, n) is not None}
    if len(means) == len(LOSSES):
        best = min(means, key=means.get)
        tied = [k for k in means if k != best and _same(cells, names[k], names[best])]
        L.append("**Paper:** logits-only forward KL is best (2.107), then CLM+KL (2.117); intermediate-state losses do "
                 f"not help width-pruned students. **Here:** best is {labels[best]} ({means[best]:.3f})"
                 + (f", tied within the spread with {', '.join(labels[k] for k in tied)}" if tied else "") + ". "
                 + ("This agrees with the paper." if best == "kl" or "kl" in tied else "This disagrees with the paper."))
        L.append("")
    return L


def _scratch_section(cells: dict, tokens: int) -> list[str]:
    names = ["distill-width-kl", "scratch-x1", "scratch-x4"]
    if not any(n in cells for n in names[1:]):
        return []
    L = ["## 4. Pruned and distilled vs random init (the paper's Table 11)", "",
         "| student (width shape) | tokens | validation loss |", "|---|---|---|",
         f"| pruned + distilled | {tokens:,} | {_cell(cells, names[0])} |",
         f"| random init, cross-entropy | {tokens:,} | {_cell(cells, names[1])} |",
         f"| random init, cross-entropy | {4 * tokens:,} | {_cell(cells, names[2])} |", ""]
    p, s1, s4 = (_mean(cells, n) for n in names)
    if None not in (p, s1, s4):
        L.append("**Paper:** the pruned and distilled model beats training the same architecture from scratch, also when "
                 f"the scratch run gets many times the tokens. **Here:** {p:.3f} vs {s1:.3f} (same tokens) and {s4:.3f} "
                 f"(4x). " + ("Agrees with the paper." if p < s1 and p < s4 else
                              "Partly disagrees: random init with 4x the tokens does better." if p < s1 else
                              "Disagrees with the paper."))
        L.append("")
    return L


def _iterative_section(cells: dict, shapes: dict) -> list[str]:
    if "iterative-kl" not in cells:
        return []
    L = ["## 5. One-shot vs iterative pruning", "",
         f"One shot: teacher -> width shape, then the whole budget. Two steps: teacher -> {_shape_text(shapes['iterative_mid'])}, "
         "half the budget, re-score the student, prune to the width shape, the other half.", "",
         "| schedule | validation loss |", "|---|---|",
         f"| one shot | {_cell(cells, 'distill-width-kl')} |",
         f"| two steps | {_cell(cells, 'iterative-kl')} |", ""]
    one, two = _mean(cells, "distill-width-kl"), _mean(cells, "iterative-kl")
    if None not in (one, two):
        same = _same(cells, "distill-width-kl", "iterative-kl")
        L.append("**Paper:** one-shot importance is as good as iterative (1.92 after retraining either way), while pruning "
                 "15B -> 8B -> 4B with retraining in between beats 15B -> 4B at once. **Here:** "
                 f"one shot {one:.3f}, two steps {two:.3f}: "
                 + ("the same within the spread over seeds, as the paper finds for one-shot importance." if same else
                    ("two steps are better, as in the paper's 15B -> 8B -> 4B path." if two < one else
                     "one shot is better, which disagrees with the paper's 15B -> 8B -> 4B path (at this budget, "
                     "each step of the two-step schedule gets half the retraining tokens).")))
        L.append("")
    return L
