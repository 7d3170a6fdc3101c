"""`minitron eval`: evaluate a checkpoint with lm-eval; results.json and results.md go into the run folder.

    minitron eval                                        # the embedded default teacher on the offline tiny suite
    minitron eval model_path=/path/to/checkpoint limit=16
    minitron eval eval=paper model_path=/path/to/checkpoint dtype=bfloat16   # the papers' benchmarks (hub access)
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from minitron.checkpoint import check_dtype, checkpoint_folder, load_checkpoint
from minitron.commands._run import prepare_run_dir
from minitron.evaluate import evaluate, load_suite
from minitron.real_models import NAMED, is_named, materialise
from minitron.train.pretrain import default_teacher


def run(cfg: DictConfig, run_dir: str | Path | None = None) -> dict[str, float]:
    check_dtype(cfg.dtype)
    folder = None
    if is_named(cfg.model_path):
        folder = materialise(cfg.model_path, cfg.cache_dir)
    elif cfg.model_path is not None:
        folder = checkpoint_folder(cfg.model_path, "model_path", "pass a checkpoint folder written by save_pretrained, a hub id, "
                                                                 f"a packaged model ({', '.join(NAMED)}), "
                                                                 "or leave model_path unset for the embedded default teacher")
    load_suite(cfg.eval)  # a bad suite fails before any model is built
    run_dir = prepare_run_dir(cfg, run_dir)
    if folder is None:
        folder = default_teacher(cfg.cache_dir, run_dir)
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
