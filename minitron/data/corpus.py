"""Raw text corpora: the embedded Python standard library, an installed package's modules, local files, or a
Hugging Face dataset.

Every source ends as a `Corpus`: train/validation/test splits with one "text" column and a
JSON fingerprint that identifies the content, so that tokenizers and packed data can be cached.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import sysconfig
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import datasets
from datasets import Dataset, DatasetDict, Features, IterableDataset, IterableDatasetDict, Value
from omegaconf import DictConfig, OmegaConf

from minitron.errors import MinitronError
from minitron.ranks import is_main_process

SPLITS: tuple[str, ...] = ("train", "validation", "test")
TEXT_FEATURES = Features({"text": Value("string")})
DEFAULT_FRACTIONS: dict[str, float] = {"validation": 0.02, "test": 0.02}
LOCAL_SUFFIXES: dict[str, str] = {".txt": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
_SUPPORTED = ".txt/.json/.jsonl/.parquet"
_EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})
# A data file whose name (or folder) starts with one of these words belongs to that split.
_SPLIT_NAME = re.compile(r"^(train|training|validation|valid|val|dev|test|testing)(?![a-z])")
_SPLIT_ALIASES = {
    "training": "train",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "testing": "test",
}


@dataclass
class Corpus:
    """Text splits plus a fingerprint of where they came from."""

    splits: DatasetDict | IterableDatasetDict
    fingerprint: dict

    @property
    def key(self) -> str:
        return fingerprint_key(self.fingerprint)


def fingerprint_key(fingerprint: Mapping[str, Any]) -> str:
    """A short hex digest of a JSON-serialisable fingerprint (stable across processes and machines)."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------- config


def _field(cfg: Any, key: str, default: Any = None) -> Any:
    """cfg.key for a dict or DictConfig; a mandatory `???` reads as None."""
    try:
        if isinstance(cfg, DictConfig):
            if key not in cfg or OmegaConf.is_missing(cfg, key):
                return default
            return cfg.get(key)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    value = cfg.get(key, default) if isinstance(cfg, Mapping) else getattr(cfg, key, default)
    return default if value == "???" else value


def _required(cfg: Any, key: str, source: str, hint: str) -> Any:
    value = _field(cfg, key)
    if value is None or value == "":
        raise MinitronError(f"data.{key}: is required when data.source={source}; set data.{key}={hint}")
    return value


def _fractions(cfg: Any) -> dict[str, float]:
    out = {}
    for split in ("validation", "test"):
        value = _field(cfg, f"{split}_fraction", DEFAULT_FRACTIONS[split])
        try:
            value = float(value)
        except (TypeError, ValueError):
            value = -1.0
        if not 0.0 <= value < 1.0:
            raise MinitronError(f"data.{split}_fraction: {value!r} is not in [0, 1); use e.g. 0.02")
        out[split] = value
    if out["validation"] + out["test"] >= 1.0:
        raise MinitronError(
            "data.validation_fraction: validation_fraction + test_fraction must be below 1; lower them"
        )
    return out


def _int_field(cfg: Any, key: str, default: int | None, minimum: int) -> int | None:
    value = _field(cfg, key, default)
    if value is None:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = minimum - 1
    if number < minimum or (isinstance(value, float) and value != number):
        raise MinitronError(f"data.{key}: {value!r} must be an integer >= {minimum}")
    return number


# ------------------------------------------------------------------------------------- splitting


