"""The one training path: `transformers.Trainer` with a pluggable loss.

Pretraining plugs in the causal-LM loss; distillation plugs in a loss that also reads a frozen teacher. Both
share the arguments, the schedule (cosine with warmup down to a minimum LR, as in the papers), the progress bar,
the metrics file and DeepSpeed, which the Trainer drives when `train.deepspeed` names a config.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from itertools import islice
from pathlib import Path
from typing import Any

import matplotlib
import torch
from datasets import IterableDataset
from torch.nn import functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedModel, Trainer, TrainerCallback, TrainingArguments
from transformers.integrations import WandbCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from minitron.checkpoint import save_zero3_partitioned
from minitron.errors import MinitronError
from minitron.io import atomic_path, write_json, write_text
from minitron.train.settings import TrainSettings

LossFn = Callable[[PreTrainedModel, dict[str, torch.Tensor]], "tuple[torch.Tensor, dict[str, float]]"]


def collate(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack packed blocks; padding (attention_mask 0) is left out of the loss via labels = -100."""
    input_ids = torch.tensor([e["input_ids"] for e in examples], dtype=torch.long)
    if "attention_mask" in examples[0]:
        attention_mask = torch.tensor([e["attention_mask"] for e in examples], dtype=torch.long)
    else:
        attention_mask = torch.ones_like(input_ids)
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def causal_lm_loss(model: PreTrainedModel, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """Next-token cross-entropy in float32, averaged over the tokens whose label is not -100."""
    labels = inputs["labels"]
    logits = model(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask")).logits
    loss = F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100, reduction="mean"
    )
    return loss, {}


class LossTrainer(Trainer):
    """A Trainer whose loss is a plain function of (model, batch); extra scalars it returns are logged."""

    def __init__(self, *args, loss_fn: LossFn = causal_lm_loss, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_fn = loss_fn
        self._extra: dict[str, list[float]] = {}
        # loss_fn returns a per-micro-batch mean and ignores num_items_in_batch, so the Trainer must divide it by
        # the accumulation steps itself (otherwise gradients and logged losses grow with gradient_accumulation_steps)
        self.model_accepts_loss_kwargs = False
        self.tokens_per_step = 0  # set by build_trainer: global batch x sequence length

    @property
    def tokens_seen(self) -> int:
        """Tokens trained on so far, over every rank and accumulation step."""
        return self.state.global_step * self.tokens_per_step

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, extra = self.loss_fn(model, inputs)
        if not torch.isfinite(loss.detach()):
            raise MinitronError(
                f"the training loss became {loss.item()} at step {self.state.global_step}; lower train.lr or "
                f"raise train.warmup_steps (the last saved checkpoint in {self.args.output_dir} is kept)"
            )
        for k, v in extra.items():
            self._extra.setdefault(k, []).append(float(v))
        return (loss, None) if return_outputs else loss

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Under ZeRO-3, the model saved one gathered tensor at a time (`save_zero3_partitioned`): the Trainer's own
        save first gathers the whole model on rank 0, the largest allocation of a partitioned run. Elsewhere, and
        for a family without an adapter, the Trainer's save."""
        if self.is_deepspeed_enabled and self.accelerator.deepspeed_plugin.zero_stage == 3:
            out = Path(output_dir or self.args.output_dir)
            if save_zero3_partitioned(self.model, out, write=self.args.should_save):
                if self.args.should_save and self.processing_class is not None:
                    self.processing_class.save_pretrained(str(out))
                return
        super().save_model(output_dir, _internal_call)

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        extra = {k: sum(vs) / len(vs) for k, vs in sorted(self._extra.items()) if vs}
        if extra and self.args.world_size > 1 and torch.distributed.is_initialized():
            # every rank logs at the same step; report the mean over ranks, as the Trainer does for the loss
            values = torch.tensor(list(extra.values()), dtype=torch.float64, device=self.args.device)
            torch.distributed.all_reduce(values)
            extra = dict(zip(extra, (values / self.args.world_size).tolist()))
        logs.update(extra)
        self._extra = {}
        super().log(logs, *args, **kwargs)


class TokenProgressCallback(TrainerCallback):
    """One progress bar with loss, learning rate and tokens per second."""

    def __init__(self, tokens_per_step: int, desc: str = "train"):
        self.tokens_per_step = tokens_per_step
        self.desc = desc
        self.bar = None
        self.start = 0.0
        self.start_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc=self.desc, dynamic_ncols=True)
            self.start, self.start_step = time.perf_counter(), state.global_step

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is None or not logs:
            return
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        post = {"tok/s": f"{(state.global_step - self.start_step) * self.tokens_per_step / elapsed:,.0f}"}
        for key in ("loss", "kl", "eval_loss", "learning_rate"):
            if key in logs:
                post[key.replace("learning_rate", "lr")] = f"{logs[key]:.4g}"
        self.bar.set_postfix(post, refresh=False)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class WandbRun(WandbCallback):
    """transformers' wandb logging with the run's files in `folder`, offline unless WANDB_MODE says otherwise.

    The run is opened here (transformers' callback then finds it) and closed when training ends: transformers
    leaves it open, so the next Trainer in the same process (the pipeline's stages, search candidates, ablation
    cells) would log into the first run.
    """

    def __init__(self, folder: Path):
        super().__init__()
        self.folder = Path(folder)

    def setup(self, args, state, model, **kwargs):
        if state.is_world_process_zero and self._wandb.run is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._wandb.init(dir=str(self.folder), project=os.environ.get("WANDB_PROJECT") or "minitron",
                             mode=None if os.environ.get("WANDB_MODE") else "offline")
        super().setup(args, state, model, **kwargs)

    def on_train_end(self, args, state, control, **kwargs):
        super().on_train_end(args, state, control, **kwargs)
        if state.is_world_process_zero:
            if self._wandb.run is not None:
                self._wandb.finish()
            self._wandb.teardown()  # wandb keeps its session settings (the folder among them) until torn down


class MetricsFileCallback(TrainerCallback):
    """Appends every log record (with step and tokens seen) to a JSON-lines file in the run folder."""

    def __init__(self, path: Path, tokens_per_step: int):
        self.path = Path(path)
        self.tokens_per_step = tokens_per_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "tokens": state.global_step * self.tokens_per_step, **logs}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def one_process_rendezvous() -> None:
    """DeepSpeed needs a process group even on one process, and without a launcher it looks for MPI to find one
    (and fails without mpi4py). A run started without torchrun or the DeepSpeed launcher gets here the
    environment a launch of one process would set: rank 0 of 1, rendezvous on a free local port (the set-up
    transformers' DeepSpeed guide gives for running in a notebook)."""
    if "RANK" in os.environ or "OMPI_COMM_WORLD_RANK" in os.environ:
        return
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(port))


