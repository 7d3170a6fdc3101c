"""Corpus loading: the embedded stdlib corpus, local files, the hf error path, the data configs."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import datasets
import pytest
from omegaconf import OmegaConf

from minitron.data import Corpus, build_datasets, load_corpus, split_of, stdlib_files, stdlib_root
from minitron.errors import MinitronError

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "data"


@pytest.fixture(scope="module")
def stdlib_corpus() -> Corpus:
    return load_corpus({"source": "stdlib"})


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")


def _one_line_error(excinfo, *needles: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message
    return message


# ------------------------------------------------------------------------------------------ stdlib


def test_stdlib_files_are_sorted_relative_python_files():
    files = stdlib_files()
    assert len(files) > 500
    assert files == sorted(files, key=lambda p: p.as_posix())
    assert all(not p.is_absolute() and p.suffix == ".py" for p in files)
    assert not any({"site-packages", "dist-packages"} & set(p.parts) for p in files)
    assert (stdlib_root() / files[0]).is_file()


def test_split_of_is_deterministic_and_follows_the_fractions():
    keys = [f"pkg/mod_{i}.py" for i in range(4000)]
    splits = [split_of(k, {"validation": 0.1, "test": 0.2}) for k in keys]
    assert splits == [split_of(k, (0.1, 0.2)) for k in keys]
    assert abs(splits.count("test") / len(keys) - 0.2) < 0.03
    assert abs(splits.count("validation") / len(keys) - 0.1) < 0.03
    assert {split_of(k, (0.0, 0.0)) for k in keys} == {"train"}
    assert split_of("a/b.py") == split_of("a/b.py")


def test_stdlib_split_is_by_file_deterministic_disjoint_and_covering(stdlib_corpus):
    again = load_corpus(OmegaConf.load(CONFIGS / "stdlib.yaml"))
    assert again.fingerprint == stdlib_corpus.fingerprint and again.key == stdlib_corpus.key
    root, files = stdlib_root(), stdlib_files()
    expected = {"train": [], "validation": [], "test": []}
    for rel in files:
        text = (root / rel).read_bytes().decode("utf-8", errors="replace")
        expected[split_of(rel.as_posix(), (0.02, 0.02))].append(text)
    assert sum(len(v) for v in expected.values()) == len(files)
    for split, texts in expected.items():
        assert texts, split
        assert list(stdlib_corpus.splits[split]["text"]) == texts
        assert list(again.splits[split]["text"]) == texts
    assert stdlib_corpus.fingerprint["split_files"] == {s: len(t) for s, t in expected.items()}


def test_stdlib_fingerprint_fields(stdlib_corpus):
    fp = stdlib_corpus.fingerprint
    assert json.loads(json.dumps(fp)) == fp
    assert fp["source"] == "stdlib" and fp["python"] == platform.python_version()
    assert fp["root"] == str(stdlib_root())
    assert fp["num_files"] == len(stdlib_files()) == sum(fp["split_files"].values())
    assert fp["num_bytes"] > 1_000_000 and len(fp["sha256"]) == 64
    assert len(stdlib_corpus.key) == 16 and int(stdlib_corpus.key, 16) >= 0
    assert stdlib_corpus.splits["train"].cache_files  # file-backed, so datasets.map caches


def test_stdlib_fingerprint_tracks_the_file_list(tmp_path):
    _write(tmp_path, {f"pkg/m{i}.py": f"x = {i}\n" for i in range(12)})
    _write(tmp_path, {"site-packages/foreign.py": "y = 1\n", "pkg/notes.txt": "not python\n"})
    first = load_corpus({"source": "stdlib"}, root=tmp_path)
    assert first.fingerprint["num_files"] == 12
    assert load_corpus({"source": "stdlib"}, root=tmp_path).key == first.key
    (tmp_path / "site-packages" / "foreign.py").write_text("y = 2\n")
    assert load_corpus({"source": "stdlib"}, root=tmp_path).key == first.key
    (tmp_path / "pkg" / "extra.py").write_text("z = 3\n")
    added = load_corpus({"source": "stdlib"}, root=tmp_path)
    assert added.fingerprint["num_files"] == 13 and added.key != first.key
    (tmp_path / "pkg" / "m0.py").write_text("x = 'changed'\n")
    changed = load_corpus({"source": "stdlib"}, root=tmp_path)
    assert changed.fingerprint["sha256"] != added.fingerprint["sha256"] and changed.key != added.key
    texts = sorted(t for s in ("train", "validation", "test") for t in changed.splits[s]["text"])
    assert texts == sorted((tmp_path / f).read_text() for f in stdlib_files(tmp_path))


def test_tiny_corpus_still_gets_every_split(tmp_path):
    _write(tmp_path, {f"m{i}.py": f"v = {i}\n" for i in range(5)})
    corpus = load_corpus({"source": "stdlib"}, root=tmp_path)
    sizes = {s: len(ds) for s, ds in corpus.splits.items()}
    assert sizes["validation"] >= 1 and sizes["test"] >= 1 and sizes["train"] >= 1
    assert sum(sizes.values()) == 5


def test_stdlib_root_without_python_files_is_an_error(tmp_path):
    with pytest.raises(MinitronError) as excinfo:
        load_corpus({"source": "stdlib"}, root=tmp_path)
    _one_line_error(excinfo, "data.source")


# ------------------------------------------------------------------------------------------- local


def test_local_txt_folder_is_split_by_file(tmp_path):
    docs = {f"docs/part{i % 3}/doc{i:02d}.txt": f"document {i}\nwith two lines\n" for i in range(40)}
    _write(tmp_path, {**docs, "docs/README.md": "ignored", "docs/.hidden.txt": "ignored"})
    cfg = {"source": "local", "path": str(tmp_path / "docs"), "validation_fraction": 0.1, "test_fraction": 0.1}
    corpus = load_corpus(cfg)
    got = {s: list(corpus.splits[s]["text"]) for s in ("train", "validation", "test")}
    assert sorted(t for texts in got.values() for t in texts) == sorted(docs.values())
    assert all(got.values())
    for split, texts in got.items():
        expected = [docs[k] for k in sorted(docs) if split_of(k.removeprefix("docs/"), (0.1, 0.1)) == split]
        assert texts == expected
    assert corpus.fingerprint["source"] == "local" and corpus.fingerprint["num_files"] == 40
    assert load_corpus(cfg).key == corpus.key


def test_local_single_txt_file_is_a_document_per_paragraph(tmp_path):
    paragraphs = [f"paragraph {i} line one\nline two" for i in range(60)]
    (tmp_path / "book.txt").write_text("\n\n".join(paragraphs) + "\n")
    corpus = load_corpus({"source": "local", "path": str(tmp_path / "book.txt"), "validation_fraction": 0.1})
    texts = [t.strip() for s in ("train", "validation", "test") for t in corpus.splits[s]["text"]]
    assert sorted(texts) == sorted(paragraphs)
    assert len(corpus.splits["validation"]) > 0 and len(corpus.splits["test"]) > 0


def test_local_jsonl_with_a_custom_text_field(tmp_path):
    rows = [{"id": i, "body": f"row number {i}"} for i in range(200)]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {"source": "local", "path": str(path), "text_field": "body", "validation_fraction": 0.1, "test_fraction": 0.1}
    corpus = load_corpus(cfg)
    assert all(ds.column_names == ["text"] for ds in corpus.splits.values())
    parts = {s: list(corpus.splits[s]["text"]) for s in ("train", "validation", "test")}
    assert sorted(t for p in parts.values() for t in p) == sorted(r["body"] for r in rows)
    assert 5 < len(parts["validation"]) < 40 and 5 < len(parts["test"]) < 40
    again = load_corpus(cfg)
    assert parts == {s: list(again.splits[s]["text"]) for s in parts}
    reseeded = load_corpus({**cfg, "seed": 1})
    assert list(reseeded.splits["validation"]["text"]) != parts["validation"]
    assert reseeded.key != corpus.key


def test_local_folder_keeps_named_splits(tmp_path):
    _write(tmp_path, {"train.jsonl": "".join(json.dumps({"text": f"t{i}"}) + "\n" for i in range(100))})
    _write(tmp_path, {"validation.json": json.dumps([{"text": "v0"}, {"text": "v1"}])})
    corpus = load_corpus({"source": "local", "path": str(tmp_path), "test_fraction": 0.1})
    assert sorted(corpus.splits["validation"]["text"]) == ["v0", "v1"]
    assert len(corpus.splits["test"]) > 0
    assert sorted([*corpus.splits["train"]["text"], *corpus.splits["test"]["text"]]) == sorted(f"t{i}" for i in range(100))


def test_local_parquet(tmp_path):
    rows = {"text": [f"parquet doc {i}" for i in range(120)], "n": list(range(120))}
    datasets.Dataset.from_dict(rows).to_parquet(str(tmp_path / "part-0.parquet"))
    corpus = load_corpus({"source": "local", "path": str(tmp_path)})
    assert sorted(t for ds in corpus.splits.values() for t in ds["text"]) == sorted(rows["text"])
    assert corpus.fingerprint["split_rows"]["train"] == len(corpus.splits["train"])


# ------------------------------------------------------------------------------------------ errors


def test_missing_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(MinitronError) as excinfo:
        load_corpus({"source": "local", "path": str(missing)})
    _one_line_error(excinfo, "data.path", str(missing), "does not exist")


def test_local_without_path():
    with pytest.raises(MinitronError) as excinfo:
        load_corpus(OmegaConf.load(CONFIGS / "local.yaml"))
    _one_line_error(excinfo, "data.path")


def test_folder_without_supported_files(tmp_path):
    _write(tmp_path, {"a.md": "# not supported", "b.csv": "x,y"})
    with pytest.raises(MinitronError) as excinfo:
        load_corpus({"source": "local", "path": str(tmp_path)})
    _one_line_error(excinfo, "data.path", ".jsonl")


def test_unsupported_single_file(tmp_path):
    (tmp_path / "a.md").write_text("x")
    with pytest.raises(MinitronError) as excinfo:
        load_corpus({"source": "local", "path": str(tmp_path / "a.md")})
    _one_line_error(excinfo, "data.path")


def test_empty_corpus(tmp_path):
    _write(tmp_path, {"a.txt": "", "b/c.txt": ""})
    (tmp_path / "d.jsonl").write_text(json.dumps({"text": ""}) + "\n")
    with pytest.raises(MinitronError) as excinfo:
        load_corpus({"source": "local", "path": str(tmp_path)})
    _one_line_error(excinfo, "data.path", "no text")


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_missing_text_field(tmp_path, kind):
    if kind == "jsonl":
        (tmp_path / "d.jsonl").write_text(json.dumps({"content": "hello"}) + "\n")
    else:
        datasets.Dataset.from_dict({"content": ["hello"]}).to_parquet(str(tmp_path / "d.parquet"))
    with pytest.raises(MinitronError) as excinfo:
        load_corpus({"source": "local", "path": str(tmp_path), "text_field": "body"})
    _one_line_error(excinfo, "data.text_field", "'body'", "content")


def test_unknown_source():
    with pytest.raises(MinitronError) as excinfo:
        load_corpus({"source": "ftp"})
    _one_line_error(excinfo, "data.source", "ftp")


def test_bad_fraction():
    with pytest.raises(MinitronError) as excinfo:
        load_corpus({"source": "stdlib", "validation_fraction": 1.5})
    _one_line_error(excinfo, "data.validation_fraction")


def test_seq_len_below_two(tmp_path):
    _write(tmp_path, {"a.txt": "hello"})
    with pytest.raises(MinitronError) as excinfo:
        build_datasets({"source": "local", "path": str(tmp_path), "seq_len": 1}, tokenizer=None)
    _one_line_error(excinfo, "data.seq_len")


# ---------------------------------------------------------------------------------------------- hf


def test_hf_unreachable(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'wikitext' on the Hub (LocalEntryNotFoundError)\nmore")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    cfg = {"source": "hf", "name": "wikitext", "subset": "wikitext-103-raw-v1"}
    with pytest.raises(MinitronError) as excinfo:
        load_corpus(cfg)
    _one_line_error(excinfo, "data.name", "wikitext", "unreachable", "unknown")


def test_hf_without_name():
    with pytest.raises(MinitronError) as excinfo:
        load_corpus(OmegaConf.load(CONFIGS / "hf.yaml"))
    _one_line_error(excinfo, "data.name")


def test_hf_dataset_without_eval_splits(monkeypatch):
    rows = [f"hub row {i}" for i in range(300)]
    fake = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"content": rows, "id": list(range(300))})})
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: fake)
    corpus = load_corpus({"source": "hf", "name": "someone/corpus", "text_field": "content"})
    assert sorted(t for ds in corpus.splits.values() for t in ds["text"]) == sorted(rows)
    assert len(corpus.splits["validation"]) > 0 and corpus.fingerprint["source"] == "hf"
    with pytest.raises(MinitronError) as excinfo:
        load_corpus({"source": "hf", "name": "someone/corpus", "text_field": "body"})
    _one_line_error(excinfo, "data.text_field", "content")


def test_hf_streaming_splits_match_the_map_style_ones(monkeypatch):
    rows = [f"streamed row {i}" for i in range(300)]
    fake = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": rows})})
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: fake)
    eager = load_corpus({"source": "hf", "name": "x"})
    streamed_dict = datasets.IterableDatasetDict({"train": fake["train"].to_iterable_dataset()})
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: streamed_dict)
    streamed = load_corpus({"source": "hf", "name": "x", "streaming": True})
    assert isinstance(streamed.splits["train"], datasets.IterableDataset)
    # Identical unless a tiny-split fix-up fired for the eager one (it cannot with 300 rows at 2%).
    for split in ("train", "validation", "test"):
        assert [r["text"] for r in streamed.splits[split]] == list(eager.splits[split]["text"])


# ------------------------------------------------------------------------------------------ configs


def test_data_configs_share_their_keys():
    loaded = {p.stem: OmegaConf.load(p) for p in sorted(CONFIGS.glob("*.yaml"))}
    assert set(loaded) == {"stdlib", "package", "local", "hf"}
    keys = {name: sorted(OmegaConf.to_container(cfg).keys()) for name, cfg in loaded.items()}
    assert keys["stdlib"] == keys["package"] == keys["local"] == keys["hf"]
    assert {name: cfg.source for name, cfg in loaded.items()} == {name: name for name in loaded}
    assert OmegaConf.is_missing(loaded["local"], "path") and OmegaConf.is_missing(loaded["hf"], "name")
    assert loaded["stdlib"].tokenizer.vocab_size == 4096 and loaded["stdlib"].seq_len == 256


def test_a_package_corpus_is_its_modules_split_by_file(tmp_path, monkeypatch):
    package = tmp_path / "shiftedpkg"
    _write(package, {f"m{i}.py": f"def f{i}():\n    return {i}\n" for i in range(40)} | {"notes.txt": "not code"})
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = OmegaConf.merge(OmegaConf.load(CONFIGS / "package.yaml"), {"name": "shiftedpkg"})
    corpus = load_corpus(cfg)
    texts = [t for split in corpus.splits.values() for t in split["text"]]
    assert sorted(texts) == sorted(f"def f{i}():\n    return {i}\n" for i in range(40))  # the .py files only
    assert len(corpus.splits["validation"]) >= 1 and corpus.fingerprint["package"] == "shiftedpkg"
    assert corpus.key != load_corpus(OmegaConf.merge(cfg, {"validation_fraction": 0.2})).key


@pytest.mark.parametrize("name", ["no_such_package_here", "json.decoder", "math"])
def test_a_package_that_is_not_an_installed_folder_is_a_one_line_error(name):
    with pytest.raises(MinitronError, match="data.name"):
        load_corpus(OmegaConf.merge(OmegaConf.load(CONFIGS / "package.yaml"), {"name": name}))


def test_data_config_group_composes_with_hydra(tmp_path):
    from hydra import compose, initialize_config_dir

    _write(tmp_path, {"a.txt": "some text", "b.txt": "more text", "c.txt": "and more"})
    with initialize_config_dir(config_dir=str(CONFIGS.parent), version_base=None):
        cfg = compose(config_name=None, overrides=["+data=local", f"data.path={tmp_path}"])
    corpus = load_corpus(cfg.data)
    assert sum(len(ds) for ds in corpus.splits.values()) == 3


# ------------------------------------------------------------------------------ corpora users have


def _texts(corpus: Corpus) -> dict[str, str]:
    return {s: "".join(t for t in corpus.splits[s]["text"] if t) for s in ("train", "validation", "test")}


def _one_file_corpora(root: Path) -> dict[str, Path]:
    """The three corpora that a first try often is: one tiny .txt, one file of random bytes, one file of code lines."""
    import random

    paths = {name: root / name for name in ("tiny", "random", "lines")}
    for folder in paths.values():
        folder.mkdir()
    (paths["tiny"] / "a.txt").write_text("hello tiny world!\n")
    (paths["random"] / "rand.txt").write_bytes(random.Random(0).randbytes(100_000))
    (paths["lines"] / "code.txt").write_text("".join(f"    x{i} = step(x{i - 1}, {i % 17})\n" for i in range(3000)))
    return paths


@pytest.mark.parametrize("name", ["tiny", "random", "lines"])
@pytest.mark.parametrize("as_file", [False, True], ids=["folder", "file"])
def test_one_document_is_split_by_lines_or_characters(tmp_path, capsys, name, as_file):
    folder = _one_file_corpora(tmp_path)[name]
    path = next(folder.iterdir()) if as_file else folder
    corpus = load_corpus({"source": "local", "path": str(path)})
    texts = _texts(corpus)
    assert all(texts.values()), {s: len(t) for s, t in texts.items()}  # no split is empty
    message = [line for line in capsys.readouterr().out.splitlines() if "too few to split by document" in line]
    if as_file and name == "random":  # random bytes hold a few blank lines: paragraphs, split as rows
        assert "carved" not in corpus.fingerprint and not message
        return
    unit = "characters" if name == "tiny" else "lines"
    assert len(message) == 1 and unit in message[0] and str(path) in message[0], message
    assert {s: u for s, (_, u) in corpus.fingerprint["carved"].items()} == {"validation": unit, "test": unit}
    if not as_file:  # held out from the end, disjoint, nothing lost
        whole = next(folder.iterdir()).read_bytes().decode("utf-8", errors="replace")
        assert texts["train"] + texts["validation"] + texts["test"] == whole


def test_lines_held_out_follow_the_fractions(tmp_path):
    folder = _one_file_corpora(tmp_path)["lines"]
    corpus = load_corpus({"source": "local", "path": str(folder), "validation_fraction": 0.1, "test_fraction": 0.05})
    assert corpus.fingerprint["carved"] == {"validation": [300, "lines"], "test": [150, "lines"]}
    assert _texts(corpus)["test"].splitlines()[-1] == "    x2999 = step(x2998, 7)"


def test_two_documents_get_the_missing_test_split_from_lines(tmp_path):
    _write(tmp_path, {"a.txt": "".join(f"line a{i}\n" for i in range(100)),
                      "b.txt": "".join(f"line b{i}\n" for i in range(100))})
    corpus = load_corpus({"source": "local", "path": str(tmp_path)})
    assert all(_texts(corpus).values())


def test_too_little_text_to_split_says_how_much(tmp_path):
    _write(tmp_path, {"a.txt": "x"})
    with pytest.raises(MinitronError) as excinfo:
        load_corpus({"source": "local", "path": str(tmp_path)})
    _one_line_error(excinfo, "data.path", "1 characters", "at least 3")


def test_zero_validation_fraction_leaves_that_split_out_of_the_carving(tmp_path):
    folder = _one_file_corpora(tmp_path)["lines"]
    corpus = load_corpus({"source": "local", "path": str(folder), "validation_fraction": 0.0})
    assert "validation" not in corpus.fingerprint["carved"] and len(corpus.splits["validation"]) == 0
