"""Pretraining from scratch: the embedded default's teacher and the paper's random-init baselines."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from minitron.config import stable_hash, to_plain
from minitron.errors import MinitronError, first_line
from minitron.io import atomic_path, write_json
from minitron.models import get_adapter


@dataclass
class PretrainResult:
    path: str
    val_loss: float
    unigram_loss: float
    params: int
    tokens: int
    seconds: float
    cached: bool


def cache_root(cfg: DictConfig) -> Path:
    return Path(str(cfg.cache_dir)).expanduser()


def load_tokenizer(cfg: DictConfig, corpus) -> tuple[PreTrainedTokenizerBase, str]:
    """The model's own tokenizer for a pretrained checkpoint, else a byte-level BPE trained on the corpus (cached)."""
    from minitron.data import train_default_tokenizer

    source = cfg.model.get("tokenizer") or cfg.model.get("path")
    if source:
        return AutoTokenizer.from_pretrained(str(source)), str(source)
    tok_cfg = cfg.data.tokenizer
    key = stable_hash(corpus.key, to_plain(tok_cfg))
    path = cache_root(cfg) / "tokenizers" / f"bpe{tok_cfg.vocab_size}-{key}"
    if not (path / "tokenizer.json").is_file():
        print(f"training a byte-level BPE tokenizer (vocab {tok_cfg.vocab_size}) on the {cfg.data.source} train split")
        tokenizer = train_default_tokenizer(corpus, tok_cfg.vocab_size, tok_cfg.train_bytes)
        with atomic_path(path) as tmp:
            tokenizer.save_pretrained(str(tmp))
    return AutoTokenizer.from_pretrained(str(path)), f"bpe{tok_cfg.vocab_size}-{key}"


def packed_splits(cfg: DictConfig, tokenizer, tokenizer_key: str, corpus):
    """Tokenized and packed train/validation blocks, cached on disk under a key of corpus, tokenizer and layout."""
    import datasets

    from minitron.data import build_datasets

    key = stable_hash(corpus.key, tokenizer_key, cfg.data.seq_len, cfg.data.get("max_train_docs"))
    path = cache_root(cfg) / "packed" / key
    if (path / "dataset_dict.json").is_file():
        return datasets.load_from_disk(str(path))
    packed = build_datasets(cfg.data, tokenizer, corpus=corpus)
    with atomic_path(path) as tmp:
        packed.save_to_disk(str(tmp))
    return datasets.load_from_disk(str(path))


def build_model(arch: Any, tokenizer, *, seed: int, dtype: str = "float32") -> PreTrainedModel:
    """A randomly initialised model of the config class named by `arch._target_`, sized to the tokenizer."""
    from hydra.utils import get_class

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


