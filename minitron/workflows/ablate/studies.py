"""The studies of `minitron ablate` and the job that runs them and rebuilds the results page."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from transformers import AutoConfig

from minitron.checkpoint import load_checkpoint
from minitron.config import to_plain
from minitron.data.calibration import packed_data
from minitron.errors import MinitronError
from minitron.importance.plots import plot_depth, plot_importance
from minitron.io import write_json
from minitron.prune.dry_run import dry_run
from minitron.workflows.ablate.cells import (
    CORRECTION,
    LONG_SHAPES,
    LOSSES,
    PAPER_PAIR,
    SCORING_STEPS,
    SHAPES,
    Context,
    build_teacher,
    correction_cell,
    correction_data,
    correction_schedule,
    criteria_shapes,
    criterion_cell,
    depth_only,
    depth_samples,
    distill_cell,
    eval_blocks,
    iterative_cell,
    load_cells,
    long_steps,
    scratch_cell,
    shape_criteria,
    steps_cell,
    study_scores,
    teacher_cell,
    teacher_key,
)
from minitron.workflows.ablate.criteria_page import (
    block_text,
    write_criteria_page,
    write_readme_block,
)
from minitron.workflows.ablate.page import write_results

STUDIES = ("criteria", "shapes", "losses", "scratch", "iterative", "depth", "correction", "shapes_long")


def run_study(ctx: Context, study: str) -> None:
    if study == "criteria":
        for shape in criteria_shapes(ctx.cfg):
            for criterion in shape_criteria(ctx.cfg, shape):
                criterion_cell(ctx, criterion, shape)
    elif study == "shapes":
        for shape in SHAPES:
            distill_cell(ctx, shape)
    elif study == "losses":
        for loss in LOSSES:
            distill_cell(ctx, "width", loss)
    elif study == "scratch":
        distill_cell(ctx, "width")
        scratch_cell(ctx, 1)
        scratch_cell(ctx, 4)
    elif study == "iterative":
        distill_cell(ctx, "width")
        iterative_cell(ctx)
        iterative_cell(ctx, chain=True)
        for k in SCORING_STEPS:
            steps_cell(ctx, k)
    elif study == "depth":
        distill_cell(ctx, "depth")
        distill_cell(ctx, "depth", name="distill-depth_block-kl")
    elif study == "correction":
        for c in CORRECTION:
            correction_cell(ctx, corrected=c == "on")
    elif study == "shapes_long":
        for shape in LONG_SHAPES:
            distill_cell(ctx, shape, name=f"long-{shape}-kl")
    else:
        raise MinitronError(f"study={study} is not a study; choose one of {', '.join(STUDIES)} (or all)")


def check_criteria(cfg: DictConfig) -> None:
    """The criteria, long-budget and correction settings and the evaluation stride, checked from the config alone."""
    for name in criteria_shapes(cfg):
        shape_criteria(cfg, name)
    depth_samples(cfg)
    long_steps(cfg)
    correction_data(cfg)
    correction_schedule(cfg)
    stride = cfg.get("eval_stride", 1)
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise MinitronError(f"eval_stride={stride!r} must be an integer of at least 1 (1: the first blocks in order)")


def make_context(cfg: DictConfig, teacher: Path, summary: dict[str, Any], results: Path) -> Context:
    """What every cell reads: the teacher, its tokenizer and the packed data; an impossible shape fails here,
    before any cell runs."""
    config = AutoConfig.from_pretrained(str(teacher))
    for name, shape in cfg.shapes.items():
        try:
            dry_run(config, to_plain(shape))
        except MinitronError as e:
            raise MinitronError(f"shapes.{name}: {e}") from None
    _, tokenizer = load_checkpoint(teacher)
    data = packed_data(cfg.data, cfg.cache_dir, tokenizer)
    eval_blocks(data["validation"], cfg.get("eval_stride", 1))
    return Context(cfg=cfg, teacher=teacher, teacher_key=teacher_key(summary), tokenizer=tokenizer, data=data,
                   results=results, seed=int(cfg.seed))


def _write_criteria_page(cfg: DictConfig, cells: dict, teacher: dict[str, Any], results: Path, page: Path) -> None:
    """The criteria page, the importance plots of the lowest seed's paper-aggregation scores beside it, and the
    same tables in the `readme` file's criteria block when one is named."""
    seeds = sorted({c["seed"] for group in cells.values() for c in group if c["seed"] is not None})
    if seeds and teacher.get("path"):
        folder = page.with_name(page.stem + "-importance")
        width = study_scores(cfg, results, teacher, seeds[0], PAPER_PAIR)
        if width is not None:
            plot_importance(width, folder)
        depth = study_scores(cfg, results, teacher, seeds[0], "depth")
        if depth is not None and any(depth_only(cfg.shapes[s]) for s in criteria_shapes(cfg)):
            plot_depth(depth, folder / "depth.png")  # with the skip-one-layer loss, when a depth criterion needs it
    write_criteria_page(cfg, cells, teacher, page)
    if cfg.readme:
        write_readme_block(Path(str(cfg.readme)).expanduser(), block_text(cfg, cells, teacher), str(cfg.command))


def run_ablate(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Run `cfg.study` (one study, all, or none for `report`) for `cfg.seed`, then rebuild the results page from
    every cell of these settings in `cfg.results_dir`."""
    results = Path(str(cfg.results_dir)).expanduser()
    teacher_file = results / "teacher.json"
    check_criteria(cfg)  # before the teacher is built or any data packed
    if cfg.study != "report":
        teacher, summary = build_teacher(cfg, run_dir)
        summary = {**summary, "path": str(teacher)}
        ctx = make_context(cfg, teacher, summary, results)
        write_json(teacher_file, summary)
        teacher_cell(ctx)
        for study in STUDIES if cfg.study == "all" else (cfg.study,):
            run_study(ctx, study)
    if not teacher_file.is_file():
        raise MinitronError(f"results_dir={results} holds no study results yet; run a study first (e.g. study=criteria)")
    teacher_summary = json.loads(teacher_file.read_text())
    cells = load_cells(results, cfg, teacher_summary)
    stale = sum(len(v) for v in load_cells(results).values()) - sum(len(v) for v in cells.values())
    page = Path(str(cfg.page)).expanduser() if cfg.page else results / "results.md"
    if cfg.page_layout == "criteria":
        _write_criteria_page(cfg, cells, teacher_summary, results, page)
    else:
        write_results(cfg, cells, teacher_summary, page)
    print(f"minitron ablate: {sum(len(v) for v in cells.values())} cells of these settings in {results}"
          + (f" ({stale} of other settings left out)" if stale else "") + f"; results page {page}")
    return {"page": page, "cells": cells}
