"""Architecture search: every homogeneous pruned shape within a parameter budget, ranked by the zero-shot LM loss
of the pruned model (the reference implementation's ranking), with an optional short retraining of the top k
(the paper's ranking, whose order settles after about 300 steps).

Candidate sizes lie on divisor grids of the source: `hidden_size` and `intermediate_size` take the multiples of
source / `steps`, `num_hidden_layers` likewise (when depth is searched), and `num_attention_heads` every multiple
of the KV-group count up to the source (query heads are pruned within KV groups; KV groups are kept).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import PretrainedConfig, PreTrainedModel

from minitron.errors import MinitronError
from minitron.models import get_adapter
from minitron.prune.target import SIZE_FIELDS, Shape, Target

if TYPE_CHECKING:
    from minitron.importance import Importance


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

    @property
    def shape(self) -> Shape:
        return Shape(**{k: getattr(self, k) for k in SIZE_FIELDS})

    def target(self, depth_metric: str = "bi") -> Target:
        # Candidates of many depths share one scores file, and block scores exist for one block length only, so a
        # contiguous window is ranked here by the sum of its single-layer scores.
        return Target(**self.shape.as_dict(), depth_metric=depth_metric, block_metric="sum", name=self.label)

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
    kv = a.num_kv_heads
    layers = grid(a.num_layers, steps) if search_depth else [a.num_layers]
    heads = [kv * j for j in range(1, a.heads_per_group + 1)] if search_heads else [a.num_heads]
    low, high = budget * (1 - tolerance), budget * (1 + tolerance)
    out = []
    for n_layers, hidden, ffn, n_heads in itertools.product(layers, grid(a.hidden_size, steps), grid(a.intermediate_size, steps), heads):
        shape = dict(num_hidden_layers=n_layers, hidden_size=hidden, intermediate_size=ffn, num_attention_heads=n_heads, num_key_value_heads=kv)
        params = _count(a, shape)
        if low <= params <= high and _valid(config, shape):
            out.append(Candidate(**shape, parameters=params))
    out.sort(key=lambda c: (-c.parameters, c.label))
    return out


def _valid(config: PretrainedConfig, shape: dict[str, int]) -> bool:
    """Whether the config class accepts the shape (e.g. `LlamaConfig` wants hidden_size % num_attention_heads == 0)."""
    try:
        Target(**shape).resolve(config)
    except MinitronError:
        return False
    return True


def _count(a, shape: dict[str, int]) -> int:
    """The exact parameter count of `shape` on the source's layout (what `Target.resolve` + the adapter would count,
    computed from the per-layer sizes without building a config per candidate)."""
    h, ffn, hd = shape["hidden_size"], shape["intermediate_size"], a.head_dim
    q, kv = shape["num_attention_heads"] * hd, shape["num_key_value_heads"] * hd
    norm = h * (2 if a.norm_has_bias else 1)
    per_layer = 2 * norm + q * h + 2 * kv * h + h * q + len(a.mlp_in(0)) * ffn * h + h * ffn
    if a.attention_bias:
        per_layer += q + 2 * kv + (0 if a.config.model_type == "qwen2" else h)
    if a.mlp_bias:
        per_layer += len(a.mlp_in(0)) * ffn + h
    embed = a.config.vocab_size * h * (1 if a.tied_embeddings else 2)
    return embed + norm + shape["num_hidden_layers"] * per_layer


def read_zero_shot(path: Path, key: str) -> dict[str, float]:
    """The zero-shot losses (by candidate label) that an earlier run in this folder recorded under the same `key`.

    A last line cut short by a kill and records of another key are dropped, and the file is rewritten without
    them, so that new records can be appended to whole lines.
    """
    path = Path(path)
    if not path.is_file():
        return {}
    text = path.read_text()
    lines = text.splitlines()
    done: dict[str, float] = {}
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
            if record["key"] != key:
                continue
            done[str(record["label"])] = float(record["zero_shot_loss"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
        kept.append(line)
    if len(kept) != len(lines) or not text.endswith("\n"):
        from minitron.io import write_text

        write_text(path, "".join(line + "\n" for line in kept))
    return done


def append_zero_shot(path: Path, key: str, candidate: Candidate) -> None:
    """Record one finished candidate as a whole line, on disk before the next one starts."""
    record = {"key": key, "label": candidate.label, "zero_shot_loss": candidate.zero_shot_loss}
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def rank_zero_shot(
    model: PreTrainedModel,
    importance: Importance,
    candidates: list[Candidate],
    dataset,
    *,
    depth_metric: str = "bi",
    batch_size: int = 8,
    max_batches: int | None = None,
    progress: bool = True,
    journal: Path | None = None,
    key: str = "",
) -> list[Candidate]:
    """Fill `zero_shot_loss` (validation LM loss of each pruned candidate, no retraining); return them best first.

    With a `journal` (a JSON-lines file), each finished candidate is appended to it as it completes, and the
    candidates it already holds under the same `key` are taken from it instead of being evaluated again.
    """
    from tqdm.auto import tqdm

    from minitron.prune.model import prune
    from minitron.train.trainer import lm_loss

    done = read_zero_shot(journal, key) if journal is not None else {}
    reused = sum(c.label in done for c in candidates)
    if reused:
        print(f"zero-shot ranking: reusing {reused} of {len(candidates)} candidates finished earlier ({journal})")
    for c in tqdm(candidates, desc="candidates", disable=not progress):
        if c.label in done:
            c.zero_shot_loss = done[c.label]
            continue
        pruned = prune(model, importance, c.target(depth_metric))
        c.zero_shot_loss = lm_loss(pruned, dataset, batch_size=batch_size, max_batches=max_batches)
        del pruned
        if journal is not None:
            append_zero_shot(journal, key, c)
    return sorted(candidates, key=lambda c: (c.zero_shot_loss, -c.parameters))


def distill_entry_point():
    """`(distill, loss_spec)` of `minitron.distill`, which the retraining stage calls, or a one-line error when
    this install has no `minitron distill`."""
    try:
        from minitron.distill import distill, loss_spec
    except ImportError:
        raise MinitronError(
            "search.retrain_steps > 0 needs `minitron distill` (minitron.distill), which this install does not "
            "provide; set search.retrain_steps=0 to rank by zero-shot loss only"
        ) from None
    return distill, loss_spec


def retrain_top_k(
    model: PreTrainedModel,
    importance: Importance,
    ranked: list[Candidate],
    train_dataset,
    eval_dataset,
    *,
    k: int,
    steps: int,
    run_dir: Path,
    train: Any,
    loss: Any,
    seq_len: int,
    seed: int = 0,
    tokenizer=None,
    depth_metric: str = "bi",
    resume: bool = False,
    key: str = "",
) -> list[Candidate]:
    """Distill each of the top `k` candidates from `model` for `steps` steps (`train`: a configs/train mapping,
    `loss`: a configs/distill mapping) and re-rank them by validation loss; the rest follow in zero-shot order.
    Each student and its curves go to run_dir/retrain/LABEL.

    With `resume`, a candidate whose folder was started under the same settings (`key` and the training
    settings, recorded in retrain.json) is not trained again: a finished one (its student saved) gives its
    validation loss, an unfinished one continues from its last checkpoint (every `train.save_steps`).
    """
    import torch
    from omegaconf import OmegaConf

    from minitron.config import stable_hash, to_plain
    from minitron.io import write_json
    from minitron.prune.model import prune

    distill, loss_spec = distill_entry_point()
    spec = loss_spec(loss)
    settings = dict(to_plain(train))
    settings.update(
        max_steps=int(steps),
        save_steps=min(int(settings.get("save_steps") or 0), int(steps)),
        warmup_steps=min(int(settings.get("warmup_steps") or 0), max(1, steps // 10)),
    )
    stamp = {"key": stable_hash(key, settings, to_plain(loss), seq_len, seed)}
    top = ranked[:k]
    started, finished = {}, {}
    for c in top:
        folder = Path(run_dir) / "retrain" / c.label
        started[c.label] = resume and _read_json(folder / "retrain.json").get("key") == stamp["key"]
        summary = _read_json(folder / "student" / "minitron_distill.json")
        if started[c.label] and "val_loss" in summary:
            finished[c.label] = float(summary["val_loss"])
    if finished:
        print(f"retraining: reusing {len(finished)} of {len(top)} candidates finished earlier ({Path(run_dir) / 'retrain'})")
    todo = [c for c in top if c.label not in finished]
    # Every student is cut before any training: the trainer may move or cast the teacher.
    students = [prune(model, importance, c.target(depth_metric)) for c in todo]
    for c in top:
        if c.label in finished:
            c.retrained_loss = finished[c.label]
    for c, student in zip(todo, students):
        folder = Path(run_dir) / "retrain" / c.label
        if not started[c.label]:
            write_json(folder / "retrain.json", {**stamp, "label": c.label})
        torch.manual_seed(seed)  # the same start for a candidate whether or not others ran before it in this process
        result = distill(
            model, student, train_dataset, eval_dataset, folder, train=OmegaConf.create(settings), loss=spec,
            seq_len=seq_len, seed=seed, out=folder / "student", tokenizer=tokenizer, resume=started[c.label],
        )
        c.retrained_loss = float(result.val_loss)
    return sorted(top, key=lambda c: c.retrained_loss) + ranked[k:]


def _read_json(path: Path) -> dict[str, Any]:
    """The object in a JSON file, or {} when it is missing or unreadable (a folder a kill left behind)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
