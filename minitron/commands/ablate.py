"""`minitron ablate`: the paper's findings at small scale (importance criteria, width vs depth, retraining loss,
random init, one-shot vs iterative), mean and spread over seeds, on one results page.

    minitron ablate -m study=criteria,shapes,losses,scratch,iterative seed=0,1 page=docs/results.md
    minitron ablate study=shapes seed=2             # one more seed of one study; the page is rebuilt after it
    minitron ablate study=report page=docs/results.md

Cells are cached under `results_dir` (see configs/ablate.yaml): an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from minitron.commands._run import prepare_run_dir
from minitron.errors import MinitronError
from minitron.io import write_json


def run(cfg: DictConfig, run_dir: str | Path | None = None) -> dict[str, Any]:
    from minitron import ablate

    choices = (*ablate.STUDIES, "all", "report")
    if cfg.study not in choices:
        raise MinitronError(f"study={cfg.study} is not a study; choose one of {', '.join(choices)}")
    if int(cfg.budget.steps) < 2:
        raise MinitronError(f"budget.steps={cfg.budget.steps} must be at least 2 (the iterative study splits it in two)")
    run_dir = prepare_run_dir(cfg, run_dir)
    results = Path(str(cfg.results_dir)).expanduser()
    teacher_file = results / "teacher.json"
    if cfg.study != "report":
        teacher, summary = ablate.build_teacher(cfg, run_dir)
        summary = {**summary, "path": str(teacher)}
        ctx = _context(cfg, teacher, summary, results)
        write_json(teacher_file, summary)
        for study in ablate.STUDIES if cfg.study == "all" else (cfg.study,):
            ablate.run_study(ctx, study)
    if not teacher_file.is_file():
        raise MinitronError(f"results_dir={results} holds no study results yet; run a study first (e.g. study=criteria)")
    teacher_summary = json.loads(teacher_file.read_text())
    cells = ablate.load_cells(results, cfg, teacher_summary)
    stale = sum(len(v) for v in ablate.load_cells(results).values()) - sum(len(v) for v in cells.values())
    page = Path(str(cfg.page)).expanduser() if cfg.page else results / "results.md"
    ablate.write_results(cfg, cells, teacher_summary, page)
    print(f"minitron ablate: {sum(len(v) for v in cells.values())} cells of these settings in {results}"
          + (f" ({stale} of other settings left out)" if stale else "") + f"; results page {page}")
    return {"page": page, "cells": cells}


def _context(cfg: DictConfig, teacher: Path, summary: dict[str, Any], results: Path):
    from transformers import AutoConfig

    from minitron import ablate
    from minitron.commands._run import load_checkpoint, packed_data
    from minitron.config import to_plain
    from minitron.prune.dry_run import dry_run

    config = AutoConfig.from_pretrained(str(teacher))
    for name, shape in cfg.shapes.items():  # an impossible shape fails now, before any cell runs
        try:
            dry_run(config, to_plain(shape))
        except MinitronError as e:
            raise MinitronError(f"shapes.{name}: {e}") from None
    _, tokenizer = load_checkpoint(teacher)
    data = packed_data(cfg, tokenizer)
    return ablate.Context(cfg=cfg, teacher=teacher, teacher_key=ablate.teacher_key(summary), tokenizer=tokenizer, data=data, results=results,
                          seed=int(cfg.seed))
