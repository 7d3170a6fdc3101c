"""`fill_zero3_sizes`: the ZeRO-3 prefetch limit `auto` becomes a number sized by the model, as transformers sizes
the prefetch bucket; the shipped zero3 config asks for it, and numbers given by hand are kept."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from minitron.config import compose, to_plain
from minitron.errors import MinitronError
from minitron.train.trainer import fill_zero3_sizes


def _args(zero: dict) -> SimpleNamespace:
    return SimpleNamespace(hf_deepspeed_config=SimpleNamespace(config={"zero_optimization": zero}))


def _model(hidden: int | None) -> SimpleNamespace:
    return SimpleNamespace(config=SimpleNamespace(hidden_size=hidden) if hidden else SimpleNamespace())


def test_auto_is_the_prefetch_bucket():
    args = _args({"stage": 3, "stage3_prefetch_bucket_size": "auto", "stage3_max_live_parameters": "auto"})
    fill_zero3_sizes(args, _model(64))
    assert args.hf_deepspeed_config.config["zero_optimization"]["stage3_max_live_parameters"] == int(0.9 * 64 * 64)
    args = _args({"stage": 3, "stage3_prefetch_bucket_size": 5000, "stage3_max_live_parameters": "auto"})
    fill_zero3_sizes(args, _model(None))
    assert args.hf_deepspeed_config.config["zero_optimization"]["stage3_max_live_parameters"] == 5000


def test_numbers_and_other_configs_are_left_alone():
    args = _args({"stage": 3, "stage3_max_live_parameters": 123})
    fill_zero3_sizes(args, _model(64))
    assert args.hf_deepspeed_config.config["zero_optimization"]["stage3_max_live_parameters"] == 123
    fill_zero3_sizes(SimpleNamespace(), _model(64))  # no DeepSpeed


def test_auto_without_a_hidden_size_is_one_line_error():
    args = _args({"stage": 3, "stage3_prefetch_bucket_size": "auto", "stage3_max_live_parameters": "auto"})
    with pytest.raises(MinitronError, match="stage3_max_live_parameters is auto"):
        fill_zero3_sizes(args, _model(None))


def test_the_zero3_config_bounds_prefetch_and_the_optimizer_sub_groups():
    zero = to_plain(compose("distill", ["deepspeed=zero3"]).deepspeed)["zero_optimization"]
    assert zero["stage3_max_live_parameters"] == "auto" and zero["stage3_max_reuse_distance"] == 0
    assert zero["sub_group_size"] <= 1e7
