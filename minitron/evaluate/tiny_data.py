"""The tiny suite's task data, cut deterministically from a corpus's held-out split.

Two record sets, both pure functions of the documents and the `generate` settings of `configs/eval/tiny.yaml`:

- `held_out_documents`: the first `docs` non-trivial documents of the held-out split, in corpus order;
- `text_records`: those documents cut at a line end, for the perplexity / bits-per-byte task;
- `choice_records`: "which line comes next?" items: a span of a document, its true next line, and distractor
  lines of similar length drawn from *other* documents, the true line at a seeded position.

`prepare_tiny_tasks` writes them as jsonl next to lm-eval task yaml files whose `data_files` are absolute paths,
into a cache folder keyed by the corpus, the settings and the task templates.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from minitron.data import load_corpus
from minitron.config import stable_hash, to_plain
from minitron.errors import MinitronError
from minitron.io import atomic_path, build_once

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
TINY_TEMPLATES = TASKS_DIR / "tiny"
# template file -> the jsonl file its data_files point at
DATA_FILES: dict[str, str] = {"minitron_tiny_bpb.yaml": "text.jsonl", "minitron_tiny_mc.yaml": "mc.jsonl"}
FORMAT_VERSION = 1
_NEAREST = 4  # distractors are drawn among the 4 * (choices - 1) lines closest in length to the true one

_INT_FIELDS = ("docs", "doc_chars", "min_doc_chars", "mc_items", "choices", "context_chars", "min_line_chars", "seed")


@dataclass(frozen=True)
class GenerateSettings:
    split: str = "test"
    docs: int = 32
    doc_chars: int = 1536
    min_doc_chars: int = 64
    mc_items: int = 100
    choices: int = 4
    context_chars: int = 192
    min_line_chars: int = 16
    seed: int = 0

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any] | None) -> GenerateSettings:
        if cfg is None:
            raise MinitronError("eval.generate: the tiny suite needs its `generate` settings; see configs/eval/tiny.yaml")
        plain = dict(to_plain(cfg))
        unknown = sorted(set(plain) - set(cls.__dataclass_fields__))
        if unknown:
            raise MinitronError(f"eval.generate.{unknown[0]}: unknown setting; the valid ones are {', '.join(cls.__dataclass_fields__)}")
        for key in _INT_FIELDS:
            if key in plain and (not isinstance(plain[key], int) or isinstance(plain[key], bool)):
                raise MinitronError(f"eval.generate.{key}: {plain[key]!r} must be an integer")
        settings = cls(**plain)
        minimum = {"docs": 1, "doc_chars": 1, "min_doc_chars": 1, "mc_items": 1, "choices": 2, "context_chars": 1,
                   "min_line_chars": 1, "seed": 0}
        for key, low in minimum.items():
            if getattr(settings, key) < low:
                raise MinitronError(f"eval.generate.{key}: {getattr(settings, key)} must be at least {low}")
        if settings.split not in ("train", "validation", "test"):
            raise MinitronError(f"eval.generate.split: '{settings.split}' must be test (held out), validation or train")
        return settings


# --------------------------------------------------------------------------------------- records


def _cut_at_line_end(text: str, limit: int) -> str:
    """At most `limit` characters of `text`, ending at a line end when the text has one in range."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    end = head.rfind("\n")
    return head[: end + 1] if end > 0 else head


def text_records(documents: Sequence[str], settings: GenerateSettings) -> list[dict]:
    """Every document cut to `doc_chars` characters (at a line end)."""
    return [{"id": i, "doc": i, "text": _cut_at_line_end(text, settings.doc_chars)} for i, text in enumerate(documents)]


def _candidate_lines(lines: list[str], min_chars: int) -> list[int]:
    """Indices of lines that can be asked for: long enough, and with some text before them."""
    found, seen_text = [], False
    for i, line in enumerate(lines):
        if seen_text and len(line.strip()) >= min_chars:
            found.append(i)
        seen_text = seen_text or bool(line.strip())
    return found


def _context(lines: list[str], index: int, limit: int) -> str:
    """Whole lines before `index`, as many as fit in `limit` characters (at least the tail of the previous one)."""
    taken: list[str] = []
    size = 0
    for line in reversed(lines[:index]):
        if size + len(line) > limit:
            if not taken:
                taken.append(line[-limit:])
            break
        taken.append(line)
        size += len(line)
    return "".join(reversed(taken))


def _strip_newline(line: str) -> str:
    return line.rstrip("\r\n")


def choice_records(documents: Sequence[str], settings: GenerateSettings) -> list[dict]:
    """`mc_items` items spread round-robin over the documents; each distractor comes from another document."""
    rng = random.Random(settings.seed)
    per_doc: list[tuple[int, list[str], list[int]]] = []
    # Every occurrence of a candidate line, repeats included: distractors then follow the same distribution as the
    # true lines (common idioms as often as rare lines), which a deduplicated pool would not.
    pool: list[tuple[str, int, int]] = []  # (line, document, line index)
    for index, text in enumerate(documents):
        lines = text.splitlines(keepends=True)
        candidates = _candidate_lines(lines, settings.min_line_chars)
        if not candidates:
            continue
        pool.extend((_strip_newline(lines[i]), index, i) for i in candidates)
        order = list(candidates)
        rng.shuffle(order)
        per_doc.append((index, lines, order))
    if len(per_doc) < 2:
        raise MinitronError(
            f"eval.generate: {len(per_doc)} document(s) of the {settings.split} split have lines of at least "
            f"{settings.min_line_chars} characters; the multiple-choice task needs two or more (lower min_line_chars or use more data)"
        )

    records: list[dict] = []
    cursor = [0] * len(per_doc)
    while len(records) < settings.mc_items:
        progressed = False
        for slot, (index, lines, order) in enumerate(per_doc):
            if len(records) == settings.mc_items:
                break
            if cursor[slot] == len(order):
                continue
            line_index = order[cursor[slot]]
            cursor[slot] += 1
            progressed = True
            item = _item(index, lines, line_index, pool, settings, rng)
            if item is not None:
                item["id"] = len(records)
                records.append(item)
        if not progressed:
            break
    if len(records) < settings.mc_items:
        raise MinitronError(
            f"eval.generate.mc_items: only {len(records)} items can be cut from the {settings.split} split, "
            f"{settings.mc_items} asked for; lower mc_items or min_line_chars"
        )
    return records


