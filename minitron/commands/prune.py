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
from minitron.errors import MinitronError
from minitron.io import write_json, write_text
from minitron.prune.dry_run import config_from_arch, dry_run, format_report
from minitron.prune.target import Target


def target_of(cfg: DictConfig) -> Target:
    """`cfg.target`, with the top-level `depth_metric` override applied."""
    from minitron.config import to_plain

    values = dict(to_plain(cfg.target))
    if cfg.get("depth_metric"):
        values["depth_metric"] = cfg.depth_metric
    return Target.from_mapping(values)


def source_config(cfg: DictConfig, teacher: str | Path | None = None):
    """The teacher's config: from the `teacher` (or `cfg.teacher`) folder when set, else built from
    `cfg.model.arch` (no weights)."""
    from transformers import AutoConfig

    teacher = teacher or cfg.teacher
    if teacher:
        path = Path(str(teacher)).expanduser()
        if not (path / "config.json").is_file():
            raise MinitronError(f"teacher={teacher} is not a checkpoint folder (no config.json)")
        return AutoConfig.from_pretrained(str(path), trust_remote_code=bool(cfg.model.trust_remote_code))
    return config_from_arch(cfg.model.arch, vocab_size=cfg.data.tokenizer.vocab_size)


def run(cfg: DictConfig, run_dir: str | Path | None = None) -> dict[str, Any]:
    target = target_of(cfg)
    if cfg.dry_run:
        return _dry_run(cfg, target, run_dir)
    run_dir = prepare_run_dir(cfg, run_dir)
    return prune_teacher(cfg, target, run_dir)


def _dry_run(cfg: DictConfig, target: Target, run_dir: str | Path | None) -> dict[str, Any]:
    report = dry_run(source_config(cfg), target)
    config = report.pop("config")
    print(f"minitron prune: dry run of {target.label} on {cfg.teacher or 'model=' + str(cfg.model.name)}")
    print(config.to_json_string(use_diff=False).rstrip())
    print(format_report(report))
    run_dir = prepare_run_dir(cfg, run_dir)
    write_json(run_dir / "dry_run.json", report)
    write_text(run_dir / "pruned_config.json", config.to_json_string(use_diff=False))
    return {**report, "config": config}


def _dtype_name(config) -> str:
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32"
    return str(dtype).replace("torch.", "")


def _scores_needed(target: Target, config) -> bool:
    from minitron.models import get_adapter
    from minitron.prune.target import Shape

    src, new = Shape.of(config), target.shape(config)
    if src.as_dict() | {"num_hidden_layers": 0} != new.as_dict() | {"num_hidden_layers": 0}:
        return True
    return target.drop_layers is None and new.num_hidden_layers != get_adapter(config).num_layers


def prune_teacher(cfg: DictConfig, target: Target, run_dir: Path) -> dict[str, Any]:
    from minitron.commands._run import teacher_path
    from minitron.importance import Importance
    from minitron.prune.export import prune_checkpoint_streaming, save_checkpoint
    from minitron.prune.plan import check_scores, make_plan

    out = Path(str(cfg.out)).expanduser() if cfg.out else run_dir / "pruned"
    if out.is_dir() and any(out.iterdir()) and not cfg.overwrite:
        raise MinitronError(f"out={out} is not empty; pass overwrite=true or choose another folder")
    teacher = teacher_path(cfg, run_dir)
    config = source_config(cfg, teacher)
    target.shape(config)  # an impossible target fails here, before any score or weight is computed
    importance = None
    if cfg.scores:
        importance = Importance.load(Path(str(cfg.scores)).expanduser())
        check_scores(importance, config)
    elif _scores_needed(target, config):
        importance = compute_scores(cfg, teacher, run_dir, **target.importance_options(config))
    make_plan(config, importance, target)  # every remaining check, still before anything is written

    if cfg.streaming:
        plan = prune_checkpoint_streaming(
            teacher, importance, target, out, max_shard_size=cfg.max_shard_size, overwrite=bool(cfg.overwrite),
            trust_remote_code=bool(cfg.model.trust_remote_code),
        )
    else:
        from minitron.commands._run import load_checkpoint
        from minitron.prune.model import build_pruned

        model, tokenizer = load_checkpoint(teacher, dtype=_dtype_name(config), trust_remote_code=bool(cfg.model.trust_remote_code))
        plan = make_plan(model.config, importance, target)
        pruned = build_pruned(model, plan)
        del model
        save_checkpoint(pruned, tokenizer, out, max_shard_size=cfg.max_shard_size, overwrite=bool(cfg.overwrite))
    summary = plan.summary()
    report = {
        "target": target.as_dict(),
        "teacher": str(teacher),
        "out": str(out),
        "scores": str(cfg.scores) if cfg.scores else (str(run_dir / "importance.safetensors") if importance is not None else None),
        **summary,
    }
    write_json(run_dir / "prune.json", report)
    ratio = summary["pruned_parameters"] / summary["source_parameters"]
    print(
        f"minitron prune: {summary['source_parameters']:,} -> {summary['pruned_parameters']:,} parameters ({ratio:.1%}); "
        f"pruned checkpoint in {out}"
    )
    if summary["dropped_layers"]:
        print(f"minitron prune: dropped layers {summary['dropped_layers']}")
    return report


def compute_scores(cfg: DictConfig, teacher: Path, run_dir: Path, *, depth: list[str], **blocks: Any):
    """Importance of the teacher on `calib.samples` packed blocks of `cfg.data` (saved into the run folder);
    `blocks` are estimate's block-score options (`blocks`, `block_layers`), see `Target.importance_options`."""
    from minitron.commands._run import calibration_batches, load_checkpoint, packed_data
    from minitron.importance import estimate

    model, tokenizer = load_checkpoint(teacher, dtype="float32", trust_remote_code=bool(cfg.model.trust_remote_code))
    data = packed_data(cfg, tokenizer, seq_len=int(cfg.calib.seq_len))
    batches = calibration_batches(data["train"], int(cfg.calib.samples), int(cfg.calib.batch_size), int(cfg.seed))
    print(f"minitron prune: scoring {teacher} on {cfg.calib.samples} calibration samples of {cfg.calib.seq_len} tokens")
    importance = estimate(model, batches, depth=depth, **blocks)
    importance.save(run_dir / "importance.safetensors")
    return importance

