"""The results page of `minitron ablate`, from the cells alone: each table with mean and standard error over seeds,
the plots, the command, the compute, and the paper's finding beside ours, each verdict with the test it rests on
(Welch's t-test, `stats`); a difference the test does not support is reported as a tie."""

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
from minitron.workflows.ablate.cells import (
    AGGREGATORS,
    CORRECTION,
    LONG_SHAPES,
    LOSSES,
    PAPER_BEST_AGGREGATION,
    SCORING_STEPS,
    SHAPES,
    fmt_loss,
)
from minitron.workflows.ablate.stats import ALPHA, Comparison, Summary


def _values(cells: dict, name: str, field: str = "val_loss") -> list[float]:
    return [c[field] for c in cells.get(name, []) if c.get(field) is not None]


def _cell(cells: dict, name: str, field: str = "val_loss") -> str:
    values = _values(cells, name, field)
    return Summary.of(values).text() if values else "-"


def _mean(cells: dict, name: str, field: str = "val_loss") -> float | None:
    values = _values(cells, name, field)
    return statistics.fmean(values) if values else None


def deterministic(cells: dict, name: str) -> bool:
    """Cell `name` is one value that no seed decides (weight magnitude, the teacher's loss)."""
    group = cells.get(name, [])
    return bool(group) and all(c.get("seed") is None for c in group)


def compare(cells: dict, a: str, b: str, field: str = "val_loss") -> Comparison | None:
    """Cell `a` against cell `b` over their seeds (a deterministic cell by the one-sample test); None when either
    has no result."""
    va, vb = _values(cells, a, field), _values(cells, b, field)
    exact = ("a" if deterministic(cells, a) else "") + ("b" if deterministic(cells, b) else "")
    return Comparison.of(va, vb, exact=exact) if va and vb else None


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


def curve_tests(cells: dict, a: str, b: str) -> list[tuple[int, Comparison]]:
    """Welch's test of `a`'s validation curve against `b`'s at every step that every seed of both recorded."""
    ca = [{int(s): v for s, v in c.get("curve", [])} for c in cells.get(a, [])]
    cb = [{int(s): v for s, v in c.get("curve", [])} for c in cells.get(b, [])]
    if not ca or not cb:
        return []
    steps = sorted(set.intersection(*(set(c) for c in ca + cb)))
    return [(s, Comparison.of([c[s] for c in ca], [c[s] for c in cb])) for s in steps]


def significant_crossover(cells: dict, a: str, b: str) -> int | None:
    """The first recorded step from which `a`'s curve is significantly below `b`'s (Welch, p < ALPHA) at every later
    recorded step; None if there is none. The tie rule applied to `crossover`."""
    tests = curve_tests(cells, a, b)
    for i, (s, _) in enumerate(tests):
        if all(c.a_lower for _, c in tests[i:]):
            return s
    return None


def _crossover_text(cells: dict, a: str, b: str, names: tuple[str, str]) -> str:
    """Where `a`'s curve overtakes `b`'s: by the means, and the step from which the test supports it."""
    cross, tested = crossover(cells, a, b), significant_crossover(cells, a, b)
    tests = curve_tests(cells, a, b)
    last = f"at its last point, step {tests[-1][0]}: {tests[-1][1].test_text()}" if tests else "no common curve points"

    def when(step: int) -> str:
        return "from the start" if step == 0 else f"from step {step} on"

    test = f"the test (Welch at every recorded step, p < {ALPHA})"
    if cross is None:
        return f"{names[0].capitalize()}'s mean curve does not stay below {names[1]}'s from any recorded step on ({last})."
    if tested is None:
        return (f"{names[0].capitalize()}'s mean curve stays below {names[1]}'s {when(cross)}, but {test} does not put it "
                f"significantly below from any step on ({last}).")
    return f"{names[0].capitalize()}'s mean curve stays below {names[1]}'s {when(cross)}; {test} supports it {when(tested)}."


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


