"""Export: save -> from_pretrained round trip, the Nemotron head classes, and streaming export == in-memory export."""

from __future__ import annotations

import json

import pytest
import torch
from prune_helpers import fake_importance
from safetensors.torch import load_file
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    NemotronForQuestionAnswering,
    NemotronForSequenceClassification,
    NemotronForTokenClassification,
)

from minitron.checkpoint import parse_size, save_checkpoint
from minitron.errors import MinitronError
from minitron.models.tiny import tiny_model
from minitron.prune import prune
from minitron.prune.export import load_key_mapping, prune_checkpoint_streaming

TARGET = {"hidden_size": 24, "intermediate_size": 0.5, "num_attention_heads": 2, "num_hidden_layers": 1}


def folder_tensors(folder):
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def config_json(folder):
    data = json.loads((folder / "config.json").read_text())
    data.pop("transformers_version", None)
    return data


@pytest.fixture(scope="module")
def teacher(teacher_dir):
    model = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    return model, AutoTokenizer.from_pretrained(teacher_dir), fake_importance(model, seed=3)


def test_round_trip_loads_with_equal_logits_and_tokenizer(teacher, tmp_path):
    model, tokenizer, imp = teacher
    pruned = prune(model, imp, TARGET)
    out = save_checkpoint(pruned, tokenizer, tmp_path / "pruned")
    assert {p.name for p in out.iterdir()} == {
        "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(loaded).__name__ == "NemotronForCausalLM"
    ids = tokenizer("def f(x):\n    return x", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, pruned(ids).logits)
    reloaded_tok = AutoTokenizer.from_pretrained(out)
    assert reloaded_tok.get_vocab() == tokenizer.get_vocab()
    assert (loaded.config.bos_token_id, loaded.config.eos_token_id) == (model.config.bos_token_id, model.config.eos_token_id)
    assert loaded.config.head_dim == model.config.head_dim and loaded.config.num_key_value_heads == 2
    assert loaded.generation_config.to_dict() == model.generation_config.to_dict()


def test_sharded_save_and_refusal_to_overwrite(teacher, tmp_path):
    model, _, imp = teacher
    pruned = prune(model, imp, TARGET)
    out = save_checkpoint(pruned, None, tmp_path / "sharded", max_shard_size="20KB")
    assert (out / "model.safetensors.index.json").is_file() and len(list(out.glob("*.safetensors"))) > 1
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in pruned.state_dict().items())
    with pytest.raises(MinitronError, match="is not empty; pass overwrite=true"):
        save_checkpoint(pruned, None, out)
    save_checkpoint(pruned, None, out, overwrite=True)
    assert (out / "model.safetensors").is_file() and not (out / "model.safetensors.index.json").exists()
    assert parse_size("5GB") == 5 * 10**9 and parse_size("2MiB") == 2 * 2**20 and parse_size(100) == 100
    with pytest.raises(MinitronError, match="is not a size"):
        parse_size("lots")


@pytest.mark.parametrize("cls", [NemotronForSequenceClassification, NemotronForQuestionAnswering, NemotronForTokenClassification])
def test_nemotron_head_classes_load_the_pruned_checkpoint(teacher, tmp_path_factory, cls):
    model, tokenizer, imp = teacher
    pruned = prune(model, imp, TARGET)
    out = save_checkpoint(pruned, tokenizer, tmp_path_factory.mktemp("heads") / "pruned")
    mapping = load_key_mapping(cls)
    assert (mapping is None) == (cls is not NemotronForQuestionAnswering)  # its base model sits under `transformer.`
    head_model, info = cls.from_pretrained(out, num_labels=3, output_loading_info=True, key_mapping=mapping)
    head = {NemotronForSequenceClassification: "score.", NemotronForQuestionAnswering: "qa_outputs.",
            NemotronForTokenClassification: "score."}[cls]
    assert info["missing_keys"] and all(k.startswith(head) for k in info["missing_keys"])  # only the new head is fresh
    assert set(info["unexpected_keys"]) <= {"lm_head.weight"}
    base = pruned.model.state_dict()
    for name, tensor in getattr(head_model, cls.base_model_prefix).state_dict().items():
        assert torch.equal(tensor, base[name]), name
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        head_model.eval()(ids)