def training_arguments(train: TrainSettings | Any, output_dir: Path, *, seed: int) -> TrainingArguments:
    """TrainingArguments from `TrainSettings` (or a `configs/train/*.yaml` mapping)."""
    t = TrainSettings.of(train)
    cuda = torch.cuda.is_available()
    bf16 = t.bf16 if isinstance(t.bf16, bool) else cuda and torch.cuda.is_bf16_supported()
    report = {"none": [], "wandb": ["wandb"], "tensorboard": ["tensorboard"]}[t.logger]
    if t.deepspeed is not None:
        one_process_rendezvous()
    return TrainingArguments(
        output_dir=str(output_dir),
        max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.lr,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": t.min_lr_ratio},
        warmup_steps=t.warmup_steps,
        weight_decay=t.weight_decay,
        adam_beta1=t.adam_beta1,
        adam_beta2=t.adam_beta2,
        max_grad_norm=t.max_grad_norm,
        logging_steps=t.logging_steps,
        save_strategy="steps" if t.save_steps else "no",
        save_steps=t.save_steps or 500,
        save_total_limit=t.save_total_limit,
        eval_strategy="no",
        bf16=bf16,
        activation_checkpointing=t.gradient_checkpointing,
        deepspeed=t.deepspeed,
        report_to=report,
        disable_tqdm=True,
        dataloader_num_workers=t.dataloader_num_workers,
        remove_unused_columns=False,
        use_cpu=not cuda,
        seed=seed,
        data_seed=seed,
    )


