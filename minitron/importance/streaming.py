"""Importance of a checkpoint larger than memory, one decoder layer at a time.

The model is built on the meta device from `config.json`; the calibration batches are embedded once, and the
hidden states of all of them (the activation cache) are pushed through one decoder layer at a time: read the
layer's tensors from the safetensors files, run every cached batch through it with the same hooks as
`estimate`, move it back to the meta device, go on. The per-layer inputs the model would give a layer (the
causal mask, the rotary position embeddings, ...) come from the skeleton's own forward pass, with stand-ins in
place of the layers, so they match the in-memory model's exactly; the results equal `estimate`'s.

`layers_loss` needs, for each layer i, the hidden states with layer i skipped pushed through the layers after
it. Rather than keep one such cache per layer (memory growing with depth), the layers are handled in groups of
`skip_caches`: a group's caches fork from the normal cache at the input of their skipped layer and ride along
the same read of the checkpoint, then go through the final norm and LM head (read at the end of each pass).
The first group rides along the scoring pass.

Cost, with L layers, K = `skip_caches` and A the size of one activation cache (batches x seq x hidden):
- memory: the largest of {embedding, one decoder layer, final norm + LM head} plus (1 + K) A (one A without
  `layers_loss`), whatever L;
- time: ceil(L / K) reads of the decoder layers (one without `layers_loss`) and about L (L - 1) / 2 extra
  layer calls per batch, plus one read of the embedding and of the head per pass.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModelForCausalLM

from minitron.errors import MinitronError
from minitron.importance.estimate import (
    Batch,
    BatchLike,
    CalibrationTally,
    ScoreCollector,
    SkipLoss,
    build_importance,
    check_options,
    prepare_batch,
)
from minitron.importance.replay import call_layer, lm_loss_sum
from minitron.importance.scores import Importance
from minitron.models import get_adapter

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


@dataclass
class StreamingStats:
    """What a streaming run held at its peak; pass one to `estimate_streaming` to have it filled in.

    `peak_weight_bytes`: the most bytes of model tensors resident at once; `peak_cache_bytes`: the most bytes of
    activation caches held between two layers (one batch more is in flight inside a layer); `passes`: reads of
    the decoder layers from the checkpoint.
    """

    peak_weight_bytes: int = 0
    peak_cache_bytes: int = 0
    passes: int = 0


class Checkpoint:
    """Lazy reader of the tensors of a safetensors checkpoint: one `model.safetensors`, or shards listed by
    `model.safetensors.index.json`. Each tensor is read only when asked for."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        index, single = self.directory / INDEX_FILE, self.directory / SINGLE_FILE
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            self.files = {name: self.directory / file for name, file in weight_map.items()}
        elif single.is_file():
            with safe_open(str(single), framework="pt") as f:
                self.files = {name: single for name in f.keys()}
        else:
            raise MinitronError(f"{self.directory} holds neither {SINGLE_FILE} nor {INDEX_FILE}")

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def tensor(self, name: str, device: torch.device) -> Tensor:
        if name not in self.files:
            raise MinitronError(f"tensor '{name}' is missing from the checkpoint in {self.directory}")
        with safe_open(str(self.files[name]), framework="pt", device=str(device)) as f:
            return f.get_tensor(name)


class _LayerArgs(Exception):
    """Carries the arguments the model passed to a decoder layer out of the skeleton's forward pass."""

    def __init__(self, args: tuple, kwargs: dict[str, Any]):
        super().__init__()
        self.args, self.kwargs = args, kwargs


