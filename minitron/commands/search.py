"""`minitron search`: enumerate pruned shapes within a parameter budget and rank them.

    minitron search                                   # the embedded tiny teacher, 50% +- 5% of its parameters
    minitron search search.ratio=0.3 search.depth=false teacher=/ckpt/teacher

Writes candidates.csv, candidates.md, candidates.png and best.json into the run folder; with
search.retrain_steps > 0 the top_k candidates are distilled briefly (train and distill groups, as in `minitron
distill`) into RUN_DIR/retrain/LABEL and re-ranked by validation loss.

Re-run in the same folder (`hydra.run.dir=THAT_FOLDER`, `resume=true`), a killed search keeps what it finished:
the importance scores, each candidate's zero-shot loss (zero_shot.jsonl, one line per candidate as it ends),
each retrained student, and the checkpoints of a retraining cut short.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from minitron.commands._run import prepare_run_dir
from minitron.config import stable_hash, to_plain
from minitron.errors import MinitronError
from minitron.io import atomic_path, write_json, write_text


SCORES_FILE = "importance.safetensors"  # where `compute_scores` saves the teacher's scores in the run folder
ZERO_SHOT_FILE = "zero_shot.jsonl"  # one line per candidate whose zero-shot loss is known


def _scores_key(cfg: DictConfig, teacher: Path, depth: list[str]) -> str:
    """What the teacher's scores depend on: teacher, calibration data and sampling, depth metrics."""
    return stable_hash(str(teacher), to_plain(cfg.calib), to_plain(cfg.data), int(cfg.seed), depth)


def _earlier_scores(path: Path, key: str, config):
    """The scores an earlier run in this folder computed with the same settings (`key`, recorded next to them),
    or None (they are then computed again)."""
    from minitron.importance import Importance
    from minitron.prune.plan import check_scores

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
        check_scores(importance, config)
    except MinitronError as e:
        print(f"minitron search: not reusing {path} ({e})")
        return None
    print(f"minitron search: reusing the importance scores in {path}")
    return importance


def _digest(importance) -> str:
    """A hash of the score values, so that results ranked with other scores are never mixed in."""
    import hashlib

    h = hashlib.sha256()
    for name, tensor in sorted(importance.tensors().items()):
        h.update(name.encode())
        h.update(tensor.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def run(cfg: DictConfig, run_dir: str | Path | None = None) -> dict[str, Any]:
    from minitron.commands._run import load_checkpoint, packed_data, teacher_path
    from minitron.commands.prune import compute_scores, source_config
    from minitron.importance import Importance
    from minitron.models import get_adapter
    from minitron.prune import search
    from minitron.prune.plan import check_scores
    from minitron.prune.target import DEPTH_METRICS

    s = cfg.search
    if s.depth_metric not in DEPTH_METRICS:
        raise MinitronError(f"search.depth_metric='{s.depth_metric}' is not a depth metric; expected one of {', '.join(DEPTH_METRICS)}")
    if s.retrain_steps and s.retrain_steps > 0:
        search.distill_entry_point()  # fail now, not after the ranking
    run_dir = prepare_run_dir(cfg, run_dir)
    teacher = teacher_path(cfg, run_dir)
    config = source_config(cfg, teacher)
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
    if cfg.scores:
        importance = Importance.load(Path(str(cfg.scores)).expanduser())
        check_scores(importance, config)
    else:
        depth = ["bi", "loss"] if s.depth_metric == "loss" else ["bi"]
        scores_key = _scores_key(cfg, teacher, depth)
        importance = _earlier_scores(run_dir / SCORES_FILE, scores_key, config) if resume else None
        if importance is None:
            importance = compute_scores(cfg, teacher, run_dir, depth=depth)
            write_json((run_dir / SCORES_FILE).with_suffix(".json"), {"key": scores_key})
    model, tokenizer = load_checkpoint(teacher, dtype="float32", trust_remote_code=bool(cfg.model.trust_remote_code))
    data = packed_data(cfg, tokenizer)
    eval_batches = None if s.eval_batches is None else int(s.eval_batches)
    # what a recorded result depends on: a re-run with other scores, data or evaluation settings starts over
    key = stable_hash(str(teacher), to_plain(cfg.data), s.depth_metric, eval_batches, int(s.eval_batch_size),
                      _digest(importance))
    ranked = search.rank_zero_shot(
        model, importance, candidates, data["validation"], depth_metric=s.depth_metric,
        batch_size=int(s.eval_batch_size), max_batches=eval_batches, journal=journal, key=key,
    )
    if s.retrain_steps and s.retrain_steps > 0:
        ranked = search.retrain_top_k(
            model, importance, ranked, data["train"], data["validation"], k=int(s.top_k), steps=int(s.retrain_steps),
            run_dir=run_dir, train=cfg.train, loss=cfg.distill, seq_len=int(cfg.data.seq_len), seed=int(cfg.seed),
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
