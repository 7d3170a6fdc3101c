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

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from transformers import AutoConfig, AutoTokenizer

from minitron.commands._run import calibration_batches, load_checkpoint, packed_data, prepare_run_dir, teacher_path
from minitron.errors import MinitronError
from minitron.importance import Importance, estimate, estimate_streaming
from minitron.importance.estimate import check_options
from minitron.importance.plots import plot_importance
from minitron.models import get_adapter

SCORES_FILE = "importance.safetensors"
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")


@dataclass
class ScoreResult:
    path: str
    plots: list[str]
    num_samples: int
    num_tokens: int
    seconds: float


@dataclass(frozen=True)
class Calibration:
    samples: int
    seq_len: int
    batch_size: int


def check_config(cfg: DictConfig) -> tuple[Calibration, tuple[str, ...]]:
    """Every check that needs no model: fail before anything is loaded or trained."""
    calib = cfg.calib
    values = {}
    for key, minimum, hint in (
        ("samples", 1, "the paper uses 1024"),
        ("seq_len", 2, "an input and its next token at least; e.g. 256"),
        ("batch_size", 1, "e.g. 8"),
    ):
        value = calib.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise MinitronError(f"calib.{key}={value} must be an integer of at least {minimum} ({hint})")
        values[key] = value
    depth = cfg.depth
    if isinstance(depth, ListConfig):
        depth = list(OmegaConf.to_container(depth))
    elif depth is None:
        depth = []
    depth = check_options(str(cfg.batch_agg), str(cfg.seq_agg), str(cfg.mlp_site), depth)
    if cfg.dtype not in DTYPES:
        raise MinitronError(f"dtype={cfg.dtype} is not supported; expected one of {', '.join(DTYPES)}")
    return Calibration(**values), depth


def _check_positions(config, calib: Calibration, path: Path) -> None:
    limit = getattr(config, "max_position_embeddings", None)
    if limit is not None and calib.seq_len > limit:
        raise MinitronError(
            f"calib.seq_len={calib.seq_len} exceeds max_position_embeddings={limit} of the teacher at {path}; "
            f"lower calib.seq_len to at most {limit}"
        )


def run(cfg: DictConfig, run_dir: str | Path | None = None) -> ScoreResult:
    calib, depth = check_config(cfg)
    run_dir = prepare_run_dir(cfg, run_dir)
    start = time.perf_counter()
    path = teacher_path(cfg, run_dir)
    config = AutoConfig.from_pretrained(str(path))
    get_adapter(config)  # an unsupported family fails here, before the data is packed
    _check_positions(config, calib, path)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    data = packed_data(cfg, tokenizer, seq_len=calib.seq_len)
    batches = calibration_batches(data["train"], calib.samples, calib.batch_size, cfg.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    options = dict(batch_agg=str(cfg.batch_agg), seq_agg=str(cfg.seq_agg), mlp_site=str(cfg.mlp_site), depth=depth)
    print(f"scoring {path} on {calib.samples} blocks of {calib.seq_len} tokens ({len(batches)} batches, {device})")
    if cfg.streaming:
        importance = estimate_streaming(path, batches, device=device, dtype=getattr(torch, cfg.dtype), **options)
    else:
        model, _ = load_checkpoint(path, dtype=cfg.dtype)
        importance = estimate(model.to(device), batches, **options)
        del model
    return _write(importance, run_dir, start)


def _write(importance: Importance, run_dir: Path, start: float) -> ScoreResult:
    scores = importance.save(run_dir / SCORES_FILE)
    plots = plot_importance(importance, run_dir)
    print(f"importance scores: {scores}")
    for png in plots:
        print(f"plot: {png}")
    if importance.layers is not None:
        order = importance.layers.argsort().tolist()
        print(f"layers by Block Importance, least important first: {order}")
    return ScoreResult(
        path=str(scores),
        plots=[str(p) for p in plots],
        num_samples=importance.num_samples,
        num_tokens=importance.num_tokens,
        seconds=time.perf_counter() - start,
    )