def plot_curves(cells: dict, path: Path, basis: str = "the first curve_batches validation batches",
                series: list[tuple[str, str]] | None = None) -> None:
    """Validation loss during retraining, from the first recorded training step. The curve points are measured on
    `basis` (a few validation batches, every `curve_every` steps); a cell's step-0 point is its zero-shot loss on
    the full validation set, a different basis, so it is left out here (the tables hold it)."""
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"): pyplot picks its backend when first imported

    fig, ax = plt.subplots(figsize=(6, 3.8))
    if series is None:
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
    plots = {"criteria": out.with_name(out.stem + "-criteria.png"), "curves": out.with_name(out.stem + "-curves.png"),
             "long": out.with_name(out.stem + "-curves-long.png")}
    basis = f"the first {int(cfg.curve_batches)} x {int(cfg.eval_batch_size)} validation blocks"
    if any(n.startswith("criteria-") for n in cells):
        plot_criteria(cells, plots["criteria"])
    if any(n.startswith(("distill-", "scratch-", "iterative-")) for n in cells):
        plot_curves(cells, plots["curves"], basis)
    if any(n.startswith("long-") for n in cells):
        plot_curves(cells, plots["long"], basis, [(f"long-{s}-kl", s) for s in LONG_SHAPES])
    seeds = sorted({c["seed"] for group in cells.values() for c in group if c["seed"] is not None})
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
        f"{_cell(cells, 'teacher')} on the students' blocks (unigram {fmt_loss(teacher.get('unigram_loss'))}). Seeds: {', '.join(map(str, seeds))} "
        f"(calibration draw, data order, random scores and random init; weight magnitude and the teacher's loss are "
        f"deterministic: one value, no standard error). Retraining budget per student: "
        f"{int(cfg.budget.steps)} steps = {tokens:,} tokens. Cells took {seconds / 60:.1f} min in all, their wall "
        f"times summed{_threads_text(cells)} ({_machine()}). Cells: mean ± standard error over seeds; every verdict names its Welch t-test (two-sided, "
        f"a difference is called at p < {ALPHA}, else a tie); validation loss in nats/token over "
        f"{int(cfg.eval_batches)} x {int(cfg.eval_batch_size)} blocks of {int(cfg.data.seq_len)} tokens; lower is better.")
    add("")
    L += _criteria_section(cells, shapes, plots["criteria"].name)
    L += _shapes_section(cells, shapes, plots["curves"].name, plots["long"].name, int(cfg.budget.long_steps),
                         int(cfg.budget.steps))
    L += _losses_section(cells)
    L += _scratch_section(cells, tokens)
    L += _iterative_section(cells, shapes)
    L += _depth_section(cells, shapes)
    L += _correction_section(cells, cfg, tokens)
    write_text(out, "\n".join(L) + "\n")
    return out


def _threads_text(cells: dict) -> str:
    """The torch thread counts the cells ran with (recorded since cells carry them)."""
    threads = sorted({c["threads"] for group in cells.values() for c in group if "threads" in c})
    if not threads:
        return ""
    return f", with {' or '.join(map(str, threads))} torch thread{'s' if threads != [1] else ''} per cell"


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
        worst = max(pairs, key=pairs.get)
        L.append(f"![criteria](./{plot})")
        L.append("")
        spread = compare(cells, f"criteria-{best[0]}-{best[1]}", f"criteria-{worst[0]}-{worst[1]}")
        paper = compare(cells, "criteria-l2-mean", f"criteria-{best[0]}-{best[1]}")
        text = (f"**Paper:** batch L2 with sequence mean is best (7.18 vs 7.21-10.55 on Nemotron-4 15B -> 8B). **Here:** "
                f"the lowest mean is batch {best[0]} / sequence {best[1]} ({pairs[best]:.3f}), the highest batch {worst[0]} / "
                f"sequence {worst[1]} ({pairs[worst]:.3f}; {spread.test_text()}). ")
        if spread.tie:
            text += ("The test cannot separate even the best and the worst pair at these calibration and evaluation "
                     "sizes, so this study says nothing about which aggregation is best.")
        elif paper is not None and best != PAPER_BEST_AGGREGATION:
            text += (f"Batch L2 / sequence mean gives {paper.a.mean:.3f} ({paper.test_text()}): "
                     + ("no difference from the best at this budget, consistent with the paper." if paper.tie else
                        "worse than the best, which disagrees with the paper."))
        else:
            text += "Batch L2 / sequence mean is the best pair, as in the paper."
        L.append(text)
        lines = []
        for other, label in (("criteria-magnitude", "weight magnitude"), ("criteria-random", "random scores")):
            c = compare(cells, "criteria-l2-mean", other)
            if c is not None:
                verdict = "beat" if c.a_lower else "lose to" if c.b_lower else "tie with"
                lines.append(f"activation scores {verdict} {label} ({c.a.mean:.3f} vs {c.b.mean:.3f}; {c.test_text()})")
        if lines:
            L.append("Without retraining, " + "; ".join(lines) + ".")
        L.append("")
    return L


