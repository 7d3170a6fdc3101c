"""Helpers shared by the verb modules."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from minitron.io import write_text


def prepare_run_dir(cfg: DictConfig, run_dir: str | Path | None) -> Path:
    """The run folder (Hydra's, unless given), with the resolved config written into it."""
    if run_dir is None:
        from hydra.core.hydra_config import HydraConfig

        run_dir = HydraConfig.get().runtime.output_dir
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    return run_dir
