"""The criteria page of `minitron ablate` (`page_layout=criteria`): importance criteria without retraining at every
shape of `criteria.shapes`, from the cells alone, with mean and standard error over seeds, the test beside every
verdict (Welch's t-test; a one-sample t-test against a deterministic cell) and a plot; optionally the same tables
written into a block of another markdown file (`readme=README.md`).

Each shape gets one table: its criteria in the order of the config, the first being the reference the others are
tested against (the paper's batch L2 / sequence mean aggregation for a width shape; for a depth-only shape the
first of `criteria.depth`), then weight magnitude (deterministic) and random scores.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from minitron.config import to_plain
from minitron.errors import MinitronError
from minitron.io import write_text
from minitron.workflows.ablate.cells import (
    DATA_FREE,
    PAPER_PAIR,
    criteria_shapes,
    criterion_cell_name,
    depth_only,
    shape_criteria,
)
from minitron.workflows.ablate.page import (
    _cell,
    _machine,
    _save,
    _shape_text,
    _values,
    compare,
    deterministic,
)
from minitron.workflows.ablate.stats import ALPHA, MIN_SEEDS, Summary

README_START = "<!-- criteria table:"  # the opening marker's start; the rest of its line says where it comes from
README_END = "<!-- end of criteria table -->"

_AGG_WORDS = {"l2": "L2", "mean": "mean", "var": "variance"}
_DEPTH_WORDS = {
    "bi": "Block Importance (1 - cos), each layer alone",
    "loss": "LM loss with the layer skipped, each layer alone",
    "contiguous": "the contiguous block whose removal costs least LM loss",
    "magnitude": "weight magnitude (norm of the layer's weights; deterministic)",
    "random": "random layers",
}


def criterion_label(criterion: str, depth: bool) -> str:
    if depth:
        return _DEPTH_WORDS[criterion]
    if criterion == "magnitude":
        return "weight magnitude (deterministic)"
    if criterion == "random":
        return "random scores"
    batch, seq = criterion.split("-")
    return (f"activations, batch {_AGG_WORDS[batch]} / sequence {_AGG_WORDS[seq]}"
            + (" (the paper's)" if criterion == PAPER_PAIR else ""))


def _verdict(c) -> str:
    """`a` against the reference `b`, lower loss being better; the test it rests on in brackets."""
    if not c.testable:
        return f"({c.test_text()})"
    return f"{'better' if c.a_lower else 'worse' if c.b_lower else 'tie'} ({c.test_text()})"


def shape_section(cfg: DictConfig, cells: dict, shape: str, source_params: int | None) -> list[str]:
    """The table of one shape and the verdicts under it; [] when none of its cells has a result."""
    depth = depth_only(cfg.shapes[shape])
    criteria = shape_criteria(cfg, shape)
    names = {c: criterion_cell_name(shape, c) for c in criteria}
    if not any(names[c] in cells for c in criteria):
        return []
    params = next((g[0].get("parameters") for g in (cells.get(n) for n in names.values()) if g), None)
    size = f"{params:,} parameters" if params else "parameters not recorded"
    if params and source_params:
        size += f", {params / source_params:.1%} of the teacher"
    axis = "Depth" if depth else "Width"
    ref = criteria[0]
    L = [f"### {axis}: {_shape_text(to_plain(cfg.shapes[shape]))} ({size})", "",
         f"| {'layers dropped by' if depth else 'criterion'} | validation loss | seeds | against {criterion_label(ref, depth)} |",
         "|---|---|---|---|"]
    for c in criteria:
        n = names[c]
        seeds = "deterministic" if deterministic(cells, n) else str(len(_values(cells, n)))
        against = "reference"
        if c != ref:
            cmp = compare(cells, n, names[ref])
            against = "-" if cmp is None else f"{cmp.a.mean - cmp.b.mean:+.3f}, {_verdict(cmp)}"
        L.append(f"| {criterion_label(c, depth)} | {_cell(cells, n)} | {seeds} | {against} |")
    L.append("")
    if depth:
        kept = [(c, (cells.get(names[c]) or [{}])[0].get("kept_layers")) for c in criteria]
        kept = [(c, k) for c, k in kept if k is not None]
        if kept:
            L.append("Layers kept (first seed of each): " + "; ".join(
                f"{c}: {_ranges(k)}" for c, k in kept) + ".")
            L.append("")
    L += _verdicts(cells, criteria, names, depth)
    return L


def _ranges(layers: list[int]) -> str:
    """[0, 1, 2, 5, 6] -> "0-2, 5-6"."""
    out, start = [], None
    for i, x in enumerate(layers):
        if start is None:
            start = x
        if i + 1 == len(layers) or layers[i + 1] != x + 1:
            out.append(f"{start}-{x}" if x != start else f"{x}")
            start = None
    return ", ".join(out)


def _verdicts(cells: dict, criteria: list[str], names: dict[str, str], depth: bool) -> list[str]:
    means = {c: Summary.of(v).mean for c in criteria if (v := _values(cells, names[c]))}
    if len(means) < 2:
        return []
    best = min(means, key=means.get)
    lines = [f"Lowest mean: {criterion_label(best, depth)} ({means[best]:.3f})."]
    rivals = []
    for c in criteria:
        if c == best or c not in means:
            continue
        cmp = compare(cells, names[best], names[c])
        rivals.append((c, cmp))
    untested = [c for c, cmp in rivals if not cmp.testable]
    tied = [(c, cmp) for c, cmp in rivals if cmp.testable and cmp.tie]
    if tied:
        lines.append("Not separable from it by the test: " + "; ".join(
            f"{criterion_label(c, depth)} ({cmp.test_text()})" for c, cmp in tied) + ".")
    elif not untested:
        lines.append(f"Every other criterion is worse by the test (p < {ALPHA}).")
    if untested:
        lines.append(f"Too few seeds to test it against {', '.join(criterion_label(c, depth) for c in untested)} "
                     f"(at least {MIN_SEEDS} needed).")
    ref = criteria[0]
    for other in DATA_FREE:
        if ref in means and other in means:
            cmp = compare(cells, names[ref], names[other])
            word = ("beats" if cmp.a_lower else "loses to" if cmp.b_lower else "ties with" if cmp.testable
                    else "is not tested against")
            lines.append(f"{criterion_label(ref, depth)[0].upper()}{criterion_label(ref, depth)[1:]} {word} "
                         f"{criterion_label(other, depth)} ({cmp.a.mean:.3f} vs {cmp.b.mean:.3f}; {cmp.test_text()}).")
    if all(c in means for c in DATA_FREE):  # is weight magnitude better than a guess?
        cmp = compare(cells, names["magnitude"], names["random"])
        word = ("is better than" if cmp.a_lower else "is worse than" if cmp.b_lower else "ties with" if cmp.testable
                else "is not tested against")
        lines.append(f"Weight magnitude {word} {criterion_label('random', depth)} ({cmp.a.mean:.3f} vs "
                     f"{cmp.b.mean:.3f}; {cmp.test_text()}).")
    return [" ".join(lines), ""]


def tables(cfg: DictConfig, cells: dict, source_params: int | None) -> list[str]:
    """Every shape's section, in the order of `criteria.shapes`."""
    out: list[str] = []
    for shape in criteria_shapes(cfg):
        out += shape_section(cfg, cells, shape, source_params)
    return out


