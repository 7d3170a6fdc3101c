"""Architecture search, the pruning side: every homogeneous pruned shape within a parameter budget, with its exact
parameter count, and the tables and plot of a ranking. Ranking the candidates (zero-shot LM loss, the reference
implementation's order, then an optional short retraining of the top k, the paper's order, which settles after
about 300 steps) is `minitron.workflows.search`.

Candidate sizes lie on divisor grids of the source: `hidden_size` and `intermediate_size` take the multiples of
source / `steps`, `num_hidden_layers` likewise (when depth is searched), and `num_attention_heads` every multiple
of the KV-group count up to the source (query heads are pruned within KV groups; KV groups are kept).
"""

from __future__ import annotations

import csv
import io
import itertools
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import matplotlib
from transformers import PretrainedConfig

from minitron.errors import MinitronError
from minitron.models import get_adapter
from minitron.prune.target import SIZE_FIELDS, Shape, Target


@dataclass
class Candidate:
    num_hidden_layers: int
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    parameters: int
    zero_shot_loss: float | None = None
    retrained_loss: float | None = None
    mlp_key: str = "intermediate_size"  # the target key of the MLP (expert) width in the source's family

    @property
    def shape(self) -> Shape:
        return Shape(**{k: getattr(self, k) for k in SIZE_FIELDS})

    def target(self, depth_metric: str = "bi") -> Target:
        # Candidates of many depths share one scores file, and block scores exist for one block length only, so a
        # contiguous window is ranked here by the sum of its single-layer scores.
        sizes = _target_sizes(self.shape.as_dict(), self.mlp_key)
        return Target(**sizes, depth_metric=depth_metric, block_metric="sum", name=self.label)

    @property
    def label(self) -> str:
        return (
            f"L{self.num_hidden_layers}-h{self.hidden_size}-ffn{self.intermediate_size}"
            f"-q{self.num_attention_heads}-kv{self.num_key_value_heads}"
        )


def grid(source: int, steps: int) -> list[int]:
    """The sizes source * i / steps (i = 1..steps) that are whole numbers; always includes `source`."""
    sizes = sorted({source * i // steps for i in range(1, steps + 1) if (source * i) % steps == 0} | {source})
    return [s for s in sizes if s >= 1]


def enumerate_candidates(
    config: PretrainedConfig,
    budget: int,
    *,
    tolerance: float = 0.05,
    steps: int = 8,
    search_depth: bool = True,
    search_heads: bool = True,
) -> list[Candidate]:
    """Every homogeneous shape whose exact parameter count lies within budget * (1 -+ tolerance), largest first."""
    if steps < 1:
        raise MinitronError(f"search.steps={steps} must be at least 1")
    if not 0 <= tolerance < 1:
        raise MinitronError(f"search.tolerance={tolerance} must be in [0, 1)")
    a = get_adapter(config)
    if budget > a.num_parameters() * (1 + tolerance):
        raise MinitronError(
            f"search budget {budget:,} parameters is larger than the source model's {a.num_parameters():,}; lower search.params"
        )
    kv = a.num_key_value_heads
    # A hybrid's depth is not searched: its blocks differ in size, so a layer count alone has no parameter count.
    layers = grid(a.num_hidden_layers, steps) if search_depth and not a.hybrid else [a.num_hidden_layers]
    heads = [kv * j for j in range(1, a.heads_per_group + 1)] if search_heads else [a.num_attention_heads]
    low, high = budget * (1 - tolerance), budget * (1 + tolerance)
    out = []
    for n_layers, hidden, ffn, n_heads in itertools.product(layers, grid(a.hidden_size, steps), grid(a.intermediate_size, steps), heads):
        shape = dict(num_hidden_layers=n_layers, hidden_size=hidden, intermediate_size=ffn, num_attention_heads=n_heads, num_key_value_heads=kv)
        params = _count(a, shape)
        if low <= params <= high and _valid(config, shape):
            out.append(Candidate(**shape, parameters=params, mlp_key=a.mlp_size_field))
    out.sort(key=lambda c: (-c.parameters, c.label))
    return out


def _valid(config: PretrainedConfig, shape: dict[str, int]) -> bool:
    """Whether the config class accepts the shape (e.g. `LlamaConfig` wants hidden_size % num_attention_heads == 0)."""
    try:
        Target(**_target_sizes(shape, get_adapter(config).mlp_size_field)).resolve(config)
    except MinitronError:
        return False
    return True


def _target_sizes(shape: dict[str, int], mlp_key: str) -> dict[str, int]:
    """`shape` under target keys: the MLP width under the family's own key (Qwen3-MoE: `moe_intermediate_size`)."""
    sizes = dict(shape)
    sizes[mlp_key] = sizes.pop("intermediate_size")
    return sizes


def _count(a, shape: dict[str, int]) -> int:
    """The exact parameter count of `shape` on the source's layout (what `Target.resolve` + the adapter would count),
    without building a config per candidate."""
    return a.with_sizes(**shape).num_parameters()


# ---- reports ------------------------------------------------------------------------------------------------
COLUMNS = ("rank", "label", *SIZE_FIELDS, "parameters", "ratio", "zero_shot_loss", "retrained_loss")


def rows(ranked: list[Candidate], source_parameters: int) -> list[dict[str, Any]]:
    out = []
    for i, c in enumerate(ranked, 1):
        row = {"rank": i, "label": c.label, **asdict(c)}
        row["ratio"] = round(c.parameters / source_parameters, 4)
        out.append({k: row[k] for k in COLUMNS})
    return out


def to_csv(table: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    return buf.getvalue()


def to_markdown(table: list[dict[str, Any]], title: str) -> str:
    def cell(v):
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:.4f}"
        if isinstance(v, int):
            return f"{v:,}" if v >= 10000 else str(v)
        return str(v)

    lines = [f"# {title}", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(r[k]) for k in COLUMNS) + " |" for r in table]
    return "\n".join(lines) + "\n"


def plot(table: list[dict[str, Any]], path: Path, title: str) -> None:
    """Zero-shot (and retrained) loss against parameter count, best candidate circled."""
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"): pyplot picks its backend when first imported

    fig, ax = plt.subplots(figsize=(6, 4))
    params = [r["parameters"] for r in table]
    ax.scatter(params, [r["zero_shot_loss"] for r in table], label="zero-shot", s=18)
    retrained = [r for r in table if r["retrained_loss"] is not None]
    if retrained:
        ax.scatter([r["parameters"] for r in retrained], [r["retrained_loss"] for r in retrained], label="retrained", s=18, marker="^")
    best = table[0]
    best_loss = best["retrained_loss"] if best["retrained_loss"] is not None else best["zero_shot_loss"]
    ax.scatter([best["parameters"]], [best_loss], s=120, facecolors="none", edgecolors="red", label=f"best: {best['label']}")
    ax.set_xlabel("parameters")
    ax.set_ylabel("validation LM loss (nats/token)")
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
