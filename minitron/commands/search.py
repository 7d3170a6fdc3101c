"""`minitron search`: enumerate pruned shapes within a parameter budget and rank them.

    minitron search                                   # the embedded tiny teacher, 50% +- 5% of its parameters
    minitron search search.ratio=0.3 search.depth=false teacher=/ckpt/teacher

Writes candidates.csv, candidates.md, candidates.png and best.json into the run folder; with
search.retrain_steps > 0 the top_k candidates are distilled briefly (train and distill groups, as in `minitron
distill`) into RUN_DIR/retrain/LABEL and re-ranked by validation loss.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from minitron.commands._run import prepare_run_dir
from minitron.errors import MinitronError
from minitron.io import atomic_path, write_json, write_text


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

    if cfg.scores:
        importance = Importance.load(Path(str(cfg.scores)).expanduser())
        check_scores(importance, config)
    else:
        depth = ["bi", "loss"] if s.depth_metric == "loss" else ["bi"]
        importance = compute_scores(cfg, teacher, run_dir, depth=depth)
    model, tokenizer = load_checkpoint(teacher, dtype="float32", trust_remote_code=bool(cfg.model.trust_remote_code))
    data = packed_data(cfg, tokenizer)
    ranked = search.rank_zero_shot(
        model, importance, candidates, data["validation"], depth_metric=s.depth_metric,
        batch_size=int(s.eval_batch_size), max_batches=None if s.eval_batches is None else int(s.eval_batches),
    )
    if s.retrain_steps and s.retrain_steps > 0:
        ranked = search.retrain_top_k(
            model, importance, ranked, data["train"], data["validation"], k=int(s.top_k), steps=int(s.retrain_steps),
            run_dir=run_dir, train=cfg.train, loss=cfg.distill, seq_len=int(cfg.data.seq_len), seed=int(cfg.seed),
            tokenizer=tokenizer, depth_metric=s.depth_metric,
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
