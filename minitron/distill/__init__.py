"""Knowledge distillation: losses, the chunked vocabulary loss, and the trainer.

Library use (what `minitron distill` and the pipeline call):

    from minitron.distill import distill, DistillLossSpec, LogitLossSpec
    result = distill(teacher_model, student_model, splits["train"], splits["validation"], run_dir,
                     train=cfg.train, loss=DistillLossSpec(), seq_len=256, tokenizer=tokenizer)
    result.path, result.val_loss, result.tokens, result.seconds

`train` is a `configs/train/*.yaml` mapping; `loss` defaults to forward KL at T = 1 on logits only, chunked over
the vocabulary. The student is saved to `out` (default RUN_DIR/student) and loads in stock transformers.
"""

from minitron.distill.chunked import chunked_logit_loss
from minitron.distill.losses import DistillLossSpec, IntermediateSpec, LogitLossSpec, logit_loss
from minitron.distill.trainer import DistillResult, distill, loss_spec

__all__ = [
    "DistillLossSpec",
    "DistillResult",
    "IntermediateSpec",
    "LogitLossSpec",
    "chunked_logit_loss",
    "distill",
    "logit_loss",
    "loss_spec",
]
