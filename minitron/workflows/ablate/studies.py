"""The five studies of `minitron ablate` and the job that runs them and rebuilds the results page."""

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
from minitron.io import write_json
from minitron.prune.dry_run import dry_run
from minitron.workflows.ablate.cells import (
    AGGREGATORS,
    LOSSES,
    SCORING_STEPS,
    SHAPES,
    Context,
    build_teacher,
    criterion_cell,
    distill_cell,
    iterative_cell,
    load_cells,
    scratch_cell,
    steps_cell,
    teacher_cell,
    teacher_key,
)
from minitron.workflows.ablate.page import write_results

STUDIES = ("criteria", "shapes", "losses", "scratch", "iterative", "depth")


def run_study(ctx: Context, study: str) -> None:
    if study == "criteria":
        for b in AGGREGATORS:
            for s in AGGREGATORS:
                criterion_cell(ctx, f"{b}-{s}")
        criterion_cell(ctx, "magnitude")
        criterion_cell(ctx, "random")
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
    else:
        raise MinitronError(f"study={study} is not a study; choose one of {', '.join(STUDIES)} (or all)")


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
    return Context(cfg=cfg, teacher=teacher, teacher_key=teacher_key(summary), tokenizer=tokenizer, data=data,
                   results=results, seed=int(cfg.seed))


def run_ablate(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Run `cfg.study` (one study, all, or none for `report`) for `cfg.seed`, then rebuild the results page from
    every cell of these settings in `cfg.results_dir`."""
    results = Path(str(cfg.results_dir)).expanduser()
    teacher_file = results / "teacher.json"
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
    write_results(cfg, cells, teacher_summary, page)
    print(f"minitron ablate: {sum(len(v) for v in cells.values())} cells of these settings in {results}"
          + (f" ({stale} of other settings left out)" if stale else "") + f"; results page {page}")
    return {"page": page, "cells": cells}
