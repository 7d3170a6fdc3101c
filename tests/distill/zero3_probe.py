"""Run under `torchrun --nproc_per_node 2` with DS_ACCELERATOR=cpu by tests/distill/test_zero3.py.

    zero3_probe.py TEACHER STUDENT OUT_JSON BF16(0|1)

Creates teacher and student from their folders as `minitron distill` does under ZeRO-3 and records, per rank,
how each parameter is held right after creation (before any DeepSpeed engine exists). Then, with the student in
a ZeRO-3 engine and the teacher in its own, it computes the distillation loss and the student's full gradients
on the same batch with the plain loss (full logits) and with the chunked loss, for forward KL and for JSD, and
records both. Last, it saves the student tensor by tensor (OUT_JSON's folder, saved_by_tensor/) and as
transformers does, whole (saved_whole/). Rank 0 writes OUT_JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.utils import safe_get_full_grad
from safetensors.torch import load_file
from transformers import GenerationConfig

from minitron.checkpoint import _load_zero3_partitions, save_zero3_partitioned
from minitron.config import compose, to_plain
from minitron.distill.losses import DistillLossSpec, LogitLossSpec
from minitron.distill.trainer import DistillLoss, _teacher_engine, create_models
from minitron.train.settings import TrainSettings
from minitron.train.trainer import fill_zero3_sizes, training_arguments


def held(model: torch.nn.Module) -> list[dict]:
    return [
        {"name": name, "numel": p.numel(), "ds_numel": int(getattr(p, "ds_numel", -1)),
         "partition": int(p.ds_tensor.numel()) if hasattr(p, "ds_tensor") else -1,
         "status": str(getattr(p, "ds_status", None)), "dtype": str(p.dtype)}
        for name, p in model.named_parameters()
    ]


def main() -> None:
    teacher_dir, student_dir, out, bf16 = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4] == "1"
    ds = to_plain(compose("distill", ["deepspeed=zero3"]).deepspeed)
    train = TrainSettings(max_steps=1, batch_size=2, lr=1e-3, warmup_steps=0, bf16=bf16, deepspeed=ds)
    args = training_arguments(train, out.parent / "probe_ckpt", seed=0)
    teacher, student = create_models(teacher_dir, student_dir, args)
    record = {"rank": dist.get_rank(), "world": dist.get_world_size(), "teacher": held(teacher), "student": held(student)}
    # each rank read its own partitions from the files (minitron.checkpoint._load_zero3_partitions): gathered, the
    # weights are the checkpoint's, in the dtype each model was created in
    record["read_by_partition"] = _load_zero3_partitions(Path(teacher_dir), torch.float32, False) is not None
    # the folder's generation settings come with the model, as from_pretrained gives them
    record["generation_config"] = [(Path(d) / "generation_config.json").is_file()
                                   and m.generation_config.to_diff_dict() == GenerationConfig.from_pretrained(d).to_diff_dict()
                                   for m, d in ((teacher, teacher_dir), (student, student_dir))]
    record["max_diff"] = {}
    for which, model, folder in (("teacher", teacher, teacher_dir), ("student", student, student_dir)):
        saved = load_file(str(Path(folder) / "model.safetensors"))
        params = dict(model.named_parameters())
        with deepspeed.zero.GatheredParameters(list(params.values()), modifier_rank=None):
            record["max_diff"][which] = max(float((p.float() - saved[n].to(p.dtype).float()).abs().max())
                                            for n, p in params.items())

    fill_zero3_sizes(args, student)
    config = json.loads(json.dumps(args.hf_deepspeed_config.config))
    hidden = student.config.hidden_size
    zero = config["zero_optimization"]
    for key, value in {"reduce_bucket_size": hidden * hidden, "stage3_prefetch_bucket_size": int(0.9 * hidden * hidden),
                       "stage3_param_persistence_threshold": 10 * hidden}.items():
        zero[key] = value
    config["optimizer"]["params"] = {"lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0}
    config.update(gradient_clipping=0.0, train_micro_batch_size_per_gpu=2, gradient_accumulation_steps=1,
                  train_batch_size=2 * dist.get_world_size())
    engine, *_ = deepspeed.initialize(model=student, model_parameters=list(student.parameters()), config=config)
    t_engine = _teacher_engine(teacher, args)

    vocab = student.config.vocab_size
    ids = torch.randint(0, vocab, (2, 32), generator=torch.Generator().manual_seed(100 + dist.get_rank()))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    results = {}
    for kind in ("kl", "jsd"):
        for chunk in (0, 16, 0):  # plain twice: the second shows that the gradients are cleared between runs
            spec = DistillLossSpec(logits=LogitLossSpec(kind=kind), chunk_size=chunk)
            loss, _ = DistillLoss(t_engine, spec, sharded=True, student_config=student.config)(engine, inputs)
            engine.backward(loss)
            grads = {n: safe_get_full_grad(p).float().clone() for n, p in engine.module.named_parameters()}
            engine.optimizer.zero_grad()
            results.setdefault(kind, []).append({"chunk": chunk, "loss": float(loss.detach()),
                                                 "grads": {n: g.flatten().tolist() for n, g in grads.items()}})
    record["losses"] = results
    # the save: one gathered tensor at a time (minitron.checkpoint.save_zero3_partitioned, what the Trainer's save
    # does here under ZeRO-3) against transformers' own, which gathers the whole state dict on rank 0 first
    rank0 = dist.get_rank() == 0
    record["saved_by_tensor"] = save_zero3_partitioned(engine.module, out.parent / "saved_by_tensor", write=rank0)
    whole = engine._zero3_consolidated_16bit_state_dict()
    if rank0:
        engine.module.save_pretrained(out.parent / "saved_whole", state_dict=whole, safe_serialization=True)
    dist.barrier()
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, record)
    if dist.get_rank() == 0:
        out.write_text(json.dumps(gathered))


if __name__ == "__main__":
    main()