def _unit(key: str) -> float:
    """A stable number in [0, 1) for a key; independent of PYTHONHASHSEED."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2.0**64


def _normalise_fractions(fractions: Mapping[str, float] | Sequence[float]) -> dict[str, float]:
    if isinstance(fractions, Mapping):
        return {"validation": float(fractions.get("validation", 0.0)), "test": float(fractions.get("test", 0.0))}
    validation, test = fractions
    return {"validation": float(validation), "test": float(test)}


def _split_for(u: float, fractions: Mapping[str, float]) -> str:
    if u < fractions["test"]:
        return "test"
    if u < fractions["test"] + fractions["validation"]:
        return "validation"
    return "train"


def split_of(relpath: str, fractions: Mapping[str, float] | Sequence[float] = DEFAULT_FRACTIONS) -> str:
    """The split of a file: sha256 of its relative POSIX path -> [0, 1) -> test | validation | train.

    `fractions` is {"validation": v, "test": t} or a (validation, test) pair.
    """
    return _split_for(_unit(str(PurePosixPath(relpath))), _normalise_fractions(fractions))


def _assign(keys: Sequence[str], fractions: Mapping[str, float]) -> dict[str, list[int]]:
    """Indices of `keys` per split by `split_of`; tiny corpora still get a train and non-empty eval splits.

    The fix-ups only fire when hashing leaves a split empty (never for the stdlib), and they are
    deterministic: the train item nearest the validation band moves first.
    """
    units = [_unit(k) for k in keys]
    parts: dict[str, list[int]] = {s: [] for s in SPLITS}
    for i, u in enumerate(units):
        parts[_split_for(u, fractions)].append(i)
    if units and not parts["train"]:
        i = max(range(len(units)), key=units.__getitem__)
        parts[_split_for(units[i], fractions)].remove(i)
        parts["train"].append(i)
    for split in ("validation", "test"):
        if fractions[split] > 0 and not parts[split] and len(parts["train"]) > 1:
            i = min(parts["train"], key=units.__getitem__)
            parts["train"].remove(i)
            parts[split].append(i)
    return {s: sorted(v) for s, v in parts.items()}


def _row_split(index: int, *, salt: str, fractions: Mapping[str, float]) -> str:
    return _split_for(_unit(f"{salt}{index}"), fractions)


def _keep_rows(example: dict, index: int, *, split: str, salt: str, fractions: Mapping[str, float]) -> bool:
    return _row_split(index, salt=salt, fractions=fractions) == split


# ----------------------------------------------------------------------------------------- files


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _walk(root: Path, suffixes: Sequence[str], skip: frozenset[str]) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in skip and not d.startswith(".")]
        base = Path(dirpath).relative_to(root)
        found.extend(base / f for f in filenames if not f.startswith(".") and Path(f).suffix.lower() in suffixes)
    return sorted(found, key=lambda p: p.as_posix())


def stdlib_files(root: str | Path | None = None) -> list[Path]:
    """The `*.py` files of the standard library (relative to its root, sorted), without site-packages."""
    return _walk(Path(root) if root is not None else stdlib_root(), (".py",), _EXCLUDED_DIRS)


def _file_records(root: Path, relpaths: Sequence[Path]) -> list[tuple[str, int, str]]:
    records = []
    for rel in relpaths:
        digest, size = hashlib.sha256(), 0
        with open(root / rel, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
        records.append((rel.as_posix(), size, digest.hexdigest()))
    return records


def _records_digest(records: Sequence[tuple[str, int, str]]) -> str:
    digest = hashlib.sha256()
    for rel, size, sha in sorted(records):
        digest.update(f"{rel}\t{size}\t{sha}\n".encode())
    return digest.hexdigest()


def _read_documents(root: str, relpaths: list[str]) -> Iterator[dict]:
    for rel in relpaths:
        yield {"text": (Path(root) / rel).read_bytes().decode("utf-8", errors="replace")}


def _empty(streaming: bool) -> Dataset | IterableDataset:
    empty = Dataset.from_dict({"text": []}, features=TEXT_FEATURES)
    return empty.to_iterable_dataset() if streaming else empty


def _documents_dataset(
    root: Path, relpaths: list[str], fingerprint: str, split: str, streaming: bool = False
) -> Dataset | IterableDataset:
    """One row per file, written once to the datasets cache under a content-derived fingerprint.

    File-backed (not from_dict) so that `datasets.map` caches the packed blocks across runs; streamed, the files
    are read lazily as the stream is consumed.
    """
    if streaming:
        if not relpaths:
            return _empty(True)
        return IterableDataset.from_generator(
            _read_documents, features=TEXT_FEATURES, gen_kwargs={"root": str(root), "relpaths": relpaths}
        )
    if not relpaths:
        return Dataset.from_dict({"text": []}, features=TEXT_FEATURES)
    return Dataset.from_generator(
        _read_documents,
        features=TEXT_FEATURES,
        gen_kwargs={"root": str(root), "relpaths": relpaths},
        split=datasets.NamedSplit(split),
        fingerprint=f"{fingerprint}-{split}",
    )


# ---------------------------------------------------------------------------------------- stdlib


def _load_stdlib(root: Path | None, fractions: dict[str, float]) -> Corpus:
    root = Path(root) if root is not None else stdlib_root()
    if not root.is_dir():
        raise MinitronError(f"data.source: the standard-library folder {root} does not exist; use data.source=local")
    return _python_files_corpus(root, fractions, "stdlib", {})


def package_root(name: str) -> Path:
    """The folder of the installed Python package `name` (a top-level name, found without importing it)."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise MinitronError(f"data.name: '{name}' is not a top-level package name; use e.g. data.name=numpy")
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise MinitronError(f"data.name: '{name}' is not an installed package (a folder of modules); "
                            "install it or name another, e.g. data.name=numpy")
    return Path(next(iter(spec.submodule_search_locations)))


