"""Importance of an in-memory model: one forward pass per calibration batch, with hooks.

Width scores (see `aggregate` for the statistics) are read by hooks on the modules the family adapter names:

- `hidden`: the outputs of the per-layer norms that feed attention and the MLP (the family adapter's
  `hidden_sites`: two per layer), summed over all of them;
- `heads`: the input of `o_proj`, per dimension, then the L2 norm over each head's `head_dim` dimensions;
  `kv_groups`: the L2 norm of the scores of the query heads of each KV group;
- `mlp`: the input of `down_proj` (after the activation and the gate), or with `mlp_site="pre"` the output of
  `up_proj` (the paper's X W1^T; the up block of a fused `gate_up_proj`).

Mamba-2 blocks of a hybrid (Nemotron-H):

- `mamba_heads`: the input of `out_proj` (the SSM output after the gated group norm), per channel, then the L2
  norm over each head's `mamba_head_dim` channels: the attention-head statistic on the Mamba mixer's output
  projection, as the group-aware SSM pruning of Taghibakhshi et al. 2025 (arXiv 2504.11409) scores Mamba heads
  from the activations entering the output projection; `mamba_groups`: the L2 norm of the scores of the heads of
  each group. A hybrid's blocks of another type score 0 on an axis they do not have.

Mixture-of-experts layers (`ExpertTally`, a hook on the experts module that recomputes each expert on the
tokens routed to it, in float32):

- `experts`: router-weighted expert activation, the mean over the tokens routed to expert j of
  g_j(x) * ||f_j(x)||_2, with g_j the routing weight the layer multiplies the expert's output by. This is REAP's
  saliency (Lasby et al. 2025, "REAP the Experts: Why Pruning Prevails for One-Shot MoE Compression",
  arXiv 2510.13999) and what Model Optimizer's Minitron pruning ranks experts by (`_DynamicSequentialMLP` in
  modelopt/torch/nas/plugins/megatron.py: the L2 norm of each routed token's router-weighted expert output,
  averaged over the expert's tokens). It keeps the experts whose outputs weigh most in the layer's sum, where
  routing frequency alone (a baseline in Lu et al. 2024, arXiv 2402.14800) ignores how large they are. An expert
  that no calibration token reaches scores 0.
- `mlp` (per expert): the Minitron neuron statistic inside each expert, as Model Optimizer scores each expert's
  own `ffn_hidden_size`: the mean of |activation| over the tokens routed to it (the expert's `down_proj` input,
  or its up rows with `mlp_site="pre"`), one mean over all calibration tokens so that it does not depend on
  batching. Routed tokens do not form sequences, so `seq_agg` and `batch_agg` do not apply to the expert axes.

Depth scores:

- `layers` (Block Importance): 1 - mean over the unmasked tokens of cos(input, output) of each decoder layer;
- `layers_loss`: the next-token LM loss (targets: input_ids shifted by one; a target counts when both its
  position and the one before are unmasked) with one layer skipped, i.e. returning its input. The model is
  never edited: each batch's layer inputs are kept from the scoring pass and the layers after the skipped
  one are re-run on them, L (L - 1) / 2 layer calls and L head calls per batch on top of the scoring pass.
- block scores (`blocks`, for blocks of `block_layers` layers; see `minitron.importance.blocks`): the LM loss
  with a whole contiguous block skipped (`blocks_loss`) and the block's 1 - cos between its first layer's input
  and its last layer's output (`blocks_bi`), from the same kept layer inputs.

The scoring pass runs the decoder stack only (the LM head is not needed for it), under `torch.no_grad()`, in
eval mode. Masked positions (`attention_mask == 0`, right padding) are left out of every statistic.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from minitron.errors import MinitronError
from minitron.importance.blocks import BlockScores, check_block_options
from minitron.importance.replay import call_layer, cosine_distance, lm_loss_sum
from minitron.importance.aggregate import RunningScore, Tokens, check_aggregator
from minitron.importance.scores import DEPTH_AXES, Importance, config_hash
from minitron.models import FamilyAdapter, get_adapter

BatchLike = Union[Tensor, Mapping[str, Tensor]]
MLP_SITES: tuple[str, ...] = ("post", "pre")


def check_options(batch_agg: str, seq_agg: str, mlp_site: str, depth: Iterable[str] | str) -> tuple[str, ...]:
    """Validate the options; return `depth` as a tuple."""
    check_aggregator(batch_agg, "batch_agg")
    check_aggregator(seq_agg, "seq_agg")
    if mlp_site not in MLP_SITES:
        raise MinitronError(f"mlp_site='{mlp_site}' is not a site; expected one of {', '.join(MLP_SITES)}")
    depth = (depth,) if isinstance(depth, str) else tuple(depth)
    for d in depth:
        if d not in DEPTH_AXES:
            raise MinitronError(f"depth='{d}' is not a depth score; expected any of {', '.join(DEPTH_AXES)}")
    return depth


# ---- batches ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Batch:
    """One calibration batch on the model's device. `attention_mask` is None when nothing is padded (the
    model then takes its unpadded fast path); `target_mask` [batch, seq - 1] marks the next-token targets."""

    input_ids: Tensor
    attention_mask: Tensor | None
    tokens: Tokens
    target_mask: Tensor | None
    num_targets: int


def prepare_batch(raw: BatchLike, device: torch.device) -> Batch | None:
    """A `Batch` from an `input_ids` tensor or a dict with `input_ids` and an optional `attention_mask`;
    samples without any unmasked token are dropped, and None is returned when none is left."""
    if isinstance(raw, Mapping):
        if "input_ids" not in raw:
            raise MinitronError(f"a calibration batch dict needs 'input_ids'; got keys {sorted(raw)}")
        input_ids, mask = raw["input_ids"], raw.get("attention_mask")
    else:
        input_ids, mask = raw, None
    if not isinstance(input_ids, Tensor) or input_ids.is_floating_point() or input_ids.dim() not in (1, 2):
        raise MinitronError("calibration input_ids must be an integer tensor [batch, seq]")
    if input_ids.dim() == 1:
        input_ids = input_ids.unsqueeze(0)
        mask = None if mask is None else mask.reshape(1, -1)
    if mask is not None:
        if mask.shape != input_ids.shape:
            raise MinitronError(
                f"attention_mask {tuple(mask.shape)} does not match input_ids {tuple(input_ids.shape)}"
            )
        mask = mask.to(torch.long)
        keep = mask.sum(1) > 0
        if not bool(keep.all()):
            input_ids, mask = input_ids[keep], mask[keep]
        if bool(mask.all()):
            mask = None
    if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        return None
    input_ids = input_ids.to(device=device, dtype=torch.long)
    mask = None if mask is None else mask.to(device)
    tokens = Tokens.of(mask, input_ids.shape, input_ids.device)
    if mask is None:
        target_mask, num_targets = None, input_ids.shape[0] * (input_ids.shape[1] - 1)
    else:
        target_mask = tokens.mask[:, :-1] & tokens.mask[:, 1:]
        num_targets = int(target_mask.sum())
    return Batch(input_ids, mask, tokens, target_mask, num_targets)


class CalibrationTally:
    """Counts the calibration samples and tokens and fingerprints their unmasked token ids (independent of
    how the samples are batched and padded)."""

    def __init__(self) -> None:
        self.samples = 0
        self.tokens = 0
        self.seq_len = 0
        self._sha = hashlib.sha256()

    def add(self, batch: Batch) -> None:
        ids = batch.input_ids.cpu()
        mask = None if batch.attention_mask is None else batch.attention_mask.cpu().bool()
        for n in range(ids.shape[0]):
            row = ids[n] if mask is None else ids[n][mask[n]]
            self._sha.update(len(row).to_bytes(8, "little"))
            self._sha.update(row.numpy().astype("<i8").tobytes())
        self.samples += ids.shape[0]
        self.tokens += batch.tokens.total
        self.seq_len = max(self.seq_len, ids.shape[1])

    def fingerprint(self) -> str:
        return self._sha.hexdigest()[:16]


# ---- hooks ------------------------------------------------------------------------------------------------
class ExpertTally:
    """Running sums of one MoE layer over the calibration tokens (see the module docstring): per expert the
    routed tokens, the routing-weighted output norms, and the |activation| of each of its neurons."""

    def __init__(self, mlp_site: str):
        self.mlp_site = mlp_site
        self.count: Tensor | None = None
        self.gain: Tensor | None = None
        self.neurons: Tensor | None = None

    def update(self, experts: nn.Module, hidden: Tensor, index: Tensor, weights: Tensor, mask: Tensor | None) -> None:
        """`hidden` [tokens, hidden], `index` and `weights` [tokens, top_k]: the experts module's inputs."""
        gate_up, down = experts.gate_up_proj, experts.down_proj
        num, ffn = gate_up.shape[0], down.shape[-1]
        if self.count is None:
            self.count = torch.zeros(num, device=hidden.device)
            self.gain = torch.zeros(num, device=hidden.device)
            self.neurons = torch.zeros(num, ffn, device=hidden.device)
        if mask is not None:
            keep = mask.reshape(-1)
            hidden, index, weights = hidden[keep], index[keep], weights[keep]
        x = hidden.float()
        for e in range(num):
            token, slot = (index == e).nonzero(as_tuple=True)
            if token.numel() == 0:
                continue
            gate, up = F.linear(x[token], gate_up[e].float()).chunk(2, dim=-1)
            act = experts.act_fn(gate) * up
            out = F.linear(act, down[e].float())
            self.count[e] += token.numel()
            self.gain[e] += (weights[token, slot].float() * torch.linalg.vector_norm(out, dim=-1)).sum()
            self.neurons[e] += (act if self.mlp_site == "post" else up).abs().sum(dim=0)

    def value(self) -> tuple[Tensor, Tensor]:
        """(expert scores [experts], neuron scores [experts, ffn])."""
        count = self.count.clamp(min=1)
        return self.gain / count, self.neurons / count[:, None]


