"""The tiny suite's task data: deterministic bytes, held-out text only, well-formed multiple-choice items."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from minitron.config import compose
from minitron.data import load_corpus
from minitron.errors import MinitronError
from minitron.evaluate import GenerateSettings, choice_records, prepare_tiny_tasks, text_records
from minitron.evaluate.tiny_data import TINY_TEMPLATES


def _generate(overrides: list[str], cache: Path):
    cfg = compose("eval", [*overrides, f"cache_dir={cache}"])
    return cfg, prepare_tiny_tasks(cfg.data, cfg.eval.generate, cfg.cache_dir)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_same_bytes_from_two_fresh_caches(small_eval, tmp_path):
    _, first = _generate(small_eval, tmp_path / "a")
    _, second = _generate(small_eval, tmp_path / "b")
    assert first.path != second.path
    for name in ("text.jsonl", "mc.jsonl"):
        assert (first.path / name).read_bytes() == (second.path / name).read_bytes()
    assert first.counts == second.counts == {"minitron_tiny_bpb": 6, "minitron_tiny_mc": 12}
    assert sorted(p.name for p in first.path.iterdir()) == [
        "manifest.json", "mc.jsonl", "minitron_tiny_bpb.yaml", "minitron_tiny_mc.yaml", "text.jsonl"]


def test_task_yaml_points_at_the_generated_data_by_absolute_path(small_eval, tmp_path):
    _, tasks = _generate(small_eval, tmp_path / "cache")
    for name, data in (("minitron_tiny_bpb", "text.jsonl"), ("minitron_tiny_mc", "mc.jsonl")):
        spec = yaml.safe_load((tasks.path / f"{name}.yaml").read_text())
        path = Path(spec["dataset_kwargs"]["data_files"]["test"])
        assert spec["task"] == name and spec["dataset_path"] == "json"
        assert path.is_absolute() and path == tasks.path / data and path.is_file()
    # the package's templates are left untouched
    template = TINY_TEMPLATES / "minitron_tiny_mc.yaml"
    assert yaml.safe_load(template.read_text())["dataset_kwargs"]["data_files"]["test"] == "mc.jsonl"


def test_a_second_call_reuses_the_cache_and_other_settings_do_not(small_eval, tmp_path):
    _, first = _generate(small_eval, tmp_path / "cache")
    stamp = (first.path / "mc.jsonl").stat().st_mtime_ns
    _, again = _generate(small_eval, tmp_path / "cache")
    assert again.path == first.path and (again.path / "mc.jsonl").stat().st_mtime_ns == stamp
    _, other = _generate([*small_eval, "eval.generate.seed=1"], tmp_path / "cache")
    assert other.path != first.path
    assert (other.path / "text.jsonl").read_bytes() == (first.path / "text.jsonl").read_bytes()
    assert (other.path / "mc.jsonl").read_bytes() != (first.path / "mc.jsonl").read_bytes()


def test_everything_comes_from_the_test_split(small_eval, tmp_path):
    cfg, tasks = _generate(small_eval, tmp_path / "cache")
    corpus = load_corpus(cfg.data)
    test_docs = list(corpus.splits["test"]["text"])
    texts = _jsonl(tasks.path / "text.jsonl")
    items = _jsonl(tasks.path / "mc.jsonl")

    # the perplexity documents: the first test documents, each cut at a line end
    assert [r["doc"] for r in texts] == list(range(6))
    for record in texts:
        source = test_docs[record["doc"]]
        assert source.startswith(record["text"]) and record["text"].endswith("\n")
        assert 0 < len(record["text"]) <= 600
    every_line = [line for r in texts for line in r["text"].splitlines()]
    every_line += [line for item in items for line in item["context"].splitlines() + item["choices"]]
    assert every_line and all("test" in line and "train" not in line and "validation" not in line for line in every_line)

    for item in items:
        source = test_docs[item["doc"]]
        true_line = item["choices"][item["label"]]
        assert (item["context"] + true_line) in source
        assert source.splitlines()[item["line"]] == true_line
        assert len(item["context"]) <= 200 and item["context"].endswith("\n")
        distractors = [c for i, c in enumerate(item["choices"]) if i != item["label"]]
        assert len(set(item["choices"])) == 4
        assert true_line not in distractors
        for line in distractors:  # drawn from other test documents
            assert any(line in doc.splitlines() for j, doc in enumerate(test_docs) if j != item["doc"])


def test_items_spread_over_documents_and_answer_positions():
    documents = [
        "".join(f"line {j} of document {d} with some padding text\n" for j in range(20)) for d in range(5)
    ]
    settings = GenerateSettings(mc_items=40, seed=3)
    items = choice_records(documents, settings)
    assert len(items) == 40 and [it["id"] for it in items] == list(range(40))
    assert {it["doc"] for it in items} == set(range(5))
    assert {it["label"] for it in items} == {0, 1, 2, 3}
    assert choice_records(documents, settings) == items
    assert choice_records(documents, GenerateSettings(mc_items=40, seed=4)) != items
    # distractors are of about the true line's length
    for it in items:
        lengths = [len(c) for c in it["choices"]]
        assert max(lengths) - min(lengths) <= 2


def test_documents_are_cut_at_a_line_end():
    doc = "".join(f"{i:04d} abcdefghij\n" for i in range(100))  # 16-character lines
    [record] = text_records([doc], GenerateSettings(doc_chars=100))
    assert record["text"] == doc[:96]


@pytest.mark.parametrize(
    "override, words",
    [
        ("eval.generate.choices=1", "eval.generate.choices: 1 must be at least 2"),
        ("eval.generate.split=dev", "eval.generate.split"),
        ("eval.generate.mc_items=100000", "eval.generate.mc_items"),
        ("eval.generate.min_doc_chars=1000000", "eval.generate.min_doc_chars"),
    ],
)
def test_bad_settings_are_one_line_errors(small_eval, tmp_path, override, words):
    with pytest.raises(MinitronError) as err:
        _generate([*small_eval, override], tmp_path / "cache")
    assert words in str(err.value) and "\n" not in str(err.value)
    # nothing written but the entry's lock file (kept on purpose, see minitron.io.file_lock)
    eval_cache = tmp_path / "cache" / "eval"
    assert not eval_cache.exists() or all(p.name.endswith(".lock") for p in eval_cache.iterdir())
