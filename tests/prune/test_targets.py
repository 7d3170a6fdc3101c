"""Named targets: the papers' parameter counts from configs alone (no weights), and the dry-run verb."""

from __future__ import annotations

import json

import pytest

from minitron.commands.prune import run
from minitron.config import compose, config_dir
from minitron.errors import MinitronError
from minitron.models import get_adapter
from minitron.prune.dry_run import config_from_arch, dry_run, meta_parameters

# (target, source model, pruned parameters, source parameters), from the papers' model cards
PAPER = [
    ("minitron_8b", "nemotron4_15b", 8_271_699_968, 15_628_775_424),
    ("minitron_4b", "nemotron4_15b", 4_190_509_056, 15_628_775_424),
    ("llama31_minitron_4b_width", "llama31_8b", 4_512_746_496, 8_030_261_248),
    ("llama31_minitron_4b_depth", "llama31_8b", 4_540_469_248, 8_030_261_248),
    ("mistral_nemo_minitron_8b", "mistral_nemo_12b", 8_414_105_600, None),
    ("tiny", "tiny_nemotron", 2_436_192, 4_854_272),
    ("nemotron_h_4b", "nemotron_h_8b", 4_489_223_040, 8_100_852_736),
]


def test_every_target_file_is_covered():
    assert {p.stem for p in (config_dir() / "target").glob("*.yaml")} == {t for t, *_ in PAPER}


@pytest.mark.parametrize("name, model, pruned, source", PAPER)
def test_dry_run_counts_match_the_papers(name, model, pruned, source, tmp_path, capsys):
    cfg = compose("prune", [f"target={name}", "dry_run=true"])
    assert cfg.model.name == model  # a named target selects its source architecture
    report = run(cfg, run_dir=tmp_path)
    assert report["pruned_parameters"] == pruned
    if source is not None:
        assert report["source_parameters"] == source
    assert meta_parameters(report["config"]) == pruned  # the stock class on the meta device agrees
    printed = capsys.readouterr().out
    assert f"{pruned:,}" in printed and '"hidden_size"' in printed
    assert json.loads((tmp_path / "dry_run.json").read_text())["pruned_parameters"] == pruned
    assert json.loads((tmp_path / "pruned_config.json").read_text())["num_key_value_heads"] == 8 or name == "tiny"


def test_the_hybrid_target_is_the_published_nemotron_h_4b():
    """target=nemotron_h_4b on Nemotron-H 8B gives the published 4B's architecture field by field (Megatron-Bridge's
    provider sizes, configs/model/nemotron_h_4b.yaml) and its exact parameter count."""
    cfg = compose("prune", ["target=nemotron_h_4b"])
    pruned = dry_run(config_from_arch(cfg.model.arch), cfg.target)["config"]
    published = config_from_arch(compose("prune", ["model=nemotron_h_4b"]).model.arch)
    fields = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
              "mamba_num_heads", "mamba_head_dim", "n_groups", "ssm_state_size", "layers_block_type", "vocab_size")
    assert {f: getattr(pruned, f) for f in fields} == {f: getattr(published, f) for f in fields}
    assert pruned.hybrid_override_pattern == "M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M-"
    assert meta_parameters(pruned) == meta_parameters(published) == 4_489_223_040


def test_paper_shapes():
    shapes = {}
    for name, model, *_ in (p for p in PAPER if p[0] != "tiny"):
        cfg = compose("prune", [f"target={name}"])
        report = dry_run(config_from_arch(cfg.model.arch), cfg.target)
        shapes[name] = tuple(report["pruned_shape"].values()) + (report["head_dim"],)
    assert shapes == {  # layers, hidden, ffn, q heads, kv heads, head_dim
        "minitron_8b": (32, 4096, 16384, 48, 8, 128),
        "minitron_4b": (32, 3072, 9216, 24, 8, 128),
        "llama31_minitron_4b_width": (32, 3072, 9216, 32, 8, 128),
        "llama31_minitron_4b_depth": (16, 4096, 14336, 32, 8, 128),
        "mistral_nemo_minitron_8b": (40, 4096, 11520, 32, 8, 128),
        "nemotron_h_4b": (52, 3072, 12288, 32, 8, 112, 8, 128),  # + Mamba heads and groups
    }


def test_source_configs_carry_the_public_settings():
    nemo = config_from_arch(compose("prune", ["model=nemotron4_15b"]).model.arch)
    assert nemo.rope_parameters["partial_rotary_factor"] == 0.5 and nemo.hidden_act == "relu2"
    assert not nemo.tie_word_embeddings
    llama = config_from_arch(compose("prune", ["model=llama31_8b"]).model.arch)
    assert llama.rope_parameters["rope_type"] == "llama3" and llama.rope_parameters["factor"] == 8.0
    pruned = dry_run(llama, {"hidden_size": 3072})["config"]
    assert pruned.rope_parameters == llama.rope_parameters and pruned.head_dim == 128
    assert (pruned.bos_token_id, pruned.eos_token_id) == (128000, 128001)


