"""Helpers shared by the verb modules."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from minitron.io import write_text


def prepare_run_dir(cfg: DictConfig, run_dir: str | Path | None) -> Path:
    """The run folder (Hydra's, unless given), with the resolved config written into it."""
    if run_dir is None:
        from hydra.core.hydra_config import HydraConfig

        run_dir = HydraConfig.get().runtime.output_dir
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    return run_dir


def teacher_path(cfg: DictConfig, run_dir: Path) -> Path:
    """The teacher checkpoint folder: `cfg.teacher` when set, else the embedded default teacher.

    The default is what `minitron pretrain` builds with no arguments (cached under `cache_dir`, so this is
    instant once it exists); its run files go to `run_dir/teacher`.
    """
    from minitron.errors import MinitronError

    given = cfg.get("teacher")
    if given:
        path = Path(str(given)).expanduser()
        if not (path / "config.json").is_file():
            raise MinitronError(
                f"teacher={given} is not a checkpoint folder (no config.json); pass a folder written by "
                "save_pretrained, or leave teacher unset for the embedded default"
            )
        return path
    from minitron.config import compose
    from minitron.train.pretrain import pretrain

    default = compose("pretrain", [f"cache_dir='{Path(str(cfg.cache_dir)).expanduser()}'"])
    return Path(pretrain(default, Path(run_dir) / "teacher").path)


def load_checkpoint(path: str | Path, *, dtype: str = "float32", trust_remote_code: bool = False):
    """(model, tokenizer) from a checkpoint folder: safetensors only, remote code only when asked for."""
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer

    from minitron.train.pretrain import load_model

    model = load_model(OmegaConf.create({"path": str(path), "dtype": dtype, "trust_remote_code": trust_remote_code}))
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    return model.eval(), tokenizer


def packed_data(cfg: DictConfig, tokenizer, *, seq_len: int | None = None):
    """`cfg.data` tokenized with `tokenizer` and packed into blocks (train/validation/test), cached on disk."""
    from omegaconf import OmegaConf

    from minitron.data import load_corpus
    from minitron.train.pretrain import packed_splits

    if seq_len is not None and seq_len != cfg.data.seq_len:
        cfg = OmegaConf.merge(cfg, {"data": {"seq_len": int(seq_len)}})
    corpus = load_corpus(cfg.data)
    from minitron.data.packing import tokenizer_digest

    return packed_splits(cfg, tokenizer, tokenizer_digest(tokenizer), corpus)


def calibration_batches(dataset, samples: int, batch_size: int, seed: int = 0) -> list[dict]:
    """`samples` packed blocks drawn at random (seeded) from `dataset`, in batches of `batch_size` rows.

    Each batch is a dict with `input_ids`, plus `attention_mask` where a block is padded (the last block of a
    packing batch may be), so that padding never enters the statistics.
    """
    import torch

    from minitron.errors import MinitronError

    if samples <= 0:
        raise MinitronError(f"calib.samples={samples} must be positive; the paper uses 1024")
    if samples > len(dataset):
        raise MinitronError(
            f"calib.samples={samples} exceeds the {len(dataset)} packed blocks of the train split; "
            "lower calib.samples or calib.seq_len, or use more data"
        )
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(int(seed)))
    picked = dataset.select(sorted(order[:samples].tolist()))
    ids = torch.tensor(picked["input_ids"], dtype=torch.long)
    mask = torch.tensor(picked["attention_mask"], dtype=torch.long)
    batches = []
    for b_ids, b_mask in zip(ids.split(batch_size), mask.split(batch_size)):
        batches.append({"input_ids": b_ids} if bool(b_mask.all()) else {"input_ids": b_ids, "attention_mask": b_mask})
    return batches
