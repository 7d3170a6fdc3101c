"""The cells of the small-scale ablations: one (setting, seed) each, keyed by everything that decides it and
cached as a JSON file under `results_dir/cells/`, so a re-run (or a Hydra multirun over `study` and `seed`) skips
finished cells, and cells shared by studies (the width student distilled with forward KL appears in four) are
computed once. See `minitron.workflows.ablate` for the studies.

A cell that no seed decides (the teacher's loss, weight magnitude) is computed once, `cells/NAME/deterministic.json`,
and the page reports it as one value. The activation scores of a seed are computed once per job and saved under
`results_dir/scores/` (the cells of every shape prune with them), so that the criteria of one seed share its
calibration draw.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import AutoConfig, AutoModelForCausalLM, TrainerCallback

from minitron.checkpoint import LAYER_MAP, checkpoint_folder, load_checkpoint
from minitron.config import compose, stable_hash, to_plain
from minitron.data.calibration import Calibration, cache_root, packed_data
from minitron.distill import distill, loss_spec
from minitron.distill.recipe import correct_teacher, correction_settings
from minitron.errors import MinitronError
from minitron.importance import Importance, random_scores, score_model, weight_magnitude
from minitron.io import write_json
from minitron.models import get_adapter
from minitron.prune import prune
from minitron.prune.dry_run import dry_run
from minitron.prune.target import Target
from minitron.real_models import NAMED, PROVENANCE_FILE, is_named, materialise
from minitron.train.pretrain import SUMMARY_FILE, pretrain, train_from_scratch
from minitron.train.settings import TrainSettings
from minitron.train.validation import lm_loss

AGGREGATORS = ("l2", "mean", "var")
SHAPES = ("width", "depth", "width_depth")
LOSSES = ("kl", "ce", "kl_ce", "kl_is")
SCORING_STEPS = (1, 2, 4)
LONG_SHAPES = ("width", "depth")  # the shapes whose curves cross in the paper, retrained for budget.long_steps
CORRECTION = ("off", "on")  # the teacher as trained, and corrected on the shifted corpus first
PAPER_BEST_AGGREGATION = ("l2", "mean")
PAPER_PAIR = "-".join(PAPER_BEST_AGGREGATION)  # criterion names of activation scores are "BATCH-SEQUENCE"
DATA_FREE = ("magnitude", "random")  # criteria that need no calibration data
DEPTH_CRITERIA = ("bi", "loss", "contiguous")  # how a depth-only shape's layers are chosen from activation scores
DETERMINISTIC = ("magnitude",)  # criteria that no seed decides: computed once

# ---- what every cell needs ----------------------------------------------------------------------------------
@dataclass
class Context:
    cfg: DictConfig
    teacher: Path
    teacher_key: str
    tokenizer: Any
    data: Any
    results: Path
    seed: int
    scores: dict[str, Importance] = field(default_factory=dict)  # this job's activation scores, by their key

    def load_teacher(self):
        """A fresh copy of the teacher (training may move or cast the one it is given)."""
        model, _ = load_checkpoint(self.teacher)
        return model

    def val_loss(self, model, batches: int | None = None) -> float:
        """The validation loss on the study's blocks: the first eval_batches x eval_batch_size blocks of the
        validation split, or with eval_stride k every k-th block (blocks spread over the whole split)."""
        return lm_loss(model, eval_blocks(self.data["validation"], int(self.cfg.get("eval_stride", 1))),
                       batch_size=int(self.cfg.eval_batch_size), max_batches=int(batches or self.cfg.eval_batches))


def eval_blocks(validation, stride: int):
    """Every `stride`-th block of the validation split (all of them for 1)."""
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise MinitronError(f"eval_stride={stride!r} must be an integer of at least 1 (1: the first blocks in order)")
    if stride == 1:
        return validation
    if not hasattr(validation, "select"):
        raise MinitronError(f"eval_stride={stride} needs a packed validation split; set data.streaming=false or eval_stride=1")
    return validation.select(range(0, len(validation), stride))


def build_teacher(cfg: DictConfig, run_dir: Path) -> tuple[Path, dict[str, Any]]:
    """The study's teacher: a packaged pretrained model (`teacher.path=smollm2_135m`, converted once), a checkpoint
    folder, or `minitron pretrain` with `cfg.teacher.overrides` (cached after the first job)."""
    if is_named(cfg.teacher.path):
        path = materialise(cfg.teacher.path, cache_root(cfg.cache_dir))
        model = NAMED[cfg.teacher.path]
        provenance = json.loads((path / PROVENANCE_FILE).read_text())
        params = get_adapter(AutoConfig.from_pretrained(str(path))).num_parameters()
        return path, {"name": model.name, "params": params, "sha256": provenance["sha256"],
                      "description": model.description, "package": f"{model.package}=={model.version}"}
    if cfg.teacher.path:
        path = checkpoint_folder(cfg.teacher.path, "teacher.path", "leave it null to train the study's teacher")
        summary = path / SUMMARY_FILE
        return path, json.loads(summary.read_text()) if summary.is_file() else {}
    overrides = [*map(str, cfg.teacher.overrides), f"cache_dir='{cache_root(cfg.cache_dir)}'"]
    result = pretrain(compose("pretrain", overrides), run_dir / "teacher")
    return Path(result.path), json.loads((Path(result.path) / SUMMARY_FILE).read_text())


# ---- cells -----------------------------------------------------------------------------------------------------
def cell_specs(cfg: DictConfig) -> dict[str, dict[str, Any]]:
    """Everything that decides each cell's result, by cell name, from the config alone (no teacher needed), so
    that a results page can tell the cells of this config from those of another."""
    shape = lambda name: dict(to_plain(cfg.shapes[name]))  # noqa: E731
    calib, train, steps = to_plain(cfg.calib), to_plain(cfg.train), int(cfg.budget.steps)
    evals = {"eval_batches": int(cfg.eval_batches), "eval_batch_size": int(cfg.eval_batch_size), "seq_len": int(cfg.data.seq_len)}
    if int(cfg.get("eval_stride", 1)) != 1:  # absent when 1, so that the cells of earlier settings keep their keys
        evals["eval_stride"] = int(cfg.eval_stride)
    specs: dict[str, dict[str, Any]] = {"teacher": {"study": "teacher", **evals}}
    for name in criteria_shapes(cfg):
        for criterion in shape_criteria(cfg, name):
            spec = {"study": "criteria", "criterion": criterion, "shape": shape(name), **evals}
            if criterion not in DATA_FREE:
                spec["calib"] = calib
                if depth_only(cfg.shapes[name]):
                    spec["depth_samples"] = depth_samples(cfg)
            specs[criterion_cell_name(name, criterion)] = spec
    for s, loss in [(s, "kl") for s in SHAPES] + [("width", loss) for loss in LOSSES if loss != "kl"]:
        specs[f"distill-{s}-{loss}"] = {"study": "distill", "shape": shape(s), "loss": loss, "steps": steps, "train": train,
                                        "calib": calib, "curve_every": int(cfg.curve_every), **evals}
    for multiple in (1, 4):
        specs[f"scratch-x{multiple}"] = {"study": "scratch", "shape": shape("width"), "steps": steps * multiple,
                                         "lr": float(cfg.budget.scratch_lr), "train": train, "curve_every": int(cfg.curve_every),
                                         **evals}
    specs["iterative-kl"] = {"study": "iterative", "mid": shape("iterative_mid"), "shape": shape("width"), "steps": steps,
                             "train": train, "calib": calib, **evals}
    # the 15B -> 8B -> 4B path: every step of the chain gets the whole budget
    specs["chain-kl"] = {"study": "iterative", "mid": shape("iterative_mid"), "shape": shape("width"), "steps": steps,
                         "chain": True, "train": train, "calib": calib, **evals}
    for k in SCORING_STEPS:  # the hidden size reached in k score-and-prune steps, no retraining between them
        specs[f"steps-{k}"] = {"study": "iterative", "hidden_size": int(cfg.shapes.width.hidden_size), "scoring_steps": k,
                               "steps": steps, "train": train, "calib": calib, "curve_every": int(cfg.curve_every), **evals}
    # which layers a depth cut drops: the contiguous block whose removal costs least LM loss, as the 2408 paper does
    specs["distill-depth_block-kl"] = {"study": "distill", "shape": shape("depth"), "loss": "kl", "steps": steps,
                                       "train": train, "calib": calib, "curve_every": int(cfg.curve_every),
                                       "depth_metric": "contiguous", **evals}
    for s in LONG_SHAPES:  # width vs depth past the paper's crossover
        specs[f"long-{s}-kl"] = {"study": "distill", "shape": shape(s), "loss": "kl", "steps": long_steps(cfg),
                                 "train": train, "calib": calib, "curve_every": int(cfg.curve_every), **evals}
    shifted, (c_steps, c_lr, c_warmup) = to_plain(correction_data(cfg)), correction_schedule(cfg)
    for c in CORRECTION:  # the width student on a corpus unlike the teacher's, from the teacher as is or corrected
        specs[f"correction-{c}"] = {
            "study": "correction", "shape": shape("width"), "loss": "kl", "steps": steps, "data": shifted,
            "train": train, "calib": calib, "curve_every": int(cfg.curve_every), **evals,
            **({"correction": {"steps": c_steps, "lr": c_lr, "warmup_steps": c_warmup}} if c == "on" else {})}
    return specs


def long_steps(cfg: DictConfig) -> int:
    """`budget.long_steps`, the retraining steps of the shapes_long study, checked."""
    steps = cfg.budget.get("long_steps")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise MinitronError(f"budget.long_steps={steps!r} must be a positive number of steps (e.g. 4 x budget.steps)")
    return steps


def correction_data(cfg: DictConfig) -> DictConfig:
    """The correction study's corpus: the study's `data` with `correction.data` over it (the same sequence length
    and tokenizer settings, another source)."""
    shifted = OmegaConf.merge(cfg.data, cfg.correction.data)
    if _corpus_identity(shifted) == _corpus_identity(cfg.data):
        raise MinitronError("correction.data names the study's own corpus; the correction study needs another one "
                            "(e.g. correction.data={source: package, name: numpy})")
    return shifted


def _corpus_identity(data: DictConfig) -> tuple:
    """What names a data config's text (not how it is split or packed): the source and its name or path."""
    source = data.get("source")
    named = {"package": ("name",), "local": ("path",), "hf": ("name", "subset")}.get(source, ())
    return (source, *(data.get(k) for k in named))


