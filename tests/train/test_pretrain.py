"""`minitron pretrain` end to end on a very small setting, and the trainer's pieces."""

from __future__ import annotations

import json

import pytest
from pathlib import Path
from omegaconf import OmegaConf
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from minitron.commands.pretrain import run
from minitron.config import compose
from minitron.errors import MinitronError
from minitron.train.trainer import collate, unigram_loss
from minitron.train.validation import lm_loss
from small_runs import SMALL_ARCH, SMALL_DATA

SMALL = [
    *SMALL_ARCH,
    *SMALL_DATA,
    "train.max_steps=6",
    "train.batch_size=4",
    "train.warmup_steps=2",
    "train.logging_steps=2",
    "train.eval_batches=4",
]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    cfg = compose("pretrain", SMALL + [f"cache_dir={root / 'cache'}"])
    result = run(cfg, run_dir=root / "run")
    return cfg, result, root


def test_writes_a_stock_checkpoint_that_generates(pretrained):
    _, result, _ = pretrained
    tokenizer = AutoTokenizer.from_pretrained(result.path)
    model = AutoModelForCausalLM.from_pretrained(result.path)
    assert type(model).__name__ == "NemotronForCausalLM"
    assert model.config.vocab_size == len(tokenizer) == 320
    assert (model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id) == (
        tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    inputs = tokenizer("def main():", return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 5


def test_run_folder_and_metrics(pretrained):
    _, result, root = pretrained
    run_dir = root / "run"
    assert {"config.yaml", "corpus.json", "metrics.json", "metrics.jsonl", "loss.png"} <= {p.name for p in run_dir.iterdir()}
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 3 and all(l > 0 for l in losses)
    assert records[-1]["tokens"] == 6 * 4 * 64
    corpus = json.loads((run_dir / "corpus.json").read_text())
    assert corpus["source"] == "stdlib" and corpus["num_files"] > 100
    assert result.params == sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(result.path).parameters())
    assert result.tokens == 6 * 4 * 64 and result.val_loss > 0 and result.unigram_loss > 0


def test_second_run_reuses_the_cached_model(pretrained, tmp_path):
    cfg, result, _ = pretrained
    again = run(cfg, run_dir=tmp_path / "again")
    assert again.cached and again.path == result.path and again.val_loss == result.val_loss


def test_nonempty_out_needs_overwrite(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    cfg = compose("pretrain", SMALL + [f"out={tmp_path / 'out'}"])
    with pytest.raises(MinitronError, match="exists and is not empty"):
        run(cfg, run_dir=tmp_path / "run")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_seq_len_above_max_positions(tmp_path):
    cfg = compose("pretrain", SMALL + ["model.arch.max_position_embeddings=32"])
    with pytest.raises(MinitronError, match="data.seq_len=64 exceeds model.arch.max_position_embeddings=32"):
        run(cfg, run_dir=tmp_path / "run")


def test_non_positive_lr(tmp_path):
    cfg = compose("pretrain", SMALL + ["train.lr=0", "cache=false", f"out={tmp_path / 'm'}"])
    with pytest.raises(MinitronError, match="train.lr must be positive"):
        run(cfg, run_dir=tmp_path / "run")
    assert not (tmp_path / "m").exists()


def test_collate_masks_padding_out_of_the_labels():
    batch = collate([{"input_ids": [5, 6, 0], "attention_mask": [1, 1, 0]}])
    assert batch["labels"].tolist() == [[5, 6, -100]]


def test_lm_loss_is_token_weighted():
    """Padding carries no weight, and the loss equals the mean over real next-token predictions."""
    torch.manual_seed(0)
    from minitron.models.tiny import tiny_model

    model = tiny_model("nemotron")
    rows = [{"input_ids": [3, 4, 5, 6], "attention_mask": [1, 1, 1, 1]}, {"input_ids": [7, 8, 0, 0], "attention_mask": [1, 1, 0, 0]}]
    got = lm_loss(model, rows, batch_size=2)
    with torch.no_grad():
        l1 = model(torch.tensor([[3, 4, 5, 6]]), labels=torch.tensor([[3, 4, 5, 6]])).loss.item()
        l2 = model(torch.tensor([[7, 8]]), labels=torch.tensor([[7, 8]])).loss.item()
    assert got == pytest.approx((3 * l1 + 1 * l2) / 4, rel=1e-5)


def test_unigram_loss_matches_the_entropy_of_a_known_distribution():
    train = [{"input_ids": [0, 1, 1, 1], "attention_mask": [1, 1, 1, 1]}]
    evals = [{"input_ids": [0, 1, 0], "attention_mask": [1, 1, 1]}]
    # add-one counts over a vocabulary of 2: p(0) = 2/6, p(1) = 4/6; targets are tokens 1 and 0
    expected = -(torch.log(torch.tensor(4 / 6)) + torch.log(torch.tensor(2 / 6))).item() / 2
    assert unigram_loss(train, evals, vocab_size=2) == pytest.approx(expected)


def test_stage_helpers_load_the_teacher_and_cut_calibration_batches(pretrained, tmp_path):
    from minitron.checkpoint import load_checkpoint
    from minitron.data.calibration import calibration_batches, packed_data
    from minitron.train.pretrain import teacher_path

    cfg, result, _ = pretrained
    cfg = compose("pretrain", SMALL + [f"cache_dir={cfg.cache_dir}"])
    OmegaConf.set_struct(cfg, False)
    with_teacher = OmegaConf.merge(cfg, {"teacher": result.path})
    assert teacher_path(with_teacher, tmp_path) == Path(result.path)
    model, tokenizer = load_checkpoint(result.path)
    assert type(model).__name__ == "NemotronForCausalLM" and not model.training
    data = packed_data(cfg.data, cfg.cache_dir, tokenizer)
    batches = calibration_batches(data["train"], 10, 4, seed=3)
    assert [tuple(b["input_ids"].shape) for b in batches] == [(4, 64), (4, 64), (2, 64)]
    assert all("attention_mask" not in b or not bool(b["attention_mask"].all()) for b in batches)
    rows = torch.cat([b["input_ids"] for b in batches])
    all_rows = torch.tensor(data["train"]["input_ids"])
    assert all(any(torch.equal(r, a) for a in all_rows) for r in rows)  # drawn from the train blocks
    again = calibration_batches(data["train"], 10, 4, seed=3)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(batches, again))  # seeded
    with pytest.raises(MinitronError, match="samples=0"):
        calibration_batches(data["train"], 0, 4)
    with pytest.raises(MinitronError, match="teacher="):
        teacher_path(OmegaConf.merge(cfg, {"teacher": str(tmp_path)}), tmp_path)


def test_wandb_logs_offline_into_the_run_folder(tmp_path, monkeypatch):
    import os

    from datasets import Dataset

    from minitron.models.tiny import tiny_model
    from minitron.train.trainer import WandbRun, build_trainer, training_arguments

    for var in ("WANDB_MODE", "WANDB_DIR", "WANDB_PROJECT"):  # recorded, so that teardown restores them
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    train = compose("pretrain", ["train.logger=wandb"]).train
    args = training_arguments(train, tmp_path / "run" / "checkpoints", seed=0)
    assert args.report_to == ["wandb"]
    blocks = Dataset.from_dict({"input_ids": [[1] * 8], "attention_mask": [[1] * 8]})
    trainer = build_trainer(tiny_model("llama", 0, vocab_size=16), args, blocks, seq_len=8, metrics_path=tmp_path / "m.jsonl")
    attached = [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, WandbRun)]
    assert [cb.folder for cb in attached] == [tmp_path / "run"]
    assert not any(var in os.environ for var in ("WANDB_MODE", "WANDB_DIR", "WANDB_PROJECT"))  # the library sets none
    with pytest.raises(MinitronError, match="train.logger"):
        training_arguments(compose("pretrain", ["train.logger=mlflow"]).train, tmp_path, seed=0)