def _shapes_section(cells: dict, shapes: dict, plot: str, long_plot: str, long_steps: int, budget: int) -> list[str]:
    names = [f"distill-{s}-kl" for s in SHAPES]
    long_run = all(f"long-{s}-kl" in cells for s in LONG_SHAPES)
    if not any(n in cells for n in names):
        return ["## 2. Width vs depth at equal size (the paper's Table 10)", "", *_long_section(cells, long_plot, budget)] if long_run else []
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
    after, before = compare(cells, names[0], names[1]), compare(cells, names[0], names[1], "zero_shot")
    if after is not None and before is not None:
        last = max((s for s, _ in mean_curve(cells, names[0])), default=0)
        verdict = ("width wins after retraining, as in the paper" if after.a_lower else
                   "depth wins after retraining, unlike the paper" if after.b_lower else
                   "no difference after retraining at this budget")
        limit = ("The long run below continues past that point." if long_run else
                 f"This budget ends at step {last}, so a later crossover would not show here: `study=shapes_long` retrains both for budget.long_steps={long_steps}.")
        L.append(f"**Paper:** width beats depth after retraining (2.049 vs 2.155-2.177 LM loss); width starts worse and "
                 f"overtakes after about 200 of its ~400 steps. **Here:** before retraining width {before.a.mean:.3f} vs "
                 f"depth {before.b.mean:.3f} ({before.test_text()}); after {last} steps width {after.a.mean:.3f} vs depth "
                 f"{after.b.mean:.3f} ({after.test_text()}): {verdict}. "
                 + _crossover_text(cells, names[0], names[1], ("width", "depth")) + " " + limit)
        L.append("")
    if long_run:
        L += _long_section(cells, long_plot, budget)
    return L


def _times(steps: int, crossover: int) -> str:
    """How many times the scaled crossover step a run of `steps` reaches ("4x")."""
    return f"{steps / crossover:g}x" if crossover > 0 else "well"


