"""`minitron prune`: cut a teacher to a target shape by importance and export a checkpoint stock transformers loads.

    minitron prune                                                # embedded tiny teacher -> target=tiny
    minitron prune target=minitron_8b dry_run=true                # Nemotron-4 15B -> Minitron 8B, counts only
    minitron prune teacher=/ckpt/llama-3.1-8b target=llama31_minitron_4b_width scores=importance.safetensors
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from minitron.commands._run import prepare_run_dir
from minitron.io import write_json, write_text
from minitron.prune.dry_run import dry_run, format_report
from minitron.prune.target import Target
from minitron.workflows.prune import config_of, prune_teacher, target_of


def run(cfg: DictConfig, run_dir: str | Path | None = None) -> dict[str, Any]:
    target = target_of(cfg)
    if cfg.dry_run:
        return _dry_run(cfg, target, run_dir)
    return prune_teacher(cfg, target, prepare_run_dir(cfg, run_dir))


def _dry_run(cfg: DictConfig, target: Target, run_dir: str | Path | None) -> dict[str, Any]:
    report = dry_run(config_of(cfg), target)
    config = report.pop("config")
    print(f"minitron prune: dry run of {target.label} on {cfg.teacher or 'model=' + str(cfg.model.name)}")
    print(config.to_json_string(use_diff=False).rstrip())
    print(format_report(report))
    run_dir = prepare_run_dir(cfg, run_dir)
    write_json(run_dir / "dry_run.json", report)
    write_text(run_dir / "pruned_config.json", config.to_json_string(use_diff=False))
    return {**report, "config": config}