def fill_zero3_sizes(args: TrainingArguments, model: PreTrainedModel) -> None:
    """Fill `zero_optimization.stage3_max_live_parameters: auto` of the registered DeepSpeed config from `model`.

    transformers fills the prefetch bucket (0.9 x hidden^2 elements) but not this limit, whose DeepSpeed default
    (1e9 elements) lets the prefetcher gather a whole model of under 1e9 parameters ahead of the forward once it
    has traced a step. `auto` bounds it by the prefetch bucket, as the teacher's engine is bounded
    (`minitron.distill.trainer._teacher_engine`). Measured with benchmarks/zero3_memory.py (138M float32 student,
    2 ranks, limit 1e6 elements, near this student's bucket of 0.94e6): the student's forward in the second step
    grew the rank's memory by 0.04 GiB instead of 0.38 GiB.
    """
    ds = getattr(args, "hf_deepspeed_config", None)
    zero = ds.config.get("zero_optimization", {}) if ds is not None else {}
    if zero.get("stage3_max_live_parameters") != "auto":
        return
    hidden = getattr(getattr(model, "config", None), "hidden_size", None)
    bucket = zero.get("stage3_prefetch_bucket_size")
    if bucket == "auto" or bucket is None:
        if hidden is None:
            raise MinitronError("zero_optimization.stage3_max_live_parameters is auto but the model's config has no "
                                "hidden_size to size it by; give it a number of elements")
        bucket = prefetch_bucket(hidden)
    zero["stage3_max_live_parameters"] = int(bucket)


def prefetch_bucket(hidden: int) -> int:
    """ZeRO-3's prefetch bucket in elements for a model of this hidden size: transformers' rule for "auto"."""
    return int(0.9 * hidden * hidden)


def build_trainer(
    model: PreTrainedModel,
    args: TrainingArguments,
    train_dataset,
    *,
    loss_fn: LossFn = causal_lm_loss,
    seq_len: int,
    metrics_path: Path,
    desc: str = "train",
) -> LossTrainer:
    fill_zero3_sizes(args, model)
    tokens_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size * seq_len
    if isinstance(train_dataset, IterableDataset):
        # A stream is cycled, so that one shorter than max_steps wraps around inside the Trainer's first epoch: the
        # Trainer then resumes by skipping global_step x accumulation batches of that one epoch, which lands exactly
        # where the killed run stopped (across an epoch boundary of a stream it would restart the epoch instead).
        train_dataset = train_dataset.repeat(None)
    trainer = LossTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        data_collator=collate,
        loss_fn=loss_fn,
        callbacks=[TokenProgressCallback(tokens_per_step, desc), MetricsFileCallback(metrics_path, tokens_per_step)],
    )
    trainer.tokens_per_step = tokens_per_step
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if "wandb" in (args.report_to or []):  # logger=wandb: its files go into the run folder (output_dir's parent)
        trainer.remove_callback(WandbCallback)
        trainer.add_callback(WandbRun(Path(args.output_dir).parent))
    return trainer


