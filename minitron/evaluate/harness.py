"""Run an lm-eval suite in-process over a loaded model and tokenizer; write results.json and results.md."""

from __future__ import annotations

from importlib.metadata import version

import contextlib
import json
import logging
import os
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from minitron.config import compose
from minitron.errors import MinitronError, hub_problem
from minitron.evaluate.results import flatten, markdown_table
from minitron.evaluate.suite import Suite, check_known, load_suite, task_manager
from minitron.evaluate.tiny_data import prepare_tiny_tasks
from minitron.io import write_text

# The parts of lm-eval's answer worth keeping (the rest repeats the arguments or holds per-sample logs).
_KEPT = ("results", "groups", "group_subtasks", "n-shot", "n-samples", "higher_is_better", "versions", "configs")


def include_paths(suite: Suite, data_cfg: Any = None, cache_dir: str | Path | None = None) -> list[Path]:
    """The folders lm-eval indexes for `suite`; the tiny suite's is generated (once) from the data's held-out split."""
    paths = list(suite.include_paths)
    if suite.generate is not None:
        if data_cfg is None or cache_dir is None:
            base = compose("eval")
            data_cfg = base.data if data_cfg is None else data_cfg
            cache_dir = base.cache_dir if cache_dir is None else cache_dir
        paths.append(prepare_tiny_tasks(data_cfg, suite.generate, cache_dir).path)
    return paths


@contextlib.contextmanager
def _kept_rng_state() -> Iterator[None]:
    """lm-eval reseeds Python, NumPy and torch; give the caller its own random streams back."""
    py, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(np_state)


def _check_limit(limit: int | float | None) -> int | float | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit <= 0:
        raise MinitronError(f"limit={limit!r} must be a positive number of documents per task (or a fraction below 1), or null")
    if isinstance(limit, float) and limit >= 1:
        if limit != int(limit):
            raise MinitronError(f"limit={limit} must be a whole number of documents, or a fraction below 1")
        return int(limit)
    return limit


def evaluate(
    model,
    tokenizer,
    suite_cfg: Any,
    run_dir: str | Path | None = None,
    *,
    data_cfg: Any = None,
    cache_dir: str | Path | None = None,
    limit: int | float | None = None,
    batch_size: int = 8,
    seed: int = 0,
    model_name: str | None = None,
) -> dict[str, float]:
    """Evaluate `model` on a suite with lm-eval's `HFLM` wrapper; returns the suite's flat metrics.

    `suite_cfg` is a suite config node (`cfg.eval`), a dict, or a suite name ("tiny", "paper"). The tiny suite
    generates its task data from `data_cfg`'s held-out split into `cache_dir` (defaults: the embedded corpus and
    the usual cache). With a `run_dir`, results.json (lm-eval's results and the flat metrics) and results.md
    (a markdown table) are written into it atomically.
    """
    # lm-eval is imported here, not at the top: it takes seconds to load and the pipeline imports this module
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    suite = load_suite(suite_cfg)
    limit = _check_limit(limit)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise MinitronError(f"batch_size={batch_size!r} must be a positive integer")
    paths = include_paths(suite, data_cfg, cache_dir)
    manager = task_manager(paths, suite.include_defaults)
    check_known(suite, manager)

    if suite.unsafe_code:
        # HF evaluate's code_eval (HumanEval) refuses to run unless this is set; the suite has opted in explicitly.
        os.environ.setdefault("HF_ALLOW_CODE_EVAL", "1")
    started = time.perf_counter()
    was_training = model.training
    model.eval()
    lm_logger = logging.getLogger("lm_eval")
    old_level = lm_logger.level
    lm_logger.setLevel(logging.WARNING)
    try:
        with _kept_rng_state():
            tasks = _load_tasks(suite, manager)
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
            results = simple_evaluate(
                model=lm,
                tasks=tasks,
                limit=limit,
                task_manager=manager,
                log_samples=False,
                bootstrap_iters=suite.bootstrap_iters,
                confirm_run_unsafe_code=suite.unsafe_code,
                random_seed=seed,
                numpy_random_seed=seed,
                torch_random_seed=seed,
                fewshot_random_seed=seed,
            )
    finally:
        lm_logger.setLevel(old_level)
        model.train(was_training)
    seconds = time.perf_counter() - started

    metrics, rows = flatten(results, suite)
    for task in suite.tasks:
        missing = [m for m in task.metrics if task.metrics[m] not in metrics]
        if missing:
            print(f"warning: lm-eval reported no '{missing[0]}' for task {task.task}", file=sys.stderr)
    if run_dir is not None:
        name = model_name or str(getattr(model.config, "_name_or_path", "") or type(model).__name__)
        _write(Path(run_dir), suite, results, metrics, rows, paths, name, limit, batch_size, seconds)
    return metrics


def _load_tasks(suite: Suite, manager) -> list:
    """The suite's tasks and groups as lm-eval objects, every leaf task set to its entry's shots."""
    objects: list = []
    for entry in suite.tasks:
        try:
            loaded = manager.load([entry.task])
        except Exception as err:  # a task whose dataset is on the Hub, without hub access: say so, not "a path"
            hub = hub_problem(err)
            if hub is None:
                raise
            raise MinitronError(f"eval: task {entry.task}: {hub}; or use eval=tiny, which needs no download") from err
        for task in loaded["tasks"].values():
            task.set_config(key="num_fewshot", value=entry.num_fewshot)
        top = loaded["groups"].get(entry.task) or loaded["tasks"].get(entry.task)
        if top is None:  # a tag: a loose set of tasks
            objects.extend(loaded["tasks"].values())
        else:
            objects.append(top)
    return objects


def _lm_eval_version() -> str:
    return version("lm_eval")


def _write(run_dir: Path, suite: Suite, results: dict, metrics: dict[str, float], rows: list[dict], paths: list[Path],
           model_name: str, limit, batch_size: int, seconds: float) -> None:
    from lm_eval.utils import handle_non_serializable  # lm-eval is loaded by now (see evaluate)

    record = {
        "suite": suite.name,
        "model": model_name,
        "metrics": metrics,
        "rows": rows,
        "tasks": [{"task": t.task, "num_fewshot": t.num_fewshot} for t in suite.tasks],
        "include_paths": [str(p) for p in paths],
        "limit": limit,
        "batch_size": batch_size,
        "seconds": round(seconds, 2),
        "lm_eval_version": _lm_eval_version(),
        "lm_eval": {k: results[k] for k in _KEPT if k in results},
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / "results.json", json.dumps(record, indent=2, default=handle_non_serializable) + "\n")
    header = (
        f"# lm-eval suite `{suite.name}`\n\n"
        f"model: `{model_name}` · lm-eval {_lm_eval_version()} · limit: {limit if limit is not None else 'none'}"
        f" · {seconds:.1f} s\n\n"
    )
    write_text(run_dir / "results.md", header + markdown_table(rows))
