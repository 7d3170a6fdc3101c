"""Distillation losses on logits and on intermediate hidden states, in float32, masked per token.

Every logit loss is written per token: `token_losses(student_logits, teacher_logits, labels, spec)` maps
`[tokens, vocab]` logits to `[tokens]` values, so the plain path (`logit_loss`) and the chunked path
(`minitron.distill.chunked`) share one definition. Reduction is the mean over tokens whose label is not -100.

Divergences (p = teacher, q = student, both at temperature T, the term scaled by T^2 as usual for KD):
- `kl`    forward KL(p || q): the paper's best, at T = 1 with no cross-entropy;
- `rkl`   reverse KL(q || p);
- `jsd`   generalized Jensen-Shannon with mixture m = beta p + (1 - beta) q:
          beta KL(p || m) + (1 - beta) KL(q || m), beta in (0, 1) (0.5 is the symmetric JSD);
- `topk`  KL between teacher and student both restricted to the teacher's top-k tokens and renormalised there;
- `none`  no logit divergence (cross-entropy only, with `ce_weight` > 0).
The logged `kl` is always the true forward KL at T = 1 (zero when student == teacher), whichever loss trains.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from minitron.errors import MinitronError

IGNORE_INDEX = -100
KINDS = ("kl", "rkl", "jsd", "topk", "none")


@dataclass(frozen=True)
class LogitLossSpec:
    """What the logit loss is: `weight * T^2 * divergence + ce_weight * cross-entropy`, per token."""

    kind: str = "kl"
    weight: float = 1.0
    temperature: float = 1.0
    beta: float = 0.5
    top_k: int = 100
    ce_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise MinitronError(f"distill.loss.kind='{self.kind}' is unknown; choose one of {', '.join(KINDS)}")
        if self.temperature <= 0:
            raise MinitronError(f"distill.loss.temperature must be positive, got {self.temperature}; the paper uses 1")
        if self.kind == "jsd" and not 0 < self.beta < 1:
            raise MinitronError(f"distill.loss.beta must be in (0, 1) for jsd, got {self.beta}; 0.5 is the symmetric JSD")
        if self.kind == "topk" and self.top_k < 1:
            raise MinitronError(f"distill.loss.top_k must be at least 1, got {self.top_k}")
        if self.weight < 0 or self.ce_weight < 0:
            raise MinitronError("distill.loss.weight and distill.loss.ce_weight must be non-negative")
        if (self.kind == "none" or self.weight == 0) and self.ce_weight == 0:
            raise MinitronError("the distillation loss is empty: set distill.loss.kind to a divergence or ce_weight > 0")

    @property
    def needs_teacher(self) -> bool:
        return self.kind != "none" and self.weight > 0


def _kl_from_log(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row from log-probabilities; 0 * log 0 counts as 0."""
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(-1)


def _log_softmax(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    x = logits.float()
    return F.log_softmax(x if temperature == 1 else x / temperature, -1)


def _row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row dot products of two `[tokens, vocab]` tensors as a batched matmul: no `[tokens, vocab]` product."""
    return (a.unsqueeze(-2) @ b.unsqueeze(-1)).reshape(a.shape[:-1])


def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(p || q) per row, p the teacher's distribution. With constant teacher logits (distillation) it is
    p . log p - p . log q: autograd keeps only log q and p, and no `[tokens, vocab]` product is formed, which
    cuts the plain loss's peak memory by about a third at a large vocabulary."""
    t = float(temperature)
    log_q = _log_softmax(student_logits, t)
    if teacher_logits.requires_grad:
        return _kl_from_log(_log_softmax(teacher_logits, t), log_q)
    with torch.no_grad():
        log_p = _log_softmax(teacher_logits, t)
        p = log_p.exp()
        neg_entropy = _row_dot(p, log_p.nan_to_num_(neginf=0.0))  # 0 log 0 = 0
        del log_p
    kl = neg_entropy - _row_dot(p, log_q)
    if not torch.isfinite(kl).all() and torch.isinf(log_q).any():
        # a -inf student logit where the teacher puts no mass: 0 * -inf; the masked form counts it as 0
        return _kl_from_log(_log_softmax(teacher_logits, t), log_q)
    return kl


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    t = float(temperature)
    return _kl_from_log(_log_softmax(student_logits, t), _log_softmax(teacher_logits, t))


def generalized_jsd(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float = 0.5, temperature: float = 1.0
) -> torch.Tensor:
    t = float(temperature)
    log_p = _log_softmax(teacher_logits, t)
    log_q = _log_softmax(student_logits, t)
    # log m = log(beta p + (1 - beta) q), computed stably in log space
    log_m = torch.logsumexp(torch.stack([log_p + torch.log(torch.tensor(beta)), log_q + torch.log(torch.tensor(1 - beta))]), 0)
    return beta * _kl_from_log(log_p, log_m) + (1 - beta) * _kl_from_log(log_q, log_m)


def topk_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, k: int, temperature: float = 1.0) -> torch.Tensor:
    t = float(temperature)
    k = min(int(k), teacher_logits.shape[-1])
    top, idx = teacher_logits.float().topk(k, dim=-1)
    s = student_logits.float().gather(-1, idx)
    return _kl_from_log(_log_softmax(top, t), _log_softmax(s, t))


