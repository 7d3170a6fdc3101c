"""`minitron pipeline recipe=NAME miniature=true`: each paper recipe for real at toy scale.

Fast: the switch keeps the recipe's family, GQA ratio, pruning ratios, losses, schedule shape, DeepSpeed config
and streamed data, from the config alone. Slow: every paper recipe runs non-dry through every stage on 2 CPU ranks
(torchrun, DeepSpeed on CPU), sharing one cache (local corpus, tokenizer, packed validation, lm-eval tasks).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from minitron.config import compose
from minitron.errors import MinitronError
from minitron.workflows.miniature import miniature_config, scale_drop_layers
from minitron.workflows.pipeline import plan

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SHAPE = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads")

# recipe -> (model_type, miniature teacher shape, miniature student shape), shapes as SHAPE. The paper's sizes
# divided as configs/pipeline.yaml's miniature_scale says: widths / 64, KV groups / 4 with the teacher's query
# heads per group, layers / 8; the target's ratios of the paper teacher applied to the miniature one.
MINIATURE = {
    "minitron_8b": ("nemotron", (4, 96, 384, 12, 2), (4, 64, 256, 12, 2)),
    "minitron_4b": ("nemotron", (4, 96, 384, 12, 2), (4, 48, 144, 6, 2)),
    "minitron_4b_from_8b": ("nemotron", (4, 64, 256, 12, 2), (4, 48, 144, 6, 2)),
    "llama31_minitron_4b_width": ("llama", (4, 64, 224, 8, 2), (4, 48, 144, 8, 2)),
    "llama31_minitron_4b_depth": ("llama", (4, 64, 224, 8, 2), (2, 64, 224, 8, 2)),
    "mistral_nemo_minitron_8b": ("mistral", (5, 80, 224, 8, 2), (5, 64, 180, 8, 2)),
    "mistral_nemo_minitron_8b_corrected": ("mistral", (5, 80, 224, 8, 2), (5, 64, 180, 8, 2)),
}


def _shape(shape: dict) -> tuple[int, ...]:
    return tuple(shape[k] for k in SHAPE)


@pytest.mark.parametrize("name", sorted(MINIATURE))
def test_the_miniature_keeps_what_makes_the_recipe(name):
    full = compose("pipeline", [f"recipe={name}"])
    cfg = miniature_config(compose("pipeline", [f"recipe={name}", "miniature=true"]))
    _, teacher, student = MINIATURE[name]
    p = plan(cfg)
    assert (_shape(p["source_shape"]), _shape(p["pruned_shape"])) == (teacher, student)
    # the family and the teacher's GQA ratio: the same config class and query heads per KV group
    arch, tiny = full.model.arch, cfg.model.arch
    assert tiny._target_ == arch._target_ and tiny.hidden_act == arch.hidden_act
    assert tiny.num_attention_heads // tiny.num_key_value_heads == arch.num_attention_heads // arch.num_key_value_heads
    assert tiny.get("rope_scaling") == arch.get("rope_scaling")
    # the pruning ratios, to the rounding of the tiny sizes
    for key in ("hidden_size", "intermediate_size"):
        if full.target[key] is not None:
            assert cfg.target[key] / tiny[key] == pytest.approx(full.target[key] / arch[key], abs=0.5 / tiny[key])
    # losses, DeepSpeed config, the schedule's shape, streamed local data, the real ranks
    assert cfg.distill == full.distill and cfg.deepspeed == full.deepspeed
    assert cfg.deepspeed.zero_optimization.stage == 3
    t = cfg.train
    assert (t.lr, t.min_lr_ratio, t.batch_size, t.gradient_accumulation_steps, t.gradient_checkpointing) == (
        full.train.lr, full.train.min_lr_ratio, full.train.batch_size, full.train.gradient_accumulation_steps, True)
    assert t.max_steps == cfg.miniature_scale.steps and 1 <= t.warmup_steps < t.max_steps
    assert (cfg.data.source, cfg.data.streaming, cfg.data.seq_len) == ("local", True, full.data.seq_len // 64)
    assert cfg.launch == {"nodes": 1, "gpus_per_node": 1}
    assert (cfg.teacher_correction.steps > 0) == name.endswith("_corrected")
    assert cfg.baseline.enabled == full.baseline.enabled
    assert OmegaConf.to_container(cfg.importance) == OmegaConf.to_container(full.importance)
    # the plan's numbers follow: the real global batch and token budget of the miniature
    assert p["tokens"] == t.max_steps * t.batch_size * t.gradient_accumulation_steps * cfg.data.seq_len


def test_the_depth_recipe_keeps_its_block_and_its_last_layer():
    cfg = miniature_config(compose("pipeline", ["recipe=llama31_minitron_4b_depth", "miniature=true"]))
    assert list(cfg.target.drop_layers) == [1, 2]  # layers 15-30 of 32: layer 0 and the last one kept


@pytest.mark.parametrize("drops, layers, tiny, expected", [
    (list(range(15, 31)), 32, 4, [1, 2]),
    (list(range(15, 31)), 32, 8, [3, 4, 5, 6]),
    (list(range(16, 32)), 32, 4, [2, 3]),            # a block ending at the last layer stays there
    ([0, 1], 32, 4, [0]),                            # a small block keeps at least one layer
    ([3, 4, 20, 21], 32, 8, [1, 5]),                 # two blocks stay two blocks, kept stretches between
])
def test_drop_layers_keep_their_shape(drops, layers, tiny, expected):
    assert scale_drop_layers(drops, layers, tiny) == expected


def test_too_many_blocks_for_the_miniature_is_one_line():
    with pytest.raises(MinitronError, match="lower miniature_scale.layer_divisor"):
        scale_drop_layers([1, 3, 5, 7], 8, 2)


def test_a_packaged_teacher_cannot_be_miniaturised():
    with pytest.raises(MinitronError, match="teacher=smollm2_135m names a packaged model"):
        miniature_config(compose("pipeline", ["recipe=smollm2_135m", "miniature=true"]))


def test_a_bad_scale_is_one_line():
    with pytest.raises(MinitronError, match=r"miniature_scale.steps=0 must be a positive integer"):
        miniature_config(compose("pipeline", ["recipe=minitron_8b", "miniature=true", "miniature_scale.steps=0"]))


def test_the_cli_dry_run_prints_the_miniature_plan(tmp_path, capsys):
    from minitron.cli import main

    assert main(["pipeline", "recipe=minitron_4b", "miniature=true", "dry_run=true",
                 f"hydra.run.dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "nemotron4_15b_miniature -> target minitron_4b_miniature" in out
    saved = OmegaConf.load(tmp_path / "config.yaml")  # the run folder records the config that ran
    assert saved.model.arch.hidden_size == 96 and saved.data.streaming is True


# ---------------------------------------------------------------------------------------------- slow: for real


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One cache for every recipe's run: the local corpus, its tokenizer, the packed validation blocks and the
    lm-eval tasks are built by the first run and reused by the others."""
    return tmp_path_factory.mktemp("miniature-cache")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MINIATURE))