def _load_package(name: str, fractions: dict[str, float]) -> Corpus:
    """The `*.py` files of an installed package: Python written for another purpose than the standard library's,
    a corpus shifted from the embedded default's with no download (the teacher-correction study's)."""
    root = package_root(name)
    try:
        version = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        version = None
    return _python_files_corpus(root, fractions, "package", {"package": name, "version": version})


def _python_files_corpus(root: Path, fractions: dict[str, float], source: str, extra: dict[str, Any]) -> Corpus:
    """A document per `*.py` file under `root`, files split by a hash of their path."""
    files = stdlib_files(root)
    if not files:
        raise MinitronError(f"data.source: no .py files under {root}; use data.source=local with data.path")
    records = _file_records(root, files)
    relpaths = [r[0] for r in records]
    parts = _assign(relpaths, fractions)
    fingerprint = {
        "source": source,
        **extra,
        "python": platform.python_version(),
        "root": str(root),
        "num_files": len(records),
        "num_bytes": sum(r[1] for r in records),
        "sha256": _records_digest(records),
        "split_files": {s: len(parts[s]) for s in SPLITS},
        "fractions": fractions,
    }
    if fingerprint["num_bytes"] == 0:
        raise MinitronError(f"data.source: the .py files under {root} are all empty; use data.source=local")
    key = fingerprint_key(fingerprint)
    splits = DatasetDict(
        {s: _documents_dataset(root, [relpaths[i] for i in parts[s]], f"minitron-{source}-{key}", s) for s in SPLITS}
    )
    return Corpus(splits=splits, fingerprint=fingerprint)


# ----------------------------------------------------------------------------------------- local


def _split_from_name(rel: Path) -> str | None:
    for part in (*rel.parent.parts, rel.stem):
        match = _SPLIT_NAME.match(part.lower())
        if match:
            return _SPLIT_ALIASES.get(match.group(1), match.group(1))
    return None


def _one_line(err: BaseException, limit: int = 200) -> str:
    """The root cause of an exception, on one line."""
    while err.__cause__ is not None:
        err = err.__cause__
    text = f"{type(err).__name__}: " + " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _text_column(ds: Dataset | IterableDataset, text_field: str, where: str) -> Dataset | IterableDataset:
    """Keep only `text_field`, renamed to "text"."""
    columns = ds.column_names
    if columns == [] and isinstance(ds, Dataset):  # an empty json file: no rows, no columns
        return Dataset.from_dict({"text": []}, features=TEXT_FEATURES)
    if columns is not None:
        if text_field not in columns:
            raise MinitronError(
                f"data.text_field: '{text_field}' is not a column of {where} (columns: {', '.join(columns)}); "
                f"set data.text_field to the column that holds the text"
            )
        feature = ds.features[text_field] if ds.features is not None else None
        if feature is not None and not (isinstance(feature, Value) and feature.dtype in ("string", "large_string")):
            raise MinitronError(
                f"data.text_field: column '{text_field}' of {where} holds {feature}, not strings; "
                f"set data.text_field to the column that holds the text"
            )
    ds = ds.select_columns([text_field])
    return ds.rename_column(text_field, "text") if text_field != "text" else ds


