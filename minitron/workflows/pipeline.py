"""The end-to-end pipeline: teacher -> importance -> prune -> distill -> evaluate, plus a from-scratch baseline.

Each stage writes its outputs and a record `stages/NAME.json` into the run folder; a stage whose record exists is
skipped when the pipeline is re-run in the same folder (`hydra.run.dir=...`), so a killed run resumes where it
stopped. Data flows one way: the teacher's checkpoint and calibration batches go into `importance.estimate`, the
scores and the target into `prune.prune`, the pruned checkpoint into `distill`, every checkpoint into `evaluate`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from minitron.checkpoint import (
    cast_checkpoint,
    checkpoint_folder,
    load_checkpoint,
    load_config,
    save_checkpoint,
)
from minitron.config import to_plain
from minitron.data.calibration import Calibration, packed_data
from minitron.distill.recipe import correct_teacher
from minitron.distill.trainer import distill as distill_student
from minitron.distill.trainer import loss_spec
from minitron.evaluate import evaluate as lm_eval_suite
from minitron.importance import SCORES_FILE, Importance, score_model
from minitron.importance.plots import plot_importance
from minitron.io import write_json, write_text
from minitron.prune import prune as prune_model
from minitron.prune.dry_run import config_from_arch, dry_run, layer_lines
from minitron.prune.target import Target
from minitron.ranks import rank, world_size
from minitron.real_models import is_named, materialise
from minitron.train.pretrain import SUMMARY_FILE, teacher_path, train_from_scratch
from minitron.train.settings import TrainSettings
from minitron.train.trainer import plot_curves, save_final
from minitron.train.validation import batch_loss_sums, mean_and_se
from minitron.workflows.miniature import build_teacher

MODELS = ("teacher", "pruned", "distilled", "scratch")


def stage(run_dir: Path, name: str, fn: Callable[[], dict[str, Any]], *, every_rank: bool = False) -> dict[str, Any]:
    """Run `fn` once per run folder: its JSON record is written last, so a record means the stage finished.

    Launched on several ranks (torchrun / deepspeed), a stage runs on rank 0 while the others wait for its record
    (the run folder must be on a disk every node sees), except `every_rank` stages (the training ones), which
    every rank runs together and rank 0 records.
    """
    me, world = rank(), world_size()
    record = run_dir / "stages" / f"{name}.json"
    if record.is_file():
        if me == 0:
            print(f"[{name}] already done in this run folder; skipped")
        return json.loads(record.read_text())
    if world > 1 and me != 0 and not every_rank:
        while not record.is_file():
            time.sleep(2)
        return json.loads(record.read_text())
    if me == 0:
        print(f"[{name}]")
    start = time.perf_counter()
    result = fn()
    result["seconds"] = round(time.perf_counter() - start, 2)
    if me == 0:
        write_json(record, result)
    return result


def plan(cfg: DictConfig) -> dict[str, Any]:
    """What the pipeline would do, from the config alone (no weights, no data): shapes, exact parameter counts,
    the retraining schedule and its token budget. `minitron pipeline dry_run=true` prints it."""
    if is_named(cfg.teacher):  # a packaged model: its config after the one conversion
        source = load_config(materialise(cfg.teacher, cfg.cache_dir))
    elif cfg.teacher:
        source = load_config(checkpoint_folder(cfg.teacher, "teacher", weights=False))
    else:
        source = config_from_arch(cfg.model.arch, vocab_size=cfg.data.tokenizer.vocab_size)
    shapes = dry_run(source, to_plain(cfg.target))
    train, launch = cfg.train, cfg.launch
    world = int(launch.nodes) * int(launch.gpus_per_node)
    global_batch = int(train.batch_size) * int(train.gradient_accumulation_steps) * world
    tokens_per_step = global_batch * int(cfg.data.seq_len)
    return {
        "teacher": cfg.teacher or cfg.model.name,
        "target": cfg.target.name,
        "source_shape": shapes["source_shape"],
        "pruned_shape": shapes["pruned_shape"],
        "source_parameters": shapes["source_parameters"],
        "pruned_parameters": shapes["pruned_parameters"],
        "drop_layers": shapes["drop_layers"],
        "calibration_samples": int(cfg.calib.samples),
        "loss": _loss_name(cfg.distill).replace("`", ""),
        "ranks": world,
        "global_batch": global_batch,
        "seq_len": int(cfg.data.seq_len),
        "tokens_per_step": tokens_per_step,
        "steps": int(train.max_steps),
        "tokens": tokens_per_step * int(train.max_steps),
        "lr": f"{float(train.lr):g} -> {float(train.lr) * float(train.min_lr_ratio):g} cosine, {int(train.warmup_steps)} warmup steps",
        "teacher_correction_steps": int(cfg.teacher_correction.steps),
    }


def format_plan(p: dict[str, Any]) -> str:
    src, new = p["source_shape"], p["pruned_shape"]
    width = max(map(len, src))
    lines = [f"pipeline plan: {p['teacher']} -> target {p['target']}", "",
             f"{'':<{width}}  {'teacher':>15}  {'student':>15}"]
    lines += [f"{k:<{width}}  {src[k]:>15,}  {new[k]:>15,}" for k in src]
    lines.append(f"{'parameters':<{width}}  {p['source_parameters']:>15,}  {p['pruned_parameters']:>15,}  "
                 f"({p['pruned_parameters'] / p['source_parameters']:.1%})")
    lines += layer_lines(src["num_hidden_layers"], new["num_hidden_layers"], p["drop_layers"], p.get("depth_metric"))
    lines += ["",
              f"importance: {p['calibration_samples']:,} calibration samples",
              f"retraining: {p['loss']}, {p['steps']:,} steps x {p['tokens_per_step']:,} tokens "
              f"(global batch {p['global_batch']:,} x {p['seq_len']:,}) = {p['tokens']:,} tokens on {p['ranks']} ranks",
              f"learning rate: {p['lr']}"]
    if p["teacher_correction_steps"]:
        lines.append(f"teacher correction: {p['teacher_correction_steps']:,} steps on the distillation data first")
    return "\n".join(lines)


def run_pipeline(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    results: dict[str, dict[str, Any]] = {}

    def teacher() -> dict[str, Any]:
        # miniature=true (a `miniature_config`): a random tiny teacher of the recipe's family, built here
        path = build_teacher(cfg, run_dir) if cfg.get("miniature") else teacher_path(cfg, run_dir)
        summary = path / SUMMARY_FILE
        tokens = json.loads(summary.read_text())["tokens"] if summary.is_file() else None
        return {"path": str(path), "tokens": tokens}

    results["teacher"] = stage(run_dir, "teacher", teacher)
    teacher_dir = Path(results["teacher"]["path"])
    if cfg.teacher_correction.steps:
        def correction() -> dict[str, Any]:
            return {"path": str(correct_teacher(cfg, teacher_dir, run_dir)), "steps": int(cfg.teacher_correction.steps)}

        # it trains, so every rank takes part (under DeepSpeed or DDP the ranks train one model together)
        teacher_dir = Path(stage(run_dir, "teacher_correction", correction, every_rank=True)["path"])
    model, tokenizer = load_checkpoint(teacher_dir, dtype=cfg.dtype)
    data = packed_data(cfg.data, cfg.cache_dir, tokenizer)
    train = TrainSettings.from_config(cfg)

    def importance() -> dict[str, Any]:
        calib = Calibration.from_config(cfg.calib, cfg.data.seq_len)
        # the depth scores asked for, and whatever else the target needs (block scores for a contiguous cut)
        needed = Target.from_mapping(to_plain(cfg.target)).importance_options(model.config)
        depth = tuple(dict.fromkeys([*cfg.importance.depth, *needed.pop("depth")]))
        scores = score_model(model, data["train"], calib, seed=cfg.seed, batch_agg=cfg.importance.batch_agg,
                             seq_agg=cfg.importance.seq_agg, mlp_site=cfg.importance.mlp_site, depth=depth, **needed)
        scores.save(run_dir / SCORES_FILE)
        plots = plot_importance(scores, run_dir / "plots")
        return {"path": str(run_dir / SCORES_FILE), "samples": scores.num_samples,
                "tokens": scores.num_tokens, "plots": [str(p) for p in plots]}

    results["importance"] = stage(run_dir, "importance", importance)

    def prune() -> dict[str, Any]:
        scores = Importance.load(results["importance"]["path"])
        pruned = prune_model(model, scores, to_plain(cfg.target))
        save_checkpoint(pruned, tokenizer, run_dir / "pruned", overwrite=True)
        return {"path": str(run_dir / "pruned"), "params": pruned.num_parameters()}

    results["prune"] = stage(run_dir, "prune", prune)

    evaluated: dict[str, dict[str, Any]] = {}

    def evaluate(name: str, path: str) -> None:
        evaluated[name] = stage(run_dir, f"eval_{name}", lambda: _evaluate(cfg, name, path, data, run_dir / "eval" / name))

    evaluate("teacher", str(teacher_dir))
    evaluate("pruned", results["prune"]["path"])

    def distill() -> dict[str, Any]:
        # checkpoint paths, not the teacher in memory: the models are created after the DeepSpeed config is
        # registered, partitioned under ZeRO-3 (`minitron.distill.trainer.create_models`); the student trains on
        # float32 master weights whatever `dtype` is (with train.bf16 the Trainer computes in bf16, mixed precision
        # as the papers train, and the teacher is created in bf16); the distilled checkpoint is then saved in `dtype`
        out = distill_student(teacher_dir, results["prune"]["path"], data["train"], data["validation"],
                              run_dir / "distill", train=train, loss=loss_spec(cfg.distill), seq_len=cfg.data.seq_len,
                              seed=cfg.seed, out=run_dir / "distilled", tokenizer=tokenizer)
        if rank() == 0:
            cast_checkpoint(out.path, cfg.dtype)
            _copy_plot(run_dir / "distill" / "loss.png", run_dir / "plots" / "distill_loss.png")
        return {"path": out.path, "tokens": out.tokens, "steps": out.steps, "train_seconds": out.seconds}

    results["distill"] = stage(run_dir, "distill", distill, every_rank=True)
    evaluate("distilled", results["distill"]["path"])

    def scratch() -> dict[str, Any]:
        config = type(model.config).from_pretrained(results["prune"]["path"])
        torch.manual_seed(cfg.seed)
        fresh = type(model)._from_config(config, dtype=torch.float32)  # master weights, as for distillation
        fresh.generation_config = model.generation_config
        settings = dataclasses.replace(train, lr=float(cfg.baseline.lr), deepspeed=None)
        # resume=True: a killed run continues from its last checkpoint
        trainer = train_from_scratch(fresh, data["train"], settings, run_dir / "scratch", seq_len=cfg.data.seq_len,
                                     seed=cfg.seed, resume=True)
        out = run_dir / "scratch" / "model"
        save_final(trainer, out, tokenizer, SUMMARY_FILE, {"tokens": trainer.tokens_seen, "steps": trainer.state.global_step})
        if rank() == 0:
            cast_checkpoint(out, cfg.dtype)
            plot_curves(run_dir / "scratch" / "metrics.jsonl", run_dir / "plots" / "scratch_loss.png", title="from scratch")
        return {"path": str(out), "tokens": trainer.tokens_seen}

    if cfg.baseline.enabled:
        results["scratch"] = stage(run_dir, "scratch", scratch, every_rank=True)
        evaluate("scratch", results["scratch"]["path"])

    if rank() != 0:
        return {"report": str(run_dir / "report.md"), "stages": results, "eval": evaluated}
    report = write_report(cfg, run_dir, results, evaluated)
    return {"report": str(report), "stages": results, "eval": evaluated}


def _evaluate(cfg: DictConfig, name: str, path: str, data, out: Path) -> dict[str, Any]:
    model, tokenizer = load_checkpoint(path, dtype=cfg.dtype)
    val, se = mean_and_se(batch_loss_sums(model, data["validation"], batch_size=cfg.eval_batch_size,
                                          max_batches=cfg.eval_batches))
    metrics = lm_eval_suite(model, tokenizer, cfg.eval, out, data_cfg=cfg.data, cache_dir=cfg.cache_dir,
                       batch_size=cfg.eval_batch_size, limit=cfg.eval_limit, seed=cfg.seed, model_name=name)
    return {"params": model.num_parameters(), "val_loss": val, "val_loss_se": se, **metrics}


def _copy_plot(src: Path, dst: Path) -> None:
    if src.is_file():
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)


def _loss_name(distill: DictConfig) -> str:
    loss = distill.loss
    name = f"`{loss.kind}` (T={loss.temperature:g}, CE weight {loss.ce_weight:g}"
    if distill.intermediate.enabled:
        name += f", intermediate {distill.intermediate.kind}"
    return name + ")"


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _loss_cell(e: dict[str, Any]) -> str:
    se = e.get("val_loss_se")
    return f"{e['val_loss']:.3f}" if se is None or math.isnan(se) else f"{e['val_loss']:.3f} ± {se:.3f}"


def write_report(cfg: DictConfig, run_dir: Path, results: dict, evaluated: dict) -> Path:
    """`report.md`: the table of the four models, stage times, and the plots."""
    tokens = {
        "teacher": results["teacher"].get("tokens"),
        "pruned": 0,
        "distilled": results["distill"].get("tokens"),
        "scratch": results.get("scratch", {}).get("tokens"),
    }
    teacher_params = evaluated["teacher"]["params"]
    lines = [
        "# minitron pipeline report",
        "",
        f"Teacher `{results['teacher']['path']}` pruned to target `{cfg.target.name}`, distilled with "
        f"{_loss_name(cfg.distill)} on `{cfg.data.source}`. Validation loss in nats/token on the same "
        f"{cfg.eval_batches} validation batches of {cfg.eval_batch_size} blocks for every model, ± its standard "
        f"error with the batches as units; bits per byte and multiple-choice accuracy from the lm-eval "
        f"suite `{cfg.eval.name}`.",
        "",
        "| model | parameters | % of teacher | training tokens | validation loss | bits/byte | MC accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in MODELS:
        if name not in evaluated:
            continue
        e = evaluated[name]
        lines.append(
            f"| {name} | {e['params']:,} | {100 * e['params'] / teacher_params:.1f}% | "
            f"{_fmt(tokens[name], ',')} | {_loss_cell(e)} | {_fmt(e.get('tiny_bpb'), '.3f')} | "
            f"{_fmt(e.get('tiny_mc_acc'), '.3f')} |"
        )
    lines += ["", "Tokens: the teacher's pretraining tokens; the distilled student's and the from-scratch "
              "baseline's retraining tokens (the same budget).", "", "## Stage times", "",
              "| stage | seconds |", "|---|---|"]
    for record in sorted((run_dir / "stages").glob("*.json"), key=lambda p: p.stat().st_mtime):
        lines.append(f"| {record.stem} | {json.loads(record.read_text())['seconds']:.1f} |")
    lines += ["", "## Plots", ""]
    for png in sorted((run_dir / "plots").glob("*.png")) if (run_dir / "plots").is_dir() else []:
        lines.append(f"![{png.stem}](plots/{png.name})")
    report = run_dir / "report.md"
    write_text(report, "\n".join(lines) + "\n")
    return report