def correction_schedule(cfg: DictConfig) -> tuple[int, float, int]:
    """(steps, lr, warmup_steps) of the teacher correction; `correction.steps` null: the retraining budget."""
    tc = OmegaConf.create(to_plain(cfg.correction))
    if tc.get("steps") is None:
        tc.steps = int(cfg.budget.steps)
    try:
        return correction_settings(tc)
    except MinitronError as e:
        raise MinitronError(str(e).replace("teacher_correction.", "correction.")) from None


def criteria_shapes(cfg: DictConfig) -> list[str]:
    """The shapes (names under `shapes`) the criteria study prunes to."""
    names = [str(n) for n in cfg.criteria.shapes]
    for n in names:
        if n not in cfg.shapes:
            raise MinitronError(f"criteria.shapes names '{n}', which is not a shape; choose among {', '.join(cfg.shapes)}")
    return names


def depth_only(shape: Any) -> bool:
    """A shape that sets the number of layers and nothing else: its criteria choose layers, not channels."""
    return {k for k, v in dict(to_plain(shape)).items() if v is not None} == {"num_hidden_layers"}


def shape_criteria(cfg: DictConfig, name: str) -> list[str]:
    """The criteria compared at shape `name`: activation aggregations ("BATCH-SEQUENCE") for a width shape, depth
    scores for a depth-only one; then weight magnitude and random scores."""
    if depth_only(cfg.shapes[name]):
        chosen = [str(c) for c in cfg.criteria.depth]
        allowed, field_name = DEPTH_CRITERIA, "criteria.depth"
    else:
        chosen = [str(c) for c in cfg.criteria.aggregations]
        allowed, field_name = [f"{b}-{q}" for b in AGGREGATORS for q in AGGREGATORS], "criteria.aggregations"
    for c in chosen:
        if c not in allowed:
            raise MinitronError(f"{field_name} holds '{c}', which is not one of {', '.join(allowed)}")
    return [*chosen, *DATA_FREE]