def test_the_recipe_runs_for_real_in_miniature_on_two_ranks(name, shared_cache, tmp_path):
    run = tmp_path / "run"
    cmd = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(_port()), "-m", "minitron",
           "pipeline", f"recipe={name}", "miniature=true", f"cache_dir={shared_cache}", f"hydra.run.dir={run}"]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    family, teacher, student = MINIATURE[name]
    corrected = name.endswith("_corrected")
    stages = {"teacher", "importance", "prune", "eval_teacher", "eval_pruned", "distill", "eval_distilled"}
    assert {p.stem for p in (run / "stages").glob("*.json")} == stages | ({"teacher_correction"} if corrected else set())
    assert "created partitioned over 2 ranks by ZeRO-3" in proc.stdout  # the recipe's DeepSpeed config ran
    assert proc.stdout.count("report: ") == 1 and (run / "report.md").is_file()

    def shape(folder: Path) -> tuple[str, tuple[int, ...]]:
        config = json.loads((folder / "config.json").read_text())
        return config["model_type"], tuple(config[k] for k in SHAPE)

    assert shape(run / "miniature" / "teacher") == (family, teacher)
    assert shape(run / "pruned") == shape(run / "distilled") == (family, student)
    for folder in ("pruned", "distilled"):
        assert (run / folder / "model.safetensors").is_file() and (run / folder / "tokenizer.json").is_file()
    cfg = OmegaConf.load(run / "config.yaml")
    t = cfg.train
    distill = json.loads((run / "stages" / "distill.json").read_text())
    assert distill["steps"] == t.max_steps
    assert distill["tokens"] == t.max_steps * t.batch_size * t.gradient_accumulation_steps * 2 * cfg.data.seq_len
    evaluated = {n: json.loads((run / "stages" / f"eval_{n}.json").read_text()) for n in ("teacher", "pruned", "distilled")}
    assert all(e["val_loss"] > 0 and 0 <= e["tiny_mc_acc"] <= 1 and e["tiny_bpb"] > 0 for e in evaluated.values())
    if name == "llama31_minitron_4b_depth":
        kept = json.loads((run / "pruned" / "config.json").read_text())["minitron_layer_map"]["source_layers"]
        assert kept == [0, 3]
    if corrected:
        assert (run / "teacher_corrected" / "model.safetensors").is_file()
        assert json.loads((run / "stages" / "teacher_correction.json").read_text())["steps"] == \
            cfg.teacher_correction.steps