def _carve(ds: Dataset, splits: Sequence[str], fractions: dict[str, float], salt: str) -> dict[str, Dataset]:
    """Split rows of `ds` by a hash of their index; splits not asked for stay in train."""
    wanted = {s: (fractions[s] if s in splits else 0.0) for s in ("validation", "test")}
    parts = _assign([f"{salt}{i}" for i in range(len(ds))], wanted)
    out = {"train": ds.select(parts["train"]) if len(parts["train"]) < len(ds) else ds}
    out.update({s: ds.select(parts[s]) for s in splits})
    return out


def _complete_splits(found: Mapping[str, Any], fractions: dict[str, float], seed: int, where: str) -> dict[str, Any]:
    """train/validation/test from whatever splits the data has; missing eval splits come out of train."""
    found = {_SPLIT_ALIASES.get(k, k): v for k, v in found.items()}
    if "train" not in found:
        if len(found) != 1:
            raise MinitronError(f"data: {where} has splits {', '.join(found)} but no 'train'; add or rename a train split")
        found = {"train": next(iter(found.values()))}
    missing = [s for s in ("validation", "test") if s not in found]
    out = {s: found[s] for s in SPLITS if s in found}
    if not missing:
        return out
    salt = f"seed={seed}:"
    train = out["train"]
    if isinstance(train, IterableDataset):
        keep = partial(_keep_rows, salt=salt, fractions={s: fractions[s] if s in missing else 0.0 for s in fractions})
        for split in ("train", *missing):
            out[split] = train.filter(partial(keep, split=split), with_indices=True)
    else:
        out.update(_carve(train, missing, fractions, salt))
    return out


def _describe(files: Sequence[str]) -> str:
    return files[0] + (f" (and {len(files) - 1} more files)" if len(files) > 1 else "")


def _has_text(ds: Dataset | IterableDataset) -> bool:
    for batch in ds.iter(batch_size=1000):  # a stream is read only up to its first non-empty document
        if any(batch["text"]):
            return True
    return False


