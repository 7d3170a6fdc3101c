"""`minitron score`: importance of a teacher's embedding channels, attention heads, MLP neurons and layers.

    minitron score                                            # the embedded default teacher on the stdlib corpus
    minitron score teacher=/path/to/ckpt calib.samples=1024   # the paper's calibration size
    minitron score teacher=/path/to/ckpt streaming=true       # one decoder layer in memory at a time

Writes `importance.safetensors` (see `minitron.importance.Importance`) and the plots of
`minitron.importance.plots.PLOT_FILES` into the run folder. Calibration blocks are drawn at random (seeded by
`seed`) from the packed train split of `data`, tokenized with the teacher's own tokenizer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from minitron.checkpoint import check_dtype
from minitron.commands._run import prepare_run_dir
from minitron.data.calibration import Calibration
from minitron.importance import SCORES_FILE, score_checkpoint
from minitron.importance.estimate import check_options
from minitron.importance.plots import plot_importance
from minitron.train.pretrain import teacher_path


@dataclass
class ScoreResult:
    path: str
    plots: list[str]
    num_samples: int
    num_tokens: int
    seconds: float


def check_config(cfg: DictConfig) -> tuple[Calibration, tuple[str, ...]]:
    """Every check that needs no model: fail before anything is loaded or trained."""
    calib = Calibration.from_config(cfg.calib, cfg.data.seq_len)
    depth = cfg.depth
    depth = list(OmegaConf.to_container(depth)) if isinstance(depth, ListConfig) else ([] if depth is None else depth)
    depth = check_options(str(cfg.batch_agg), str(cfg.seq_agg), str(cfg.mlp_site), depth)
    check_dtype(cfg.dtype)
    return calib, depth


def run(cfg: DictConfig, run_dir: str | Path | None = None) -> ScoreResult:
    calib, depth = check_config(cfg)
    run_dir = prepare_run_dir(cfg, run_dir)
    start = time.perf_counter()
    importance = score_checkpoint(
        teacher_path(cfg, run_dir), cfg.data, cfg.cache_dir, calib, seed=int(cfg.seed), dtype=cfg.dtype,
        streaming=bool(cfg.streaming), batch_agg=str(cfg.batch_agg), seq_agg=str(cfg.seq_agg), mlp_site=str(cfg.mlp_site),
        depth=depth,
    )
    scores = importance.save(run_dir / SCORES_FILE)
    plots = plot_importance(importance, run_dir)
    print(f"importance scores: {scores}")
    for png in plots:
        print(f"plot: {png}")
    if importance.layers is not None:
        print(f"layers by Block Importance, least important first: {importance.layers.argsort().tolist()}")
    return ScoreResult(path=str(scores), plots=[str(p) for p in plots], num_samples=importance.num_samples,
                       num_tokens=importance.num_tokens, seconds=time.perf_counter() - start)