def cross_entropy(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token next-token cross-entropy; 0 where the label is -100."""
    return F.cross_entropy(student_logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="none")


def token_losses(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor, spec: LogitLossSpec
) -> torch.Tensor:
    """The per-token training loss `[tokens]` (0 where labels == -100) for `[tokens, vocab]` logits."""
    valid = labels != IGNORE_INDEX
    loss = torch.zeros(labels.shape, dtype=torch.float32, device=student_logits.device)
    if spec.needs_teacher:
        if teacher_logits is None:
            raise MinitronError(f"distill.loss.kind={spec.kind} needs the teacher's logits")
        t = spec.temperature
        if spec.kind == "kl":
            div = forward_kl(student_logits, teacher_logits, t)
        elif spec.kind == "rkl":
            div = reverse_kl(student_logits, teacher_logits, t)
        elif spec.kind == "jsd":
            div = generalized_jsd(student_logits, teacher_logits, spec.beta, t)
        else:
            div = topk_kl(student_logits, teacher_logits, spec.top_k, t)
        loss = loss + spec.weight * t * t * div
    if spec.ce_weight > 0:
        loss = loss + spec.ce_weight * cross_entropy(student_logits, labels)
    return torch.where(valid, loss, torch.zeros_like(loss))


@torch.no_grad()
def token_metrics(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-token sums for logging: the true forward KL at T = 1 and the student's cross-entropy."""
    valid = labels != IGNORE_INDEX
    out = {"ce": cross_entropy(student_logits, labels).masked_fill(~valid, 0).sum()}
    if teacher_logits is not None:
        out["kl"] = forward_kl(student_logits, teacher_logits).masked_fill(~valid, 0).sum()
    return out


def shift_labels(labels: torch.Tensor) -> torch.Tensor:
    """Next-token targets aligned with positions: position i predicts labels[i + 1]; the last has none."""
    return F.pad(labels[..., 1:], (0, 1), value=IGNORE_INDEX)


def logit_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor, spec: LogitLossSpec
) -> tuple[torch.Tensor, dict[str, float]]:
    """The plain (full-logits) loss: mean over valid tokens, plus logged metrics.

    `labels` are already the per-position targets (see `shift_labels`); logits are `[..., vocab]`.
    """
    s = student_logits.reshape(-1, student_logits.shape[-1])
    t = None if teacher_logits is None else teacher_logits.reshape(-1, teacher_logits.shape[-1])
    y = labels.reshape(-1)
    count = (y != IGNORE_INDEX).sum().clamp(min=1)
    loss = token_losses(s, t, y, spec).sum() / count
    metrics = {k: float(v / count) for k, v in token_metrics(s, t, y).items()}
    return loss, metrics


# ---- intermediate states --------------------------------------------------------------------------------
PAIRINGS: tuple[str, ...] = ("kept", "even")


