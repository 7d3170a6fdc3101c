"""`minitron pipeline recipe=NAME miniature=true`: a paper recipe run for real at toy scale, on any machine.

The switch rewrites the composed config once, before the pipeline starts (`miniature_config`), and keeps what makes
the recipe that recipe:

- the teacher's family: a random tiny checkpoint of `model.arch`'s config class (its `model_type`, activation,
  norms, rotary settings and every other non-size field unchanged), built by `build_teacher`; the recipe's
  `teacher=` is not read. Widths are divided by `miniature_scale.width_divisor`, `head_dim` by `head_dim_divisor`,
  KV groups by `kv_divisor` with the teacher's query heads per KV group kept (its GQA ratio), layers by
  `layer_divisor`;
- the pruning ratios: every size of the target as a fraction of the recipe's teacher, applied to the tiny teacher
  and rounded to a valid value (query heads a multiple of the kept KV groups, at most the teacher's heads per
  group); an explicit `drop_layers` list keeps its shape (each dropped block and each kept stretch scaled, a kept
  stretch never below one layer, so "the last layer kept" stays true);
- the losses (the `distill` group as the recipe chose it) and teacher correction when the recipe has it;
- the schedule shape: the recipe's peak LR, cosine decay to the same floor, warm-up as the same fraction of the
  run (at least one step), batch and accumulation per rank, over `miniature_scale.steps` steps;
- the DeepSpeed config (its ZeRO stage), bf16 and gradient-checkpointing settings;
- streamed data: `data=local data.streaming=true` over a local JSON-lines file of standard-library modules written
  by the switch into the cache (`write_corpus`), tokenized by a small byte-level BPE trained on it, blocks of
  `data.seq_len / seq_len_divisor` tokens.

Evaluation runs on the offline `tiny` lm-eval suite generated from that file's held-out documents. `launch`
becomes the ranks the run is actually launched on, so the plan's global batch is the real one.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from minitron.checkpoint import save_checkpoint
from minitron.config import stable_hash, to_plain
from minitron.data import load_corpus
from minitron.data.calibration import cache_root, cached_bpe_tokenizer
from minitron.data.corpus import stdlib_files, stdlib_root
from minitron.errors import MinitronError
from minitron.io import build_once, write_json, write_text
from minitron.ranks import is_main_process, world_size
from minitron.real_models import is_named
from minitron.train.pretrain import build_model

TEACHER_FOLDER = "miniature/teacher"  # inside the run folder
# The size fields of a model config that scale with width (the MLP of a dense family, each expert of an MoE one).
WIDTH_FIELDS: tuple[str, ...] = ("hidden_size", "intermediate_size", "moe_intermediate_size")
# Standard-library modules of this size make documents of a few pages, several 64-token blocks each.
DOC_BYTES = (2_000, 40_000)


@dataclass(frozen=True)
class MiniatureScale:
    """`miniature_scale` of configs/pipeline.yaml, checked."""

    width_divisor: int
    head_dim_divisor: int
    kv_divisor: int
    layer_divisor: int
    seq_len_divisor: int
    steps: int
    calib_samples: int
    vocab_size: int
    documents: int
    correction_lr: float
    eval_batches: int
    eval_batch_size: int
    eval_limit: int
    eval_docs: int
    eval_doc_chars: int
    eval_mc_items: int
    eval_context_chars: int

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            kind = float if f.name == "correction_lr" else int
            if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int) or value <= 0:
                raise MinitronError(f"miniature_scale.{f.name}={value!r} must be a positive "
                                    f"{'number' if kind is float else 'integer'}")

    @classmethod
    def of(cls, node: Any) -> MiniatureScale:
        values = dict(to_plain(node))
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise MinitronError(f"unknown key miniature_scale.{unknown[0]}; the keys are those of configs/pipeline.yaml")
        missing = sorted(known - set(values))
        if missing:
            raise MinitronError(f"miniature_scale.{missing[0]} is missing; see configs/pipeline.yaml")
        return cls(**values)


def _divide(value: int, divisor: int, minimum: int = 1) -> int:
    return max(minimum, round(value / divisor))


def tiny_arch(arch: dict[str, Any], scale: MiniatureScale) -> dict[str, Any]:
    """`model.arch` of the miniature teacher: the same config class and non-size fields, the sizes divided."""
    out = dict(arch)
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads"):
        if not isinstance(arch.get(key), int):
            raise MinitronError(f"miniature=true needs model.arch.{key} (an integer) to scale the teacher down; "
                                f"got {arch.get(key)!r}")
    heads, kv = arch["num_attention_heads"], arch["num_key_value_heads"]
    if heads % kv:
        raise MinitronError(f"model.arch.num_attention_heads={heads} is not a multiple of num_key_value_heads={kv}")
    for key in WIDTH_FIELDS:
        if isinstance(arch.get(key), int):
            out[key] = _divide(arch[key], scale.width_divisor, 4)
    if isinstance(arch.get("head_dim"), int):
        out["head_dim"] = _divide(arch["head_dim"], scale.head_dim_divisor, 4)
        out["head_dim"] += out["head_dim"] % 2  # rotary embeddings rotate pairs of channels
    else:
        raise MinitronError("miniature=true needs model.arch.head_dim (the tiny teacher's heads are narrower than "
                            "hidden_size / num_attention_heads would make them); set it in the model config")
    out["num_key_value_heads"] = _divide(kv, scale.kv_divisor)
    out["num_attention_heads"] = out["num_key_value_heads"] * (heads // kv)  # the teacher's GQA ratio
    out["num_hidden_layers"] = _divide(arch["num_hidden_layers"], scale.layer_divisor, 2)
    out["vocab_size"] = None  # the tokenizer's size
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        out.pop(key, None)  # the tokenizer's special tokens (build_model sets them)
    return out


def scale_drop_layers(drops: list[int], layers: int, tiny_layers: int) -> list[int]:
    """`drops` (0-based, of a `layers`-layer model) on a `tiny_layers`-layer model, with the same shape: the same
    dropped and kept stretches in the same order, each scaled (a stretch never below one layer), the dropped ones
    adding up to the dropped fraction, the kept ones absorbing the rounding.

    Llama-3.1-Minitron 4B Depth's 15..30 of 32 on 4 layers: [1, 2] (the first and the last layer kept)."""
    drops = sorted(set(drops))
    if not drops:
        return []
    stretches: list[tuple[bool, int]] = []  # (dropped?, length) from layer 0 on
    for i in range(layers):
        dropped = i in drops
        if stretches and stretches[-1][0] == dropped:
            stretches[-1] = (dropped, stretches[-1][1] + 1)
        else:
            stretches.append((dropped, 1))
    ratio = tiny_layers / layers
    runs = [i for i, (d, _) in enumerate(stretches) if d]
    kept = [i for i, (d, _) in enumerate(stretches) if not d]
    total_drop = max(len(runs), round(len(drops) * ratio))
    sizes = [max(1, round(n * ratio)) for _, n in stretches]
    # the dropped stretches take exactly total_drop layers (the target's depth ratio), largest first when adjusting
    _adjust(sizes, runs, total_drop)
    left = tiny_layers - total_drop
    if not kept or left < len(kept):
        raise MinitronError(
            f"target.drop_layers has {len(runs)} dropped blocks and {len(kept)} kept stretches, too many for a "
            f"{tiny_layers}-layer miniature; lower miniature_scale.layer_divisor"
        )
    _adjust(sizes, kept, left)
    out, start = [], 0
    for (dropped, _), n in zip(stretches, sizes):
        if dropped:
            out.extend(range(start, start + n))
        start += n
    return out


