"""`minitron eval` through the entry point: bad inputs are one-line errors that leave no run folder behind."""

from __future__ import annotations

import pytest

from minitron.cli import main


def run_cli(capsys, *args):
    """The exit status and output; errors raised inside the Hydra app exit through SystemExit, as in a shell."""
    try:
        code = main(list(args))
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_missing_model_path_folder(capsys, tmp_path):
    code, _, err = run_cli(capsys, "eval", f"model_path={tmp_path / 'nowhere'}", f"hydra.run.dir={tmp_path}/run")
    assert code == 2
    assert err.strip().count("\n") == 0
    assert err.startswith("minitron eval: error: model_path=") and "is not a folder" in err
    assert not (tmp_path / "run").exists()


def test_folder_without_config_json(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "eval", f"model_path={tmp_path / 'empty'}", f"hydra.run.dir={tmp_path}/run")
    assert code == 2 and err.strip().count("\n") == 0 and "has no config.json" in err


@pytest.mark.parametrize(
    "override, words",
    [
        ("eval=nope", "nope"),
        ("dtype=int8", "dtype=int8 is not supported"),
        ("batch_size=many", "must be an integer"),
        ("modle_path=/x", "unknown config key 'modle_path'"),
    ],
)
def test_bad_options(capsys, tmp_path, override, words):
    code, _, err = run_cli(capsys, "eval", override, f"hydra.run.dir={tmp_path}/run")
    assert code == 2 and words in err and err.strip().count("\n") == 0
    assert not (tmp_path / "run").exists()


def test_eval_cfg_job_shows_the_suite(capsys):
    code, out, _ = run_cli(capsys, "eval", "--cfg", "job")
    assert code == 0
    assert "minitron_tiny_bpb" in out and "model_path: null" in out
