"""`minitron eval`: evaluate a checkpoint with lm-eval; results.json and results.md go into the run folder.

    minitron eval                                        # the embedded default teacher on the offline tiny suite
    minitron eval model_path=/path/to/checkpoint limit=16
    minitron eval eval=paper model_path=/path/to/checkpoint dtype=bfloat16   # the papers' benchmarks (hub access)
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from minitron.commands._run import load_checkpoint, prepare_run_dir, teacher_path
from minitron.errors import MinitronError

DTYPES = ("float32", "bfloat16", "float16")


def checkpoint_folder(model_path: str | None) -> Path | None:
    """`model_path` as a checkpoint folder, or None for the embedded default teacher."""
    if model_path is None:
        return None
    path = Path(str(model_path)).expanduser()
    if not path.is_dir():
        raise MinitronError(
            f"model_path={model_path} is not a folder; pass a checkpoint folder written by save_pretrained, "
            "or leave model_path unset for the embedded default teacher"
        )
    if not (path / "config.json").is_file():
        raise MinitronError(f"model_path={model_path} has no config.json; point it at a folder written by save_pretrained")
    return path


def run(cfg: DictConfig, run_dir: str | Path | None = None) -> dict[str, float]:
    from minitron.evaluate import evaluate, load_suite

    if cfg.dtype not in DTYPES:
        raise MinitronError(f"dtype={cfg.dtype} is not supported; use one of {', '.join(DTYPES)}")
    folder = checkpoint_folder(cfg.model_path)
    load_suite(cfg.eval)  # a bad suite fails before any model is built
    run_dir = prepare_run_dir(cfg, run_dir)
    if folder is None:
        folder = teacher_path(cfg, run_dir)
    model, tokenizer = load_checkpoint(folder, dtype=cfg.dtype, trust_remote_code=bool(cfg.trust_remote_code))
    metrics = evaluate(
        model,
        tokenizer,
        cfg.eval,
        run_dir,
        data_cfg=cfg.data,
        cache_dir=cfg.cache_dir,
        limit=cfg.limit,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        model_name=str(folder),
    )
    print((run_dir / "results.md").read_text(), end="")
    print(f"results: {run_dir / 'results.json'}")
    return metrics