def test_each_training_in_one_process_gets_its_own_wandb_run(tmp_path, monkeypatch):
    from datasets import Dataset

    from minitron.models.tiny import tiny_model
    from minitron.train.trainer import build_trainer, training_arguments

    monkeypatch.setenv("WANDB_MODE", "offline")
    blocks = Dataset.from_dict({"input_ids": torch.randint(0, 64, (8, 16)).tolist(), "attention_mask": [[1] * 16] * 8})
    for name in ("first", "second"):
        train = compose("pretrain", ["train.logger=wandb", "train.max_steps=2", "train.batch_size=4"]).train
        args = training_arguments(train, tmp_path / name / "checkpoints", seed=0)
        trainer = build_trainer(tiny_model("llama", 0, vocab_size=64), args, blocks, seq_len=16,
                                metrics_path=tmp_path / name / "metrics.jsonl")
        trainer.train()
    for name in ("first", "second"):
        assert len(list((tmp_path / name / "wandb").glob("offline-run-*"))) == 1, f"{name} has no wandb run of its own"


def test_deepspeed_without_a_launcher_gets_a_one_process_rendezvous(monkeypatch):
    import os

    from minitron.train.trainer import one_process_rendezvous

    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                "OMPI_COMM_WORLD_RANK"):
        monkeypatch.delenv(key, raising=False)
    one_process_rendezvous()
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["MASTER_ADDR"]) == ("0", "1", "127.0.0.1")
    assert int(os.environ["MASTER_PORT"]) > 0
    monkeypatch.setenv("RANK", "1")  # under a launcher nothing is touched
    monkeypatch.setenv("MASTER_PORT", "1234")
    one_process_rendezvous()
    assert (os.environ["RANK"], os.environ["MASTER_PORT"]) == ("1", "1234")
