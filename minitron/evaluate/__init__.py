"""Evaluation with lm-eval: suites of tasks (configs/eval/), the offline tiny tasks, results files.

    >>> from minitron.evaluate import evaluate
    >>> metrics = evaluate(model, tokenizer, "tiny", run_dir="runs/eval")   # {"tiny_bpb": ..., "tiny_mc_acc": ...}
"""

from minitron.evaluate.harness import evaluate, include_paths
from minitron.evaluate.results import flatten, markdown_table
from minitron.evaluate.suite import Suite, SuiteTask, check_known, load_suite, task_manager
from minitron.evaluate.tiny_data import (
    GenerateSettings,
    TinyTasks,
    choice_records,
    held_out_documents,
    prepare_tiny_tasks,
    text_records,
)

__all__ = [
    "GenerateSettings",
    "Suite",
    "SuiteTask",
    "TinyTasks",
    "check_known",
    "choice_records",
    "evaluate",
    "flatten",
    "held_out_documents",
    "include_paths",
    "load_suite",
    "markdown_table",
    "prepare_tiny_tasks",
    "task_manager",
    "text_records",
]
