"""The `minitron` entry point: verbs, help, strict overrides, and every shipped config composing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from minitron.cli import VERBS, load_verb, main
from minitron.config import compose, config_dir
from minitron.errors import MinitronError


def run_cli(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_lists_every_verb(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0
    for verb in ("pretrain", "score", "prune", "search", "distill", "eval", "pipeline"):
        assert any(line.strip().startswith(verb + " ") for line in out.splitlines()), verb


def test_unknown_verb(capsys):
    code, _, err = run_cli(capsys, "shrink")
    assert code == 2
    assert err.strip().count("\n") == 0 and "unknown verb 'shrink'" in err


def test_every_listed_verb_has_a_module_with_run():
    for verb in VERBS:
        assert callable(load_verb(verb).run), verb


def test_unknown_key_is_one_line_naming_the_key(capsys, tmp_path):
    code, _, err = run_cli(capsys, "pretrain", "trian.max_steps=3", f"hydra.run.dir={tmp_path}/run")
    assert code == 2
    assert err.strip().count("\n") == 0
    assert "unknown config key 'trian.max_steps'" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "override, words",
    [
        ("train.max_steps=abc", "must be an integer"),
        ("train.lr=fast", "must be a number"),
        ("cache=maybe", "must be true or false"),
    ],
)
def test_wrong_type_is_rejected(capsys, override, words):
    code, _, err = run_cli(capsys, "pretrain", override)
    assert code == 2 and words in err and err.strip().count("\n") == 0


def test_unknown_group_member(capsys):
    code, _, err = run_cli(capsys, "pretrain", "model=nope")
    assert code == 2 and "model=nope" in err and "tiny_nemotron" in err and err.strip().count("\n") == 0


def test_float_key_accepts_an_integer(capsys):
    from minitron.config import validate_overrides
    from minitron.train.settings import TrainSettings

    validate_overrides("pretrain", ["train.lr=1", "train.max_steps=5", "-m"])  # raises on a rejected value
    settings = TrainSettings.of(compose("pretrain", ["train.lr=1", "train.max_steps=5"]).train)
    assert (settings.lr, settings.max_steps) == (1, 5)


@pytest.mark.parametrize("verb", ["distill", "pretrain"])
@pytest.mark.parametrize("value", ["true", "false", "auto", "True"])
def test_auto_true_false_keys_accept_all_three(verb, value):
    from minitron.config import validate_overrides
    from minitron.train.settings import TrainSettings

    validate_overrides(verb, [f"train.bf16={value}"])  # raises on a rejected value
    settings = TrainSettings.of(compose(verb, [f"train.bf16={value}"]).train)
    assert settings.bf16 == {"true": True, "True": True, "false": False, "auto": "auto"}[value]


def test_auto_key_still_rejects_a_number_where_a_word_is_meant():
    from minitron.train.settings import TrainSettings

    with pytest.raises(MinitronError, match="train.bf16"):
        TrainSettings.of(compose("distill", ["train.bf16=maybe"]).train)


def test_run_folders_carry_a_per_run_id():
    """The default run folder is DATE_TIME-ID, sorted by time first; its ID is six hex digits fresh per run."""
    text = (config_dir() / "common.yaml").read_text()
    assert "${now:%Y-%m-%d_%H-%M-%S}-${minitron_run_id:}" in text.split("run:")[1].split("sweep:")[0]
    assert "${minitron_run_id:}" in text.split("sweep:")[1]
    ids = {OmegaConf.create({"d": "${minitron_run_id:}"}).d for _ in range(20)}
    assert len(ids) == 20 and all(len(i) == 6 and int(i, 16) >= 0 for i in ids)


def test_clean_up_never_fails_and_never_hides_the_error(tmp_path):
    from minitron.cli import _remove_bookkeeping_only

    _remove_bookkeeping_only(tmp_path / "gone")  # a folder that vanished: nothing to do, no exception
    kept = tmp_path / "kept"
    (kept / ".hydra").mkdir(parents=True)
    (kept / "scores.txt").write_text("mine")
    _remove_bookkeeping_only(kept)
    assert (kept / "scores.txt").is_file()


def test_an_existing_run_folder_is_kept_on_failure(capsys, tmp_path):
    run = tmp_path / "resume-me"
    (run / ".hydra").mkdir(parents=True)
    code, _, err = run_cli(capsys, "prune", f"teacher={tmp_path / 'missing'}", f"hydra.run.dir={run}")
    assert code == 2 and err.count(": error: ") == 1
    assert run.is_dir()  # not this run's folder to remove


def test_os_errors_are_told_apart():
    from minitron.cli import _os_error

    hub = _os_error(ConnectionError("Couldn't reach 'cais/mmlu' on the Hub (LocalEntryNotFoundError)"))
    assert "'cais/mmlu'" in hub and "hub access" in hub and "path" not in hub.split(";")[0]
    path = _os_error(PermissionError(13, "Permission denied", "/root/out"))
    assert path.startswith("cannot use the path /root/out: Permission denied")
    other = _os_error(BrokenPipeError(32, "Broken pipe"))
    assert "path" not in other and "BrokenPipeError" in other


def _all_configs():
    root = config_dir()
    primaries = sorted(p.stem for p in root.glob("*.yaml") if p.stem != "common")
    groups = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    members = [(g.name, m.stem) for g in groups for m in sorted(g.glob("*.yaml"))]
    return primaries, members


def test_every_config_file_composes():
    primaries, members = _all_configs()
    assert "pretrain" in primaries
    for name in primaries:
        cfg = compose(name)
        assert "seed" in cfg and "cache_dir" in cfg
    hosts = {p: (config_dir() / f"{p}.yaml").read_text() for p in primaries}
    for group, member in members:
        host = next((p for p, text in hosts.items() if f"- {group}:" in text or f"- optional {group}:" in text), None)
        assert host is not None, f"no verb config uses the {group}/ group"
        assert compose(host, [f"{group}={member}"]) != compose(host, []) or member in hosts[host], (group, member)


def test_installed_entry_point_finds_its_configs_from_any_folder(tmp_path):
    exe = Path(sys.executable).with_name("minitron")
    result = subprocess.run([str(exe), "pretrain", "--cfg", "job"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "hidden_size: 256" in result.stdout and "NemotronConfig" in result.stdout


def test_a_built_wheel_carries_its_configs(tmp_path):
    """A non-editable install (no checkout around it) still composes every verb's config."""
    root = Path(__file__).resolve().parents[2]
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", str(root), "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "wheel")],
                   check=True, capture_output=True, timeout=300)
    wheel = next((tmp_path / "wheel").glob("minitron-*.whl"))
    subprocess.run([*pip, "install", "--no-deps", "--target", str(tmp_path / "site"), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    result = subprocess.run([sys.executable, "-m", "minitron", "pretrain", "--cfg", "job"], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(tmp_path / "site")},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert str(tmp_path / "site") in subprocess.run(
        [sys.executable, "-c", "import minitron; print(minitron.__file__)"], cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path / "site")}, capture_output=True, text=True).stdout
    assert "NemotronConfig" in result.stdout
