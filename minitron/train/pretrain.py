"""Pretraining from scratch: the embedded default's teacher and the paper's random-init baselines."""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_class
from omegaconf import DictConfig
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TrainerCallback,
)

from minitron.checkpoint import checkpoint_folder, load_model
from minitron.config import compose, stable_hash, to_plain
from minitron.data import load_corpus
from minitron.data.calibration import cache_root, cached_bpe_tokenizer, packed_splits
from minitron.errors import MinitronError
from minitron.io import file_lock, write_json
from minitron.models import get_adapter
from minitron.ranks import is_main_process, world_size
from minitron.real_models import NAMED, is_named, materialise
from minitron.train.settings import TrainSettings
from minitron.train.trainer import (
    LossTrainer,
    build_trainer,
    plot_curves,
    release_deepspeed_config,
    resume_point,
    save_final,
    training_arguments,
    unigram_loss,
)
from minitron.train.validation import lm_loss

SUMMARY_FILE = "minitron_pretrain.json"  # beside the weights of every model trained here: tokens, losses, time


@dataclass
class PretrainResult:
    path: str
    val_loss: float
    unigram_loss: float
    params: int
    tokens: int
    seconds: float
    cached: bool


def load_tokenizer(cfg: DictConfig, corpus) -> tuple[PreTrainedTokenizerBase, str]:
    """The model's own tokenizer for a pretrained checkpoint, else a byte-level BPE trained on the corpus (cached)."""
    source = cfg.model.get("tokenizer") or cfg.model.get("path")
    if source:
        return AutoTokenizer.from_pretrained(str(checkpoint_folder(source, "model.path"))), str(source)
    return cached_bpe_tokenizer(cfg.data, cfg.cache_dir, corpus)


def build_model(arch: Any, tokenizer, *, seed: int, dtype: str = "float32") -> PreTrainedModel:
    """A randomly initialised model of the config class named by `arch._target_`, sized to the tokenizer."""
    spec = dict(to_plain(arch))
    config_cls = get_class(spec.pop("_target_"))
    if spec.get("vocab_size") is None:
        spec["vocab_size"] = len(tokenizer)
    elif spec["vocab_size"] < len(tokenizer):
        raise MinitronError(
            f"model.arch.vocab_size={spec['vocab_size']} is smaller than the tokenizer's {len(tokenizer)} tokens; "
            "set it to null to use the tokenizer's size"
        )
    spec.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config = config_cls(**spec)
    get_adapter(config)  # an unsupported architecture or an impossible GQA layout fails here, before training
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    return model


def train_from_scratch(
    model: PreTrainedModel,
    train_dataset,
    settings: TrainSettings,
    run_dir: Path,
    *,
    seq_len: int,
    seed: int,
    resume: bool = True,
    callbacks: Sequence[TrainerCallback] = (),
    desc: str = "from scratch",
) -> LossTrainer:
    """Train `model` with the causal-LM loss on packed blocks; returns the trained Trainer (the caller saves).

    The one causal-LM training path: the embedded teacher, the pipeline's from-scratch baseline, the ablation's
    random-init cells, and teacher correction (which starts from pretrained weights). Checkpoints go to
    `run_dir/checkpoints` and every log record to `run_dir/metrics.jsonl`; with `resume`, a run folder that holds
    checkpoints continues from the last complete one (see `resume_point`).
    """
    run_dir = Path(run_dir)
    args = training_arguments(settings, run_dir / "checkpoints", seed=seed)
    metrics = run_dir / "metrics.jsonl"
    last = resume_point(args, metrics, resume=resume)
    trainer = build_trainer(model, args, train_dataset, seq_len=seq_len, metrics_path=metrics, desc=desc)
    for callback in callbacks:
        trainer.add_callback(callback)
    if args.process_index == 0:
        blocks = f"{len(train_dataset):,}" if hasattr(train_dataset, "__len__") else "a stream of"
        print(f"training {type(model).__name__} with {model.num_parameters():,} parameters on {blocks} "
              f"blocks of {seq_len} tokens for {args.max_steps} steps")
        if last is not None:
            print(f"resuming from {last}")
    trainer.train(resume_from_checkpoint=last)
    return trainer