class _Probe(nn.Module):
    """Stands in for a decoder layer in the skeleton: passes the hidden states through unchanged, or, if it is
    the layer asked for, stops the forward pass and hands back its arguments."""

    def __init__(self, index: int, wanted: list[int], layer: nn.Module):
        super().__init__()
        self.index = index
        self.wanted = wanted
        # What the decoder's loop reads off a layer besides calling it (Nemotron-H picks each block's mask by type).
        for attr in ("block_type",):
            if hasattr(layer, attr):
                setattr(self, attr, getattr(layer, attr))

    def forward(self, hidden_states: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        if self.index == self.wanted[0]:
            raise _LayerArgs(args, kwargs)
        return hidden_states


class _Streamer:
    def __init__(
        self,
        directory: str | os.PathLike,
        device: torch.device,
        collector_options: dict[str, Any],
        weight_dtype: torch.dtype | None = None,
    ):
        self.checkpoint = Checkpoint(directory)
        self.weight_dtype = weight_dtype
        self.config = AutoConfig.from_pretrained(directory)
        self.adapter = a = get_adapter(self.config)
        self.device = device
        with torch.device("meta"):
            self.model = AutoModelForCausalLM.from_config(self.config).eval()
        self.decoder = self.model.get_submodule(a.prefix)
        self.embed = self.model.get_submodule(a.embed)
        self.final_norm = self.model.get_submodule(a.final_norm)
        self.lm_head = self.model.get_submodule(a.lm_head)
        # The rotary module's buffers are computed from the config, never stored: rebuild it for real.
        if a.rotary_emb is not None:  # None: no positional embedding module (Nemotron-H)
            rotary = self.model.get_submodule(a.rotary_emb)
            parent, _, name = a.rotary_emb.rpartition(".")
            setattr(self.model.get_submodule(parent), name, type(rotary)(config=self.config).to(device))
        self.collector = ScoreCollector(a, **collector_options)
        self.layers = list(a.layers(self.model))
        self.stats = StreamingStats()
        self.dtype: torch.dtype | None = None

    @contextmanager
    def probes(self) -> Iterator[None]:
        """Put stand-ins in place of the decoder layers (hooks stay on the real ones, kept in `self.layers`)."""
        slots = self.adapter.layers(self.model)
        self._wanted = [-1]
        for j in range(len(slots)):
            slots[j] = _Probe(j, self._wanted, self.layers[j])
        try:
            yield
        finally:
            for j, layer in enumerate(self.layers):
                slots[j] = layer

    def layer_args(self, j: int, batch: Batch) -> tuple[tuple, dict[str, Any]]:
        """The arguments (besides the hidden states) the model gives decoder layer j for this batch."""
        self._wanted[0] = j
        shape = (*batch.input_ids.shape, self.config.hidden_size)
        stand_in = torch.zeros((), dtype=self.dtype, device=self.device).expand(shape)
        try:
            self.decoder(inputs_embeds=stand_in, attention_mask=batch.attention_mask, use_cache=False)
        except _LayerArgs as got:
            return got.args, got.kwargs
        raise MinitronError(f"{type(self.model).__name__} never called decoder layer {j}")

    # ---- weights --------------------------------------------------------------------------------------------
    @contextmanager
    def resident(self, module: nn.Module, prefix: str) -> Iterator[nn.Module]:
        """Read `module`'s tensors from the checkpoint for the duration of the block, then drop them (back to
        the meta device), also on error."""
        try:
            state = {key: self._read(f"{prefix}.{key}") for key in module.state_dict()}
            module.load_state_dict(state, assign=True, strict=True)
            del state
            for name, value in self.adapter.derived_buffers().items():
                if name.startswith(f"{prefix}."):
                    owner, _, attr = name[len(prefix) + 1 :].rpartition(".")
                    (module.get_submodule(owner) if owner else module)._buffers[attr] = value.to(self.device)
            self._note_weights()
            yield module
        finally:
            module.to("meta")

    def _read(self, name: str) -> Tensor:
        tied_head = f"{self.adapter.lm_head}.weight"
        if name == tied_head and name not in self.checkpoint and self.adapter.tied_embeddings:
            name = f"{self.adapter.embed}.weight"
        read = lambda key: self.checkpoint.tensor(key, self.device)
        tensor = self.adapter.read_stored(name, self.checkpoint.__contains__, read)
        if self.weight_dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(self.weight_dtype)
        return tensor

    def _note_weights(self) -> None:
        modules = chain([self.model], self.layers)
        tensors = {id(t): t for m in modules for t in chain(m.parameters(), m.buffers()) if not t.is_meta}
        resident = sum(t.nbytes for t in tensors.values())
        self.stats.peak_weight_bytes = max(self.stats.peak_weight_bytes, resident)

    def _note_cache(self, *caches: list[Tensor] | None) -> None:
        tensors = {id(t): t for cache in caches if cache is not None for t in cache}
        held = sum(t.nbytes for t in tensors.values())
        self.stats.peak_cache_bytes = max(self.stats.peak_cache_bytes, held)

    # ---- one read of the checkpoint -------------------------------------------------------------------------
    def run_pass(self, batches: list[Batch], skips: range, collect: bool, skip_loss: SkipLoss | None, bar: Any) -> None:
        """Push the batches through every layer once; score them if `collect`; for each i in `skips`, fork a
        cache at the input of layer i that skips it, and add its LM loss to `skip_loss`."""
        self.stats.passes += 1
        with self.resident(self.embed, self.adapter.embed):
            normal: list[Tensor] | None = [self.adapter.embed_output(self.embed(b.input_ids)) for b in batches]
        self.dtype = normal[0].dtype
        forks: dict[int, list[Tensor]] = {}
        last_normal = len(self.layers) - 1 if collect else skips[-1] - 1
        for j, layer in enumerate(self.layers):
            if j in skips:
                forks[j] = list(normal)  # shares the tensors until the normal cache moves on
            if j > last_normal:
                normal = None
            moving = [forks[i] for i in forks if i < j]
            if normal is not None or moving:
                with self.resident(layer, self.adapter.layer(j)):
                    for b, batch in enumerate(batches):
                        args, kwargs = self.layer_args(j, batch)
                        if normal is not None:
                            self.collector.tokens = batch.tokens
                            with nullcontext() if collect else self.collector.paused():
                                normal[b] = call_layer(layer, normal[b], args, kwargs)
                        with self.collector.paused():
                            for cache in moving:
                                cache[b] = call_layer(layer, cache[b], args, kwargs)
            self._note_cache(normal, *forks.values())
            bar.update()
        normal = None
        if forks:
            vocab = self.config.vocab_size
            head = lambda h: self.adapter.logits(self.lm_head(self.final_norm(h)))
            with self.resident(self.final_norm, self.adapter.final_norm), self.resident(self.lm_head, self.adapter.lm_head):
                for i, cache in forks.items():
                    for b, batch in enumerate(batches):
                        skip_loss.add(i, lm_loss_sum(cache[b], batch, head, vocab))
                        cache[b] = None  # type: ignore[call-overload]


def estimate_streaming(
    checkpoint_dir: str | os.PathLike,
    batches: Iterable[BatchLike],
    *,
    batch_agg: str = "l2",
    seq_agg: str = "mean",
    mlp_site: str = "post",
    depth: Iterable[str] = ("bi", "loss"),
    skip_caches: int = 1,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    progress: bool = True,
    stats: StreamingStats | None = None,
) -> Importance:
    """`estimate` for a Hugging Face checkpoint directory (config.json + safetensors) that need not fit in
    memory: one decoder layer is resident at a time, see the module docstring for the costs.

    `skip_caches` trades memory for time in `layers_loss` (K extra activation caches, ceil(L / K) reads of
    the layers). `dtype` casts the floating-point weights as they are read (None: as stored; scores accumulate
in float32 either way). `stats`, when given, is filled with the peak memory and the number of reads.
    """
    depth = check_options(batch_agg, seq_agg, mlp_site, depth)
    if skip_caches < 1:
        raise MinitronError(f"skip_caches={skip_caches} must be at least 1")
    device = torch.device(device)
    streamer = _Streamer(
        checkpoint_dir,
        device,
        dict(seq_agg=seq_agg, batch_agg=batch_agg, mlp_site=mlp_site, block_importance="bi" in depth),
        dtype,
    )
    prepared = [b for b in (prepare_batch(raw, device) for raw in batches) if b is not None]
    tally = CalibrationTally()
    for batch in prepared:
        tally.add(batch)
    if not prepared:
        raise MinitronError("no calibration tokens: every batch was empty or fully masked")

    n = len(streamer.layers)
    groups = [range(g, min(g + skip_caches, n)) for g in range(0, n, skip_caches)] if "loss" in depth else []
    skip_loss = None
    if groups:
        skip_loss = SkipLoss(n)
        skip_loss.targets = sum(b.num_targets for b in prepared)
    with (
        torch.no_grad(),
        streamer.collector.attached(streamer.model),
        streamer.probes(),
        tqdm(total=n * max(1, len(groups)), desc="importance (streaming)", unit="layer", disable=not progress) as bar,
    ):
        streamer.run_pass(prepared, groups[0] if groups else range(0), True, skip_loss, bar)
        for skips in groups[1:]:
            streamer.run_pass(prepared, skips, False, skip_loss, bar)
    if stats is not None:
        stats.__dict__.update(streamer.stats.__dict__)
    return build_importance(
        streamer.collector.scores(),
        skip_loss,
        tally,
        streamer.config,
        batch_agg=batch_agg,
        seq_agg=seq_agg,
        mlp_site=mlp_site,
    )