def last_checkpoint(folder: Path, *, before: int | None = None) -> str | None:
    """The newest complete `checkpoint-N` in `folder` (with N < `before` when given), or None.

    The Trainer writes trainer_state.json last, so a folder without it was cut short by a kill and is passed over.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    done = [p for p in folder.glob("checkpoint-*") if p.is_dir() and p.name.rsplit("-", 1)[1].isdigit()
            and (p / "trainer_state.json").is_file()]
    if before is not None:
        done = [p for p in done if checkpoint_step(str(p)) < before]
    return str(max(done, key=lambda p: checkpoint_step(str(p)))) if done else None


def checkpoint_step(checkpoint: str | None) -> int:
    """The optimizer step a `checkpoint-N` folder was saved at (0 for None: a fresh start)."""
    return int(Path(checkpoint).name.rsplit("-", 1)[1]) if checkpoint else 0


def trim_metrics(path: Path, step: int) -> None:
    """Keep the records up to the checkpoint a run resumes from (a killed run may have logged past it, or died
    halfway through a line)."""
    path = Path(path)
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("step", 0) <= step and "train_runtime" not in record:
            kept.append(line)
    write_text(path, "".join(line + "\n" for line in kept))


def resume_point(args: TrainingArguments, metrics_path: Path, *, resume: bool) -> str | None:
    """The checkpoint to continue from (None: start afresh) in `args.output_dir`.

    With `resume` that is the last complete checkpoint before `max_steps` (the Trainer, resumed from the final
    step, would take one step more; the last stretch is trained again instead, to the same weights). Without it
    the old checkpoints are removed. Either way metrics.jsonl keeps only the records up to the step the run
    restarts from. Files are changed on rank 0 only.
    """
    folder = Path(args.output_dir)
    last = last_checkpoint(folder, before=args.max_steps) if resume else None
    if args.process_index == 0:
        if not resume and folder.exists():
            shutil.rmtree(folder)
        trim_metrics(metrics_path, checkpoint_step(last))
    return last


def save_final(
    trainer: Trainer,
    out: Path,
    tokenizer,
    summary_name: str,
    summary: dict[str, Any],
    before_rename: Callable[[Path], None] | None = None,
) -> None:
    """Save the trained model to `out` as a stock checkpoint with its tokenizer and a summary JSON.

    Every rank takes part (ZeRO-3 gathers the shards) and writes into a hidden partial sibling; rank 0 then
    finishes the folder (`before_rename(folder)` first, e.g. to drop training-only tensors) and renames it into
    place, so `out` is either the old folder or the complete new one.
    """
    out = Path(out)
    partial = out.with_name(f".{out.name}.partial")
    main = trainer.args.process_index == 0
    if main and partial.exists():
        shutil.rmtree(partial)  # left by a run killed while saving
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(partial))
    trainer.accelerator.wait_for_everyone()
    if main:
        if before_rename is not None:
            before_rename(partial)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(partial))
        (partial / "training_args.bin").unlink(missing_ok=True)
        write_json(partial / summary_name, summary)
        for f in partial.rglob("*"):
            if f.is_file():
                with open(f, "rb") as handle:
                    os.fsync(handle.fileno())
        old = out.with_name(f".{out.name}.old")
        if out.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(out, old)
        os.replace(partial, out)
        shutil.rmtree(old, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()


def release_deepspeed_config() -> None:
    """Forget the DeepSpeed config of a finished run in this process.

    transformers finds it through a weak reference to the `HfDeepSpeedConfig` of the run's `TrainingArguments`, which
    the reference cycles of a Trainer keep alive after the run. While it lives, every `from_pretrained` in the
    process creates its model inside `deepspeed.zero.Init`, partitioned over the ranks: a collective call, which
    hangs when only rank 0 loads a model afterwards (the pipeline's evaluation after a ZeRO-3 stage).
    """
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()


def unigram_loss(train_dataset, eval_dataset, vocab_size: int, *, max_train_blocks: int | None = None) -> float:
    """Cross-entropy (nats/token) of an add-one unigram model fitted on the train blocks (the first
    `max_train_blocks` when given: a stream has no end), on the eval targets.

    The baseline a language model must beat clearly: it knows token frequencies and nothing about context.
    """
    counts = torch.ones(vocab_size, dtype=torch.float64)
    for ex in islice(train_dataset, max_train_blocks):
        ids = torch.tensor(ex["input_ids"])[torch.tensor(ex["attention_mask"]) == 1]
        counts += torch.bincount(ids, minlength=vocab_size).double()
    logp = (counts / counts.sum()).log()
    total, count = 0.0, 0
    for ex in eval_dataset:
        ids = torch.tensor(ex["input_ids"])[torch.tensor(ex["attention_mask"]) == 1][1:]
        total -= logp[ids].sum().item()
        count += ids.numel()
    return total / max(count, 1)


def plot_curves(metrics_path: Path, png: Path, *, title: str) -> None:
    """Training (and evaluation) loss against tokens seen."""
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"): pyplot picks its backend when first imported

    records = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key in ("loss", "kl", "eval_loss"):
        pts = [(r["tokens"], r[key]) for r in records if key in r]
        if pts:
            ax.plot(*zip(*pts), label=key, marker="." if key == "eval_loss" else None)
    ax.set_xlabel("tokens")
    ax.set_ylabel("nats / token")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