@pytest.mark.parametrize("shard", ["20KB", "5GB"])
def test_streaming_export_equals_in_memory_export(teacher, tmp_path, shard):
    model, tokenizer, imp = teacher
    source = tmp_path / "teacher"
    model.save_pretrained(source, max_shard_size="30KB")  # a sharded teacher, read tensor by tensor
    tokenizer.save_pretrained(source)
    target = {**TARGET, "fold_heads": True}
    memory = save_checkpoint(prune(model, imp, target), tokenizer, tmp_path / "memory", max_shard_size=shard)
    plan = prune_checkpoint_streaming(source, imp, target, tmp_path / "stream", max_shard_size=shard)
    stream = tmp_path / "stream"
    assert {p.name for p in stream.iterdir()} == {p.name for p in memory.iterdir()}
    a, b = folder_tensors(memory), folder_tensors(stream)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    assert config_json(stream) == config_json(memory)
    assert plan.summary()["pruned_parameters"] == sum(t.numel() for t in b.values())
    loaded = AutoModelForCausalLM.from_pretrained(stream)
    ids = torch.tensor([[1, 9, 40, 41, 2]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, AutoModelForCausalLM.from_pretrained(memory)(ids).logits)


def test_streaming_keeps_dtype_and_tied_embeddings(tmp_path):
    model = tiny_model("llama", seed=4, tie_word_embeddings=True).to(torch.bfloat16)
    model.config.dtype = torch.bfloat16
    model.save_pretrained(tmp_path / "teacher")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "teacher", dtype=torch.bfloat16)
    imp = fake_importance(model)
    memory = save_checkpoint(prune(model, imp, {"hidden_size": 32}), None, tmp_path / "memory")
    prune_checkpoint_streaming(tmp_path / "teacher", imp, {"hidden_size": 32}, tmp_path / "stream")
    a, b = folder_tensors(memory), folder_tensors(tmp_path / "stream")
    assert "lm_head.weight" not in b and a.keys() == b.keys()
    assert all(t.dtype == torch.bfloat16 for t in b.values()) and all(torch.equal(a[k], b[k]) for k in a)
    assert config_json(tmp_path / "stream") == config_json(memory)
    assert config_json(memory)["dtype"] == "bfloat16"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "stream")
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()