def _load_local(path: Path, text_field: str, fractions: dict[str, float], seed: int, streaming: bool = False) -> Corpus:
    """Local files as a Corpus; with `streaming` every split is an IterableDataset read lazily from the files (the
    same code path as a streamed hub dataset: rows held out by a hash of their running index, see
    `_complete_splits`)."""
    if not path.exists():
        raise MinitronError(f"data.path: {path} does not exist; point it at a file or folder of {_SUPPORTED}")
    if path.is_file():
        if path.suffix.lower() not in LOCAL_SUFFIXES:
            raise MinitronError(f"data.path: {path} is not a {_SUPPORTED} file; convert it or point at a folder of them")
        base, files = path.parent, [Path(path.name)]
    else:
        base, files = path, _walk(path, tuple(LOCAL_SUFFIXES), frozenset({"__pycache__"}))
        if not files:
            raise MinitronError(f"data.path: folder {path} has no {_SUPPORTED} files; add some or point data.path elsewhere")
    records = _file_records(base, files)
    txt = [r[0] for r in records if r[0].endswith(".txt")]
    sizes = {r[0]: r[1] for r in records}
    # Empty data files hold no rows and trip up the json/parquet readers.
    tables = [f for f in files if LOCAL_SUFFIXES[f.suffix.lower()] != "text" and sizes[f.as_posix()] > 0]
    pieces: dict[str, list[Dataset]] = {s: [] for s in SPLITS}
    key = _records_digest(records)[:16] + hashlib.sha256(json.dumps([fractions, seed, text_field]).encode()).hexdigest()[:8]

    if path.is_file() and txt:
        # One file of prose: a document per paragraph (blank-line separated), split by row.
        # Undecodable bytes become U+FFFD, as for a folder of .txt files (_read_documents).
        ds = _load_files("text", {"train": [str(path)]}, path, sample_by="paragraph", encoding_errors="replace",
                         streaming=streaming)["train"]
        for split, part in _complete_splits({"train": ds}, fractions, seed, str(path)).items():
            pieces[split].append(part)
    elif txt:
        parts = _assign(txt, fractions)
        for split in SPLITS:
            docs = [txt[i] for i in parts[split]]
            pieces[split].append(_documents_dataset(base, docs, f"minitron-local-{key}", split, streaming))

    by_split: dict[str, dict[str, list[str]]] = {}
    has_train_file = any(_split_from_name(f) == "train" for f in tables)
    for f in tables:
        split = (_split_from_name(f) if has_train_file else None) or "train"
        by_split.setdefault(LOCAL_SUFFIXES[f.suffix.lower()], {}).setdefault(split, []).append(str(base / f))
    for kind, data_files in sorted(by_split.items()):
        loaded = _load_files(kind, data_files, path, streaming=streaming)
        loaded = {s: _text_column(ds, text_field, _describe(data_files[s])) for s, ds in loaded.items()}
        for split, part in _complete_splits(loaded, fractions, seed, str(path)).items():
            pieces[split].append(part)

    parts = {s: datasets.concatenate_datasets(p) if len(p) > 1 else p[0] if p else _empty(streaming) for s, p in pieces.items()}
    splits = IterableDatasetDict(parts) if streaming else DatasetDict(parts)
    if not any(_has_text(ds) for ds in splits.values()):
        raise MinitronError(f"data.path: {path} contains no text; fill the files or point data.path at other data")
    splits, carved = _split_few_documents(splits, fractions, path)
    fingerprint = {
        "source": "local",
        "path": str(path.resolve()),
        "text_field": text_field,
        "num_files": len(records),
        "num_bytes": sum(r[1] for r in records),
        "sha256": _records_digest(records),
        "split_rows": {s: None if streaming else len(ds) for s, ds in splits.items()},
        "fractions": fractions,
        "seed": seed,
    }
    if carved:
        fingerprint["carved"] = carved
    if streaming:  # only when set, so that the keys of existing caches of local data stay the same
        fingerprint["streaming"] = True
    return Corpus(splits=splits, fingerprint=fingerprint)


def _split_few_documents(splits: DatasetDict, fractions: Mapping[str, float], path: Path) -> tuple[DatasetDict, dict]:
    """Held-out splits for a corpus with too few documents to split by document (one file, one paragraph).

    A validation or test split that would be empty (its fraction above 0) takes the last lines of the train text
    instead, `fraction` of them and at least one; text with fewer than three lines is cut by characters. The held
    out part comes from the end so that it is one contiguous stretch, disjoint from what train keeps. Returns the
    splits and what was carved ({split: [count, unit]}, empty when nothing was).
    """
    if isinstance(splits["train"], IterableDataset):  # a stream is never read whole: a held-out split left empty
        return splits, {}                               # is reported when it is packed (calibration._check_not_empty)
    empty = [s for s in ("validation", "test") if fractions[s] > 0 and not _has_text(splits[s])]
    if not empty:
        return splits, {}
    docs = [t for t in splits["train"]["text"] if t]
    units: list[str] = [line for doc in docs for line in doc.splitlines(keepends=True)]
    unit = "lines"
    if len(units) < len(empty) + 1 + 1:  # too few lines for train plus each held-out split: cut by characters
        units, unit = list("".join(docs)), "characters"
    counts = {s: max(1, int(len(units) * fractions[s])) for s in empty}
    keep = len(units) - sum(counts.values())
    if keep < 1:
        raise MinitronError(
            f"data.path: {path} holds {len(units)} {unit} of text, too little to split into train, "
            f"{' and '.join(empty)} (needs at least {len(empty) + 1}); add text to it"
        )
    out = dict(splits)
    out["train"] = Dataset.from_dict({"text": ["".join(units[:keep])]}, features=TEXT_FEATURES)
    start = keep
    for split in ("validation", "test"):
        if split in counts:
            chunk = "".join(units[start : start + counts[split]])
            out[split] = Dataset.from_dict({"text": [chunk]}, features=TEXT_FEATURES)
            start += counts[split]
    if is_main_process():
        held = ", ".join(f"{s} {counts[s]}" for s in empty)
        print(f"data: {path} has {len(docs)} document(s) in train, too few to split by document; split by {unit} "
              f"instead (of {len(units)}: train {keep}, {held}, held out from the end)")
    return DatasetDict(out), {s: [counts[s], unit] for s in empty}


