"""`minitron distill` from a composed config: load teacher and student, check they fit, optionally correct the
teacher on the distillation data, then `minitron.distill.distill`.

Teacher correction (arXiv 2408.11796) is `minitron pretrain model.path=TEACHER` on the distillation data for
`teacher_correction.steps` steps at `teacher_correction.lr` after `teacher_correction.warmup_steps` of linear
warm-up, then the distillation schedule's cosine decay. The paper fine-tunes the teacher at 1/5 of the teacher's
original pretraining peak LR with 120 warm-up steps of its own, so both are settings of the correction, not
taken from the distillation run (whose LR and warm-up are the student's). The corrected teacher is saved to
RUN_DIR/teacher_corrected and reused when the run is resumed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from minitron.checkpoint import cast_checkpoint, check_dtype, checkpoint_folder, load_config, load_tokenizer
from minitron.config import compose, to_plain
from minitron.data.calibration import cache_root, packed_data
from minitron.distill.trainer import DistillResult, check_same_tokenizer, distill, loss_spec
from minitron.errors import MinitronError
from minitron.ranks import is_main_process
from minitron.train.pretrain import pretrain, teacher_path
from minitron.train.settings import TrainSettings


def student_path(cfg: DictConfig) -> Path:
    given = cfg.get("student")
    if not given:
        raise MinitronError("student= is required: pass a checkpoint folder or hub id, for example the output of "
                            "`minitron prune`")
    return checkpoint_folder(given, "student", "pass a folder written by save_pretrained or a hub id")


def correction_settings(tc: DictConfig) -> tuple[int, float, int]:
    """(steps, lr, warmup_steps) of `teacher_correction`, checked; the LR has no default because it depends on the
    teacher's own pretraining, not on the distillation run."""
    steps = tc.get("steps")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise MinitronError(f"teacher_correction.steps={steps!r} must be an integer >= 0 (0: no correction)")
    if tc.get("lr") is None:
        raise MinitronError(
            "teacher_correction.lr is not set; set it to 1/5 of the teacher's original pretraining peak LR "
            "(arXiv 2408.11796), e.g. teacher_correction.lr=6e-5 for Llama-3.1 8B (peak 3e-4)"
        )
    lr = tc.lr
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr <= 0:
        raise MinitronError(f"teacher_correction.lr={lr!r} must be a positive learning rate")
    warmup = tc.get("warmup_steps")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise MinitronError(
            f"teacher_correction.warmup_steps={warmup!r} must be an integer >= 0 (the paper warms up for 120 steps)"
        )
    return steps, float(lr), warmup


def correct_teacher(cfg: DictConfig, teacher: Path, run_dir: Path) -> Path:
    """Fine-tune the teacher on `cfg.data` (the distillation data) and return the corrected checkpoint."""
    tc = cfg.teacher_correction
    steps, lr, warmup = correction_settings(tc)
    train = dataclasses.replace(TrainSettings.from_config(cfg), max_steps=steps, lr=lr, warmup_steps=warmup, save_steps=0)
    base = compose("pretrain", [f"cache_dir='{cache_root(cfg.cache_dir)}'", f"seed={cfg.seed}"])
    correction = OmegaConf.merge(
        base,
        {
            "model": {"path": str(teacher), "name": "teacher_corrected", "arch": {"max_position_embeddings": None}},
            "data": to_plain(cfg.data),
            "train": train.mapping,
            "out": str(run_dir / "teacher_corrected"),
            "cache": True,
            "overwrite": True,
        },
    )
    if is_main_process():
        print(f"teacher correction: fine-tuning {teacher} for {steps} steps at lr {lr:g} ({warmup} warm-up steps) "
              "on the distillation data")
    return Path(pretrain(correction, run_dir / "teacher_correction").path)


def run_distill(cfg: DictConfig, run_dir: Path) -> DistillResult:
    check_dtype(cfg.dtype)
    student_dir = student_path(cfg)
    spec = loss_spec(cfg.distill)
    train = TrainSettings.from_config(cfg)
    teacher_dir = teacher_path(cfg, run_dir)
    if cfg.teacher_correction.steps:
        teacher_dir = correct_teacher(cfg, teacher_dir, run_dir)
    # only configs and tokenizers here: the models are created inside `distill`, after its DeepSpeed config is
    # registered, so that under ZeRO-3 they are created partitioned (see `minitron.distill.trainer.create_models`)
    teacher_tok, student_tok = load_tokenizer(teacher_dir), load_tokenizer(student_dir)
    check_same_tokenizer(teacher_tok, student_tok)
    teacher_vocab, student_vocab = load_config(teacher_dir).vocab_size, load_config(student_dir).vocab_size
    if teacher_vocab != student_vocab:
        raise MinitronError(
            f"teacher vocab_size={teacher_vocab} differs from the student's {student_vocab}; "
            "the logits must line up token for token"
        )
    splits = packed_data(cfg.data, cfg.cache_dir, student_tok)
    print(f"distilling {student_dir} from {teacher_dir}")
    result = distill(
        teacher_dir, student_dir, splits["train"], splits["validation"], run_dir,
        train=train, loss=spec, seq_len=int(cfg.data.seq_len), seed=int(cfg.seed),
        out=cfg.get("out"), tokenizer=student_tok, resume=bool(cfg.resume),
    )
    if is_main_process():
        cast_checkpoint(result.path, cfg.dtype)
    return result