def load_model(model_cfg: DictConfig) -> PreTrainedModel:
    """A pretrained checkpoint from a folder or hub id: safetensors only, remote code only when asked for."""
    path = str(model_cfg.path)
    local = Path(path).expanduser()
    trust = bool(model_cfg.get("trust_remote_code", False))
    if local.exists():
        if not (local / "config.json").is_file():
            raise MinitronError(f"{path} has no config.json; point it at a Hugging Face checkpoint folder")
        try:
            config = json.loads((local / "config.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise MinitronError(f"{path}/config.json is not valid JSON ({e}); re-export the checkpoint") from None
        if config.get("auto_map") and not trust:
            raise MinitronError(
                f"{path} ships its own modelling code (auto_map in config.json); set trust_remote_code=true "
                "if you trust it, or use a checkpoint of a supported transformers class"
            )
        if not any(local.glob("*.safetensors")) and not (local / "model.safetensors.index.json").is_file():
            pickled = sorted(p.name for p in local.glob("*.bin")) + sorted(p.name for p in local.glob("*.pt"))
            raise MinitronError(
                f"{path} has no safetensors weights{' (only ' + ', '.join(pickled) + ')' if pickled else ''}; "
                "minitron loads safetensors only: convert it once with save_pretrained(safe_serialization=True)"
            )
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=getattr(torch, model_cfg.get("dtype", "float32")), trust_remote_code=trust, use_safetensors=True
        )
    except Exception as e:  # transformers, safetensors and hub errors come in many types; all mean "cannot load"
        first = first_line(e)
        raise MinitronError(f"cannot load the checkpoint {path}: {first}") from None
    get_adapter(model)
    return model


def _rank_zero() -> bool:
    """Whether this process is the first of a torchrun/DeepSpeed launch (or the only one), before the Trainer exists."""
    return int(os.environ.get("RANK", "0")) == 0


def pretrain(cfg: DictConfig, run_dir: Path) -> PretrainResult:
    """Train `cfg.model` on `cfg.data` with the causal-LM loss and save it to `cfg.out` (or the keyed cache).

    With `cfg.resume` (the default), a run folder that holds checkpoints continues from the last one (weights,
    optimizer, scheduler, data position and RNG), so a killed run re-run with `hydra.run.dir=THAT_FOLDER` ends
    with the weights an uninterrupted one would have. Under torchrun only rank 0 writes the run files.
    """
    from minitron.data import load_corpus
    from minitron.train.trainer import (
        build_trainer,
        lm_loss,
        plot_curves,
        resume_point,
        save_final,
        training_arguments,
        unigram_loss,
    )

    run_dir = Path(run_dir)
    corpus = load_corpus(cfg.data)
    if _rank_zero():
        write_json(run_dir / "corpus.json", corpus.fingerprint)
    tokenizer, tokenizer_key = load_tokenizer(cfg, corpus)

    arch = cfg.model.arch
    max_pos = arch.get("max_position_embeddings")
    if max_pos is not None and cfg.data.seq_len > max_pos:
        raise MinitronError(
            f"data.seq_len={cfg.data.seq_len} exceeds model.arch.max_position_embeddings={max_pos}; lower data.seq_len"
        )
    key = stable_hash(to_plain(arch), cfg.model.get("path"), to_plain(cfg.train), cfg.data.seq_len, cfg.data.get("max_train_docs"),
                      corpus.key, tokenizer_key, cfg.seed)
    out = Path(str(cfg.out)) if cfg.get("out") else cache_root(cfg) / "models" / f"{cfg.model.name}-{key}"
    summary_file = out / "minitron_pretrain.json"
    if cfg.get("cache", True) and summary_file.is_file():
        saved = json.loads(summary_file.read_text())
        saved["cached"] = True
        result = PretrainResult(**{k: saved[k] for k in PretrainResult.__dataclass_fields__})
        if _rank_zero():
            print(f"reusing the cached model at {out} (validation loss {result.val_loss:.3f})")
            write_json(run_dir / "metrics.json", asdict(result))
        return result
    if out.exists() and any(out.iterdir()) and not cfg.get("overwrite", False):
        raise MinitronError(f"out={out} exists and is not empty; choose another folder or pass overwrite=true")

    splits = packed_splits(cfg, tokenizer, tokenizer_key, corpus)
    if cfg.model.get("path"):
        model = load_model(cfg.model)
    else:
        model = build_model(arch, tokenizer, seed=cfg.seed, dtype=cfg.model.get("dtype", "float32"))
    params = sum(p.numel() for p in model.parameters())
    args = training_arguments(cfg.train, run_dir / "checkpoints", seed=cfg.seed)
    main = args.process_index == 0
    metrics_path = run_dir / "metrics.jsonl"
    last = resume_point(args, metrics_path, resume=bool(cfg.get("resume", True)))
    trainer = build_trainer(model, args, splits["train"], seq_len=cfg.data.seq_len, metrics_path=metrics_path, desc="pretrain")
    if main:
        print(f"pretraining {type(model).__name__} with {params:,} parameters on {len(splits['train']):,} blocks "
              f"of {cfg.data.seq_len} tokens for {args.max_steps} steps")
        if last is not None:
            print(f"resuming from {last}")
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=last)
    seconds = time.perf_counter() - start

    val = lm_loss(trainer.model, splits["validation"], batch_size=args.per_device_eval_batch_size,
                  max_batches=cfg.train.get("eval_batches"))
    uni = unigram_loss(splits["train"], splits["validation"], model.config.vocab_size)
    result = PretrainResult(str(out), val, uni, params, trainer.tokens_seen, seconds, cached=False)
    save_final(trainer, out, tokenizer, "minitron_pretrain.json", {**asdict(result), "corpus": corpus.fingerprint})
    if main:
        write_json(run_dir / "metrics.json", asdict(result))
        plot_curves(metrics_path, run_dir / "loss.png", title=f"pretrain {cfg.model.name}")
        print(f"validation loss {val:.3f} nats/token (unigram baseline {uni:.3f}); saved to {out}")
    return result
