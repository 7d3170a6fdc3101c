"""The library's layers, enforced from the source: each package imports only from the layers below it.

    base helpers (errors, io, config, ranks) -> models -> data -> checkpoint
      -> the method: importance, prune (uses importance's scores), train, distill (trains on train's Trainer), evaluate
      -> workflows (pipeline, prune a checkpoint, search with retraining, ablations) -> commands (the CLI verbs) -> cli

An import pointing up (or sideways between method packages other than those listed) fails this test with the
file, the line and the import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import minitron

ROOT = Path(minitron.__file__).resolve().parent
BASE = {"errors", "io", "config", "ranks"}
METHOD_BELOW = BASE | {"models", "data", "checkpoint", "real_models"}
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "io": set(),
    "ranks": set(),
    "config": {"errors"},
    "models": BASE,
    "data": BASE,
    "checkpoint": BASE | {"models"},
    "real_models": BASE | {"models", "checkpoint"},  # packaged pretrained models, converted into checkpoints
    "importance": METHOD_BELOW,
    "prune": METHOD_BELOW | {"importance"},
    "train": METHOD_BELOW,
    "distill": METHOD_BELOW | {"train"},
    "evaluate": METHOD_BELOW,
    "workflows": METHOD_BELOW | {"importance", "prune", "train", "distill", "evaluate"},
    "commands": METHOD_BELOW | {"importance", "prune", "train", "distill", "evaluate", "workflows"},
    "cli": BASE,  # the verbs are loaded by name (importlib), never imported
    "__main__": {"cli"},
}


def _package(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(source: str, folder: tuple[str, ...] = ()):
    """(line, imported minitron package) for every import in `source`, at any depth (functions included);
    `folder` is the module's package path inside minitron, for relative imports."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                names = [*folder[: len(folder) - node.level + 1], *(node.module.split(".") if node.module else [])]
            elif node.module and node.module.split(".")[0] == "minitron":
                names = node.module.split(".")[1:]
            else:
                continue
            if names:
                yield node.lineno, names[0]
            else:  # `from minitron import x`: x is the package
                for alias in node.names:
                    yield node.lineno, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "minitron" and len(parts) > 1:
                    yield node.lineno, parts[1]


def _sources() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if "configs" not in p.relative_to(ROOT).parts)


def test_every_package_has_a_layer():
    packages = {_package(p) for p in _sources()} - {"__init__"}
    assert packages <= set(ALLOWED), f"add the new package(s) to ALLOWED: {sorted(packages - set(ALLOWED))}"


def test_imports_point_downwards_only():
    wrong = []
    for path in _sources():
        package = _package(path)
        if package == "__init__":
            continue
        for line, target in _imports(path.read_text(), path.relative_to(ROOT).parent.parts):
            if target != package and target not in ALLOWED[package]:
                wrong.append(f"{path.relative_to(ROOT.parent)}:{line}: {package} imports minitron.{target}")
    assert not wrong, "imports that point up or sideways:\n" + "\n".join(wrong)


def test_no_two_packages_import_each_other():
    edges = {(package, target) for package, targets in ALLOWED.items() for target in targets}
    assert not [(a, b) for a, b in edges if (b, a) in edges]


def test_the_check_sees_upward_imports():
    """The parser itself: imports from a higher layer are found, inside functions and relative ones too."""
    source = ("import os\nfrom minitron import prune\n\ndef f():\n    from minitron.workflows.pipeline import plan\n"
              "    import minitron.commands.score\n    from ..train import pretrain\n")
    assert [target for _, target in _imports(source, ("distill",))] == ["prune", "workflows", "commands", "train"]
