"""`minitron pretrain`, `score`, `distill` and `pipeline` on streamed data (`data=local data.streaming=true`: the
code path of a streamed hub dataset), from one small teacher pretrained on the stream."""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open

from minitron.commands import distill, pipeline, pretrain, prune, score
from minitron.config import compose
from small_runs import SMALL_ARCH, STREAM_DATA, write_stream_corpus

TRAIN = ["train.batch_size=4", "train.warmup_steps=1", "train.logging_steps=2", "train.eval_batches=2",
         "train.save_steps=0"]
TARGET = ["target.hidden_size=16", "target.intermediate_size=32", "target.num_attention_heads=2"]


@pytest.fixture(scope="module")
def stream(tmp_path_factory):
    root = tmp_path_factory.mktemp("streamed")
    data = [*STREAM_DATA, f"data.path={write_stream_corpus(root / 'corpus.jsonl', documents=40)}",
            f"cache_dir={root / 'cache'}"]
    teacher = pretrain.run(compose("pretrain", [*SMALL_ARCH, *data, *TRAIN, "train.max_steps=8",
                                                f"out={root / 'teacher'}"]), run_dir=root / "pretrain")
    return root, data, teacher


@pytest.mark.slow
def test_pretrain_score_prune_distill_on_a_stream(stream):
    root, data, teacher = stream
    assert json.loads((root / "pretrain" / "corpus.json").read_text())["streaming"] is True
    assert teacher.tokens == 8 * 4 * 64 and teacher.val_loss < teacher.unigram_loss + 1.0
    scored = score.run(compose("score", [*data, f"teacher={teacher.path}", "calib.samples=8", "calib.seq_len=64",
                                         "calib.batch_size=4"]), run_dir=root / "score")
    assert scored.num_samples == 8 and scored.num_tokens == 8 * 64
    pruned = prune.run(compose("prune", [f"teacher={teacher.path}", f"scores={scored.path}", *TARGET,
                                         f"out={root / 'pruned'}"]), run_dir=root / "prune")
    out = distill.run(compose("distill", [*data, *TRAIN, "train.max_steps=4", f"teacher={teacher.path}",
                                          f"student={pruned['out']}"]), run_dir=root / "distill")
    assert out.steps == 4 and out.tokens == 4 * 4 * 64
    with safe_open(f"{out.path}/model.safetensors", "pt") as f:
        assert f.get_tensor("model.embed_tokens.weight").shape[1] == 16


def run_pipeline(root, data, teacher, name: str, *extra: str):
    cfg = compose("pipeline", [*data, *TRAIN, *TARGET, f"teacher={teacher.path}", "calib.samples=8",
                               "train.max_steps=4", "eval_batches=2", "eval.generate.docs=4",
                               "eval.generate.doc_chars=256", "eval.generate.mc_items=6",
                               "eval.generate.context_chars=96", *extra])
    return pipeline.run(cfg, run_dir=root / name)


@pytest.fixture(scope="module")
def fp32_pipeline(stream):
    return run_pipeline(*stream, "pipeline")


@pytest.mark.slow
def test_pipeline_on_a_stream(fp32_pipeline):
    result = fp32_pipeline
    assert set(result["eval"]) == {"teacher", "pruned", "distilled", "scratch"}
    assert result["stages"]["importance"]["samples"] == 8
    assert result["stages"]["distill"]["tokens"] == 4 * 4 * 64


def dtypes(folder) -> set:
    with safe_open(f"{folder}/model.safetensors", "pt") as f:
        return {f.get_tensor(k).dtype for k in f.keys()}


# bf16 keeps 8 significant bits: every weight and activation is rounded by up to 2^-9 (0.2%) relative. On these
# losses (about 5.6 nats/token over 2 x 4 x 64 validation tokens) that moved the teacher and the pruned model (same
# weights, rounded) and the trained models (4 steps on bf16 activations, float32 master weights) by about 0.001 nats
# when measured (`pytest -s` prints the gaps). 0.02 nats (0.4%) leaves room for rounding on other CPUs and still fails
# a model trained or evaluated wrongly in bf16 (a loss summed in bf16 alone is off by more).
BF16_TOLERANCE = 0.02


@pytest.mark.slow
def test_bf16_pipeline_matches_fp32_within_tolerance(stream, fp32_pipeline):
    import torch

    bf16 = run_pipeline(*stream, "pipeline_bf16", "dtype=bfloat16", "train.bf16=true")
    gaps = {name: abs(bf16["eval"][name]["val_loss"] - fp32_pipeline["eval"][name]["val_loss"])
            for name in ("teacher", "pruned", "distilled", "scratch")}
    print("bf16 - fp32 validation loss gaps (nats/token):", gaps)
    assert max(gaps.values()) <= BF16_TOLERANCE, gaps
    for stage in ("prune", "distill", "scratch"):  # every checkpoint the run wrote is in the dtype asked for
        assert dtypes(bf16["stages"][stage]["path"]) == {torch.bfloat16}, stage
    assert dtypes(fp32_pipeline["stages"]["distill"]["path"]) == {torch.float32}


@pytest.mark.slow
def test_bf16_through_score_prune_distill_and_eval(stream):
    """dtype=bfloat16 in every verb on CPU; every checkpoint written is in bf16."""
    import shutil

    import torch

    from minitron.checkpoint import cast_checkpoint
    from minitron.commands import eval as eval_verb

    root, data, teacher = stream
    bf16_teacher = root / "teacher_bf16"
    shutil.copytree(teacher.path, bf16_teacher)
    cast_checkpoint(bf16_teacher, "bfloat16")
    assert dtypes(bf16_teacher) == {torch.bfloat16}
    scored = score.run(compose("score", [*data, f"teacher={bf16_teacher}", "dtype=bfloat16", "calib.samples=8",
                                         "calib.seq_len=64", "calib.batch_size=4"]), run_dir=root / "score_bf16")
    full = score.run(compose("score", [*data, f"teacher={teacher.path}", "calib.samples=8", "calib.seq_len=64",
                                       "calib.batch_size=4"]), run_dir=root / "score_fp32")
    from minitron.importance import Importance

    a, b = Importance.load(scored.path), Importance.load(full.path)
    assert a.num_tokens == b.num_tokens
    pruned = prune.run(compose("prune", [f"teacher={bf16_teacher}", f"scores={scored.path}", *TARGET,
                                         f"out={root / 'pruned_bf16'}"]), run_dir=root / "prune_bf16")
    assert dtypes(pruned["out"]) == {torch.bfloat16}  # a bf16 teacher prunes to a bf16 student
    out = distill.run(compose("distill", [*data, *TRAIN, "train.max_steps=2", "train.bf16=true", "dtype=bfloat16",
                                          f"teacher={bf16_teacher}", f"student={pruned['out']}"]),
                      run_dir=root / "distill_bf16")
    assert dtypes(out.path) == {torch.bfloat16}
    assert json.loads((root / "distill_bf16" / "metrics.json").read_text())["val_loss"] == pytest.approx(
        out.val_loss)
    metrics = eval_verb.run(compose("eval", [*data, f"model_path={out.path}", "dtype=bfloat16", "limit=4",
                                             "eval.generate.docs=4", "eval.generate.doc_chars=256",
                                             "eval.generate.mc_items=6", "eval.generate.context_chars=96"]),
                            run_dir=root / "eval_bf16")
    assert metrics and all(v == v for v in metrics.values() if isinstance(v, float))  # no NaN
