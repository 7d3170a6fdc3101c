"""Fixtures shared by the family test modules: each module parametrises its own `family` fixture (the families
it covers); the tiny model of that family, its random scores and its saved checkpoint are built here, once per
module and family."""

from __future__ import annotations

import pytest

from minitron.importance.baselines import random_scores
from minitron.models.tiny import tiny_model

LAYERS = 3  # the family modules' tiny models have 3 decoder layers (their LAYERS constants say the same)


@pytest.fixture(scope="module")
def model(family):
    return tiny_model(family, seed=1, num_hidden_layers=LAYERS)


@pytest.fixture(scope="module")
def scores(model):
    return random_scores(model.config, seed=3)


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("source")
    model.save_pretrained(folder)
    return folder