def plot_criteria_shapes(cfg: DictConfig, cells: dict, path: Path) -> Path | None:
    """One panel per shape: each criterion's mean validation loss with its standard error (a deterministic cell
    as a single point), the teacher's loss as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"): pyplot picks its backend when first imported

    shapes = [s for s in criteria_shapes(cfg) if any(criterion_cell_name(s, c) in cells for c in shape_criteria(cfg, s))]
    if not shapes:
        return None
    fig, axes = plt.subplots(1, len(shapes), figsize=(4.2 * len(shapes), 3.6), squeeze=False)
    teacher = _values(cells, "teacher")
    for ax, shape in zip(axes[0], shapes):
        depth = depth_only(cfg.shapes[shape])
        criteria = shape_criteria(cfg, shape)
        ys, errs, labels = [], [], []
        for c in criteria:
            values = _values(cells, criterion_cell_name(shape, c))
            summary = Summary.of(values) if values else None
            ys.append(summary.mean if summary else math.nan)
            errs.append(0.0 if summary is None or math.isnan(summary.se) else summary.se)
            labels.append(c if depth else c.replace("-", "/") if c not in DATA_FREE else c)
        ax.errorbar(range(len(ys)), ys, yerr=errs, fmt="o", capsize=4)
        if teacher:
            ax.axhline(teacher[0], color="gray", linestyle="--", linewidth=1, label="teacher")
            ax.legend(fontsize=7)
        ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=8)
        ax.set_title(f"{'depth' if depth else 'width'}: {_shape_text(to_plain(cfg.shapes[shape]))}", fontsize=8)
        ax.set_ylabel("validation loss, no retraining")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("mean and standard error over seeds (weight magnitude: deterministic, one value)", fontsize=9)
    _save(fig, path)
    return path


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _teacher_line(teacher: dict[str, Any], cells: dict) -> str:
    name = teacher.get("description") or f"the checkpoint at {teacher.get('path')}"
    source = f", from the package {teacher['package']} (sha256 {str(teacher.get('sha256', ''))[:12]}…)" if teacher.get(
        "package") else ""
    params = f"{teacher['params']:,} parameters" if teacher.get("params") else "parameters not recorded"
    return (f"Teacher: {name}; {params}{source}. Its validation loss on the blocks below: {_cell(cells, 'teacher')}. "
            "No model on this page is retrained.")


def write_criteria_page(cfg: DictConfig, cells: dict, teacher: dict[str, Any], out: Path) -> Path:
    """The criteria page (markdown) and its plot beside it; it links the importance plots in the folder
    `<page>-importance/` beside it when they are there (`run_ablate` draws them first)."""
    out = Path(out)
    plot = plot_criteria_shapes(cfg, cells, out.with_name(out.stem + "-criteria.png"))
    seeds = sorted({c["seed"] for group in cells.values() for c in group if c["seed"] is not None})
    seconds = sum(c["seconds"] for group in cells.values() for c in group)
    calib = cfg.calib
    stride = int(cfg.get("eval_stride", 1))
    blocks = int(cfg.eval_batches) * int(cfg.eval_batch_size)
    where = (f"every {_ordinal(stride)} block of the validation split, from the first" if stride > 1 else
             "the first blocks of the validation split")
    L = [f"# {cfg.get('page_title') or 'Importance criteria without retraining'}", "",
         ("Generated by `minitron ablate` from the cells in its results folder; every number below comes from them. "
          "Re-run (resumable, finished cells are reused):"), "", f"    {cfg.command}", "",
         _teacher_line(teacher, cells), "",
         (f"Each activation criterion scores the teacher on {int(calib.samples)} calibration blocks of "
          f"{int(cfg.data.seq_len)} tokens drawn from the train split of `{cfg.data.source}` with the seed (a new draw "
          "per seed, shared by every criterion of that seed); random scores are drawn with the seed; weight magnitude "
          "is deterministic (one value, no standard error). Every model is evaluated on the same "
          f"{blocks} validation blocks of {int(cfg.data.seq_len)} tokens ({where}); validation loss in nats/token, "
          f"lower is better. Seeds: {', '.join(map(str, seeds)) or 'none yet'}. Cells: mean ± standard error over "
          f"seeds; every difference names its test (Welch's t-test; against a deterministic value the one-sample "
          f"t-test), and is called at p < {ALPHA} with at least {MIN_SEEDS} seeds, else a tie. The cells took "
          f"{seconds / 60:.1f} min of compute in all ({_machine()})."), ""]
    if plot is not None:
        L += [f"![criteria]({'./' + plot.name})", ""]
    importance = out.with_name(out.stem + "-importance")
    if (importance / "heads.png").is_file():
        L += [f"Importance of the teacher (the paper's aggregation, seed {seeds[0] if seeds else 0}): "
              + ", ".join(f"[{p.stem}](./{importance.name}/{p.name})" for p in sorted(importance.glob("*.png"))) + ".", ""]
    L += ["## Results", "", *block_text(cfg, cells, teacher).splitlines(), ""]
    write_text(out, "\n".join(L).rstrip("\n") + "\n")
    return out


def block_text(cfg: DictConfig, cells: dict, teacher: dict[str, Any]) -> str:
    """The tables and verdicts that `readme=` copies into a markdown file's criteria block."""
    return "\n".join(tables(cfg, cells, teacher.get("params"))).rstrip("\n") + "\n"


def write_readme_block(path: Path, text: str, command: str) -> None:
    """Replace the criteria block of the markdown file `path` (between its two marker lines) by `text`."""
    path = Path(path)
    if not path.is_file():
        raise MinitronError(f"readme={path} is not a file; name a markdown file that holds a criteria block, or leave readme null")
    lines = path.read_text().splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.startswith(README_START)]
    ends = [i for i, line in enumerate(lines) if line.strip() == README_END]
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        raise MinitronError(f"readme={path} needs one criteria block: a line starting with '{README_START}' and, after "
                            f"it, a line '{README_END}'; add them where the tables should go")
    head = f"{README_START} generated by `{command}`; do not edit by hand -->\n"
    write_text(path, "".join([*lines[: starts[0]], head, text, *lines[ends[0]:]]))


def readme_block(path: Path) -> str:
    """The text between the criteria markers of the markdown file `path` (what `write_readme_block` wrote)."""
    lines = Path(path).read_text().splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith(README_START))
    end = next(i for i, line in enumerate(lines) if line.strip() == README_END)
    return "".join(lines[start + 1 : end])

