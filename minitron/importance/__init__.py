"""Importance scores of every prunable axis (embedding channels, attention heads and KV groups, MLP neurons,
layers), in memory (`estimate`) or one layer at a time from a checkpoint (`estimate_streaming`); and the data-free baselines the
paper compares them with (`weight_magnitude`, `random_scores`).

    imp = estimate(model, batches)                 # defaults: batch l2, sequence mean, mlp_site post, depth bi+loss
    imp = score_checkpoint(path, data_cfg, cache_dir, Calibration(64, 256, 8), seed=0)   # load, pack, draw, score
    imp.save("importance.safetensors")
    Importance.load("importance.safetensors").check_model(model.config)   # before pruning with it
    estimate(model, batches, blocks=["loss", "bi"], block_layers=16)       # + every 16-layer block (`blocks`)

PNG views of a result are in `minitron.importance.plots` (kept out of this import: matplotlib is slow to load).
"""

from minitron.importance.aggregate import AGGREGATORS
from minitron.importance.baselines import random_scores, weight_magnitude
from minitron.importance.calibrate import SCORES_FILE, score_checkpoint, score_model
from minitron.importance.estimate import estimate
from minitron.importance.scores import Importance, config_hash
from minitron.importance.streaming import StreamingStats, estimate_streaming

__all__ = [
    "AGGREGATORS", "SCORES_FILE", "Importance", "StreamingStats", "config_hash", "estimate", "estimate_streaming",
    "random_scores", "score_checkpoint", "score_model", "weight_magnitude",
]