def criterion_cell_name(shape: str, criterion: str) -> str:
    """`criteria-CRITERION` at the `width` shape (the names of the first studies), `criteria-SHAPE-CRITERION` else."""
    return f"criteria-{criterion}" if shape == "width" else f"criteria-{shape}-{criterion}"


def teacher_key(summary: dict[str, Any]) -> str:
    """What identifies the teacher in a cell's key: its folder, size and validation loss."""
    return stable_hash(str(summary.get("path")), summary.get("val_loss"), summary.get("params"))


def cell_key(teacher: str, spec: dict[str, Any], seed: int | None) -> str:
    return stable_hash(teacher, spec, None if seed is None else int(seed))


DETERMINISTIC_FILE = "deterministic.json"  # a cell no seed decides: one file instead of one per seed


def run_cell(ctx: Context, name: str, fn: Callable[[dict[str, Any]], dict[str, Any]], *,
             seeded: bool = True) -> dict[str, Any]:
    """The result of cell `name` for `ctx.seed` (for no seed unless `seeded`): read from its file when its key
    matches, else computed and saved."""
    spec = cell_specs(ctx.cfg)[name]
    seed = ctx.seed if seeded else None
    key = cell_key(ctx.teacher_key, spec, seed)
    path = ctx.results / "cells" / name / (f"seed{seed}.json" if seeded else DETERMINISTIC_FILE)
    label = f"seed {seed}" if seeded else "(deterministic)"
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("key") == key:
            print(f"ablate: {name} {label}: cached ({fmt_loss(saved.get('val_loss'))})")
            return saved
    print(f"ablate: {name} {label}: running")
    start = time.perf_counter()
    result = fn(spec)
    result.update(name=name, seed=seed, key=key, spec=spec, seconds=time.perf_counter() - start,
                  threads=torch.get_num_threads())
    write_json(path, result)
    print(f"ablate: {name} {label}: validation loss {fmt_loss(result.get('val_loss'))} in {result['seconds']:.0f} s")
    return result


