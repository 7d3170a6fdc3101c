"""Knowledge distillation on the shared Trainer path: a frozen teacher, a student, a pluggable KD loss.

The step is `DistillLoss.__call__`: the student's forward (final hidden states, and the chosen layers' states
when intermediate losses are on), the teacher's forward under `no_grad`, then the logit loss (chunked over the
vocabulary when `chunk_size` > 0, also under ZeRO-3) plus, optionally, alpha x the intermediate
loss. Everything else (schedule, DeepSpeed, checkpoints, resume, progress bar, metrics.jsonl) is the
`transformers.Trainer` of `minitron.train.trainer`.

Under ZeRO-3 teacher and student are created partitioned (`create_models`: from checkpoint paths, inside
`deepspeed.zero.Init`), the teacher is wrapped in its own DeepSpeed engine (no optimizer) so that its weights
stay partitioned over the ranks like the student's, and the chunked vocabulary loss runs inside the student's
output layer (`_chunked_in_head`), where ZeRO-3 gathers that layer's weight for the forward and again for the backward,
so the weight's gradient is reduced to its partitions as for any other layer.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, TrainingArguments

from minitron.checkpoint import layer_map, load_model, rewrite_safetensors
from minitron.config import to_plain
from minitron.distill.chunked import chunked_logit_loss
from minitron.distill.losses import (
    DistillLossSpec,
    IntermediateSpec,
    LogitLossSpec,
    StateProjection,
    combine,
    intermediate_loss,
    logit_loss,
    shift_labels,
)
from minitron.errors import MinitronError
from minitron.io import write_json
from minitron.train.settings import TrainSettings
from minitron.train.trainer import (
    build_trainer,
    plot_curves,
    prefetch_bucket,
    release_deepspeed_config,
    resume_point,
    save_final,
    training_arguments,
)
from minitron.train.validation import lm_loss

PROJECTION = "distill_projection"  # the learned state projection rides on the student under this name while training


@dataclass
class DistillResult:
    path: str
    val_loss: float
    teacher_val_loss: float
    tokens: int
    steps: int
    seconds: float


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def _layer_count(model: nn.Module) -> int:
    return int(_unwrap(model).config.num_hidden_layers)


def resolve_pairs(
    spec: IntermediateSpec | None,
    student_layers: int,
    teacher_layers: int,
    kept_map: tuple[int, list[int]] | None = None,
) -> IntermediateSpec | None:
    """Fill `pairs` when empty and range-check them.

    With `pairing="kept"` and `kept_map` (`minitron.checkpoint.layer_map` of the student's config) whose
    source has the teacher's depth, each student layer is paired with the teacher layer it was pruned from: a
    depth-pruned student's layers are those teacher layers, and even spacing would pair most of them with others
    (e.g. Llama-3.1-Minitron 4B Depth keeps teacher layers 1-15 and 32, counted from 1). Otherwise, and with
    `pairing="even"`, student layer i goes with teacher layer round(i * Lt / Ls).
    """
    if spec is None:
        return None
    pairs = spec.pairs
    if not pairs and spec.pairing == "kept" and kept_map is not None and kept_map[0] == teacher_layers:
        pairs = tuple((i + 1, source + 1) for i, source in enumerate(kept_map[1]))  # 1-based layer numbers
    elif not pairs:
        if spec.pairing == "kept" and kept_map is not None:
            print(f"distill: the student's kept-layer map is for a {kept_map[0]}-layer source, the teacher has "
                  f"{teacher_layers} layers; pairing intermediate states evenly")
        pairs = tuple((i, max(1, round(i * teacher_layers / student_layers))) for i in range(1, student_layers + 1))
    for s, t in pairs:
        if s > student_layers or t > teacher_layers:
            raise MinitronError(
                f"distill.intermediate.pairs has ({s}, {t}) but the student has {student_layers} layers and the teacher "
                f"{teacher_layers}; layer numbers are 1-based"
            )
    return IntermediateSpec(pairs=tuple(pairs), kind=spec.kind, weight=spec.weight, pairing=spec.pairing)


class DistillLoss:
    """`loss_fn(model, batch) -> (loss, metrics)` for `LossTrainer`: the KD loss against a frozen teacher."""

    def __init__(self, teacher: nn.Module | None, spec: DistillLossSpec, *, sharded: bool = False,
                 student_config: Any = None):
        self.teacher = teacher
        self.spec = spec
        self.sharded = sharded
        self.chunked = spec.chunk_size > 0
        cap = getattr(student_config, "final_logit_softcapping", None)
        if self.chunked and cap is not None:
            # the chunks form raw h @ W^T logits and their gradients in closed form; a soft-capped head (Gemma 2/3)
            # transforms the logits first, so its loss needs the model's own logits
            print(f"distill: WARNING: distill.chunk_size={spec.chunk_size} is ignored, the loss uses full logits: this "
                  f"model soft-caps its logits (final_logit_softcapping={cap}), which the chunked loss does not do")
            self.chunked = False

    def _forward(self, model: nn.Module, inputs: dict[str, torch.Tensor], want_states: bool):
        kwargs: dict[str, Any] = {"input_ids": inputs["input_ids"], "attention_mask": inputs.get("attention_mask")}
        if self.chunked:
            # logits for no position: the vocabulary projection happens chunk by chunk in the loss
            kwargs["logits_to_keep"] = torch.empty(0, dtype=torch.long, device=inputs["input_ids"].device)
        out = model(**kwargs, output_hidden_states=self.chunked or want_states)
        return out

    def __call__(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        spec = self.spec
        want_states = spec.intermediate is not None
        labels = shift_labels(inputs["labels"])
        s_out = self._forward(model, inputs, want_states)
        t_out = None
        if spec.logits.needs_teacher or want_states:
            with torch.no_grad():
                t_out = self._forward(self.teacher, inputs, want_states)
        student = _unwrap(model)
        if self.chunked:
            t_hidden = t_out.hidden_states[-1] if t_out is not None else None
            t_weight = _unwrap(self.teacher).get_output_embeddings().weight if t_out is not None else None
            if self.sharded:
                loss, metrics = _chunked_in_head(student, s_out.hidden_states[-1], t_hidden, t_weight, labels, spec)
            else:
                loss, metrics = chunked_logit_loss(
                    s_out.hidden_states[-1], student.get_output_embeddings().weight, t_hidden, t_weight, labels,
                    spec.logits, chunk_size=spec.chunk_size,
                )
        else:
            loss, metrics = logit_loss(s_out.logits, t_out.logits if spec.logits.needs_teacher else None, labels, spec.logits)
        if want_states:
            pairs = spec.intermediate.pairs
            is_term = intermediate_loss(
                [s_out.hidden_states[s] for s, _ in pairs],
                [t_out.hidden_states[t] for _, t in pairs],
                inputs.get("attention_mask", torch.ones_like(inputs["input_ids"])),
                spec.intermediate,
                getattr(student, PROJECTION, None),
            )
            metrics["loss_logits"] = float(loss.detach())
            metrics["loss_is"] = float(is_term.detach())
            loss, metrics["alpha"] = combine(loss, is_term, spec.intermediate)
        return loss, metrics


def _chunked_in_head(student: nn.Module, s_hidden, t_hidden, t_weight, labels, spec: DistillLossSpec):
    """The chunked loss under ZeRO-3, run as the forward of the student's output layer.

    ZeRO-3 keeps only a partition of each weight on a rank; its hooks on a module's call gather the module's
    weights before the forward (and, through a hook on the outputs, again before that module's backward) and
    release them after. Running the loss as the output layer's forward therefore sees the whole student weight
    once per forward, and the gradient that the loss's backward returns for it goes through ZeRO-3's usual
    reduce-scatter into the partitions. The teacher's weight takes no gradient: it is gathered for the forward
    only, with `GatheredParameters(modifier_rank=None)` (read-only, released on exit; the chunked loss keeps no
    reference to it past its forward, since it forms the gradients there).
    """
    import deepspeed  # only under ZeRO-3: importing it takes seconds and probes for accelerators

    head = student.get_output_embeddings()
    metrics: dict[str, float] = {}

    def loss_forward(hidden: torch.Tensor) -> torch.Tensor:
        with deepspeed.zero.GatheredParameters([t_weight] if t_weight is not None else [], modifier_rank=None):
            loss, logged = chunked_logit_loss(hidden, head.weight, t_hidden, t_weight, labels, spec.logits,
                                              chunk_size=spec.chunk_size, precompute_grad=True)
        metrics.update(logged)
        return loss

    head.forward = loss_forward  # an instance attribute: nn.Module.__call__ runs the hooks around it
    try:
        loss = head(s_hidden)
    finally:
        del head.forward
    return loss, metrics


def check_same_tokenizer(teacher_tok, student_tok) -> None:
    """Teacher and student must share vocabulary and special tokens, or their logits do not line up."""
    if teacher_tok is None or student_tok is None:
        return
    if teacher_tok.get_vocab() != student_tok.get_vocab():
        raise MinitronError(
            f"teacher and student tokenizers differ ({len(teacher_tok)} vs {len(student_tok)} tokens); distill a "
            "student pruned from this teacher, or give both the same tokenizer"
        )
    if teacher_tok.all_special_tokens != student_tok.all_special_tokens:
        raise MinitronError(
            f"teacher and student special tokens differ ({teacher_tok.all_special_tokens} vs "
            f"{student_tok.all_special_tokens}); save the student with the teacher's tokenizer"
        )


def _zero_stage(args: TrainingArguments) -> int:
    cfg = getattr(args, "hf_deepspeed_config", None)
    if cfg is None:
        return 0
    return int(cfg.config.get("zero_optimization", {}).get("stage", 0))


def _teacher_engine(teacher: nn.Module, args: TrainingArguments) -> nn.Module:
    """The teacher as a DeepSpeed engine without an optimizer: partitioned by ZeRO-3 like the student."""
    import deepspeed  # only under ZeRO-3: importing it takes seconds and probes for accelerators

    config = copy.deepcopy(args.hf_deepspeed_config.config)
    for key in ("optimizer", "scheduler"):
        config.pop(key, None)
    hidden = int(_unwrap(teacher).config.hidden_size)
    zero = config.setdefault("zero_optimization", {})
    sized = {
        "reduce_bucket_size": hidden * hidden,
        "stage3_prefetch_bucket_size": prefetch_bucket(hidden),
        "stage3_param_persistence_threshold": 10 * hidden,
    }
    for key, value in list(zero.items()):
        if value == "auto":
            zero[key] = sized.get(key, value)
    zero.pop("offload_optimizer", None)
    # The teacher has no backward: each weight is used once per step, by the next step's forward. DeepSpeed keeps
    # a gathered weight whose next use is within `stage3_max_reuse_distance` elements (default 1e9), which for a
    # teacher under 1e9 parameters means keeping all of it gathered on every rank from the second step on.
    # Released after each use, the teacher stays partitioned. Likewise, once DeepSpeed has traced a step it
    # prefetches up to `stage3_max_live_parameters` (default 1e9) elements ahead: bounded by the prefetch bucket,
    # a rank holds at most a bucket's worth of the teacher gathered (measured with benchmarks/zero3_memory.py: the
    # step's peak fell from 4.41 to 3.62 GiB per rank at 514M teacher parameters).
    zero["stage3_max_reuse_distance"] = 0
    zero["stage3_max_live_parameters"] = int(zero.get("stage3_prefetch_bucket_size") or hidden * hidden)
    for key, value in list(config.items()):
        if value == "auto":
            config.pop(key)
    config.setdefault("train_micro_batch_size_per_gpu", args.per_device_train_batch_size)
    config.setdefault("gradient_accumulation_steps", args.gradient_accumulation_steps)
    engine, *_ = deepspeed.initialize(model=teacher, config=config)
    engine.eval()
    return engine


def _numel(model: nn.Module) -> int:
    """Parameter count, also of a ZeRO-3 partitioned model (whose parameters hold no data outside a forward)."""
    return sum(int(getattr(p, "ds_numel", p.numel())) for p in model.parameters())


def create_models(
    teacher: PreTrainedModel | str | Path,
    student: PreTrainedModel | str | Path,
    args: TrainingArguments,
    *,
    dtype: str = "float32",
) -> tuple[PreTrainedModel, PreTrainedModel]:
    """Teacher and student for a run with `args`: checkpoint paths are loaded here, models are used as given.

    Order matters: `TrainingArguments(deepspeed=...)` registers its `HfDeepSpeedConfig`, of which transformers
    keeps only a weak reference (held alive by `args`). While it lives, `from_pretrained` under ZeRO-3 creates
    the model inside `deepspeed.zero.Init`, so every weight is partitioned as it is created and rank 0 copies
    the checkpoint's values in one module at a time: no rank holds a whole model. The teacher is loaded in the
    training dtype (bfloat16 when bf16 is on), so it never exists in float32 then; the student is loaded in
    `dtype` (its optimizer keeps float32 master weights). Models passed in already created are whole on every
    rank; under ZeRO-3 that is said once, loudly.
    """
    sharded = _zero_stage(args) == 3
    if sharded:
        import deepspeed  # only under ZeRO-3: importing it takes seconds and probes for accelerators

        _ = args.device  # sets up torch's process group
        # zero.Init partitions over DeepSpeed's view of that group, and sizes the batch by it (1 rank when unset)
        deepspeed.init_distributed()
    teacher_dtype = "bfloat16" if args.bf16 else dtype
    given = [name for name, m in (("teacher", teacher), ("student", student)) if isinstance(m, nn.Module)]
    if sharded and given and args.process_index == 0:
        print(f"distill: WARNING: the {' and '.join(given)} came in already created, so every rank holds "
              f"{'them' if len(given) > 1 else 'it'} whole until DeepSpeed partitions {'them' if len(given) > 1 else 'it'}; "
              "pass checkpoint paths to create them partitioned under ZeRO-3")
    if not isinstance(teacher, nn.Module):
        teacher = load_model(teacher, dtype=teacher_dtype)
    if not isinstance(student, nn.Module):
        student = load_model(student, dtype=dtype)
    return teacher, student


def distill(
    teacher: PreTrainedModel | str | Path,
    student: PreTrainedModel | str | Path,
    train_dataset,
    eval_dataset,
    run_dir: str | Path,
    *,
    train: Any,
    loss: DistillLossSpec = DistillLossSpec(),
    seq_len: int,
    seed: int = 0,
    out: str | Path | None = None,
    tokenizer=None,
    resume: bool = True,
    callbacks: list | None = None,
    dtype: str = "float32",
) -> DistillResult:
    """Distill `student` from the frozen `teacher` on packed blocks; save the student to `out` (default run_dir/student).

    `train` is a `TrainSettings` or a `configs/train/*.yaml` mapping (its `deepspeed` entry may be a DeepSpeed
    config mapping or path). With `resume`, a run folder that holds checkpoints continues from the last complete one (weights,
    optimizer, scheduler, data position and RNG; see `minitron.train.trainer.resume_point`). Writes metrics.jsonl,
    metrics.json and loss.png into `run_dir`.
    `callbacks` (transformers `TrainerCallback`s) are added to the trainer, e.g. to record a validation curve.
    `teacher` and `student` are models or checkpoint paths; paths are created after the DeepSpeed config is
    registered, partitioned under ZeRO-3 (see `create_models`), the student in `dtype`.
    """
    run_dir = Path(run_dir)
    out = Path(out) if out else run_dir / "student"
    ckpt_dir = run_dir / "checkpoints"
    train = TrainSettings.of(train)
    args = training_arguments(train, ckpt_dir, seed=seed)  # before the models: it registers the ZeRO-3 config
    sharded = _zero_stage(args) == 3
    teacher, student = create_models(teacher, student, args, dtype=dtype)
    if args.process_index == 0:
        print(f"distill: student {_numel(student):,} parameters, teacher {_numel(teacher):,}"
              f"{' (created partitioned over ' + str(args.world_size) + ' ranks by ZeRO-3)' if sharded else ''}")

    spec = DistillLossSpec(
        logits=loss.logits,
        intermediate=resolve_pairs(loss.intermediate, _layer_count(student), _layer_count(teacher),
                                   layer_map(_unwrap(student).config)),
        chunk_size=loss.chunk_size,
    )
    if spec.intermediate is not None:
        projection = StateProjection(student.config.hidden_size, teacher.config.hidden_size).to(student.dtype)
        setattr(student, PROJECTION, projection)
    teacher.requires_grad_(False)
    teacher.eval()
    if sharded:
        teacher = _teacher_engine(teacher, args)
    else:
        teacher.to(device=args.device, dtype=torch.bfloat16 if args.bf16 else teacher.dtype)
    student.train()

    last = resume_point(args, run_dir / "metrics.jsonl", resume=resume)
    trainer = build_trainer(
        student, args, train_dataset, loss_fn=DistillLoss(teacher, spec, sharded=sharded, student_config=student.config), seq_len=seq_len,
        metrics_path=run_dir / "metrics.jsonl", desc="distill",
    )
    for callback in callbacks or ():
        trainer.add_callback(callback)
    if last is not None:
        print(f"resuming from {last}")
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=last)
    seconds = time.perf_counter() - start

    val = lm_loss(trainer.model, eval_dataset, batch_size=args.per_device_eval_batch_size, max_batches=train.eval_batches)
    teacher_val = lm_loss(teacher, eval_dataset, batch_size=args.per_device_eval_batch_size, max_batches=train.eval_batches)
    tokens = trainer.tokens_seen
    result = DistillResult(str(out), val, teacher_val, tokens, trainer.state.global_step, seconds)
    save_final(trainer, out, tokenizer, "minitron_distill.json", asdict(result), before_rename=_drop_projection)
    release_deepspeed_config()  # models loaded after this (the pipeline's evaluation) are whole, not partitioned
    if args.process_index == 0:
        write_json(run_dir / "metrics.json", asdict(result))
        plot_curves(run_dir / "metrics.jsonl", run_dir / "loss.png", title="distill")
        print(f"student validation loss {val:.3f} nats/token (teacher {teacher_val:.3f}); saved to {out}")
    if hasattr(_unwrap(trainer.model), PROJECTION):
        delattr(_unwrap(trainer.model), PROJECTION)
    return result


def _drop_projection(folder: Path) -> None:
    """The learned state projection is a training aid, not part of the student: remove it from the weights."""
    for f in folder.glob("*.safetensors"):
        # header first: a file without the projection is not read; one with it is rewritten tensor by tensor
        rewrite_safetensors(f, lambda name, kind: None if name.startswith(PROJECTION + ".") else kind)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        data = json.loads(index.read_text())
        data["weight_map"] = {k: v for k, v in data["weight_map"].items() if not k.startswith(PROJECTION + ".")}
        index.write_text(json.dumps(data, indent=2))


def loss_spec(cfg: Any) -> DistillLossSpec:
    """A `DistillLossSpec` from a `configs/distill/*.yaml` mapping."""
    d = to_plain(cfg)
    logits = LogitLossSpec(**d["loss"])
    inter = d.get("intermediate") or {}
    intermediate = None
    if inter.get("enabled"):
        pairs = tuple(tuple(int(x) for x in p) for p in (inter.get("pairs") or ()))
        if any(len(p) != 2 for p in pairs):
            raise MinitronError("distill.intermediate.pairs must be a list of [student_layer, teacher_layer] pairs")
        intermediate = IntermediateSpec(pairs=pairs, kind=inter["kind"], weight=inter.get("weight"),
                                        pairing=inter.get("pairing", "kept"))
    if int(d["chunk_size"]) < 0:
        raise MinitronError(f"distill.chunk_size must be >= 0 (0: full logits), got {d['chunk_size']}")
    return DistillLossSpec(logits=logits, intermediate=intermediate, chunk_size=int(d["chunk_size"]))
