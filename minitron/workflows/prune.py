"""Prune a teacher checkpoint to a target: the scores (given, or computed on calibration data), the plan, and the
export (in memory, or tensor by tensor from the safetensors for models larger than memory)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from transformers import PretrainedConfig

from minitron.checkpoint import config_dtype, load_checkpoint, save_checkpoint
from minitron.config import to_plain
from minitron.data.calibration import Calibration
from minitron.errors import MinitronError
from minitron.importance import SCORES_FILE, Importance, score_checkpoint
from minitron.io import write_json
from minitron.models import get_adapter
from minitron.prune import build_pruned, make_plan, prune_checkpoint_streaming
from minitron.prune.dry_run import source_config
from minitron.prune.target import Shape, Target
from minitron.train.pretrain import teacher_path


def target_of(cfg: DictConfig) -> Target:
    """`cfg.target`, with the top-level `depth_metric` override applied."""
    values = dict(to_plain(cfg.target))
    if cfg.get("depth_metric"):
        values["depth_metric"] = cfg.depth_metric
    return Target.from_mapping(values)


def config_of(cfg: DictConfig, teacher: Path | None = None) -> PretrainedConfig:
    """The source config: the teacher's (`teacher`, or `cfg.teacher`), else built from `cfg.model.arch`."""
    if teacher is None and cfg.teacher:  # a folder, or a packaged model (converted once); nothing is trained here
        teacher = teacher_path(cfg, Path("."))
    return source_config(teacher, cfg.model.arch, vocab_size=cfg.data.tokenizer.vocab_size,
                         trust_remote_code=bool(cfg.model.trust_remote_code))


def given_scores(cfg: DictConfig, config: PretrainedConfig) -> Importance | None:
    """The scores file `cfg.scores` names, checked against the source config; None when unset."""
    if not cfg.scores:
        return None
    importance = Importance.load(Path(str(cfg.scores)).expanduser())
    importance.check_model(config)
    return importance


def compute_scores(cfg: DictConfig, teacher: Path, run_dir: Path, **options: Any) -> Importance:
    """The teacher's importance on `cfg.calib` blocks of `cfg.data`, saved into the run folder; `options` are
    `estimate`'s (the depth and block scores a target needs: `Target.importance_options`)."""
    calib = Calibration.from_config(cfg.calib, cfg.data.seq_len)
    importance = score_checkpoint(teacher, cfg.data, cfg.cache_dir, calib, seed=int(cfg.seed),
                                  trust_remote_code=bool(cfg.model.trust_remote_code), **options)
    importance.save(run_dir / SCORES_FILE)
    return importance


def scores_needed(target: Target, config: PretrainedConfig) -> bool:
    """Whether pruning `config` to `target` reads importance scores (a width cut, or layers chosen by score)."""
    src, new = Shape.of(config), target.shape(config)
    if src.as_dict() | {"num_hidden_layers": 0} != new.as_dict() | {"num_hidden_layers": 0}:
        return True
    return target.drop_layers is None and new.num_hidden_layers != get_adapter(config).num_hidden_layers


def prune_teacher(cfg: DictConfig, target: Target, run_dir: Path) -> dict[str, Any]:
    """Prune the teacher (`cfg.teacher`, or the embedded default) to `target` into `cfg.out` (or RUN_DIR/pruned);
    writes prune.json into the run folder and returns its contents."""
    out = Path(str(cfg.out)).expanduser() if cfg.out else run_dir / "pruned"
    if out.is_dir() and any(out.iterdir()) and not cfg.overwrite:
        raise MinitronError(f"out={out} is not empty; pass overwrite=true or choose another folder")
    teacher = teacher_path(cfg, run_dir)
    config = config_of(cfg, teacher)
    target.shape(config)  # an impossible target fails here, before any score or weight is computed
    importance = given_scores(cfg, config)
    if importance is None and scores_needed(target, config):
        importance = compute_scores(cfg, teacher, run_dir, **target.importance_options(config))
    make_plan(config, importance, target)  # every remaining check, still before anything is written

    trust = bool(cfg.model.trust_remote_code)
    if cfg.streaming:
        plan = prune_checkpoint_streaming(teacher, importance, target, out, max_shard_size=cfg.max_shard_size,
                                          overwrite=bool(cfg.overwrite), trust_remote_code=trust)
    else:
        model, tokenizer = load_checkpoint(teacher, dtype=config_dtype(config), trust_remote_code=trust)
        plan = make_plan(model.config, importance, target)
        pruned = build_pruned(model, plan)
        del model
        save_checkpoint(pruned, tokenizer, out, max_shard_size=cfg.max_shard_size, overwrite=bool(cfg.overwrite))
    summary = plan.summary()
    scores = str(cfg.scores) if cfg.scores else (str(run_dir / SCORES_FILE) if importance is not None else None)
    report = {"target": target.as_dict(), "teacher": str(teacher), "out": str(out), "scores": scores, **summary}
    write_json(run_dir / "prune.json", report)
    ratio = summary["pruned_parameters"] / summary["source_parameters"]
    print(f"minitron prune: {summary['source_parameters']:,} -> {summary['pruned_parameters']:,} parameters ({ratio:.1%}); "
          f"pruned checkpoint in {out}")
    if summary["dropped_layers"]:
        print(f"minitron prune: dropped layers {summary['dropped_layers']}")
    return report


