"""PNG views of an `Importance`: what a reader checks before choosing what to prune.

- `heads.png`: layer x query-head heatmap, KV groups separated by lines;
- `depth.png`: Block Importance and the skip-one-layer LM loss per layer (the ones that were computed);
- `channels.png`: embedding-channel scores sorted in decreasing order;
- `neurons.png`: each layer's MLP-neuron scores sorted in decreasing order.

Figures are drawn with the Agg canvas directly (no pyplot state, no display needed) and written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from minitron.importance.scores import Importance
from minitron.io import atomic_path

PLOT_FILES: tuple[str, ...] = ("heads.png", "depth.png", "channels.png", "neurons.png")


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


def _subtitle(imp: Importance) -> str:
    return f"seq {imp.seq_agg}, batch {imp.batch_agg}; {imp.num_samples} samples, {imp.num_tokens} tokens"


def plot_heads(imp: Importance, path: Path) -> Path:
    layers, heads = imp.heads.shape
    groups = imp.kv_groups.shape[1]
    fig = Figure(figsize=(max(4.0, 0.35 * heads + 2.5), max(2.5, 0.3 * layers + 1.5)))
    ax = fig.add_subplot()
    image = ax.imshow(imp.heads.numpy(), aspect="auto", cmap="viridis", interpolation="nearest")
    for g in range(1, groups):
        ax.axvline(g * heads / groups - 0.5, color="white", linewidth=1.2)
    ax.set_xlabel(f"query head ({groups} KV groups of {heads // groups})")
    ax.set_ylabel("layer")
    ax.set_title(f"attention head importance\n{_subtitle(imp)}", fontsize=9)
    fig.colorbar(image, ax=ax)
    return _save(fig, path)


def plot_depth(imp: Importance, path: Path) -> Path:
    panels = [
        (imp.layers, "Block Importance (1 - cos)", "higher: layer changes more"),
        (imp.layers_loss, "LM loss with the layer skipped", "higher: layer matters more"),
    ]
    panels = [p for p in panels if p[0] is not None]
    fig = Figure(figsize=(5.5, 2.6 * max(1, len(panels))))
    if not panels:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no depth score was computed (depth=[])", ha="center", va="center")
        ax.set_axis_off()
        return _save(fig, path)
    for k, (values, title, hint) in enumerate(panels):
        ax = fig.add_subplot(len(panels), 1, k + 1)
        if values is imp.layers:
            ax.bar(range(len(values)), values.numpy(), color="tab:blue")
        else:  # losses sit far from zero and differ little: bars from zero would hide the differences
            ax.plot(range(len(values)), values.numpy(), color="tab:orange", marker="o")
        ax.set_title(f"{title}; {hint}", fontsize=9)
        ax.set_xlabel("layer")
        ax.set_xticks(range(0, len(values), -(-len(values) // 16)))  # at most 16 labels: 30 layers would overlap
        ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_channels(imp: Importance, path: Path) -> Path:
    values = imp.hidden.sort(descending=True).values.numpy()
    fig = Figure(figsize=(5.5, 3.2))
    ax = fig.add_subplot()
    ax.plot(range(1, len(values) + 1), values)
    ax.set_yscale("log" if values.min() > 0 else "linear")
    ax.set_xlabel("embedding channel rank")
    ax.set_ylabel("score (sum over norms)")
    ax.set_title(f"embedding channel importance, sorted\n{_subtitle(imp)}", fontsize=9)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_neurons(imp: Importance, path: Path) -> Path:
    fig = Figure(figsize=(5.5, 3.2))
    ax = fig.add_subplot()
    positive = True
    for i, row in enumerate(imp.mlp):
        values = row.sort(descending=True).values.numpy()
        positive = positive and bool(values.min() > 0)
        ax.plot(range(1, len(values) + 1), values, label=f"layer {i}", linewidth=1)
    ax.set_yscale("log" if positive else "linear")
    ax.set_xlabel("MLP neuron rank")
    ax.set_ylabel("score")
    ax.set_title(f"MLP neuron importance ({imp.mlp_site} activation), sorted\n{_subtitle(imp)}", fontsize=9)
    ax.grid(alpha=0.3)
    if imp.mlp.shape[0] <= 12:
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_importance(imp: Importance, folder: str | os.PathLike) -> list[Path]:
    """Write the four PNGs of `PLOT_FILES` into `folder`; return their paths."""
    folder = Path(folder)
    drawers = (plot_heads, plot_depth, plot_channels, plot_neurons)
    return [draw(imp, folder / name) for draw, name in zip(drawers, PLOT_FILES)]