def _long_section(cells: dict, plot: str, budget: int) -> list[str]:
    """Width vs depth retrained for budget.long_steps, past the step where the paper's curves cross."""
    a, b = (f"long-{s}-kl" for s in LONG_SHAPES)
    steps, tokens = cells[a][0].get("spec", {}).get("steps"), _tokens(cells, a)
    L = [f"### Past the crossover: {steps} steps", "",
         (f"The same two students retrained for {steps} steps ({tokens} tokens) instead of the budget. The paper's "
          "curves cross at about 200 of its ~400 retraining steps, half-way; scaled to this budget (half of "
          f"{budget} steps) that is step {budget // 2}, and {steps} steps run {_times(steps, budget // 2)} past it."), "",
         f"| axis | before retraining | after {steps} steps |", "|---|---|---|"]
    L += [f"| {s} | {_cell(cells, n, 'zero_shot')} | {_cell(cells, n)} |" for s, n in zip(LONG_SHAPES, (a, b))]
    L += ["", f"![retraining curves, long run](./{plot})", ""]
    after = compare(cells, a, b)
    verdict = ("width wins past the crossover, as in the paper" if after.a_lower else
               "depth still wins, unlike the paper" if after.b_lower else
               f"no difference after {steps} steps")
    L.append(f"**Here, after {steps} steps:** width {after.a.mean:.3f} vs depth {after.b.mean:.3f} ({after.test_text()}): "
             f"{verdict}. " + _crossover_text(cells, a, b, ("width", "depth")))
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
        tests = {k: compare(cells, names[best], names[k]) for k in means if k != best}
        tied = [k for k, c in tests.items() if c.tie]
        L.append("**Paper:** logits-only forward KL is best (2.107), then CLM+KL (2.117); intermediate-state losses do "
                 f"not help width-pruned students. **Here:** the lowest mean is {labels[best]} ({means[best]:.3f}); against "
                 "it: " + "; ".join(f"{labels[k]} {c.b.mean:.3f} ({c.test_text()}, {'tie' if c.tie else 'worse'})"
                                    for k, c in tests.items()) + ". "
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
    same, more = compare(cells, names[0], names[1]), compare(cells, names[0], names[2])
    if same is not None and more is not None:
        def verdict(c: Comparison) -> str:
            return "pruned + distilled is better" if c.a_lower else "random init is better" if c.b_lower else "no difference"

        L.append("**Paper:** the pruned and distilled model beats training the same architecture from scratch, also when "
                 f"the scratch run gets many times the tokens. **Here:** {same.a.mean:.3f} vs {same.b.mean:.3f} on the same "
                 f"tokens ({same.test_text()}: {verdict(same)}) and vs {more.b.mean:.3f} on 4x ({more.test_text()}: "
                 f"{verdict(more)}). " + ("Agrees with the paper." if same.a_lower and more.a_lower else
                                          "Partly agrees with the paper." if same.a_lower else "Does not support the paper."))
        L.append("")
    return L


def _iterative_section(cells: dict, shapes: dict) -> list[str]:
    names = ("iterative-kl", "chain-kl", *(f"steps-{k}" for k in SCORING_STEPS))
    if not any(n in cells for n in names):
        return []
    mid = _shape_text(shapes["iterative_mid"])
    L = ["## 5. One-shot vs iterative pruning", "",
         "Three different questions, each against one-shot pruning to the width shape with the whole budget:", "",
         "- **importance in k steps** (the paper's 1/2/4-step finding): the hidden size cut to the width shape's in k "
         "equal steps, the importance re-estimated on the partly pruned model before each, no retraining between them; "
         "then the whole budget;",
         f"- **a chain** (the paper's 15B -> 8B -> 4B): teacher -> {mid} with the whole budget, re-scored, pruned to the "
         "width shape, the whole budget again (twice the tokens in all);",
         f"- **a split budget**: teacher -> {mid}, half the budget, re-score, prune to the width shape, the other half.",
         "", "| schedule | tokens | before retraining | after retraining |", "|---|---|---|---|",
         f"| one shot, width shape | {_tokens(cells, 'distill-width-kl')} | {_cell(cells, 'distill-width-kl', 'zero_shot')} "
         f"| {_cell(cells, 'distill-width-kl')} |"]
    L += [f"| hidden size in {k} step(s) | {_tokens(cells, f'steps-{k}')} | {_cell(cells, f'steps-{k}', 'zero_shot')} | "
          f"{_cell(cells, f'steps-{k}')} |" for k in SCORING_STEPS]
    L += [f"| chain, whole budget per step | {_tokens(cells, 'chain-kl')} | {_cell(cells, 'chain-kl', 'zero_shot_second_step')} "
          f"| {_cell(cells, 'chain-kl')} |",
          f"| split budget, two steps | {_tokens(cells, 'iterative-kl')} | "
          f"{_cell(cells, 'iterative-kl', 'zero_shot_second_step')} | {_cell(cells, 'iterative-kl')} |", ""]
    verdicts = []
    one_vs_many = [compare(cells, "steps-1", f"steps-{k}") for k in SCORING_STEPS[1:]]
    if all(c is not None for c in one_vs_many):
        verdicts.append("**Paper:** estimating importance in 1, 2 or 4 steps gives the same loss after retraining. "
                        "**Here:** " + "; ".join(f"1 step {c.a.mean:.3f} vs {k} steps {c.b.mean:.3f} ({c.test_text()}, "
                                                  f"{'no difference' if c.tie else 'different'})"
                                                  for k, c in zip(SCORING_STEPS[1:], one_vs_many))
                        + (": as in the paper." if all(c.tie for c in one_vs_many) else ": unlike the paper."))
    chain = compare(cells, "distill-width-kl", "chain-kl")
    if chain is not None:
        verdicts.append("**Paper:** 15B -> 8B -> 4B (MMLU 42.45) beats 15B -> 4B at once (37.81). **Here:** one shot "
                        f"{chain.a.mean:.3f}, chain {chain.b.mean:.3f} ({chain.test_text()}): "
                        + ("the chain is better, as in the paper (with twice the tokens, as there)." if chain.b_lower else
                           "one shot is better, unlike the paper." if chain.a_lower else "no difference at this budget."))
    split = compare(cells, "distill-width-kl", "iterative-kl")
    if split is not None:
        verdicts.append(f"**Split budget** (no counterpart in the papers): one shot {split.a.mean:.3f}, two steps "
                        f"{split.b.mean:.3f} ({split.test_text()}): "
                        + ("no difference at this budget." if split.tie else "two steps are better." if split.b_lower
                           else "one shot is better (each step gets half the retraining tokens)."))
    for v in verdicts:
        L += [v, ""]
    return L


def _depth_section(cells: dict, shapes: dict) -> list[str]:
    names = ("distill-depth-kl", "distill-depth_block-kl")
    if not all(n in cells for n in names):
        return []
    L = ["## 6. Which layers a depth cut drops (the 2408 paper)", "",
         f"The depth shape ({_shape_text(shapes['depth'])}) by the individually least important layers (Block "
         "Importance) against the contiguous block whose removal costs the least LM loss; the same budget of "
         "distillation.", "",
         "| layers dropped | kept (first seed) | before retraining | after retraining |", "|---|---|---|---|"]
    for n, label in zip(names, ("individually, by Block Importance", "a contiguous block, by the loss without it")):
        kept = (cells[n][0].get("kept_layers") or "-")
        L.append(f"| {label} | {kept} | {_cell(cells, n, 'zero_shot')} | {_cell(cells, n)} |")
    L.append("")
    paper = ("**Paper:** on Llama-3.1 8B, dropping the contiguous block 16-31 (Winogrande 0.595) beats dropping the 16 "
             "individually least important layers (0.50). **Here:** ")
    kept = [{c["seed"]: c.get("kept_layers") for c in cells[n]} for n in names]
    if kept[0] == kept[1] and all(v is not None for v in kept[0].values()):
        # the same layers kept: one model, not two; a test between them would only compare a run with itself
        L.append(paper + "both choices keep the same layers for every seed ("
                 + ", ".join(f"seed {s}: {k}" for s, k in sorted(kept[0].items())) + "): on this teacher the "
                 "individually least important layers form the least-loss block, so this study cannot tell the two "
                 "apart; a deeper teacher, or a depth cut whose individual choice is not contiguous, is needed.")
    else:
        before, after = compare(cells, *names, "zero_shot"), compare(cells, *names)
        L.append(paper + f"before retraining {before.a.mean:.3f} vs {before.b.mean:.3f} ({before.test_text()}); after, "
                 f"{after.a.mean:.3f} vs {after.b.mean:.3f} ({after.test_text()}): "
                 + ("the block is better, as in the paper." if after.b_lower else
                    "individual layers are better, unlike the paper." if after.a_lower else
                    "no difference at this budget."))
    L.append("")
    return L


def _correction_section(cells: dict, cfg: DictConfig, tokens: int) -> list[str]:
    names = {c: f"correction-{c}" for c in CORRECTION}
    if not all(n in cells for n in names.values()):
        return []
    on = cells[names["on"]][0]["spec"]
    data, tc = on["data"], on["correction"]
    corpus = f"the package `{data['name']}`'s modules" if data.get("source") == "package" else f"data.source={data['source']}"
    L = ["## 7. Teacher correction on a shifted corpus (the 2408 paper)", "",
         (f"The width student distilled for the budget ({tokens:,} tokens) on a corpus the teacher was not trained on "
         f"({corpus}; `correction.data`), from the teacher as it is and from the teacher first fine-tuned on that corpus "
         f"for {tc['steps']} steps ({_tokens(cells, names['on'], 'correction_tokens')} tokens) at LR {tc['lr']:g} "
         f"(`correction.lr`; the paper uses 1/5 of the teacher's pretraining peak) after {tc['warmup_steps']} warm-up "
         "step(s). Each student is pruned from "
         "the teacher it is distilled from (activation scores on the shifted corpus); every loss here is on the same "
         "validation blocks of the shifted corpus."), "",
         "| teacher | teacher's loss | student, pruned | student after retraining |", "|---|---|---|---|"]
    for c, label in zip(CORRECTION, ("as trained", "corrected")):
        n = names[c]
        L.append(f"| {label} | {_cell(cells, n, 'teacher_loss')} | {_cell(cells, n, 'zero_shot')} | {_cell(cells, n)} |")
    L.append("")
    own, teacher = _cell(cells, "teacher"), compare(cells, names["off"], names["on"], "teacher_loss")
    student = compare(cells, names["off"], names["on"])
    L.append(f"On its own validation blocks the teacher's loss is {own}. Correction changes the teacher's loss on the "
             f"shifted corpus from {teacher.a.mean:.3f} to {teacher.b.mean:.3f} ({teacher.test_text()}).")
    L.append("")
    L.append("**Paper:** correcting the teacher on the distillation data first lowers the student's loss when that data "
             f"differs from the teacher's pretraining data. **Here:** without correction {student.a.mean:.3f}, with "
             f"{student.b.mean:.3f} ({student.test_text()}): "
             + ("the corrected teacher's student is better, as in the paper." if student.b_lower else
                "the uncorrected teacher's student is better, unlike the paper." if student.a_lower else
                "no difference at this budget."))
    L.append("")
    return L


def _tokens(cells: dict, name: str, field: str = "tokens") -> str:
    group = cells.get(name)
    return f"{group[0][field]:,}" if group and group[0].get(field) else "-"