@dataclass(frozen=True)
class IntermediateSpec:
    """Pairs of (student layer, teacher layer) whose post-norm hidden states are matched.

    Layer i is the residual stream after decoder layer i (1-based; the model's last layer is taken after its
    final norm, as transformers returns it), normalised by a parameter-free LayerNorm. `weight` None means the
    paper's dynamic alpha = L_logits / L_is (detached) every step.
    """

    pairs: tuple[tuple[int, int], ...] = ()
    kind: str = "cosine"
    weight: float | None = None
    pairing: str = "kept"  # without explicit pairs: "kept" (the pruned student's kept-layer map) or "even"

    def __post_init__(self) -> None:
        if self.pairing not in PAIRINGS:
            raise MinitronError(
                f"distill.intermediate.pairing='{self.pairing}' is unknown; choose one of {', '.join(PAIRINGS)}"
            )
        if self.kind not in ("cosine", "mse"):
            raise MinitronError(f"distill.intermediate.kind='{self.kind}' is unknown; choose cosine or mse")
        if self.weight is not None and self.weight < 0:
            raise MinitronError(f"distill.intermediate.weight must be non-negative or null, got {self.weight}")
        for s, t in self.pairs:
            if s < 1 or t < 1:
                raise MinitronError(f"distill.intermediate.pairs: layer numbers are 1-based, got ({s}, {t})")


class StateProjection(nn.Module):
    """One learned Linear(student_hidden -> teacher_hidden) shared by every pair; identity when widths match."""

    def __init__(self, student_hidden: int, teacher_hidden: int):
        super().__init__()
        self.proj = nn.Linear(student_hidden, teacher_hidden, bias=False) if student_hidden != teacher_hidden else None
        if self.proj is not None:
            # start as a (truncated) identity so that the loss is meaningful from step one
            with torch.no_grad():
                self.proj.weight.zero_()
                n = min(student_hidden, teacher_hidden)
                self.proj.weight[:n, :n] = torch.eye(n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.proj is None else self.proj(x.to(self.proj.weight.dtype))


def post_norm(x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x.float(), (x.shape[-1],))


def intermediate_loss(
    student_states: list[torch.Tensor],
    teacher_states: list[torch.Tensor],
    mask: torch.Tensor,
    spec: IntermediateSpec,
    projection: nn.Module | None = None,
) -> torch.Tensor:
    """Mean over pairs of the per-token cosine distance (1 - cos) or MSE, averaged over tokens where mask is 1.

    `student_states[i]` / `teacher_states[i]` are `[batch, seq, hidden]` for the i-th pair.
    """
    if len(student_states) != len(teacher_states) or not student_states:
        raise MinitronError("distill.intermediate.pairs is empty or the states do not pair up")
    valid = mask.reshape(-1).bool()
    count = valid.sum().clamp(min=1)
    total = torch.zeros((), dtype=torch.float32, device=student_states[0].device)
    for s, t in zip(student_states, teacher_states):
        s = post_norm(s)
        if projection is not None:
            s = projection(s).float()
        t = post_norm(t.detach())
        if s.shape[-1] != t.shape[-1]:
            raise MinitronError(
                f"intermediate states differ in width ({s.shape[-1]} vs {t.shape[-1]}); a StateProjection is needed"
            )
        s, t = s.reshape(-1, s.shape[-1]), t.reshape(-1, t.shape[-1])
        if spec.kind == "cosine":
            per = 1 - F.cosine_similarity(s, t, dim=-1)
        else:
            per = (s - t).pow(2).mean(-1)
        total = total + torch.where(valid, per, torch.zeros_like(per)).sum() / count
    return total / len(student_states)


def combine(logit_term: torch.Tensor, is_term: torch.Tensor | None, spec: IntermediateSpec) -> tuple[torch.Tensor, float]:
    """L = L_logits + alpha * L_is; alpha = L_logits / L_is (detached) unless a fixed weight is set."""
    if is_term is None:
        return logit_term, 0.0
    if spec.weight is not None:
        alpha = torch.tensor(float(spec.weight), device=is_term.device)
    else:
        alpha = (logit_term.detach() / is_term.detach().clamp(min=1e-8))
    return logit_term + alpha * is_term, float(alpha)


@dataclass(frozen=True)
class DistillLossSpec:
    logits: LogitLossSpec = field(default_factory=LogitLossSpec)
    intermediate: IntermediateSpec | None = None
    chunk_size: int = 256  # tokens per chunk of the vocabulary loss; 0: the plain full-logits path