def _activation_scores(ctx: Context, model, *, batch_agg: str = "l2", seq_agg: str = "mean", **options: Any):
    calib = Calibration.from_config(ctx.cfg.calib, ctx.cfg.data.seq_len)
    options.setdefault("depth", ("bi",))
    return score_model(model, ctx.data["train"], calib, seed=ctx.seed, batch_agg=batch_agg, seq_agg=seq_agg,
                       progress=False, **options)


def depth_options(cfg: DictConfig, config) -> dict[str, Any]:
    """The depth and block scores that the criteria study's depth-only shapes need (Block Importance always): one
    scoring pass per seed gives every depth criterion its scores (`seed_depth_scores`)."""
    depth, blocks, block_layers = ["bi"], [], None
    for name in criteria_shapes(cfg):
        if not depth_only(cfg.shapes[name]):
            continue
        for criterion in shape_criteria(cfg, name):
            if criterion in DATA_FREE:
                continue
            needs = _depth_target(cfg.shapes[name], criterion).importance_options(config)
            depth += [d for d in needs["depth"] if d not in depth]
            if needs.get("blocks"):
                if block_layers not in (None, needs["block_layers"]):
                    raise MinitronError("criteria.shapes holds depth shapes of different sizes with the contiguous "
                                        "criterion; keep one depth-only shape, or leave 'contiguous' out of criteria.depth")
                blocks += [b for b in needs["blocks"] if b not in blocks]
                block_layers = needs["block_layers"]
    return {"depth": tuple(depth), **({"blocks": blocks, "block_layers": block_layers} if blocks else {})}


def _depth_target(shape: Any, criterion: str) -> Target:
    """A depth-only shape's target with the layers chosen by `criterion`: Block Importance (`bi`), the LM loss with
    one layer skipped (`loss`), the contiguous block whose removal costs least loss (`contiguous`); magnitude and
    random scores rank layers through their `layers` entry, like Block Importance."""
    metric = criterion if criterion in DEPTH_CRITERIA else "bi"
    return Target.from_mapping({**dict(to_plain(shape)), "depth_metric": metric, "block_metric": "loss"})


