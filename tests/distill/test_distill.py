"""`minitron distill` end to end on a tiny teacher: files, checkpoints that stock transformers loads, the KL."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from minitron.commands.distill import run
from minitron.errors import MinitronError

from distill_helpers import distill_cfg, make_student


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_distills_a_narrower_student_that_loads_in_stock_transformers(tiny_teacher, tmp_path):
    teacher, cache = tiny_teacher
    student = make_student(teacher, tmp_path / "student_in", num_hidden_layers=1)
    run_dir = tmp_path / "run"
    result = run(distill_cfg(teacher, cache, student, "train.max_steps=4", "train.save_steps=2"), run_dir=run_dir)

    assert {"config.yaml", "metrics.json", "metrics.jsonl", "loss.png", "student", "checkpoints"} <= {p.name for p in run_dir.iterdir()}
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]
    records = _records(run_dir)
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert all(r["kl"] > 0 and r["ce"] > 0 for r in steps)
    # the default loss is the forward KL alone, so the logged loss is the logged KL
    assert all(r["loss"] == pytest.approx(r["kl"], rel=1e-4) for r in steps)
    assert steps[-1]["tokens"] == 4 * 4 * 64 == result.tokens
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["val_loss"] == result.val_loss and saved["teacher_val_loss"] == result.teacher_val_loss
    assert saved["steps"] == 4

    model = AutoModelForCausalLM.from_pretrained(result.path)
    tok = AutoTokenizer.from_pretrained(result.path)
    assert model.config.num_hidden_layers == 1 and len(tok) == model.config.vocab_size
    # distillation moved the student towards the teacher: the KL to the teacher dropped on an unseen input
    ids = tok("import os\nimport sys\n\ndef main(argv):\n    return 0\n", return_tensors="pt").input_ids
    with torch.no_grad():
        t_logp = AutoModelForCausalLM.from_pretrained(teacher)(ids).logits.log_softmax(-1)

        def kl_to_teacher(path) -> float:
            s_logp = AutoModelForCausalLM.from_pretrained(path)(ids).logits.log_softmax(-1)
            return float((t_logp.exp() * (t_logp - s_logp)).sum(-1).mean())

        assert kl_to_teacher(result.path) < kl_to_teacher(student)
    # the trained weights, not the initial ones, were saved
    before = load_file(str(student / "model.safetensors"))
    after = load_file(str(result.path) + "/model.safetensors")
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_a_student_equal_to_the_teacher_has_zero_kl(tiny_teacher, tmp_path):
    """KL(p || p) = 0: the logged KL is the true KL, not the cross-entropy against the teacher."""
    teacher, cache = tiny_teacher
    student = make_student(teacher, tmp_path / "copy", copy=True)
    result = run(distill_cfg(teacher, cache, student, "train.max_steps=2", "train.save_steps=0",
                             "train.weight_decay=0.0"), run_dir=tmp_path / "run")
    steps = [r for r in _records(tmp_path / "run") if "loss" in r]
    assert all(abs(r["kl"]) < 1e-5 for r in steps)
    # Adam turns the round-off gradients into tiny steps, so the copy stays close to (not exactly at) the teacher
    assert result.val_loss == pytest.approx(result.teacher_val_loss, rel=1e-3)
    assert all(r["ce"] > 1 for r in steps)


@pytest.mark.parametrize("chunk", [0, 100])
def test_intermediate_states_with_a_projection_are_trained_and_left_out_of_the_checkpoint(tiny_teacher, tmp_path, chunk):
    teacher, cache = tiny_teacher
    student = make_student(teacher, tmp_path / "narrow", hidden_size=16, intermediate_size=32)
    result = run(distill_cfg(teacher, cache, student, "distill=kl_is", f"distill.chunk_size={chunk}", "train.max_steps=2",
                             "train.save_steps=0"), run_dir=tmp_path / "run")
    steps = [r for r in _records(tmp_path / "run") if "loss" in r]
    for r in steps:
        assert r["alpha"] == pytest.approx(r["loss_logits"] / r["loss_is"], rel=1e-3)
        assert r["loss"] == pytest.approx(2 * r["loss_logits"], rel=1e-3)  # L_logits + alpha L_is with alpha = ratio
    keys = load_file(str(result.path) + "/model.safetensors").keys()
    assert not any(k.startswith("distill_projection") for k in keys)
    assert AutoModelForCausalLM.from_pretrained(result.path).config.hidden_size == 16


def test_missing_or_bad_student_and_mismatched_tokenizers_are_one_line_errors(tiny_teacher, tmp_path):
    teacher, cache = tiny_teacher
    with pytest.raises(MinitronError, match="student= is required"):
        run(distill_cfg(teacher, cache, "null"), run_dir=tmp_path / "a")
    with pytest.raises(MinitronError, match="no config.json"):
        run(distill_cfg(teacher, cache, tmp_path), run_dir=tmp_path / "b")
    other = make_student(teacher, tmp_path / "other", num_hidden_layers=1)
    tok = AutoTokenizer.from_pretrained(other)
    tok.add_tokens(["<extra_token_for_test>"])
    tok.save_pretrained(other)
    with pytest.raises(MinitronError, match="tokenizers differ"):
        run(distill_cfg(teacher, cache, other), run_dir=tmp_path / "c")


def test_teacher_correction_fine_tunes_and_saves_the_teacher_first(tiny_teacher, tmp_path):
    teacher, cache = tiny_teacher
    student = make_student(teacher, tmp_path / "s", num_hidden_layers=1)
    run_dir = tmp_path / "run"
    # the correction has its own peak LR and warm-up, unlike the distillation's (lr 1e-3, 1 warm-up step)
    result = run(distill_cfg(teacher, cache, student, "train.max_steps=2", "train.save_steps=0",
                             "teacher_correction.steps=4", "teacher_correction.lr=4e-4",
                             "teacher_correction.warmup_steps=2"), run_dir=run_dir)
    corrected = run_dir / "teacher_corrected"
    assert AutoModelForCausalLM.from_pretrained(corrected).config.num_hidden_layers == 2
    before, after = load_file(str(teacher / "model.safetensors")), load_file(str(corrected / "model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before)
    lrs = [r["learning_rate"] for r in _records(run_dir / "teacher_correction") if "learning_rate" in r]
    # the LR each step used: linear warm-up over 2 steps to the correction's peak, then the decay
    assert len(lrs) == 4 and lrs[:3] == pytest.approx([0.0, 4e-4 / 2, 4e-4]) and 0 < lrs[3] < 4e-4
    distill_lrs = [r["learning_rate"] for r in _records(run_dir) if "learning_rate" in r]
    assert distill_lrs == pytest.approx([0.0, 1e-3])  # the student's own schedule (1 warm-up step) is untouched
    # the student was distilled from the corrected teacher: the teacher loss it reports is the corrected one's
    from minitron.data.calibration import packed_data
    from minitron.train.validation import lm_loss

    cfg = distill_cfg(teacher, cache, student)
    data = packed_data(cfg.data, cfg.cache_dir, AutoTokenizer.from_pretrained(corrected))
    expected = lm_loss(AutoModelForCausalLM.from_pretrained(corrected), data["validation"],
                       batch_size=int(cfg.train.batch_size), max_batches=cfg.train.eval_batches)
    assert result.teacher_val_loss == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["teacher_correction.lr=null"], "teacher_correction.lr is not set; set it to 1/5 of the teacher's original"),
        (["teacher_correction.lr=-1"], "teacher_correction.lr=-1 must be a positive learning rate"),
        (["teacher_correction.warmup_steps=null"], "teacher_correction.warmup_steps=None must be an integer >= 0"),
    ],
)
def test_teacher_correction_settings_are_checked_before_training(tiny_teacher, tmp_path, overrides, message):
    teacher, cache = tiny_teacher
    student = make_student(teacher, tmp_path / "s", num_hidden_layers=1)
    with pytest.raises(MinitronError, match=message):
        run(distill_cfg(teacher, cache, student, "teacher_correction.steps=2", *overrides), run_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "teacher_correction").exists()


def test_recipes_carry_the_papers_teacher_correction_settings():
    from minitron.config import compose

    corrected = compose("pipeline", ["recipe=mistral_nemo_minitron_8b_corrected"]).teacher_correction
    assert corrected.steps == 10596 and corrected.warmup_steps == 120
    assert corrected.lr is None  # 1/5 of a peak Mistral AI has not published: the run must set it
    for name in ("llama31_minitron_4b_width", "llama31_minitron_4b_depth"):
        tc = compose("pipeline", [f"recipe={name}"]).teacher_correction
        assert (tc.lr, tc.warmup_steps) == (pytest.approx(3e-4 / 5), 120)
    assert compose("distill").teacher_correction.lr == compose("pipeline").teacher_correction.lr == pytest.approx(
        compose("pretrain").train.lr / 5)  # the embedded teacher: 1/5 of its own pretraining peak


def test_every_shipped_loss_preset_and_deepspeed_config_composes(tiny_teacher):
    from minitron.config import compose, config_dir
    from minitron.train.settings import TrainSettings
    from minitron.distill.trainer import loss_spec

    presets = sorted(p.stem for p in (config_dir() / "distill").glob("*.yaml"))
    assert presets == ["ce", "jsd", "kl", "kl_ce", "kl_is", "rkl", "topk"]
    for name in presets:
        spec = loss_spec(compose("distill", [f"distill={name}"]).distill)
        assert spec.chunk_size == 256
    default = loss_spec(compose("distill").distill)
    assert (default.logits.kind, default.logits.temperature, default.logits.ce_weight, default.intermediate) == ("kl", 1.0, 0.0, None)
    stages = {}
    for name in sorted(p.stem for p in (config_dir() / "deepspeed").glob("*.yaml")):
        ds = TrainSettings.from_config(compose("distill", [f"deepspeed={name}"])).deepspeed
        stages[name] = None if ds is None else ds["zero_optimization"]["stage"]
    assert stages == {"none": None, "zero1": 1, "zero2": 2, "zero3": 3, "zero3_offload": 3}


def test_the_library_function_distills_in_memory_models(tmp_path):
    """`minitron.distill.distill` as the pipeline calls it: models and datasets in memory, a train config mapping."""
    from minitron.config import compose
    from minitron.distill import DistillLossSpec, LogitLossSpec, distill
    from minitron.models.tiny import tiny_model

    teacher = tiny_model("llama", seed=0)
    student = tiny_model("llama", seed=1, num_hidden_layers=1)
    g = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(3, 128, (16,), generator=g).tolist(), "attention_mask": [1] * 16} for _ in range(12)]
    train = compose("distill", ["train.max_steps=2", "train.batch_size=4", "train.save_steps=0", "train.logging_steps=1"]).train
    result = distill(teacher, student, rows[:8], rows[8:], tmp_path / "run", train=train, seq_len=16,
                     loss=DistillLossSpec(logits=LogitLossSpec(kind="jsd", beta=0.3), chunk_size=7), out=tmp_path / "out")
    assert result.path == str(tmp_path / "out") and result.steps == 2 and result.tokens == 2 * 4 * 16
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    # the reported losses are those of the saved student and of the teacher on the evaluation rows
    from minitron.train.validation import lm_loss

    assert result.val_loss == pytest.approx(lm_loss(reloaded, rows[8:], batch_size=4, max_batches=train.eval_batches), rel=1e-5)
    assert result.teacher_val_loss == pytest.approx(lm_loss(teacher, rows[8:], batch_size=4, max_batches=train.eval_batches),
                                                    rel=1e-5)
    assert reloaded.config.num_hidden_layers == 1 and not any(p.requires_grad is False for p in reloaded.parameters())
    assert {"metrics.json", "metrics.jsonl", "loss.png"} <= {p.name for p in (tmp_path / "run").iterdir()}


def test_gradient_accumulation_gives_the_same_losses_as_one_big_batch(tmp_path):
    """The KD loss is a per-micro-batch mean: the Trainer must divide it by the accumulation steps."""
    from minitron.config import compose
    from minitron.distill import distill
    from minitron.models.tiny import tiny_model

    g = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(3, 128, (16,), generator=g).tolist(), "attention_mask": [1] * 16} for _ in range(12)]
    losses = {}
    for batch, accum in ((4, 1), (2, 2)):
        train = compose("distill", ["train.max_steps=3", f"train.batch_size={batch}", f"train.gradient_accumulation_steps={accum}",
                                    "train.save_steps=0", "train.logging_steps=1", "train.eval_batches=1"]).train
        run_dir = tmp_path / f"b{batch}"
        distill(tiny_model("llama", seed=0), tiny_model("llama", seed=1, num_hidden_layers=1), rows[:8], rows[8:], run_dir,
                train=train, seq_len=16)
        losses[accum] = [v for r in _records(run_dir) if "loss" in r for v in (r["loss"], r["grad_norm"])]
    assert len(losses[1]) == 6
    assert losses[2] == pytest.approx(losses[1], rel=1e-4)


def test_intermediate_pairs_follow_the_kept_layer_map():
    from minitron.distill.losses import IntermediateSpec
    from minitron.distill.trainer import resolve_pairs

    nvidia = (32, [*range(15), 31])  # Llama-3.1-Minitron 4B Depth: teacher layers 0-14 and 31 (from 0)
    kept = resolve_pairs(IntermediateSpec(), 16, 32, nvidia).pairs
    assert kept == tuple((i, i) for i in range(1, 16)) + ((16, 32),)  # 1-based layer numbers
    even = tuple((i, 2 * i) for i in range(1, 17))
    assert resolve_pairs(IntermediateSpec(pairing="even"), 16, 32, nvidia).pairs == even
    assert resolve_pairs(IntermediateSpec(), 16, 32, None).pairs == even  # no map: evenly spaced
    assert resolve_pairs(IntermediateSpec(), 16, 24, nvidia).pairs[-1] == (16, 24)  # a map for another teacher depth
    assert resolve_pairs(IntermediateSpec(pairs=((2, 5),)), 16, 32, nvidia).pairs == ((2, 5),)  # explicit pairs win
    with pytest.raises(MinitronError, match="distill.intermediate.pairing='odd' is unknown"):
        IntermediateSpec(pairing="odd")


def test_a_malformed_kept_layer_map_fails_in_one_line():
    from transformers import LlamaConfig

    from minitron.checkpoint import layer_map

    config = LlamaConfig(num_hidden_layers=2, minitron_layer_map={"source_num_hidden_layers": 4, "source_layers": [0, 7]})
    with pytest.raises(MinitronError, match="lists 2 source layers of 4 for a model of 2 layers"):
        layer_map(config)
    config.minitron_layer_map = {"source_layers": [0, 1]}
    with pytest.raises(MinitronError, match="is not a kept-layer map"):
        layer_map(config)
    assert layer_map(LlamaConfig(num_hidden_layers=2)) is None


@pytest.mark.parametrize("pairing, expected", [("kept", ((1, 1),)), ("even", ((1, 2),))])
def test_distilling_a_depth_pruned_student_pairs_by_its_recorded_layers(tiny_teacher, tmp_path, monkeypatch, pairing, expected):
    """The student keeps teacher layer 0 of 2: by default its one layer is matched with teacher layer 1 (1-based),
    the one it was; evenly spaced pairing would match it with the teacher's last layer."""
    import minitron.distill.trainer as trainer
    from minitron.prune import prune
    from minitron.checkpoint import save_checkpoint

    teacher, cache = tiny_teacher
    model = AutoModelForCausalLM.from_pretrained(teacher)
    student = save_checkpoint(prune(model, None, {"drop_layers": [1]}), AutoTokenizer.from_pretrained(teacher),
                              tmp_path / "student")
    seen = []
    real = trainer.DistillLoss

    class Recording(real):
        def __init__(self, teacher, spec, **kw):
            seen.append(spec.intermediate.pairs)
            super().__init__(teacher, spec, **kw)

    monkeypatch.setattr(trainer, "DistillLoss", Recording)
    run(distill_cfg(teacher, cache, student, "distill=kl_is", f"distill.intermediate.pairing={pairing}",
                    "train.max_steps=1", "train.save_steps=0"), run_dir=tmp_path / "run")
    assert seen == [expected]


