"""`minitron ablate`: the paper's findings at small scale (importance criteria, width vs depth, retraining loss,
random init, one-shot vs iterative), mean and spread over seeds, on one results page.

    minitron ablate -m study=criteria,shapes,losses,scratch,iterative,depth,correction,shapes_long seed=0,1,2 page=docs/results.md
    minitron ablate study=shapes seed=2             # one more seed of one study; the page is rebuilt after it
    minitron ablate study=report page=docs/results.md
    minitron ablate -m setup=smollm2_135m seed=0,1,2,3,4 page=docs/real_criteria.md readme=README.md   # a real teacher

Cells are cached under `results_dir` (see configs/ablate.yaml): an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from minitron.commands._run import prepare_run_dir
from minitron.errors import MinitronError
from minitron.workflows.ablate import STUDIES, run_ablate


def run(cfg: DictConfig, run_dir: str | Path | None = None) -> dict[str, Any]:
    choices = (*STUDIES, "all", "report")
    if cfg.study not in choices:
        raise MinitronError(f"study={cfg.study} is not a study; choose one of {', '.join(choices)}")
    if cfg.page_layout not in ("studies", "criteria"):
        raise MinitronError(f"page_layout={cfg.page_layout} is not a layout; choose studies (every study) or criteria")
    if int(cfg.budget.steps) < 2:
        raise MinitronError(f"budget.steps={cfg.budget.steps} must be at least 2 (the iterative study splits it in two)")
    return run_ablate(cfg, prepare_run_dir(cfg, run_dir))
