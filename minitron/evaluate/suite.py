"""An evaluation suite (`configs/eval/<name>.yaml`): lm-eval tasks with their shots and the flat names of their metrics."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from minitron.config import config_dir, to_plain
from minitron.errors import MinitronError
from minitron.evaluate.tiny_data import TASKS_DIR

_SUITE_KEYS = ("name", "include_defaults", "include_paths", "unsafe_code", "bootstrap_iters", "tasks", "generate")
_TASK_KEYS = ("task", "num_fewshot", "metrics")


@dataclass(frozen=True)
class SuiteTask:
    task: str
    num_fewshot: int
    metrics: dict[str, str] = field(default_factory=dict)  # "metric" or "metric,filter" -> flat name


@dataclass(frozen=True)
class Suite:
    name: str
    tasks: tuple[SuiteTask, ...]
    include_defaults: bool = True
    include_paths: tuple[Path, ...] = ()
    unsafe_code: bool = False
    bootstrap_iters: int = 1000
    generate: dict | None = None

    @property
    def task_names(self) -> list[str]:
        return [t.task for t in self.tasks]


def load_suite(suite_cfg: Any) -> Suite:
    """A `Suite` from a suite config node (`cfg.eval`), a plain dict, or a suite name such as "tiny"."""
    if isinstance(suite_cfg, str):
        path = config_dir() / "eval" / f"{suite_cfg}.yaml"
        if not path.is_file():
            choices = ", ".join(sorted(p.stem for p in path.parent.glob("*.yaml")))
            raise MinitronError(f"eval={suite_cfg}: no such suite in configs/eval/; choose one of: {choices}")
        suite_cfg = OmegaConf.load(path)
    plain = to_plain(suite_cfg)
    if not isinstance(plain, Mapping):
        raise MinitronError(f"eval: a suite must be a mapping with keys {', '.join(_SUITE_KEYS)}; see configs/eval/tiny.yaml")
    unknown = sorted(set(plain) - set(_SUITE_KEYS))
    if unknown:
        raise MinitronError(f"eval.{unknown[0]}: unknown suite key; the valid ones are {', '.join(_SUITE_KEYS)}")
    name = str(plain.get("name") or "suite")
    raw_tasks = plain.get("tasks") or []
    if not isinstance(raw_tasks, list) or not raw_tasks:
        raise MinitronError(f"eval.tasks: suite '{name}' lists no tasks; add entries like {{task: hellaswag, num_fewshot: 10}}")
    tasks = tuple(_task(entry, i) for i, entry in enumerate(raw_tasks))
    seen = [t.task for t in tasks]
    dupes = sorted({t for t in seen if seen.count(t) > 1})
    if dupes:
        raise MinitronError(f"eval.tasks: task '{dupes[0]}' is listed twice in suite '{name}'; keep one entry")
    bootstrap = plain.get("bootstrap_iters", 1000)
    if not isinstance(bootstrap, int) or isinstance(bootstrap, bool) or bootstrap < 0:
        raise MinitronError(f"eval.bootstrap_iters: {bootstrap!r} must be an integer >= 0 (0 skips the stderr)")
    return Suite(
        name=name,
        tasks=tasks,
        include_defaults=bool(plain.get("include_defaults", True)),
        include_paths=tuple(_include_path(p) for p in plain.get("include_paths") or []),
        unsafe_code=bool(plain.get("unsafe_code", False)),
        bootstrap_iters=bootstrap,
        generate=plain.get("generate"),
    )


def _task(entry: Any, index: int) -> SuiteTask:
    if isinstance(entry, str):
        entry = {"task": entry}
    if not isinstance(entry, Mapping) or not entry.get("task"):
        raise MinitronError(f"eval.tasks[{index}]: {entry!r} must be a mapping with a `task` name")
    unknown = sorted(set(entry) - set(_TASK_KEYS))
    if unknown:
        raise MinitronError(f"eval.tasks[{index}].{unknown[0]}: unknown key; use {', '.join(_TASK_KEYS)}")
    shots = entry.get("num_fewshot", 0)
    if not isinstance(shots, int) or isinstance(shots, bool) or shots < 0:
        raise MinitronError(f"eval.tasks[{index}].num_fewshot: {shots!r} must be an integer >= 0")
    metrics = entry.get("metrics") or {}
    if not isinstance(metrics, Mapping) or not all(isinstance(v, str) and v for v in metrics.values()):
        raise MinitronError(f"eval.tasks[{index}].metrics: must map lm-eval metric names to flat names, e.g. {{acc: hellaswag_acc}}")
    return SuiteTask(task=str(entry["task"]), num_fewshot=shots, metrics={str(k): v for k, v in metrics.items()})


def _include_path(name: str) -> Path:
    """A folder of task yaml files: absolute, or relative to minitron/evaluate/tasks/."""
    path = Path(str(name)).expanduser()
    path = path if path.is_absolute() else TASKS_DIR / path
    if not path.is_dir():
        raise MinitronError(f"eval.include_paths: {path} is not a folder of lm-eval task yaml files; fix the path")
    return path


def task_manager(include_paths: list[Path], include_defaults: bool):
    """lm-eval's task index over our folders (and its built-in tasks when asked for)."""
    from lm_eval.tasks import TaskManager  # seconds to import: only when a suite is evaluated

    return TaskManager(include_path=[str(p) for p in include_paths] or None, include_defaults=include_defaults)


def check_known(suite: Suite, manager) -> None:
    """Every task of the suite is in lm-eval's index (no network needed to know that)."""
    known = set(manager.all_tasks)
    for task in suite.tasks:
        if task.task not in known:
            where = "lm-eval's built-in tasks" if suite.include_defaults else "the suite's own task folders"
            raise MinitronError(
                f"eval.tasks: lm-eval knows no task '{task.task}' among {where}; check the name with `lm_eval ls tasks`"
            )
