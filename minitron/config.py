"""Hydra config plumbing shared by every verb: where the configs live, strict overrides, stable hashes."""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, OverrideParseException
from omegaconf import DictConfig, ListConfig, OmegaConf

from minitron.errors import MinitronError


def run_id() -> str:
    """Six hex digits that tell apart the run folders of runs started in the same second.

    Fresh random digits for every run, except under torchrun / the DeepSpeed launcher: there every rank of one
    launch derives the same digits from the launch's rendezvous (master address and port, run id), so the ranks
    share one folder.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # as minitron.ranks reads it (base modules do not import it)
        launch = "|".join(os.environ.get(k, "") for k in ("MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"))
        return hashlib.sha256(launch.encode()).hexdigest()[:6]
    return secrets.token_hex(3)


# `${minitron_run_id:}` in configs/common.yaml's hydra.run.dir and hydra.sweep.dir. Cached per composed config,
# like Hydra's own `now`, so that one run (and every job of one multirun, whose configs share the cache) resolves
# it to one value.
OmegaConf.register_new_resolver("minitron_run_id", run_id, use_cache=True, replace=True)


def config_dir() -> Path:
    """The `configs/` folder: `minitron/configs` links to the checkout's top-level one and is copied into wheels."""
    path = Path(__file__).resolve().parent / "configs"
    if not (path / "common.yaml").is_file():
        raise MinitronError("cannot find minitron's configs/ folder; reinstall the package with `pip install -e .`")
    return path


def compose(name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose `configs/<name>.yaml` with overrides through Hydra's compose API (for tests and library use)."""
    outer = GlobalHydra.instance()
    saved = outer.hydra if outer.is_initialized() else None  # inside a running verb (a Hydra app)
    outer.clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            return hydra_compose(config_name=name, overrides=list(overrides))
    finally:
        if saved is not None:
            GlobalHydra.instance().initialize(saved)


def _first_value(override) -> str:
    return next(iter(override.sweep_string_iterator()))


def validate_overrides(verb: str, overrides: Sequence[str]) -> None:
    """Reject unknown keys and values of the wrong type with a one-line MinitronError.

    Hydra's own messages span several lines; we compose once up front to give the user one line that names the key.
    Sweeps (`-m key=a,b`) are checked with their first value.
    """
    user = [o for o in overrides if not o.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(user)
    except OverrideParseException as e:
        raise MinitronError(f"cannot parse override: {str(e).splitlines()[0]}") from None
    plain = []
    for raw, o in zip(user, parsed):
        if o.key_or_group.startswith("hydra"):
            continue
        if o.is_sweep_override():
            prefix = {"ADD": "+", "FORCE_ADD": "++"}.get(o.type.name, "")
            raw = f"{prefix}{o.key_or_group}={_first_value(o)}"
        plain.append(raw)
    try:
        base = compose(verb)
        cfg = compose(verb, plain)
    except ConfigCompositionException as e:
        raise MinitronError(_one_line(verb, e)) from None
    except Exception as e:  # omegaconf errors surface as assorted types
        raise MinitronError(_one_line(verb, e)) from None
    for o in parsed:
        if o.key_or_group.startswith("hydra") or o.is_delete() or o.is_add():
            continue
        _check_type(verb, o.key_or_group, base, cfg)


def _one_line(verb: str, e: Exception) -> str:
    text = str(e)
    cause = e.__cause__
    while cause is not None:
        text += "\n" + str(cause)
        cause = cause.__cause__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    missing = re.search(r"Could not find '([\w/]+)/([^'/]+)'", text)
    if missing:
        group, name = missing.groups()
        folder = config_dir() / group
        choices = sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []
        return f"{group}={name} is not a config of group '{group}'; choose one of: {', '.join(choices)}"
    for ln in lines:
        if ln.startswith("Could not override"):
            key = ln.split("'")[1]
            return (
                f"unknown config key '{key}' for `minitron {verb}`; "
                f"list the valid keys with `minitron {verb} --cfg job` (prefix with + to add a new key)"
            )
        if ln.startswith("Could not find") or "not found in the defaults list" in ln or "Could not load" in ln:
            return f"{ln.rstrip('.')} (see the folders under configs/ for the available choices)"
        if ln.startswith("In '") and "Could not find" in text:
            continue
    return f"bad config for `minitron {verb}`: {lines[0] if lines else type(e).__name__}"


def _check_type(verb: str, key: str, base: DictConfig, cfg: DictConfig) -> None:
    """A value must keep the type of the shipped default (ints stay ints, floats accept ints)."""
    if OmegaConf.select(base, key, default=None) is None:
        return
    old = OmegaConf.select(base, key)
    new = OmegaConf.select(cfg, key)
    if new is None or isinstance(old, (DictConfig, ListConfig)) and isinstance(new, type(old)):
        return
    ok = (
        (isinstance(old, bool) and isinstance(new, bool))
        or (isinstance(old, int) and not isinstance(old, bool) and isinstance(new, int) and not isinstance(new, bool))
        or (isinstance(old, float) and isinstance(new, (int, float)) and not isinstance(new, bool))
        or (isinstance(old, str) and isinstance(new, (str, int, float)) and not isinstance(new, bool))
        # a key whose default is `auto` takes `auto | true | false` (train.bf16, DeepSpeed's fp16.enabled, ...)
        or (old == "auto" and isinstance(new, bool))
        or (isinstance(old, (DictConfig, ListConfig)) and isinstance(new, (DictConfig, ListConfig)))
    )
    if not ok:
        kind = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(type(old), type(old).__name__)
        kind = "a list" if isinstance(old, ListConfig) else "a mapping" if isinstance(old, DictConfig) else kind
        raise MinitronError(f"config key '{key}' of `minitron {verb}` must be {kind}, got {new!r}")


def to_plain(cfg: Any) -> Any:
    """A resolved plain-Python copy of a config node."""
    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def stable_hash(*parts: Any, length: int = 12) -> str:
    """A short hex digest of JSON-serialisable parts (sorted keys), used as cache keys."""
    blob = json.dumps([to_plain(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]