def seed_scores(ctx: Context, model, criterion: str) -> Importance:
    """The activation scores `criterion` gives on this seed's calibration draw, computed once per job and saved
    under `results_dir/scores/` (reused when their key matches): a width aggregation "BATCH-SEQUENCE" on
    `calib.samples` blocks, or `depth`, the depth scores of the depth-only shapes (paper aggregation) on the first
    `criteria.depth_samples` blocks of the same draw (the skip-one-layer loss re-runs about half the stack per
    layer, so it may get fewer blocks)."""
    options = _scoring_options(ctx.cfg, model.config, criterion)
    key = _scores_key(ctx.cfg, ctx.teacher_key, ctx.seed, criterion, options)
    if key in ctx.scores:
        return ctx.scores[key]
    path = scores_path(ctx.results, criterion, ctx.seed)
    scores = saved_scores(ctx.results, criterion, ctx.seed, key)
    if scores is None:
        start = time.perf_counter()
        batch_agg, seq_agg = PAPER_BEST_AGGREGATION if criterion == "depth" else criterion.split("-")
        calib = Calibration.from_config(ctx.cfg.calib, ctx.cfg.data.seq_len)
        if criterion == "depth":
            calib = dataclasses.replace(calib, samples=depth_samples(ctx.cfg))
        scores = score_model(model, ctx.data["train"], calib, seed=ctx.seed, batch_agg=batch_agg, seq_agg=seq_agg,
                             progress=False, **options)
        scores.save(path)
        write_json(path.with_suffix(".json"), {"key": key, "seconds": time.perf_counter() - start, "options": options,
                                               "samples": calib.samples})
    ctx.scores[key] = scores
    return scores


def depth_samples(cfg: DictConfig) -> int:
    """The calibration blocks of the depth scores: `criteria.depth_samples`, at most (and by default) calib.samples."""
    samples, given = int(cfg.calib.samples), cfg.criteria.get("depth_samples")
    if given is None:
        return samples
    if isinstance(given, bool) or not isinstance(given, int) or not 1 <= given <= samples:
        raise MinitronError(f"criteria.depth_samples={given!r} must be an integer from 1 to calib.samples={samples} "
                            "(null: all of them)")
    return given


def _scoring_options(cfg: DictConfig, config, criterion: str) -> dict[str, Any]:
    return depth_options(cfg, config) if criterion == "depth" else {"depth": ("bi",)}


def _scores_key(cfg: DictConfig, tkey: str, seed: int, criterion: str, options: dict[str, Any]) -> str:
    samples = depth_samples(cfg) if criterion == "depth" else int(cfg.calib.samples)
    return stable_hash(tkey, to_plain(cfg.calib), samples, int(cfg.data.seq_len), int(seed), criterion, options)


def scores_path(results: Path, criterion: str, seed: int) -> Path:
    return Path(results) / "scores" / f"{criterion}-seed{seed}.safetensors"


def saved_scores(results: Path, criterion: str, seed: int, key: str) -> Importance | None:
    """The scores saved under `results` for (criterion, seed) when they were computed under `key`, else None."""
    path = scores_path(results, criterion, seed)
    stamp = path.with_suffix(".json")
    if path.is_file() and stamp.is_file() and json.loads(stamp.read_text()).get("key") == key:
        return Importance.load(path)
    return None


def study_scores(cfg: DictConfig, results: Path, teacher: dict[str, Any], seed: int, criterion: str) -> Importance | None:
    """The scores of `criterion` (a pair, or `depth`) and `seed` saved under `results` for these settings and this
    teacher, or None."""
    config = AutoConfig.from_pretrained(str(teacher["path"]))
    key = _scores_key(cfg, teacher_key(teacher), seed, criterion, _scoring_options(cfg, config, criterion))
    return saved_scores(results, criterion, seed, key)


def teacher_cell(ctx: Context) -> dict[str, Any]:
    """The teacher's validation loss on the students' blocks (the pretraining summary's is on other blocks)."""
    return run_cell(ctx, "teacher", lambda spec: {"val_loss": ctx.val_loss(ctx.load_teacher())}, seeded=False)


