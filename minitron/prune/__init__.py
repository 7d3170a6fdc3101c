"""Width and depth pruning to checkpoints that stock `transformers` loads.

    from minitron.prune import prune, save_checkpoint
    small = prune(model, importance, {"hidden_size": 3072, "intermediate_size": 9216, "num_attention_heads": 24})
    save_checkpoint(small, tokenizer, "out/minitron-4b")       # minitron.checkpoint.save_checkpoint, re-exported
"""

from minitron.checkpoint import save_checkpoint
from minitron.prune.dry_run import config_from_arch, dry_run
from minitron.prune.export import load_key_mapping, prune_checkpoint_streaming
from minitron.prune.model import build_pruned, prune
from minitron.prune.plan import PrunePlan, make_plan
from minitron.prune.target import Shape, Target

__all__ = [
    "PrunePlan",
    "Shape",
    "Target",
    "build_pruned",
    "config_from_arch",
    "dry_run",
    "load_key_mapping",
    "make_plan",
    "prune",
    "prune_checkpoint_streaming",
    "save_checkpoint",
]