def _adjust(sizes: list[int], which: list[int], total: int) -> None:
    """Change the sizes at the indices `which` (each at least 1) until they add up to `total`."""
    while sum(sizes[i] for i in which) > total:
        i = max((i for i in which if sizes[i] > 1), key=lambda i: sizes[i])
        sizes[i] -= 1
    while sum(sizes[i] for i in which) < total:
        i = max(which, key=lambda i: sizes[i])
        sizes[i] += 1


def _fraction(target: dict[str, Any], key: str, source: int | None) -> float | None:
    value = target.get(key)
    if value is None:
        return None
    if isinstance(value, float):
        return value
    if not source:
        raise MinitronError(f"target.{key}={value} cannot be scaled: model.arch has no {key}")
    return value / source


def scale_target(target: dict[str, Any], arch: dict[str, Any], tiny: dict[str, Any]) -> dict[str, Any]:
    """The recipe's target as the same fractions of the tiny teacher, in absolute sizes that prune validly."""
    out = dict(target)
    for key in ("hidden_size", "intermediate_size", "moe_intermediate_size"):
        f = _fraction(target, key, arch.get(key))
        out[key] = None if f is None else max(1, min(tiny[key], round(f * tiny[key])))
    if target.get("num_experts") is not None:
        raise MinitronError("miniature=true does not scale target.num_experts; run mixture-of-experts targets "
                            "on a tiny checkpoint of your own (teacher=PATH)")
    heads, kv = arch["num_attention_heads"], arch["num_key_value_heads"]
    t_heads, t_kv = tiny["num_attention_heads"], tiny["num_key_value_heads"]
    f_kv = _fraction(target, "num_key_value_heads", kv)
    out["num_key_value_heads"] = None if f_kv is None else max(1, min(t_kv, round(f_kv * t_kv)))
    f_heads = _fraction(target, "num_attention_heads", heads)
    if f_heads is None:
        out["num_attention_heads"] = None
    elif heads == kv:  # multi-head attention: each head its own KV group
        out["num_attention_heads"] = max(1, min(t_heads, round(f_heads * t_heads)))
    else:  # a multiple of the kept KV groups, at most the teacher's heads per group in each
        groups = out["num_key_value_heads"] or t_kv
        per_group = round(f_heads * t_heads / groups)
        out["num_attention_heads"] = groups * max(1, min(heads // kv, per_group))
    layers, t_layers = arch["num_hidden_layers"], tiny["num_hidden_layers"]
    if target.get("drop_layers"):
        out["drop_layers"] = scale_drop_layers(list(target["drop_layers"]), layers, t_layers)
        out["num_hidden_layers"] = None
    else:
        f = _fraction(target, "num_hidden_layers", layers)
        out["num_hidden_layers"] = None if f is None else max(1, min(t_layers, round(f * t_layers)))
    out["name"] = f"{target.get('name') or 'target'}_miniature"
    return out


def scale_train(train: dict[str, Any], correction: dict[str, Any], scale: MiniatureScale
                ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The retraining schedule and teacher correction over `scale.steps` steps, with the same shape."""
    steps, full = scale.steps, int(train["max_steps"])
    out = dict(train)
    out["max_steps"] = steps
    out["warmup_steps"] = max(1, round(train["warmup_steps"] / full * steps)) if train["warmup_steps"] else 0
    # a recipe that checkpoints during its run checkpoints halfway through the miniature (resume is then exercised)
    out["save_steps"] = max(1, steps // 2) if train["save_steps"] else 0
    out["logging_steps"] = max(1, min(int(train["logging_steps"]), steps // 4))
    out["eval_batches"] = scale.eval_batches
    tc = dict(correction)
    if tc.get("steps"):
        tc["steps"] = max(1, round(tc["steps"] / full * steps))
        tc["warmup_steps"] = max(1, round(correction["warmup_steps"] / correction["steps"] * tc["steps"])) \
            if correction.get("warmup_steps") else 0
        if tc.get("lr") is None:  # a random teacher has no pretraining peak to take a fifth of
            tc["lr"] = scale.correction_lr
    return out, tc


def corpus_path(cache_dir: Any, documents: int) -> Path:
    """Where `write_corpus` puts the local file: in the cache, named by the documents it holds."""
    files = _corpus_files(documents)
    root = stdlib_root()
    key = stable_hash(platform.python_version(), [(p.as_posix(), (root / p).stat().st_size) for p in files])
    return cache_root(cache_dir) / "miniature" / f"stdlib-{len(files)}-{key}.jsonl"


def _corpus_files(documents: int) -> list[Path]:
    root = stdlib_root()
    files = [p for p in stdlib_files(root) if DOC_BYTES[0] < (root / p).stat().st_size < DOC_BYTES[1]]
    if len(files) < documents:
        raise MinitronError(f"miniature_scale.documents={documents} exceeds the {len(files)} standard-library modules "
                            "of a suitable size; lower it")
    return files[:documents]


def write_corpus(path: Path, documents: int) -> Path:
    """A JSON-lines file of `documents` standard-library modules (sorted by path, a fixed prefix), written once."""
    path = Path(path)

    def build() -> None:
        root = stdlib_root()
        rows = [json.dumps({"text": (root / p).read_text(errors="replace")}) for p in _corpus_files(documents)]
        write_text(path, "\n".join(rows) + "\n")

    build_once(path, path.is_file, build, what="the miniature corpus")
    return path


def miniature_config(cfg: DictConfig) -> DictConfig:
    """The composed pipeline config of a recipe rewritten to run in miniature (see the module docstring)."""
    scale = MiniatureScale.of(cfg.miniature_scale)
    if is_named(cfg.get("teacher")):
        raise MinitronError(
            f"miniature=true builds a tiny teacher of model.arch's family, but teacher={cfg.teacher} names a packaged "
            "model whose architecture model.arch does not describe; run this recipe without miniature=true"
        )
    if cfg.get("teacher") and is_main_process():
        print(f"miniature: teacher={cfg.teacher} is not read; the teacher is a random tiny model of model.arch's family")
    c = OmegaConf.to_container(cfg, resolve=True)
    arch = c["model"]["arch"]
    tiny = tiny_arch(arch, scale)
    c["teacher"] = None
    c["model"].update(name=f"{c['model']['name']}_miniature", path=None, tokenizer=None, dtype="float32", arch=tiny)
    c["target"] = scale_target(c["target"], arch, tiny)
    c["target"]["source"] = c["model"]["name"]
    c["train"], c["teacher_correction"] = scale_train(c["train"], c["teacher_correction"], scale)
    data = c["data"]
    data.update(
        source="local", path=str(corpus_path(c["cache_dir"], scale.documents)), name=None, subset=None,
        text_field="text", streaming=True, seq_len=max(16, data["seq_len"] // scale.seq_len_divisor),
        max_train_docs=None, max_eval_docs=8, num_proc=1, validation_fraction=0.1, test_fraction=0.1,
    )
    data["tokenizer"] = {"vocab_size": scale.vocab_size, "train_bytes": 400_000}
    c["calib"]["samples"] = min(int(c["calib"]["samples"]), scale.calib_samples)
    c["calib"]["batch_size"] = min(int(c["calib"]["batch_size"]), c["calib"]["samples"])
    c["eval_batches"], c["eval_batch_size"], c["eval_limit"] = scale.eval_batches, scale.eval_batch_size, scale.eval_limit
    if c["eval"].get("generate"):
        c["eval"]["generate"].update(docs=scale.eval_docs, doc_chars=scale.eval_doc_chars,
                                     mc_items=scale.eval_mc_items, context_chars=scale.eval_context_chars)
    c["launch"] = {"nodes": 1, "gpus_per_node": world_size()}
    return OmegaConf.create(c)


def build_teacher(cfg: DictConfig, run_dir: Path) -> Path:
    """Write the local corpus (once, in the cache) and a random tiny teacher of `cfg.model.arch` with a BPE tokenizer
    trained on it into RUN_DIR/miniature/teacher; `cfg` is a `miniature_config`."""
    scale = MiniatureScale.of(cfg.miniature_scale)
    write_corpus(Path(cfg.data.path), scale.documents)
    corpus = load_corpus(cfg.data)
    tokenizer, _ = cached_bpe_tokenizer(cfg.data, cfg.cache_dir, corpus)
    model = build_model(cfg.model.arch, tokenizer, seed=int(cfg.seed), dtype="float32")
    out = Path(run_dir) / TEACHER_FOLDER
    save_checkpoint(model, tokenizer, out, overwrite=True)
    write_json(out.parent / "miniature.json", {"model_type": model.config.model_type, "corpus": str(cfg.data.path),
                                               "parameters": model.num_parameters()})
    print(f"miniature: a random {model.config.model_type} teacher of {model.num_parameters():,} parameters "
          f"({model.config.num_hidden_layers} layers, hidden {model.config.hidden_size}, "
          f"{model.config.num_attention_heads} heads in {model.config.num_key_value_heads} KV groups) in {out}")
    return out