def pretrain(cfg: DictConfig, run_dir: Path) -> PretrainResult:
    """Train `cfg.model` on `cfg.data` with the causal-LM loss and save it to `cfg.out` (or the keyed cache).

    With `cfg.resume` (the default), a run folder that holds checkpoints continues from the last one (weights,
    optimizer, scheduler, data position and RNG), so a killed run re-run with `hydra.run.dir=THAT_FOLDER` ends
    with the weights an uninterrupted one would have. Under torchrun only rank 0 writes the run files.
    """
    run_dir = Path(run_dir)
    corpus = load_corpus(cfg.data)
    tokenizer, tokenizer_key = load_tokenizer(cfg, corpus)

    arch = cfg.model.arch
    max_pos = arch.get("max_position_embeddings")
    if max_pos is not None and cfg.data.seq_len > max_pos:
        raise MinitronError(
            f"data.seq_len={cfg.data.seq_len} exceeds model.arch.max_position_embeddings={max_pos}; lower data.seq_len"
        )
    settings = TrainSettings.of(cfg.train)
    key = stable_hash(to_plain(arch), cfg.model.get("path"), to_plain(cfg.train), cfg.data.seq_len, cfg.data.get("max_train_docs"),
                      corpus.key, tokenizer_key, cfg.seed)
    out = Path(str(cfg.out)) if cfg.get("out") else cache_root(cfg.cache_dir) / "models" / f"{cfg.model.name}-{key}"
    # A model in the shared cache is built by one process at a time; another one that needs it waits and reuses
    # it. Not under torchrun: the ranks of a launch train it together, so none of them may wait for another.
    shared = not cfg.get("out") and cfg.get("cache", True) and world_size() == 1
    with file_lock(out, what=f"the model {out}") if shared else nullcontext():
        return _pretrain_into(out, cfg, run_dir, corpus, tokenizer, tokenizer_key, settings)


def _pretrain_into(out: Path, cfg: DictConfig, run_dir: Path, corpus, tokenizer, tokenizer_key: str,
                   settings: TrainSettings) -> PretrainResult:
    arch = cfg.model.arch
    summary_file = out / SUMMARY_FILE
    if cfg.get("cache", True) and summary_file.is_file():
        saved = json.loads(summary_file.read_text())
        saved["cached"] = True
        result = PretrainResult(**{k: saved[k] for k in PretrainResult.__dataclass_fields__})
        if is_main_process():
            print(f"reusing the cached model at {out} (validation loss {result.val_loss:.3f})")
            write_json(run_dir / "corpus.json", corpus.fingerprint)
            write_json(run_dir / "metrics.json", asdict(result))
        return result
    if out.exists() and any(out.iterdir()) and not cfg.get("overwrite", False):
        raise MinitronError(f"out={out} exists and is not empty; choose another folder or pass overwrite=true")

    splits = packed_splits(cfg.data, cfg.cache_dir, tokenizer, tokenizer_key, corpus)
    if is_main_process():  # once the data is known to be usable: a run that fails before leaves no folder
        write_json(run_dir / "corpus.json", corpus.fingerprint)
    if cfg.model.get("path"):
        model = load_model(cfg.model.path, dtype=cfg.model.get("dtype", "float32"),
                           trust_remote_code=bool(cfg.model.get("trust_remote_code", False)))
    else:
        model = build_model(arch, tokenizer, seed=cfg.seed, dtype=cfg.model.get("dtype", "float32"))
    start = time.perf_counter()
    trainer = train_from_scratch(model, splits["train"], settings, run_dir, seq_len=cfg.data.seq_len, seed=cfg.seed,
                                 resume=bool(cfg.get("resume", True)), desc="pretrain")
    seconds = time.perf_counter() - start

    val = lm_loss(trainer.model, splits["validation"], batch_size=settings.batch_size, max_batches=settings.eval_batches)
    # on a stream the unigram model is fitted on as many blocks as the model was trained on (a stream has no end)
    streamed = not hasattr(splits["train"], "__len__")
    uni = unigram_loss(splits["train"], splits["validation"], model.config.vocab_size,
                       max_train_blocks=trainer.tokens_seen // cfg.data.seq_len if streamed else None)
    result = PretrainResult(str(out), val, uni, model.num_parameters(), trainer.tokens_seen, seconds, cached=False)
    save_final(trainer, out, tokenizer, SUMMARY_FILE, {**asdict(result), "corpus": corpus.fingerprint})
    release_deepspeed_config()  # models loaded after this (a corrected teacher's next stages) are whole
    if is_main_process():
        write_json(run_dir / "metrics.json", asdict(result))
        plot_curves(run_dir / "metrics.jsonl", run_dir / "loss.png", title=f"pretrain {cfg.model.name}")
        print(f"validation loss {val:.3f} nats/token (unigram baseline {uni:.3f}); saved to {out}")
    return result


def default_teacher(cache_dir: Any, run_dir: Path) -> Path:
    """The embedded default teacher: what `minitron pretrain` builds with no arguments, cached under `cache_dir`
    (so this is instant once it exists); its run files go to `run_dir/teacher`."""
    default = compose("pretrain", [f"cache_dir='{cache_root(cache_dir)}'"])
    return Path(pretrain(default, Path(run_dir) / "teacher").path)


def teacher_path(cfg: DictConfig, run_dir: Path) -> Path:
    """The teacher checkpoint folder: `cfg.teacher` when set (a folder, or a name of `minitron.real_models.NAMED`),
    else the embedded default teacher."""
    given = cfg.get("teacher")
    if is_named(given):
        return materialise(given, cfg.cache_dir)
    if given:
        return checkpoint_folder(given, "teacher", "pass a folder written by save_pretrained, a hub id, a packaged "
                                                   f"model ({', '.join(NAMED)}), or leave teacher unset for the embedded default")
    return default_teacher(cfg.cache_dir, run_dir)
