"""The run folder every verb writes into."""

from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from minitron.io import write_text


def prepare_run_dir(cfg: DictConfig, run_dir: str | Path | None) -> Path:
    """The run folder (Hydra's, unless given), with the resolved config written into it."""
    run_dir = Path(run_dir if run_dir is not None else HydraConfig.get().runtime.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    return run_dir


def in_hydra_app() -> bool:
    """Whether this verb runs inside a Hydra app (the CLI) rather than from `run(cfg)` in Python."""
    return HydraConfig.initialized()
