"""Scoring a teacher on calibration data: the one path every verb and workflow takes.

`score_model` scores a model in memory on blocks drawn from a packed train split; `score_checkpoint` does the
whole job from a checkpoint folder or hub id (its own tokenizer, the packed data, the calibration draw), in
memory or one decoder layer at a time (`streaming`) for models larger than memory.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedModel

from minitron.checkpoint import check_dtype, checkpoint_folder, load_config, load_model
from minitron.data.calibration import Calibration, packed_data
from minitron.errors import MinitronError
from minitron.importance.estimate import estimate
from minitron.importance.scores import Importance
from minitron.importance.streaming import estimate_streaming
from minitron.models import get_adapter

SCORES_FILE = "importance.safetensors"  # the scores' file name in every run folder (`Importance.save`)


def score_model(model: PreTrainedModel, train_split, calib: Calibration, *, seed: int, progress: bool = True,
                **options: Any) -> Importance:
    """`estimate` on `calib.samples` blocks drawn (seeded) from `train_split`; `options` are estimate's."""
    return estimate(model, calib.batches(train_split, seed), progress=progress, **options)


def score_checkpoint(
    path: str | os.PathLike,
    data_cfg: Any,
    cache_dir: Any,
    calib: Calibration,
    *,
    seed: int,
    dtype: str = "float32",
    streaming: bool = False,
    trust_remote_code: bool = False,
    device: str | torch.device | None = None,
    **options: Any,
) -> Importance:
    """Score the checkpoint at `path` on calibration blocks of the corpus `data_cfg` names, tokenized with the
    checkpoint's own tokenizer. `options` are `estimate`'s (aggregations, MLP site, depth scores)."""
    torch_dtype = check_dtype(dtype)
    path = checkpoint_folder(path, "teacher")  # a hub id becomes its snapshot folder: the streaming pass reads files
    config = load_config(path, trust_remote_code=trust_remote_code)
    get_adapter(config)  # an unsupported family fails here, before the data is packed
    limit = getattr(config, "max_position_embeddings", None)
    if limit is not None and calib.seq_len > limit:
        raise MinitronError(
            f"calib.seq_len={calib.seq_len} exceeds max_position_embeddings={limit} of the teacher at {path}; "
            f"lower calib.seq_len to at most {limit}"
        )
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    data = packed_data(data_cfg, cache_dir, tokenizer, seq_len=calib.seq_len)
    batches = calib.batches(data["train"], seed)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    print(f"scoring {path} on {calib.samples} blocks of {calib.seq_len} tokens ({len(batches)} batches, {device})")
    if streaming:
        return estimate_streaming(path, batches, device=device, dtype=torch_dtype, **options)
    model = load_model(path, dtype=dtype, trust_remote_code=trust_remote_code)
    return estimate(model.to(device), batches, **options)