def _load_files(kind: str, data_files: dict[str, list[str]], path: Path, **kwargs: Any) -> DatasetDict:
    try:
        return datasets.load_dataset(kind, data_files=data_files, **kwargs)
    except MinitronError:
        raise
    except Exception as err:
        raise MinitronError(
            f"data.path: could not read {kind} data under {path} ({_one_line(err)}); "
            f"fix or remove the bad file"
        ) from err


# -------------------------------------------------------------------------------------------- hf


def _load_hf(cfg: Any, text_field: str, fractions: dict[str, float], seed: int) -> Corpus:
    name = str(_required(cfg, "name", "hf", "<dataset name, e.g. wikitext>"))
    subset = _field(cfg, "subset")
    streaming = bool(_field(cfg, "streaming", False))
    label = f"'{name}'" + (f" (subset '{subset}')" if subset else "")
    try:
        loaded = datasets.load_dataset(name, subset, streaming=streaming)
    except MinitronError:
        raise
    except Exception as err:
        raise MinitronError(
            f"data.name: could not load Hugging Face dataset {label}: the hub is unreachable or the dataset is "
            f"unknown ({_one_line(err)}); check data.name/data.subset and the network, "
            f"or use data.source=local"
        ) from err
    if not isinstance(loaded, (DatasetDict, IterableDatasetDict)):
        loaded = {"train": loaded}
    found = {s: _text_column(ds, text_field, f"dataset {label} split '{s}'") for s, ds in loaded.items()}
    parts = _complete_splits(found, fractions, seed, f"dataset {label}")
    if streaming:
        splits: DatasetDict | IterableDatasetDict = IterableDatasetDict(parts)
    else:
        splits = DatasetDict(parts)
        if len(splits["train"]) == 0:
            raise MinitronError(f"data.name: dataset {label} has an empty train split; pick another dataset or subset")
    info = next(iter(loaded.values())).info
    fingerprint = {
        "source": "hf",
        "name": name,
        "subset": subset,
        "streaming": streaming,
        "text_field": text_field,
        "version": str(info.version) if info.version is not None else None,
        "splits": {
            s: getattr(ds, "_fingerprint", None) if isinstance(ds, Dataset) else None for s, ds in splits.items()
        },
        "split_rows": {s: len(ds) if isinstance(ds, Dataset) else None for s, ds in splits.items()},
        "fractions": fractions,
        "seed": seed,
    }
    return Corpus(splits=splits, fingerprint=fingerprint)


# ---------------------------------------------------------------------------------------- public


def load_corpus(cfg: Any, *, root: str | Path | None = None) -> Corpus:
    """The corpus that `cfg` (the `data` config group) names.

    `root` replaces the standard-library folder for source=stdlib (tests point it at a tmp folder).
    """
    source = str(_field(cfg, "source", "stdlib"))
    fractions = _fractions(cfg)
    seed = _int_field(cfg, "seed", 0, 0) or 0
    text_field = str(_field(cfg, "text_field", "text") or "text")
    if source == "stdlib":
        if _field(cfg, "streaming", False):
            raise MinitronError("data.streaming=true applies to data=hf and data=local; drop it for the embedded corpus")
        return _load_stdlib(Path(root) if root is not None else None, fractions)
    if source == "local":
        path = Path(str(_required(cfg, "path", "local", "/path/to/file_or_folder"))).expanduser()
        return _load_local(path, text_field, fractions, seed, bool(_field(cfg, "streaming", False)))
    if source == "package":
        if _field(cfg, "streaming", False):
            raise MinitronError("data.streaming=true applies to data=hf and data=local; drop it for data=package")
        return _load_package(str(_required(cfg, "name", "package", "numpy")), fractions)
    if source == "hf":
        return _load_hf(cfg, text_field, fractions, seed)
    raise MinitronError(f"data.source: '{source}' is not a known source; use stdlib, package, local or hf")
