"""`minitron VERB [key=value ...]`: one entry point, one Hydra app per verb over `configs/VERB.yaml`.

Hydra, transformers and the verb's own module are imported inside the functions that need them, so that
`minitron --help` answers at once; every other module of the package imports at the top.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
import traceback
from pathlib import Path

from minitron.errors import MinitronError, first_line, hub_problem

VERBS: dict[str, str] = {
    "pretrain": "train a model from scratch with the causal-LM loss (makes the embedded tiny teacher)",
    "score": "estimate the importance of channels, heads, neurons and layers on calibration data",
    "prune": "prune a model to a target shape and export a checkpoint that stock transformers loads",
    "search": "enumerate pruned shapes within a parameter budget and rank them",
    "distill": "retrain a pruned student against a frozen teacher's logits (DeepSpeed)",
    "eval": "evaluate a checkpoint with lm-eval",
    "pipeline": "teacher -> importance -> prune -> distill -> evaluate, with a report",
    "ablate": "the paper's findings at small scale: five studies, mean and spread over seeds, one results page",
}

HYDRA_FLAGS = ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--resolve", "--package", "-p")

USAGE = """usage: minitron VERB [key=value ...] [-m] [--cfg job]

Turn one large language model into smaller ones: score importance, prune, distill, evaluate.

verbs:
{verbs}

Each verb is a Hydra app over configs/VERB.yaml: override any key with key=value, pick a config group
member with group=name (for example model=tiny_nemotron), sweep with -m key=a,b, and print the composed
config with --cfg job. `minitron VERB --help` lists the config groups. Add debug=true for full tracebacks.
"""


def _usage() -> str:
    width = max(map(len, VERBS))
    return USAGE.format(verbs="\n".join(f"  {v:<{width}}  {d}" for v, d in VERBS.items()))


def load_verb(verb: str):
    """The module implementing `verb`, which defines `run(cfg)`."""
    if verb not in VERBS:
        raise MinitronError(f"unknown verb '{verb}'; choose one of: {', '.join(VERBS)} (see `minitron --help`)")
    # imported on demand: `minitron --help` stays instant, and a verb loads only the libraries it needs
    return importlib.import_module(f"minitron.commands.{verb}")


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    import transformers

    transformers.logging.set_verbosity_warning()
    transformers.logging.disable_progress_bar()


def _debug_requested(args: list[str]) -> bool:
    return any(a.lower() in ("debug=true", "debug=1", "+debug=true") for a in args)


def _run_app(verb: str, run_fn, args: list[str]) -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig

    from minitron.config import config_dir

    debug = _debug_requested(args)
    # An explicit run folder that exists already (a resumed run, a shared folder) is never removed on failure;
    # the default one carries a per-run id and is always new.
    given = _given_run_dir(args)
    existed = given is not None and given.exists()

    def task(cfg: DictConfig):
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        fresh = not existed and not _has_own_files(run_dir)
        try:
            return run_fn(cfg)
        except MinitronError as e:
            if debug:
                traceback.print_exc()
            print(f"minitron {verb}: error: {e}", file=sys.stderr)
            if fresh and not debug:
                _remove_bookkeeping_only(run_dir)
            raise SystemExit(2) from None
        except OSError as e:  # a path that cannot be read or written, or a hub that cannot be reached: say which
            if debug:
                traceback.print_exc()
            print(f"minitron {verb}: error: {_os_error(e)}", file=sys.stderr)
            if fresh and not debug:
                _remove_bookkeeping_only(run_dir)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            print(f"\nminitron {verb}: interrupted; run folder kept at {run_dir}", file=sys.stderr)
            raise SystemExit(130) from None

    app = hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=verb)(task)
    saved = sys.argv
    sys.argv = [f"minitron {verb}", *args]
    if debug:
        os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        app()
    finally:
        sys.argv = saved


def _given_run_dir(args: list[str]) -> Path | None:
    """The run folder that `hydra.run.dir=...` (or `hydra.sweep.dir=...`) names on the command line, if any."""
    for arg in args:
        key, _, value = arg.lstrip("+").partition("=")
        if key in ("hydra.run.dir", "hydra.sweep.dir") and value:
            return Path(value).expanduser()
    return None


def _os_error(e: OSError) -> str:
    hub = hub_problem(e)
    if hub is not None:
        return hub
    if not e.filename:  # not about a path of ours (a socket, a library's own I/O): say what it is
        return f"{type(e).__name__}: {first_line(e)} (add debug=true for the traceback)"
    what = e.strerror or str(e).splitlines()[0]
    return (f"cannot use the path {e.filename}: {what}; check the folder exists, is a folder, and is writable "
            "(or pick another path)")


def _has_own_files(run_dir: Path) -> bool:
    try:
        return any(not _bookkeeping(p) for p in run_dir.iterdir())
    except OSError:
        return True  # cannot tell: keep the folder


def _bookkeeping(p: Path) -> bool:
    return p.name in (".hydra", "config.yaml") or p.name.endswith(".log")


def _remove_bookkeeping_only(run_dir: Path) -> None:
    """A run that failed before writing anything of its own leaves no folder behind.

    Only called for a folder this run created (see `_run_app`), and it never raises: a failure here must not hide
    the run's own error.
    """
    try:
        if all(_bookkeeping(p) for p in run_dir.iterdir()):
            shutil.rmtree(run_dir, ignore_errors=True)
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    verb, rest = args[0], args[1:]
    try:
        module = load_verb(verb)
        _quiet_libraries()
        if not any(a.split("=")[0] in HYDRA_FLAGS for a in rest):
            from minitron.config import validate_overrides

            validate_overrides(verb, rest)
        _run_app(verb, module.run, rest)
    except SystemExit as e:  # raised by the verb's error handler and by Hydra itself
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except MinitronError as e:
        if _debug_requested(rest):
            traceback.print_exc()
        print(f"minitron {verb}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