def criterion_cell(ctx: Context, criterion: str, shape: str = "width") -> dict[str, Any]:
    """Validation loss of the teacher pruned to `shape` with `criterion` scores, no retraining. A depth-only shape
    drops the layers that `criterion` ranks lowest (`contiguous`: the block whose removal costs least loss)."""
    def compute(spec: dict[str, Any]) -> dict[str, Any]:
        teacher = ctx.load_teacher()
        if criterion == "magnitude":
            scores = weight_magnitude(teacher)
        elif criterion == "random":
            scores = random_scores(teacher.config, ctx.seed)
        else:
            scores = seed_scores(ctx, teacher, "depth" if criterion in DEPTH_CRITERIA else criterion)
        if not depth_only(spec["shape"]):
            student = prune(teacher, scores, spec["shape"])
            return {"val_loss": ctx.val_loss(student), "parameters": student.num_parameters()}
        student = prune(teacher, scores, _depth_target(spec["shape"], criterion))
        kept = getattr(student.config, LAYER_MAP)["source_layers"]
        return {"val_loss": _depth_val_loss(ctx, spec, kept, student), "parameters": student.num_parameters(),
                "kept_layers": kept}

    return run_cell(ctx, criterion_cell_name(shape, criterion), compute, seeded=criterion not in DETERMINISTIC)


def _depth_val_loss(ctx: Context, spec: dict[str, Any], kept: list[int], student) -> float:
    """The validation loss of the teacher cut to the layers `kept`, measured once per set of layers: criteria and
    seeds that keep the same layers build the same model (saved under `results_dir/evals/`)."""
    evals = {k: spec[k] for k in ("eval_batches", "eval_batch_size", "seq_len", "eval_stride") if k in spec}
    path = ctx.results / "evals" / f"layers-{stable_hash(ctx.teacher_key, evals, kept)}.json"
    if path.is_file():
        return float(json.loads(path.read_text())["val_loss"])
    loss = ctx.val_loss(student)
    write_json(path, {"val_loss": loss, "kept_layers": kept, "evals": evals})
    return loss


class _Curve(TrainerCallback):
    """Records the validation loss (on `curve_batches` blocks) every `every` optimizer steps into `points`."""

    def __init__(self, ctx: Context, every: int, points: list):
        self.ctx, self.every, self.points = ctx, every, points

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.every and state.global_step % self.every == 0 and model is not None:
            self.points.append([state.global_step, self.ctx.val_loss(model, self.ctx.cfg.curve_batches)])
            model.train()


def _train_settings(ctx: Context, steps: int, **changes: Any) -> TrainSettings:
    # distill's own closing evaluation is not used (each cell measures its students itself): keep it to one batch
    return TrainSettings.of(ctx.cfg.train).for_steps(steps, save_steps=0, logger="none", deepspeed=None, eval_batches=1,
                                                     **changes)


def _distill(ctx: Context, teacher, student, steps: int, loss: str, work: Path) -> tuple[float, list]:
    """Distill `student` for `steps` steps with the `configs/distill/<loss>.yaml` preset; (val loss, curve)."""
    spec = loss_spec(compose("distill", [f"distill={loss}"]).distill)
    points: list = []
    distill(teacher, student, ctx.data["train"], ctx.data["validation"], work, train=_train_settings(ctx, steps),
            loss=spec, seq_len=int(ctx.cfg.data.seq_len), seed=ctx.seed, out=work / "student", resume=False,
            callbacks=[_Curve(ctx, int(ctx.cfg.curve_every), points)])
    return ctx.val_loss(student), points


def distill_cell(ctx: Context, shape: str, loss: str = "kl", name: str | None = None) -> dict[str, Any]:
    """The teacher pruned to `shape` by activation scores (batch L2, sequence mean; layers by Block Importance
    unless the cell's spec names another depth metric), validation loss before retraining, then distilled with
    `loss` for the budget: loss after, and the curve."""
    name = name or f"distill-{shape}-{loss}"

    def compute(spec: dict[str, Any]) -> dict[str, Any]:
        steps = spec["steps"]
        teacher = ctx.load_teacher()
        target = Target.from_mapping({**spec["shape"], "depth_metric": spec.get("depth_metric", "bi")})
        scores = _activation_scores(ctx, teacher, **target.importance_options(teacher.config))
        student = prune(teacher, scores, target)
        before = ctx.val_loss(student)
        work = _work(ctx, name)
        after, curve = _distill(ctx, teacher, student, steps, loss, work)
        shutil.rmtree(work, ignore_errors=True)
        kept = getattr(student.config, LAYER_MAP, None)
        return {"zero_shot": before, "val_loss": after, "curve": [[0, before], *curve], "parameters": student.num_parameters(),
                "tokens": steps * _tokens_per_step(ctx), "kept_layers": kept["source_layers"] if kept else None}

    return run_cell(ctx, name, compute)


