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

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from minitron.commands._run import prepare_run_dir
from minitron.workflows.search import run_search


def run(cfg: DictConfig, run_dir: str | Path | None = None) -> dict[str, Any]:
    return run_search(cfg, prepare_run_dir(cfg, run_dir))
