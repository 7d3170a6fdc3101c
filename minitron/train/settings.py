"""`TrainSettings`: the `train` config group as a checked, typed value.

Built once from a composed config (`TrainSettings.from_config(cfg)`, which also takes the DeepSpeed config of the
`deepspeed` group) or from a bare `configs/train/*.yaml` mapping (`TrainSettings.of(mapping)`); a variation is
`dataclasses.replace(settings, ...)` or `settings.for_steps(n)`, and every check runs again in `__post_init__`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from minitron.config import to_plain
from minitron.errors import MinitronError

LOGGERS = ("none", "wandb", "tensorboard")


@dataclass(frozen=True)
class TrainSettings:
    max_steps: int
    lr: float
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    min_lr_ratio: float = 0.1
    warmup_steps: int = 0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    max_grad_norm: float = 1.0
    logging_steps: int = 10
    save_steps: int = 0
    save_total_limit: int = 2
    eval_batches: int | None = None
    bf16: bool | str = "auto"
    gradient_checkpointing: bool = False
    deepspeed: Any = None
    logger: str = "none"
    dataloader_num_workers: int = 0

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise MinitronError(f"train.lr must be positive, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise MinitronError(f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.max_steps <= 0:
            raise MinitronError(f"train.max_steps must be a positive number of optimizer steps, got {self.max_steps}")
        if self.batch_size <= 0 or self.gradient_accumulation_steps <= 0:
            raise MinitronError("train.batch_size and train.gradient_accumulation_steps must be positive")
        if self.warmup_steps < 0 or self.save_steps < 0:
            raise MinitronError("train.warmup_steps and train.save_steps must be >= 0")
        if self.logger not in LOGGERS:
            raise MinitronError(f"train.logger must be none, wandb or tensorboard, got '{self.logger}'")
        if not (isinstance(self.bf16, bool) or self.bf16 == "auto"):
            raise MinitronError(f"train.bf16 must be auto, true or false, got {self.bf16!r}")

    @classmethod
    def of(cls, train: Any) -> TrainSettings:
        """Settings from a `configs/train/*.yaml` mapping (a TrainSettings passes through unchanged)."""
        if isinstance(train, TrainSettings):
            return train
        values = dict(to_plain(train))
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise MinitronError(f"unknown train setting(s) {', '.join(unknown)}; the keys are those of configs/train/tiny.yaml")
        if "max_steps" not in values or "lr" not in values:
            raise MinitronError("the train settings need max_steps and lr (see configs/train/)")
        return cls(**values)

    @classmethod
    def from_config(cls, cfg: Any) -> TrainSettings:
        """`cfg.train`, with `deepspeed` taken from the `deepspeed` group when one is selected."""
        settings = cls.of(cfg.train)
        ds = cfg.get("deepspeed") if hasattr(cfg, "get") else None
        return dataclasses.replace(settings, deepspeed=to_plain(ds)) if ds else settings

    def for_steps(self, steps: int, **changes: Any) -> TrainSettings:
        """The same schedule shape over `steps` optimizer steps: warm-up at most a tenth of them (at least one)
        and checkpoints no further apart than the run is long."""
        steps = int(steps)
        values = {"max_steps": steps, "warmup_steps": min(self.warmup_steps, max(1, steps // 10)),
                  "save_steps": min(self.save_steps, steps)}
        return dataclasses.replace(self, **{**values, **changes})

    @property
    def mapping(self) -> dict[str, Any]:
        """The settings as a plain mapping (the shape of `configs/train/*.yaml`), e.g. for a cache key."""
        return dataclasses.asdict(self)
