"""Every shipped suite loads; the paper suite composes and resolves its seven tasks without the network."""

from __future__ import annotations

import pytest

from minitron.config import compose, config_dir
from minitron.errors import MinitronError
from minitron.evaluate import check_known, load_suite, task_manager

PAPER = [
    ("mmlu", 5), ("hellaswag", 10), ("winogrande", 5), ("arc_challenge", 25), ("gsm8k", 5), ("xlsum_en", 1),
    ("humaneval", 0),
]


def test_every_shipped_suite_loads():
    names = sorted(p.stem for p in (config_dir() / "eval").glob("*.yaml"))
    assert {"paper", "tiny"} <= set(names)
    for name in names:
        from_group = load_suite(compose("eval", [f"eval={name}"]).eval)
        assert from_group == load_suite(name)
        assert from_group.name == name and from_group.tasks


def test_paper_suite_lists_its_tasks_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    suite = load_suite(compose("eval", ["eval=paper"]).eval)
    assert [(t.task, t.num_fewshot) for t in suite.tasks] == PAPER
    assert suite.unsafe_code and suite.include_defaults and suite.generate is None
    manager = task_manager(list(suite.include_paths), suite.include_defaults)
    check_known(suite, manager)  # raises if lm-eval's index lacks any of them
    assert {"mmlu", "hellaswag", "winogrande", "arc_challenge", "gsm8k", "humaneval"} <= set(manager.all_groups + manager.all_subtasks)
    assert "xlsum_en" in manager.all_subtasks


@pytest.mark.parametrize(
    "suite, words",
    [
        ({"name": "x", "tasks": []}, "eval.tasks: suite 'x' lists no tasks"),
        ({"name": "x", "tasks": [{"task": "a"}, {"task": "a"}]}, "task 'a' is listed twice"),
        ({"name": "x", "tasks": [{"task": "a", "num_fewshot": -1}]}, "eval.tasks[0].num_fewshot"),
        ({"name": "x", "tasks": [{"task": "a", "shots": 5}]}, "eval.tasks[0].shots: unknown key"),
        ({"name": "x", "taks": [{"task": "a"}]}, "eval.taks: unknown suite key"),
        ({"name": "x", "tasks": ["a"], "include_paths": ["nope"]}, "eval.include_paths"),
        ("nope", "eval=nope: no such suite"),
    ],
)
def test_bad_suites_are_one_line_errors(suite, words):
    with pytest.raises(MinitronError) as err:
        load_suite(suite)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_an_unknown_task_is_named():
    suite = load_suite({"name": "x", "tasks": ["minitron_no_such_task"], "include_defaults": False, "include_paths": ["paper"]})
    with pytest.raises(MinitronError, match="lm-eval knows no task 'minitron_no_such_task'"):
        check_known(suite, task_manager(list(suite.include_paths), suite.include_defaults))