class ScoreCollector:
    """Hooks that feed the running scores. Set `tokens` before each batch; `paused()` silences the hooks."""

    def __init__(
        self,
        adapter: FamilyAdapter,
        *,
        seq_agg: str,
        batch_agg: str,
        mlp_site: str,
        block_importance: bool,
        keep_layer_inputs: bool = False,
    ):
        self.adapter = adapter
        self.mlp_site = mlp_site
        self.block_importance = block_importance
        self.keep_layer_inputs = keep_layer_inputs
        n = adapter.num_hidden_layers
        new = partial(RunningScore, seq_agg, batch_agg)
        self.norm_scores = [[new() for _ in adapter.hidden_sites(i)] for i in range(n)]
        self.head_scores = [new() for _ in range(n)]
        self.mlp_scores = [new() for _ in range(n)]
        self.mamba_scores = [new() for _ in range(n)] if adapter.hybrid else []
        self.expert_tallies = [ExpertTally(mlp_site) for _ in range(n)] if adapter.moe else []
        self.bi_sums: list[Tensor | None] = [None] * n
        self.bi_tokens = [0] * n
        # layer index -> (input hidden states, other positional args, keyword args) of the current batch
        self.layer_inputs: dict[int, tuple[Tensor, tuple, dict[str, Any]]] = {}
        self.last_output: Tensor | None = None  # the last layer's output of the current batch (block scores)
        self.tokens: Tokens | None = None
        self.enabled = True

    @contextmanager
    def attached(self, model: nn.Module) -> Iterator[ScoreCollector]:
        """Register the hooks on `model` (a real model or a meta skeleton); they are removed on exit, also on error."""
        a = self.adapter
        handles = []
        try:
            for i in range(a.num_hidden_layers):
                for (path, where), score in zip(a.hidden_sites(i), self.norm_scores[i]):
                    module = a.module(model, path)
                    if where == "out":
                        handles.append(module.register_forward_hook(partial(self._on_output, score)))
                    else:
                        handles.append(module.register_forward_pre_hook(partial(self._on_input, score)))
                if a.has_axis("heads", i):
                    o_proj = a.module(model, a.o_proj(i))
                    handles.append(o_proj.register_forward_pre_hook(partial(self._on_input, self.head_scores[i])))
                if a.has_axis("mamba_heads", i):
                    out_proj = a.module(model, a.out_proj(i))
                    handles.append(out_proj.register_forward_pre_hook(partial(self._on_input, self.mamba_scores[i])))
                if a.has_axis("mlp", i):
                    handles.append(self._mlp_hook(model, i))
                if self.block_importance or self.keep_layer_inputs:
                    layer = a.module(model, a.layer(i))
                    handles.append(layer.register_forward_hook(partial(self._on_layer, i), with_kwargs=True))
            yield self
        finally:
            for h in handles:
                h.remove()
            self.layer_inputs.clear()
            self.last_output = None

    def _mlp_hook(self, model: nn.Module, i: int):
        """The hook that scores layer i's MLP neurons (its experts' in an MoE family)."""
        a = self.adapter
        if a.moe:
            on_experts = partial(self._on_experts, self.expert_tallies[i])
            return a.module(model, a.experts(i)).register_forward_hook(on_experts, with_kwargs=True)
        if self.mlp_site == "post":
            return a.module(model, a.down_proj(i)).register_forward_pre_hook(partial(self._on_input, self.mlp_scores[i]))
        rows = a.up_rows(i)  # a fused gate_up projection holds the up rows as one block
        on_up = partial(self._on_output, self.mlp_scores[i], block=(rows.offset, rows.length))
        return a.module(model, rows.path).register_forward_hook(on_up)

    @contextmanager
    def paused(self) -> Iterator[None]:
        enabled, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = enabled

    def _on_output(
        self, score: RunningScore, module: nn.Module, args: tuple, output: Tensor, block: tuple[int, int] | None = None
    ) -> None:
        if self.enabled:
            if block is not None and (block[0], block[1]) != (0, output.shape[-1]):
                output = output.narrow(-1, *block)
            score.update(output, self.tokens)

    def _on_input(self, score: RunningScore, module: nn.Module, args: tuple) -> None:
        if self.enabled:
            score.update(args[0], self.tokens)

    def _on_experts(self, tally: ExpertTally, module: nn.Module, args: tuple, kwargs: dict, output: Tensor) -> None:
        if self.enabled:
            names = ("hidden_states", "top_k_index", "top_k_weights")
            hidden, index, weights = (*args, *(kwargs[k] for k in names[len(args):]))
            tally.update(module, hidden, index, weights, self.tokens.mask)

    def _on_layer(self, i: int, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if not self.enabled:
            return
        hidden_in = args[0] if args else kwargs["hidden_states"]
        hidden_out = output[0] if isinstance(output, tuple) else output
        if self.block_importance:
            distance = cosine_distance(hidden_in, hidden_out)
            if self.tokens.mask is not None:
                distance = torch.where(self.tokens.mask, distance, 0)
            part = distance.sum()
            self.bi_sums[i] = part if self.bi_sums[i] is None else self.bi_sums[i] + part
            self.bi_tokens[i] += self.tokens.total
        if self.keep_layer_inputs:
            rest = {k: v for k, v in kwargs.items() if k != "hidden_states"}
            self.layer_inputs[i] = (hidden_in, tuple(args[1:]), rest)
            if i == self.adapter.num_hidden_layers - 1:
                self.last_output = hidden_out

    def scores(self) -> dict[str, Tensor | None]:
        """Width scores and Block Importance, float32 on the CPU."""
        a = self.adapter
        hidden = sum(score.value() for per_layer in self.norm_scores for score in per_layer)
        device = hidden.device
        # a block without an axis (a hybrid's) scores 0 on it
        per_layer = lambda axis, scores, size: torch.stack(
            [s.value() if a.has_axis(axis, i) else torch.zeros(size, device=device) for i, s in enumerate(scores)])
        heads = torch.linalg.vector_norm(
            per_layer("heads", self.head_scores, a.num_attention_heads * a.head_dim)
            .view(a.num_hidden_layers, a.num_attention_heads, a.head_dim), dim=-1)
        group = torch.tensor([a.kv_group_of_head(h) for h in range(a.num_attention_heads)], device=device)
        kv_groups = torch.zeros(a.num_hidden_layers, a.num_key_value_heads, device=device)
        kv_groups = kv_groups.index_add_(1, group, heads.square()).sqrt()
        experts = None
        if a.moe:
            experts, mlp = (torch.stack(t) for t in zip(*(tally.value() for tally in self.expert_tallies)))
        else:
            mlp = per_layer("mlp", self.mlp_scores, a.intermediate_size)
        mamba = {}
        if a.hybrid:  # a Mamba head: the L2 norm of its channels' scores; a group: of its heads' (as KV groups)
            channels = per_layer("mamba_heads", self.mamba_scores, a.mamba_num_heads * a.mamba_head_dim)
            mamba_heads = torch.linalg.vector_norm(channels.view(a.num_hidden_layers, a.mamba_num_heads, -1), dim=-1)
            member = torch.tensor([a.mamba_group_of_head(h) for h in range(a.mamba_num_heads)], device=device)
            mamba_groups = torch.zeros(a.num_hidden_layers, a.n_groups, device=device)
            mamba = {"mamba_heads": mamba_heads,
                     "mamba_groups": mamba_groups.index_add_(1, member, mamba_heads.square()).sqrt()}
        layers = None
        if self.block_importance:
            layers = torch.stack([s / n for s, n in zip(self.bi_sums, self.bi_tokens)])
        out = dict(hidden=hidden, heads=heads, mlp=mlp, kv_groups=kv_groups, layers=layers, experts=experts, **mamba)
        return {k: None if v is None else v.detach().float().cpu() for k, v in out.items()}


# ---- layers_loss ------------------------------------------------------------------------------------------
class SkipLoss:
    """Running sums of the LM loss with each layer skipped."""

    def __init__(self, num_layers: int):
        self.sums: list[Tensor | None] = [None] * num_layers
        self.targets = 0

    def add(self, layer: int, loss_sum: Tensor) -> None:
        self.sums[layer] = loss_sum if self.sums[layer] is None else self.sums[layer] + loss_sum

    def value(self) -> Tensor:
        if self.targets == 0:
            raise MinitronError("layers_loss needs calibration samples of at least two unmasked tokens")
        return torch.stack([s.detach().cpu() for s in self.sums]).float() / self.targets


def build_importance(
    scores: dict[str, Tensor | None],
    skip_loss: SkipLoss | None,
    tally: CalibrationTally,
    config: Any,
    *,
    batch_agg: str,
    seq_agg: str,
    mlp_site: str,
    blocks: Any = None,
) -> Importance:
    if tally.samples == 0:
        raise MinitronError("no calibration tokens: every batch was empty or fully masked")
    return Importance(
        **scores,
        **({} if blocks is None else {**blocks.value(), "block_layers": blocks.block_layers}),
        layers_loss=None if skip_loss is None else skip_loss.value(),
        batch_agg=batch_agg,
        seq_agg=seq_agg,
        mlp_site=mlp_site,
        num_samples=tally.samples,
        num_tokens=tally.tokens,
        seq_len=tally.seq_len,
        config_hash=config_hash(config),
        corpus_fingerprint=tally.fingerprint(),
    )


# ---- entry point ------------------------------------------------------------------------------------------
def estimate(
    model: PreTrainedModel,
    batches: Iterable[BatchLike],
    *,
    batch_agg: str = "l2",
    seq_agg: str = "mean",
    mlp_site: str = "post",
    depth: Iterable[str] = ("bi", "loss"),
    blocks: Iterable[str] = (),
    block_layers: int | None = None,
    progress: bool = True,
) -> Importance:
    """Score every prunable axis of `model` on the calibration `batches` (consumed once).

    `batches` yields `input_ids` [batch, seq] or dicts with `input_ids` and an optional `attention_mask`
    (right padding). `depth` picks the depth scores to compute, among "bi" (`layers`) and "loss"
    (`layers_loss`); the others are None. `blocks` picks block scores among "loss" (`blocks_loss`) and "bi"
    (`blocks_bi`) for every contiguous block of `block_layers` layers (see `minitron.importance.blocks`).
    """
    depth = check_options(batch_agg, seq_agg, mlp_site, depth)
    adapter = get_adapter(model)
    blocks = check_block_options(blocks, block_layers, adapter.num_hidden_layers)
    device = next(model.parameters()).device
    decoder = model.get_submodule(adapter.prefix)
    layers = adapter.layers(model)
    final_norm, lm_head = model.get_submodule(adapter.final_norm), model.get_submodule(adapter.lm_head)
    head = lambda h: adapter.logits(lm_head(final_norm(h)))
    collector = ScoreCollector(
        adapter,
        seq_agg=seq_agg,
        batch_agg=batch_agg,
        mlp_site=mlp_site,
        block_importance="bi" in depth,
        keep_layer_inputs="loss" in depth or bool(blocks),
    )
    skip_loss = SkipLoss(adapter.num_hidden_layers) if "loss" in depth else None
    block_scores = BlockScores(adapter.num_hidden_layers, block_layers, blocks) if blocks else None
    tally = CalibrationTally()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), collector.attached(model):
            for raw in tqdm(batches, desc="importance", unit="batch", disable=not progress):
                batch = prepare_batch(raw, device)
                if batch is None:
                    continue
                tally.add(batch)
                collector.tokens = batch.tokens
                decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
                with collector.paused():
                    if skip_loss is not None:
                        _replay_skips(layers, collector.layer_inputs, head, batch, skip_loss, adapter.config.vocab_size)
                    if block_scores is not None:
                        block_scores.add(layers, collector.layer_inputs, collector.last_output, head, batch,
                                         adapter.config.vocab_size)
                collector.layer_inputs.clear()
                collector.last_output = None
    finally:
        model.train(was_training)
    scores = collector.scores() if tally.samples else {}
    return build_importance(
        scores, skip_loss, tally, model.config, batch_agg=batch_agg, seq_agg=seq_agg, mlp_site=mlp_site,
        blocks=block_scores,
    )


def _replay_skips(
    layers: nn.ModuleList,
    inputs: dict[int, tuple[Tensor, tuple, dict[str, Any]]],
    head: Callable[[Tensor], Tensor],
    batch: Batch,
    skip_loss: SkipLoss,
    vocab: int,
) -> None:
    """For each layer i, run layers i+1.. on the input layer i received, as if layer i returned its input."""
    n = len(layers)
    for i in range(n):
        hidden = inputs[i][0]
        for j in range(i + 1, n):
            hidden = call_layer(layers[j], hidden, inputs[j][1], inputs[j][2])
        skip_loss.add(i, lm_loss_sum(hidden, batch, head, vocab))
    skip_loss.targets += batch.num_targets