def _digest(occurrence: tuple[str, int, int]) -> str:
    """An order for lines of equal length that is stable but unrelated to their content (unlike sorting the text)."""
    return hashlib.sha256(repr(occurrence).encode("utf-8")).hexdigest()


def _item(index: int, lines: list[str], line_index: int, pool: list[tuple[str, int, int]], settings: GenerateSettings,
          rng: random.Random) -> dict | None:
    true_line = _strip_newline(lines[line_index])
    others = [o for o in pool if o[1] != index and o[0] != true_line]
    wanted = settings.choices - 1
    # Lines of about the true line's length, so that length alone (which sets a random model's likelihood) gives no hint.
    others.sort(key=lambda o: (abs(len(o[0]) - len(true_line)), _digest(o)))
    distractors: list[str] = []
    for line, _, _ in rng.sample(others[: _NEAREST * wanted], min(len(others), _NEAREST * wanted)):
        if line not in distractors:
            distractors.append(line)
        if len(distractors) == wanted:
            break
    if len(distractors) < wanted:
        return None
    label = rng.randrange(settings.choices)
    choices = distractors[:label] + [true_line] + distractors[label:]
    return {
        "doc": index,
        "line": line_index,
        "context": _context(lines, line_index, settings.context_chars),
        "choices": choices,
        "label": label,
    }


# ------------------------------------------------------------------------------------- on disk


@dataclass(frozen=True)
class TinyTasks:
    """A folder holding the generated jsonl files and the lm-eval task yaml files that read them."""

    path: Path
    task_names: tuple[str, ...]
    counts: dict[str, int]


def _jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records)


def _templates_digest() -> str:
    digest = hashlib.sha256()
    for name in sorted(DATA_FILES):
        digest.update(name.encode() + b"\0" + (TINY_TEMPLATES / name).read_bytes())
    return digest.hexdigest()[:16]


def held_out_documents(corpus, settings: GenerateSettings) -> list[str]:
    """The first `docs` documents of the split (corpus order) with at least `min_doc_chars` non-blank characters."""
    if settings.split not in corpus.splits:
        raise MinitronError(f"eval.generate.split: the corpus has no '{settings.split}' split (it has {', '.join(corpus.splits)})")
    found = []
    for row in corpus.splits[settings.split]:
        text = row["text"] or ""
        if len(text.strip()) >= settings.min_doc_chars:
            found.append(text)
            if len(found) == settings.docs:
                break
    if not found:
        raise MinitronError(
            f"eval.generate.min_doc_chars: no document of the {settings.split} split has {settings.min_doc_chars}+ "
            "characters; lower it or use more data"
        )
    return found


def prepare_tiny_tasks(data_cfg: Any, generate_cfg: Mapping[str, Any], cache_dir: str | Path) -> TinyTasks:
    """Generate (once; cached) the tiny suite's data and task yaml files from `data_cfg`'s held-out split."""
    settings = GenerateSettings.from_cfg(generate_cfg)
    corpus = load_corpus(data_cfg)
    key = stable_hash(corpus.key, settings.__dict__, _templates_digest(), FORMAT_VERSION, length=16)
    folder = Path(str(cache_dir)).expanduser().resolve() / "eval" / f"tiny-{key}"
    manifest = folder / "manifest.json"
    names = tuple(Path(t).stem for t in DATA_FILES)
    build_once(folder, manifest.is_file, lambda: _write_tiny_tasks(folder, corpus, settings), what="the tiny eval tasks")
    return TinyTasks(folder, names, json.loads(manifest.read_text())["counts"])


def _write_tiny_tasks(folder: Path, corpus, settings: GenerateSettings) -> None:
    documents = held_out_documents(corpus, settings)
    texts = text_records(documents, settings)
    items = choice_records(documents, settings)
    payload = {"text.jsonl": _jsonl(texts), "mc.jsonl": _jsonl(items)}
    counts = {"minitron_tiny_bpb": len(texts), "minitron_tiny_mc": len(items)}
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        for name, text in payload.items():
            (tmp / name).write_text(text, encoding="utf-8")
        for template, data_file in DATA_FILES.items():
            spec = yaml.safe_load((TINY_TEMPLATES / template).read_text())
            # The final folder's path, not the temporary one: the folder is renamed into place below.
            spec["dataset_kwargs"] = {"data_files": {spec["test_split"]: str(folder / data_file)}}
            (tmp / template).write_text(
                f"# generated by minitron from {TINY_TEMPLATES / template}\n" + yaml.safe_dump(spec, sort_keys=False)
            )
        (tmp / "manifest.json").write_text(json.dumps(
            {"corpus": corpus.fingerprint, "generate": settings.__dict__, "counts": counts,
             "sha256": {n: hashlib.sha256(t.encode("utf-8")).hexdigest() for n, t in payload.items()}},
            indent=2, sort_keys=True) + "\n")
