"""`minitron pipeline`: the end-to-end job on the embedded default (or on your teacher, data and target).

    minitron pipeline                                     # teacher (cached) -> score -> prune -> distill -> eval, report.md
    minitron pipeline hydra.run.dir=runs/pipeline/mine    # resume in a folder: finished stages are skipped
    minitron pipeline recipe=minitron_8b dry_run=true      # a paper recipe's shapes, counts and token budget
    minitron pipeline recipe=minitron_8b miniature=true    # the same recipe for real at toy scale (minutes on a CPU)
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from minitron.commands._run import in_hydra_app, prepare_run_dir
from minitron.io import write_json
from minitron.ranks import is_main_process
from minitron.workflows.miniature import miniature_config
from minitron.workflows.pipeline import format_plan, plan, run_pipeline


def run(cfg: DictConfig, run_dir: str | Path | None = None) -> dict:
    if cfg.miniature:  # before the run folder's config.yaml is written: it records the config that runs
        cfg = miniature_config(cfg)
    if cfg.dry_run:
        result = plan(cfg)
        print(format_plan(result))
        if run_dir is not None or in_hydra_app():
            write_json(prepare_run_dir(cfg, run_dir) / "plan.json", result)
        return result
    run_dir = prepare_run_dir(cfg, run_dir)
    if cfg.miniature and is_main_process():
        print(format_plan(plan(cfg)) + "\n")
    result = run_pipeline(cfg, run_dir)
    if is_main_process():  # rank 0 writes the report; the other ranks may finish before it exists
        print()
        print(Path(result["report"]).read_text().split("## Stage times")[0].rstrip())
        print(f"\nreport: {result['report']}")
    return result
