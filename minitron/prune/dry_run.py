"""Pruned shapes and exact parameter counts from a config alone: no weights are read or allocated."""

from __future__ import annotations

from typing import Any

import torch
from hydra.utils import get_class
from omegaconf import DictConfig
from transformers import AutoModelForCausalLM, PretrainedConfig

from minitron.checkpoint import checkpoint_folder, load_config
from minitron.config import to_plain
from minitron.errors import MinitronError, first_line
from minitron.models import get_adapter
from minitron.prune.target import Shape, Target


def config_from_arch(arch: DictConfig | dict[str, Any], *, vocab_size: int | None = None) -> PretrainedConfig:
    """The config class named by `arch._target_`, built with the other keys (`vocab_size: null` takes `vocab_size`)."""
    values = dict(to_plain(arch))
    target = values.pop("_target_", None)
    if not target:
        raise MinitronError("model.arch has no _target_; name the config class, e.g. transformers.NemotronConfig")
    if values.get("vocab_size") is None:
        if vocab_size is None:
            raise MinitronError("model.arch.vocab_size is null; set it to count parameters from the config alone")
        values["vocab_size"] = int(vocab_size)
    try:
        cls = get_class(target)
    except (ImportError, ValueError) as e:
        first = first_line(e)
        raise MinitronError(f"model.arch._target_={target} is not an importable config class ({first})") from None
    return cls(**values)


def source_config(teacher: Any, arch: Any, *, vocab_size: int | None = None, trust_remote_code: bool = False) -> PretrainedConfig:
    """The config of the model to prune: the `teacher` checkpoint's when given, else built from `arch` (no weights)."""
    if teacher:
        return load_config(checkpoint_folder(teacher, "teacher", weights=False), trust_remote_code=trust_remote_code)
    return config_from_arch(arch, vocab_size=vocab_size)


def meta_parameters(config: PretrainedConfig) -> int:
    """The parameter count of a model built on the meta device (tied embeddings counted once)."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return model.num_parameters()


def dry_run(config: PretrainedConfig, target: Target | Any) -> dict[str, Any]:
    """The pruned config and parameter counts of `target` applied to `config`. Which layers a depth target drops
    depends on the scores, but the counts do not (every layer of a homogeneous model has the same size)."""
    target = Target.from_mapping(target)
    pruned = target.resolve(config)
    source, after = get_adapter(config), get_adapter(pruned)
    embedding = lambda a: a.config.vocab_size * a.hidden_size * (1 if a.tied_embeddings else 2)
    return {
        "target": target.name,
        "source_shape": Shape.of(config).as_dict(),
        "pruned_shape": Shape.of(pruned).as_dict(),
        "head_dim": after.head_dim,
        "source_parameters": source.num_parameters(),
        "pruned_parameters": after.num_parameters(),
        "source_non_embedding_parameters": source.num_parameters() - embedding(source),
        "pruned_non_embedding_parameters": after.num_parameters() - embedding(after),
        "drop_layers": None if target.drop_layers is None else list(target.drop_layers),
        "keep_layers": None if target.drop_layers is None else target.keep_layers(config, None),
        "depth_metric": target.depth_metric,
        "config": pruned,
    }


def format_report(report: dict[str, Any]) -> str:
    """A human summary of `dry_run` (or of a real prune, which reports the same keys)."""
    src, new = report["source_shape"], report["pruned_shape"]
    width = max(map(len, src))
    col = max(len(f"{report['source_parameters']:,}"), 6)
    lines = [f"{'':<{width}}  {'source':>{col}}  {'pruned':>{col}}"]
    for key in src:
        lines.append(f"{key:<{width}}  {src[key]:>{col},}  {new[key]:>{col},}")
    ratio = report["pruned_parameters"] / report["source_parameters"]
    lines.append(f"{'parameters':<{width}}  {report['source_parameters']:>{col},}  {report['pruned_parameters']:>{col},}  ({ratio:.1%})")
    lines.append(
        f"{'non-embedding':<{width}}  {report['source_non_embedding_parameters']:>{col},}  "
        f"{report['pruned_non_embedding_parameters']:>{col},}"
    )
    lines += layer_lines(src["num_hidden_layers"], new["num_hidden_layers"], report.get("drop_layers"),
                         report.get("depth_metric"))
    return "\n".join(lines)


def layer_lines(source_layers: int, pruned_layers: int, drop_layers: list[int] | None, depth_metric: str | None) -> list[str]:
    """The kept and dropped layers (0-based) of a depth target, or which scores will choose them."""
    if drop_layers:
        keep = [i for i in range(source_layers) if i not in set(drop_layers)]
        return [f"kept layers (from 0): {keep}", f"dropped layers (from 0): {list(drop_layers)}"]
    if pruned_layers != source_layers:
        by = f"depth_metric={depth_metric}" if depth_metric else "the depth metric"
        return [f"layers: {pruned_layers} of {source_layers} kept, chosen by {by} from the importance scores"]
    return []
