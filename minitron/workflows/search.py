"""Architecture search as a job: score the teacher (or reuse its scores), rank every candidate shape within the
budget by zero-shot validation loss, optionally distill the top k briefly and re-rank them, and write the tables.

A killed search re-run in the same folder (`resume`) keeps what it finished: the scores, each candidate's
zero-shot loss (zero_shot.jsonl, one line per candidate as it ends), each retrained student, and the checkpoints
of a retraining cut short.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from minitron.checkpoint import load_checkpoint
from minitron.config import stable_hash, to_plain
from minitron.data.calibration import packed_data
from minitron.distill import distill, loss_spec
from minitron.errors import MinitronError
from minitron.importance import SCORES_FILE, Importance
from minitron.io import atomic_path, write_json, write_text
from minitron.models import get_adapter
from minitron.prune import prune, search
from minitron.prune.search import Candidate
from minitron.prune.target import DEPTH_METRICS, depth_scores_for
from minitron.train.pretrain import teacher_path
from minitron.train.settings import TrainSettings
from minitron.train.validation import lm_loss
from minitron.workflows.prune import compute_scores, config_of, given_scores

ZERO_SHOT_FILE = "zero_shot.jsonl"  # one line per candidate whose zero-shot loss is known


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
    spec = loss_spec(loss)
    settings = TrainSettings.of(train).for_steps(steps)
    stamp = {"key": stable_hash(key, settings.mapping, to_plain(loss), seq_len, seed)}
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
            model, student, train_dataset, eval_dataset, folder, train=settings, loss=spec,
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


def _scores_key(cfg: DictConfig, teacher: Path, depth: list[str]) -> str:
    """What the teacher's scores depend on: teacher, calibration data and sampling, depth metrics."""
    return stable_hash(str(teacher), to_plain(cfg.calib), to_plain(cfg.data), int(cfg.seed), depth)


def _earlier_scores(path: Path, key: str, config):
    """The scores an earlier run in this folder computed with the same settings (`key`, recorded next to them),
    or None (they are then computed again)."""
    stamp = path.with_suffix(".json")
    if not path.is_file() or not stamp.is_file():
        return None
    try:
        same = json.loads(stamp.read_text()).get("key") == key
    except (OSError, ValueError, AttributeError):
        same = False
    if not same:
        print(f"minitron search: not reusing {path} (computed with other settings)")
        return None
    try:
        importance = Importance.load(path)
        importance.check_model(config)
    except MinitronError as e:
        print(f"minitron search: not reusing {path} ({e})")
        return None
    print(f"minitron search: reusing the importance scores in {path}")
    return importance


def _digest(importance) -> str:
    """A hash of the score values, so that results ranked with other scores are never mixed in."""
    h = hashlib.sha256()
    for name, tensor in sorted(importance.tensors().items()):
        h.update(name.encode())
        h.update(tensor.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def run_search(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """The `minitron search` job in `run_dir` (see the module docstring); returns the table and the best row."""
    s = cfg.search
    if s.depth_metric not in DEPTH_METRICS:
        raise MinitronError(f"search.depth_metric='{s.depth_metric}' is not a depth metric; expected one of {', '.join(DEPTH_METRICS)}")
    train = TrainSettings.from_config(cfg)  # bad retraining settings fail now, not after the ranking
    teacher = teacher_path(cfg, run_dir)
    config = config_of(cfg, teacher)
    source_params = get_adapter(config).num_parameters()
    budget = int(s.params) if s.params else round(float(s.ratio) * source_params)
    candidates = search.enumerate_candidates(
        config, budget, tolerance=float(s.tolerance), steps=int(s.steps), search_depth=bool(s.depth), search_heads=bool(s.heads)
    )
    if not candidates:
        raise MinitronError(
            f"no candidate shape within {budget:,} +- {float(s.tolerance):.0%} parameters on a grid of {s.steps} steps; "
            "raise search.tolerance or search.steps"
        )
    total = len(candidates)
    if s.max_candidates:
        candidates = candidates[: int(s.max_candidates)]
    print(f"minitron search: {total} candidates within {budget:,} +- {float(s.tolerance):.0%} parameters; ranking {len(candidates)}")

    resume = bool(cfg.resume)
    journal = run_dir / ZERO_SHOT_FILE
    if not resume:
        journal.unlink(missing_ok=True)
    importance = given_scores(cfg, config)
    if importance is None:
        scores_key = _scores_key(cfg, teacher, list(depth_scores_for(s.depth_metric)))
        importance = _earlier_scores(run_dir / SCORES_FILE, scores_key, config) if resume else None
        if importance is None:
            importance = compute_scores(cfg, teacher, run_dir, depth=depth_scores_for(s.depth_metric))
            write_json((run_dir / SCORES_FILE).with_suffix(".json"), {"key": scores_key})
    model, tokenizer = load_checkpoint(teacher, dtype="float32", trust_remote_code=bool(cfg.model.trust_remote_code))
    data = packed_data(cfg.data, cfg.cache_dir, tokenizer)
    eval_batches = None if s.eval_batches is None else int(s.eval_batches)
    # what a recorded result depends on: a re-run with other scores, data or evaluation settings starts over
    key = stable_hash(str(teacher), to_plain(cfg.data), s.depth_metric, eval_batches, int(s.eval_batch_size),
                      _digest(importance))
    ranked = rank_zero_shot(
        model, importance, candidates, data["validation"], depth_metric=s.depth_metric,
        batch_size=int(s.eval_batch_size), max_batches=eval_batches, journal=journal, key=key,
    )
    if s.retrain_steps and s.retrain_steps > 0:
        ranked = retrain_top_k(
            model, importance, ranked, data["train"], data["validation"], k=int(s.top_k), steps=int(s.retrain_steps),
            run_dir=run_dir, train=train, loss=cfg.distill, seq_len=int(cfg.data.seq_len), seed=int(cfg.seed),
            tokenizer=tokenizer, depth_metric=s.depth_metric, resume=resume, key=key,
        )
    table = search.rows(ranked, source_params)
    title = f"{len(table)} candidates within {budget:,} +- {float(s.tolerance):.0%} parameters of {teacher.name}"
    write_text(run_dir / "candidates.csv", search.to_csv(table))
    write_text(run_dir / "candidates.md", search.to_markdown(table, title))
    with atomic_path(run_dir / "candidates.png") as tmp:
        search.plot(table, tmp.with_suffix(".png"), title)
        tmp.with_suffix(".png").rename(tmp)
    best = {**table[0], "teacher": str(teacher), "budget": budget, "source_parameters": source_params}
    write_json(run_dir / "best.json", best)
    print(search.to_markdown(table[:10], f"top {min(10, len(table))} of {title}"))
    print(f"minitron search: best {table[0]['label']} ({table[0]['parameters']:,} parameters); table in {run_dir}")
    return {"run_dir": run_dir, "table": table, "best": best}