def scratch_cell(ctx: Context, multiple: int) -> dict[str, Any]:
    """The width shape's architecture from random init, trained with cross-entropy on `multiple` x the budget."""

    def compute(spec: dict[str, Any]) -> dict[str, Any]:
        steps = spec["steps"]
        config = dry_run(AutoConfig.from_pretrained(str(ctx.teacher)), spec["shape"])["config"]
        torch.manual_seed(ctx.seed)
        model = AutoModelForCausalLM.from_config(config)
        work = _work(ctx, f"scratch-x{multiple}")
        points: list = []
        trainer = train_from_scratch(
            model, ctx.data["train"], _train_settings(ctx, steps, lr=float(ctx.cfg.budget.scratch_lr)), work,
            seq_len=int(ctx.cfg.data.seq_len), seed=ctx.seed, resume=False, desc=f"from scratch x{multiple}",
            callbacks=[_Curve(ctx, int(ctx.cfg.curve_every) * multiple, points)],
        )
        val = ctx.val_loss(trainer.model)
        shutil.rmtree(work, ignore_errors=True)
        return {"val_loss": val, "curve": points, "parameters": model.num_parameters(), "tokens": steps * _tokens_per_step(ctx)}

    return run_cell(ctx, f"scratch-x{multiple}", compute)