def test_dry_run_of_a_checkpoint_and_a_mismatched_target(teacher_dir, tmp_path, capsys):
    report = run(compose("prune", [f"teacher={teacher_dir}", "dry_run=true", "target.hidden_size=16",
                                   "target.intermediate_size=null", "target.num_attention_heads=null"]), run_dir=tmp_path)
    assert report["pruned_shape"]["hidden_size"] == 16
    assert report["pruned_parameters"] == get_adapter(report["config"]).num_parameters()
    with pytest.raises(MinitronError, match="larger than the source model's hidden_size=32; .*meant for model=tiny_nemotron"):
        run(compose("prune", [f"teacher={teacher_dir}", "dry_run=true"]), run_dir=tmp_path / "b")
    assert not (tmp_path / "b").exists()
    with pytest.raises(MinitronError, match="out of range: the model has 4 layers"):
        run(compose("prune", ["target=llama31_minitron_4b_depth", "model=tiny_llama", "dry_run=true"]), run_dir=tmp_path / "c")


def test_bad_arch_fails_in_one_line():
    cfg = compose("prune", ["model.arch._target_=transformers.NoSuchConfig"])
    with pytest.raises(MinitronError, match="is not an importable config class") as e:
        config_from_arch(cfg.model.arch, vocab_size=10)
    assert "\n" not in str(e.value)
    with pytest.raises(MinitronError, match="vocab_size is null"):
        config_from_arch(compose("prune").model.arch)


def test_tiny_target_on_a_model_of_the_default_teachers_shape():
    """The default target on real weights of the embedded teacher's architecture (random, 4096-token vocabulary)."""
    import torch
    from transformers import AutoModelForCausalLM

    from minitron.prune import prune
    from prune_helpers import fake_importance

    cfg = compose("prune")
    config = config_from_arch(cfg.model.arch, vocab_size=4096)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    assert model.num_parameters() == 4_854_272
    pruned = prune(model, fake_importance(model), cfg.target)
    assert pruned.num_parameters() == 2_436_192
    with torch.no_grad():
        assert pruned(torch.tensor([[1, 2, 3, 4]])).logits.shape == (1, 4, 4096)


def test_llama_depth_target_keeps_nvidias_layers_by_weight():
    """NVIDIA's Llama-3.1-Minitron 4B Depth drops layers 16-31 counted from 1 and keeps 1-15 and 32 (NeMo tutorial
    llm/llama/pruning-distillation, 03_pruning): counted from 0, the pruned model's layers are the teacher's 0-14
    and 31. A 32-layer tiny Llama pruned with the shipped target must hold exactly those layers' weights."""
    import torch

    from minitron.models.tiny import tiny_model
    from minitron.prune import prune

    cfg = compose("prune", ["target=llama31_minitron_4b_depth"])
    teacher = tiny_model("llama", seed=3, num_hidden_layers=32, hidden_size=16, intermediate_size=32, head_dim=4)
    student = prune(teacher, None, cfg.target)
    expected = [*range(15), 31]
    assert student.config.num_hidden_layers == len(expected) == 16
    t, s = teacher.state_dict(), student.state_dict()
    for new, old in enumerate(expected):
        for name in ("self_attn.q_proj.weight", "self_attn.o_proj.weight", "mlp.down_proj.weight", "input_layernorm.weight"):
            assert torch.equal(s[f"model.layers.{new}.{name}"], t[f"model.layers.{old}.{name}"]), (new, old, name)
    # every teacher layer's weights are distinct, so no other assignment could pass the loop above
    assert not torch.equal(t["model.layers.30.self_attn.q_proj.weight"], t["model.layers.31.self_attn.q_proj.weight"])


def test_dry_runs_print_kept_and_dropped_layers(tmp_path, capsys):
    from minitron.workflows.pipeline import format_plan, plan

    run(compose("prune", ["target=llama31_minitron_4b_depth", "dry_run=true"]), run_dir=tmp_path / "prune")
    printed = capsys.readouterr().out
    kept = f"kept layers (from 0): {[*range(15), 31]}"
    dropped = f"dropped layers (from 0): {list(range(15, 31))}"
    assert kept in printed and dropped in printed
    report = json.loads((tmp_path / "prune" / "dry_run.json").read_text())
    assert report["keep_layers"] == [*range(15), 31] and report["drop_layers"] == list(range(15, 31))
    text = format_plan(plan(compose("pipeline", ["recipe=llama31_minitron_4b_depth", "dry_run=true"])))
    assert kept in text and dropped in text
    chosen = format_plan(plan(compose("pipeline", ["recipe=tiny_depth", "dry_run=true"])))
    assert "layers: 2 of 4 kept, chosen by" in chosen
