"""Hub ids wherever a checkpoint is accepted, resolved offline from a hub cache the test fills.

huggingface_hub reads HF_HOME and HF_HUB_OFFLINE when it is imported, so every check runs in a fresh process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO = "tiny-org/tiny-llama"


def fill_hub_cache(hf_home: Path, folder: Path) -> Path:
    """The layout huggingface_hub writes: hub/models--ORG--NAME/{refs/main, snapshots/COMMIT/...}."""
    org, name = REPO.split("/")
    storage = hf_home / "hub" / f"models--{org}--{name}"
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(COMMIT)
    snapshot = storage / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for f in folder.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    return snapshot


@pytest.fixture(scope="module")
def hub_home(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hub")
    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", *"abcdefghijklmnopqrstuvwxyz"])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    local = root / "local"
    model.save_pretrained(local, safe_serialization=True)
    tok.save_pretrained(local)
    fill_hub_cache(root / "home", local)
    return root


def run_offline(hf_home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    env.pop("HF_HUB_CACHE", None)
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_hub_id_loads_from_the_offline_cache(hub_home):
    code = f"""
import json, torch
from safetensors.torch import load_file
from minitron.checkpoint import checkpoint_folder, load_checkpoint, load_config
folder = checkpoint_folder("{REPO}", "teacher")
model, tok = load_checkpoint("{REPO}")
ref = load_file("{hub_home / 'local' / 'model.safetensors'}")
same = all(torch.equal(model.state_dict()[k], v) for k, v in ref.items())
print(json.dumps({{"folder": str(folder), "same": same, "layers": load_config("{REPO}").num_hidden_layers,
                   "vocab": len(tok)}}))
"""
    done = run_offline(hub_home / "home", "-c", code)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["folder"].endswith(f"snapshots/{COMMIT}")
    assert out["same"] and out["layers"] == 2 and out["vocab"] == 29


def test_teacher_hub_id_on_the_command_line(hub_home, tmp_path):
    done = run_offline(hub_home / "home", "-m", "minitron", "prune", f"teacher={REPO}", "dry_run=true",
                       "target.hidden_size=16", "target.intermediate_size=32", "target.num_attention_heads=2",
                       f"hydra.run.dir={tmp_path}/run")
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"on {REPO}" in done.stdout and '"hidden_size": 16' in done.stdout


@pytest.mark.parametrize("verb,field", [("eval", "model_path"), ("prune", "teacher"), ("distill", "student")])
def test_missing_hub_id_is_one_line(hub_home, tmp_path, verb, field):
    extra = [f"teacher={REPO}"] if verb == "distill" else []
    done = run_offline(hub_home / "home", "-m", "minitron", verb, *extra, f"{field}=tiny-org/not-there",
                       f"hydra.run.dir={tmp_path}/run")
    err = done.stderr.strip()
    assert done.returncode != 0
    assert err.count("\n") == 0, err
    assert f"{field}=tiny-org/not-there is not a local folder" in err and "hub cache" in err