def iterative_cell(ctx: Context, chain: bool = False) -> dict[str, Any]:
    """Prune to `shapes.iterative_mid`, distill, re-score the student, prune to the width shape, distill again (the
    one-shot counterpart is `distill_cell(width, kl)`). Split: the two steps share one budget. `chain`: each step
    gets the whole budget, as Minitron 4B was pruned from Minitron 8B after its full retraining."""
    name = "chain-kl" if chain else "iterative-kl"

    def compute(spec: dict[str, Any]) -> dict[str, Any]:
        steps = spec["steps"]
        first, second = (steps, steps) if chain else (steps // 2, steps - steps // 2)
        teacher = ctx.load_teacher()
        mid = prune(teacher, _activation_scores(ctx, teacher), spec["mid"])
        work = _work(ctx, name)
        mid_loss, curve1 = _distill(ctx, teacher, mid, first, "kl", work / "step1")
        final = prune(mid, _activation_scores(ctx, mid), spec["shape"])
        before = ctx.val_loss(final)
        after, curve2 = _distill(ctx, teacher, final, second, "kl", work / "step2")
        shutil.rmtree(work, ignore_errors=True)
        curve = [*curve1, *[[s + first, v] for s, v in curve2]]
        return {"val_loss": after, "mid_loss": mid_loss, "zero_shot_second_step": before, "curve": curve,
                "parameters": final.num_parameters(), "tokens": (first + second) * _tokens_per_step(ctx)}

    return run_cell(ctx, name, compute)


def steps_cell(ctx: Context, k: int) -> dict[str, Any]:
    """The teacher's hidden size cut to the width shape's in `k` equal steps, the importance re-estimated on the
    partly pruned model before each step, no retraining between them (the 2407 paper: embedding 6144 -> 4096 in
    1, 2 or 4 steps gave the same loss after retraining); then the budget of distillation."""

    def compute(spec: dict[str, Any]) -> dict[str, Any]:
        teacher = ctx.load_teacher()
        source, goal = teacher.config.hidden_size, spec["hidden_size"]
        student = teacher
        for j in range(1, k + 1):
            size = source - round((source - goal) * j / k)
            student = prune(student, _activation_scores(ctx, student), {"hidden_size": size})
        before = ctx.val_loss(student)
        work = _work(ctx, f"steps-{k}")
        after, curve = _distill(ctx, teacher, student, spec["steps"], "kl", work)
        shutil.rmtree(work, ignore_errors=True)
        return {"zero_shot": before, "val_loss": after, "curve": [[0, before], *curve], "parameters": student.num_parameters(),
                "tokens": spec["steps"] * _tokens_per_step(ctx)}

    return run_cell(ctx, f"steps-{k}", compute)


def correction_cell(ctx: Context, corrected: bool) -> dict[str, Any]:
    """The width student distilled on `correction.data`, a corpus unlike the teacher's, from the teacher as it is
    or first fine-tuned on that corpus (teacher correction, arXiv 2408.11796: `minitron distill`'s own
    `correct_teacher`). In both cells the student is pruned from the teacher it is distilled from, with scores on
    the shifted corpus, and every loss is measured on the same validation blocks of the shifted corpus."""
    name = f"correction-{'on' if corrected else 'off'}"

    def compute(spec: dict[str, Any]) -> dict[str, Any]:
        shifted = dataclasses.replace(ctx, data=packed_data(OmegaConf.create(spec["data"]), ctx.cfg.cache_dir, ctx.tokenizer),
                                      scores={})
        work = _work(ctx, name)
        correction_tokens = 0
        if corrected:
            tc = spec["correction"]
            run = OmegaConf.create({"teacher_correction": tc, "data": spec["data"], "cache_dir": str(ctx.cfg.cache_dir),
                                    "seed": ctx.seed, "train": _train_settings(ctx, tc["steps"]).mapping})
            shifted.teacher = correct_teacher(run, ctx.teacher, work / "correction")
            correction_tokens = tc["steps"] * _tokens_per_step(ctx)
        teacher = shifted.load_teacher()
        teacher_loss = shifted.val_loss(teacher)
        student = prune(teacher, _activation_scores(shifted, teacher), spec["shape"])
        before = shifted.val_loss(student)
        after, curve = _distill(shifted, teacher, student, spec["steps"], "kl", work / "distill")
        shutil.rmtree(work, ignore_errors=True)
        return {"teacher_loss": teacher_loss, "zero_shot": before, "val_loss": after, "curve": [[0, before], *curve],
                "parameters": student.num_parameters(), "tokens": spec["steps"] * _tokens_per_step(ctx),
                "correction_tokens": correction_tokens}

    return run_cell(ctx, name, compute)


def _tokens_per_step(ctx: Context) -> int:
    t = ctx.cfg.train
    return int(t.batch_size) * int(t.gradient_accumulation_steps) * int(ctx.cfg.data.seq_len)


def _work(ctx: Context, name: str) -> Path:
    """A scratch folder for one cell in this process: `NAME-seedK-HOST-PID`, so two jobs that happen to run the
    same cell (side by side, or on two nodes sharing results_dir) never write into or delete each other's folder.
    Folders this host's dead processes left for the same cell are removed."""
    host, root = socket.gethostname(), ctx.results / "work"
    prefix = f"{name}-seed{ctx.seed}-{host}-"
    for old in root.glob(f"{glob.escape(prefix)}*"):
        pid = old.name[len(prefix):]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    path = root / f"{prefix}{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    return path


def _alive(pid: int) -> bool:
    """Whether a process with this id runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it runs, under another user
    return True


def load_cells(results: Path, cfg: DictConfig | None = None, teacher: dict[str, Any] | None = None) -> dict[str, list[dict[str, Any]]]:
    """The finished cells under `results`, by name (one entry per seed). Given the config and the teacher summary,
    only the cells those settings would produce are kept (a folder may also hold cells of earlier settings)."""
    specs = cell_specs(cfg) if cfg is not None else None
    tkey = teacher_key(teacher or {})
    cells: dict[str, list[dict[str, Any]]] = {}
    folder = Path(results) / "cells"
    for path in sorted([*folder.glob("*/seed*.json"), *folder.glob(f"*/{DETERMINISTIC_FILE}")]):
        record = json.loads(path.read_text())
        name = record["name"]
        if specs is not None and (name not in specs or record.get("key") != cell_key(tkey, specs[name], record["seed"])):
            continue
        cells.setdefault(name, []).append(record)
    return cells



def fmt_loss(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}"