def test_streaming_checks_everything_before_writing(teacher_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(teacher_dir)
    other = fake_importance(tiny_model("nemotron"))
    for imp, target, message in [
        (fake_importance(model), {"hidden_size": 33}, "larger than the source"),
        (fake_importance(model), {"drop_layers": [7]}, "out of range"),
        (other, {"hidden_size": 16}, "another model"),
    ]:
        with pytest.raises(MinitronError, match=message):
            prune_checkpoint_streaming(teacher_dir, imp, target, tmp_path / "out")
        assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(MinitronError, match="has no model.safetensors"):
        (tmp_path / "empty").mkdir()
        model.config.save_pretrained(tmp_path / "empty")
        prune_checkpoint_streaming(tmp_path / "empty", fake_importance(model), {"hidden_size": 16}, tmp_path / "out")


def test_streaming_holds_one_tensor_at_a_time(teacher_dir, tmp_path, monkeypatch):
    """Every source tensor and every slice is released before the next tensor is read."""
    import gc
    import weakref

    from minitron.prune.export import CheckpointReader
    from minitron.prune.plan import PrunePlan

    model = AutoModelForCausalLM.from_pretrained(teacher_dir)
    alive: list[weakref.ref] = []
    held = []
    read, apply = CheckpointReader.get, PrunePlan.apply

    def tracking_get(self, name):
        gc.collect()
        held.append(sum(r() is not None for r in alive))
        tensor = read(self, name)
        alive.append(weakref.ref(tensor))
        return tensor

    def tracking_apply(self, name, tensor):
        out = apply(self, name, tensor)
        alive.append(weakref.ref(out))
        return out

    monkeypatch.setattr(CheckpointReader, "get", tracking_get)
    monkeypatch.setattr(PrunePlan, "apply", tracking_apply)
    prune_checkpoint_streaming(teacher_dir, fake_importance(model), TARGET, tmp_path / "out", max_shard_size="20KB")
    assert len(held) == len(folder_tensors(tmp_path / "out")) and max(held) == 0


def test_depth_prune_records_the_kept_layer_map_in_config_json(teacher, tmp_path):
    """Which teacher layer each kept layer is travels in config.json (an attribute stock transformers keeps), from
    the in-memory and the streaming export alike; width-only pruning records nothing."""
    from minitron.checkpoint import LAYER_MAP, layer_map
    from minitron.prune import make_plan

    model, tokenizer, imp = teacher
    keep = make_plan(model.config, imp, TARGET).keep_layers
    assert len(keep) == 1
    memory = save_checkpoint(prune(model, imp, TARGET), tokenizer, tmp_path / "memory")
    source = tmp_path / "teacher"
    model.save_pretrained(source)
    tokenizer.save_pretrained(source)
    prune_checkpoint_streaming(source, imp, TARGET, tmp_path / "stream")
    expected = {"source_num_hidden_layers": 2, "source_layers": keep}
    for folder in (memory, tmp_path / "stream"):
        assert config_json(folder)[LAYER_MAP] == expected
        loaded = AutoModelForCausalLM.from_pretrained(folder)  # stock loading, no code of ours
        assert layer_map(loaded.config) == (2, keep)
    width = save_checkpoint(prune(model, imp, {"hidden_size": 24}), tokenizer, tmp_path / "width")
    assert LAYER_MAP not in config_json(width)


def test_cast_checkpoint_reads_only_headers_when_nothing_changes_and_casts_floats_only(tmp_path):
    """A file already in the asked dtype is left byte for byte; otherwise floats are cast and integers kept."""
    from safetensors.torch import load_file, save_file

    from minitron.checkpoint import cast_checkpoint

    (tmp_path / "config.json").write_text('{"dtype": "float32"}')
    save_file({"w": torch.ones(2, 3), "ids": torch.arange(3)}, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    before = (tmp_path / "model.safetensors").stat().st_mtime_ns
    cast_checkpoint(tmp_path, "float32")
    assert (tmp_path / "model.safetensors").stat().st_mtime_ns == before
    cast_checkpoint(tmp_path, "bfloat16")
    out = load_file(str(tmp_path / "model.safetensors"))
    assert out["w"].dtype == torch.bfloat16 and out["ids"].dtype == torch.int64
    assert torch.equal(out["w"].float(), torch.ones(2, 3)) and torch.equal(out["ids"], torch.arange(3))


def test_cast_checkpoint_streams_each_tensor_and_keeps_the_metadata(tmp_path, monkeypatch):
    """The cast file is written tensor by tensor (at most one source tensor read at a time), keeps the file's
    metadata, and equals `tensor.to(dtype)` exactly."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    import minitron.checkpoint as ckpt

    g = torch.Generator().manual_seed(0)
    tensors = {"a": torch.randn(5, 7, generator=g), "b": torch.randn(3, generator=g), "n": torch.arange(4)}
    (tmp_path / "config.json").write_text('{"torch_dtype": "float32"}')
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt", "note": "kept"})
    reads = []
    real = ckpt.write_safetensors_streaming

    def spy(path, specs, produce, metadata=None):
        def counted(name):
            reads.append(name)
            return produce(name)
        real(path, specs, counted, metadata)

    monkeypatch.setattr(ckpt, "write_safetensors_streaming", spy)
    ckpt.cast_checkpoint(tmp_path, "bfloat16")
    assert sorted(reads) == ["a", "b", "n"]
    out = load_file(str(tmp_path / "model.safetensors"))
    for name, tensor in tensors.items():
        expected = tensor.to(torch.bfloat16) if tensor.is_floating_point() else tensor
        assert out[name].dtype == expected.dtype and torch.equal(out[name], expected), name
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert f.metadata()["note"] == "kept"
    assert '"dtype": "bfloat16"' in (tmp_path / "config.json").read_text()