def test_a_soft_capped_model_says_once_that_its_loss_uses_full_logits(capsys):
    """The chunked loss forms raw h @ W^T logits; Gemma 2/3 soft-cap theirs, so they must take the plain path."""
    from types import SimpleNamespace

    from minitron.distill.losses import DistillLossSpec
    from minitron.distill.trainer import DistillLoss

    capped = DistillLoss(None, DistillLossSpec(chunk_size=64), student_config=SimpleNamespace(final_logit_softcapping=30.0))
    assert not capped.chunked
    assert capsys.readouterr().out.count("WARNING") == 1
    plain = DistillLoss(None, DistillLossSpec(chunk_size=64), student_config=SimpleNamespace(final_logit_softcapping=None))
    assert plain.chunked and "WARNING" not in capsys.readouterr().out


def test_dropping_the_projection_rewrites_only_the_shards_that_hold_it(tmp_path):
    """A shard without projection weights is left byte for byte (not read into memory and written again)."""
    from safetensors.torch import save_file

    from minitron.distill.trainer import PROJECTION, _drop_projection

    save_file({"a.weight": torch.ones(2, 2)}, str(tmp_path / "model-00001-of-00002.safetensors"), metadata={"format": "pt"})
    save_file({"b.weight": torch.ones(3), f"{PROJECTION}.weight": torch.zeros(2, 2)},
              str(tmp_path / "model-00002-of-00002.safetensors"), metadata={"format": "pt"})
    before = (tmp_path / "model-00001-of-00002.safetensors").stat().st_mtime_ns
    _drop_projection(tmp_path)
    assert (tmp_path / "model-00001-of-00002.safetensors").stat().st_mtime_ns == before
    assert load_file(str(tmp_path / "model-00002-of-00002.safetensors")).keys() == {"b.weight"}
