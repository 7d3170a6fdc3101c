"""The vocabulary loss without `[tokens, vocab]` logits: chunks of tokens, one autograd Function.

`chunked_logit_loss` takes the final (post-norm) hidden states and output-layer weights of the student and the
teacher and walks over the tokens `chunk_size` at a time: per chunk it forms both models' logits, the per-token
loss of `minitron.distill.losses.token_losses`, and the gradient of that loss with respect to the chunk's
logits (in closed form for forward KL, reverse KL, the generalized JSD and cross-entropy; by autograd on the
chunk for top-k), which it folds at once into gradients for the student's hidden states and output weight. Only one chunk
of logits exists at any moment, so memory is O(chunk x vocab) instead of O(tokens x vocab) for each model.

Two schedules, equal in values and gradients:
- `precompute_grad=True` (default when gradients are needed): the gradients are formed during the forward walk
  and kept (they have the size of the hidden states and of the weight), so backward only scales them. One walk,
  the same number of matmuls as the plain loss.
- `precompute_grad=False`: forward keeps nothing but its inputs, and backward walks the chunks again,
  recomputing both models' logits. One more pair of matmuls; use it when the loss may never be backpropagated.
"""

from __future__ import annotations

import math

import torch

from minitron.distill.losses import IGNORE_INDEX, LogitLossSpec, token_losses, token_metrics


def _chunk_logits(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return (h @ w.t()).float()


def _kl_ce_with_grad(s_logits, t_logits, labels, spec: LogitLossSpec):
    """Summed forward-KL (+ cross-entropy) loss of one chunk, its closed-form gradient w.r.t. the logits, and the
    logged sums (or None when they need a separate pass).

    With q = softmax(s/T), p = softmax(t/T), lse the log-sum-exp of a row:
    KL(p || q) = p . (t/T - s/T) + lse(s/T) - lse(t/T); d/ds [w T^2 KL] = w T (q - p);
    CE(s, y) = lse(s) - s_y; d/ds [c CE] = c (softmax(s) - onehot(y)).
    Written this way no [chunk, vocab] log-probabilities are materialised, only q and p.
    Rows with label -100 get zero loss and gradient.
    """
    keep = labels != IGNORE_INDEX
    safe = labels.clamp(min=0).unsqueeze(-1)
    w, c, t = spec.weight, spec.ce_weight, spec.temperature
    loss = torch.zeros((), dtype=torch.float32, device=s_logits.device)
    metrics: dict[str, torch.Tensor] | None = {}
    lse_1 = torch.logsumexp(s_logits, -1)  # at T = 1, for the cross-entropy
    ce = (lse_1 - s_logits.gather(-1, safe).squeeze(-1)).masked_fill(~keep, 0)
    metrics["ce"] = ce.sum()
    if spec.needs_teacher:
        s_t = s_logits if t == 1 else s_logits / t
        t_t = t_logits if t == 1 else t_logits / t
        lse_s = lse_1 if t == 1 else torch.logsumexp(s_t, -1)
        lse_t = torch.logsumexp(t_t, -1)
        p = (t_t - lse_t.unsqueeze(-1)).exp_()
        # two row dots instead of p . (t - s): no [chunk, vocab] difference
        kl = torch.linalg.vecdot(p, t_t) - torch.linalg.vecdot(p, s_t) + lse_s - lse_t
        kl = kl.masked_fill(~keep, 0)
        loss = loss + w * t * t * kl.sum()
        if t == 1:
            metrics["kl"] = kl.sum()
        else:
            metrics = None  # the logged KL is at T = 1: the caller computes it
        # q; at T = 1 written over the teacher's logits, which are no longer needed (the caller's chunk buffer,
        # see `_walk`): three [chunk, vocab] buffers at the peak (student and teacher logits, p) instead of four
        q_buf = t_logits if t == 1 else torch.empty_like(s_t)
        grad = torch.sub(s_t, lse_s.unsqueeze(-1), out=q_buf).exp_()
        if c > 0 and t == 1:
            grad.mul_(w + c).sub_(p, alpha=w)
        else:
            grad.sub_(p).mul_(w * t)
            if c > 0:
                grad.add_((s_logits - lse_1.unsqueeze(-1)).exp_(), alpha=c)
        del p
    else:
        grad = (s_logits - lse_1.unsqueeze(-1)).exp_().mul_(c)
    if c > 0:
        loss = loss + c * ce.sum()
        grad.scatter_add_(-1, safe, torch.full(safe.shape, -float(c), dtype=grad.dtype, device=grad.device))
    return loss, grad.masked_fill_(~keep.unsqueeze(-1), 0), metrics


def _rkl_jsd_with_grad(s_logits, t_logits, labels, spec: LogitLossSpec):
    """Summed reverse-KL or generalized-JSD loss (+ cross-entropy) of one chunk, its closed-form gradient w.r.t.
    the student's logits, and the logged sums (or None when they need a separate pass), as `_kl_ce_with_grad`.

    With z = s/T, q = softmax(z), p = softmax(t/T), and a loss L(q), the softmax Jacobian gives
    dL/dz = q * (g - q . g) for g = dL/dq. Reverse KL(q || p) = q . (log q - log p) has g = log q - log p + 1,
    and the constant drops out: dL/dz = q * (d - RKL) with d = log q - log p. The generalized JSD,
    beta KL(p || m) + (1 - beta) KL(q || m) with m = beta p + (1 - beta) q, has
    g = (1 - beta) log(q / m) (the terms from m's dependence on q cancel: -beta (1 - beta) p/m + (1 - beta)
    (1 - (1 - beta) q/m) = (1 - beta)(1 - m/m)), so dL/dz = (1 - beta) q * (b - q . b) with b = log q - log m.
    The term is w T^2 L, and dz/ds = 1/T, so d/ds = w T dL/dz. log m = logaddexp(log beta + log p,
    log(1 - beta) + log q) stays finite where p or q underflows. Rows with label -100 get zero loss and gradient.
    """
    keep = labels != IGNORE_INDEX
    safe = labels.clamp(min=0).unsqueeze(-1)
    w, c, t = spec.weight, spec.ce_weight, spec.temperature
    lse_1 = torch.logsumexp(s_logits, -1)
    ce = (lse_1 - s_logits.gather(-1, safe).squeeze(-1)).masked_fill(~keep, 0)
    metrics: dict[str, torch.Tensor] | None = {"ce": ce.sum()}
    # log q and log p in place: at T = 1 over the chunk's logits (the caller's buffers, no longer needed once the
    # cross-entropy above is taken, see `_walk`), at other T over the scaled copies
    log_q = s_logits if t == 1 else s_logits / t
    log_q = log_q.sub_((lse_1 if t == 1 else torch.logsumexp(log_q, -1)).unsqueeze(-1))
    log_p = t_logits if t == 1 else t_logits / t
    log_p = log_p.sub_(torch.logsumexp(log_p, -1, keepdim=True))
    p = log_p.exp() if t == 1 or spec.kind == "jsd" else None
    if t == 1:  # the logged forward KL(p || q) at T = 1: p . log p - p . log q, no [chunk, vocab] difference
        metrics["kl"] = (torch.linalg.vecdot(p, log_p) - torch.linalg.vecdot(p, log_q)).masked_fill(~keep, 0).sum()
    else:
        metrics = None  # the logged KL is at T = 1: the caller computes it
    if spec.kind == "rkl":
        del p
        d = torch.sub(log_q, log_p, out=log_p)  # log q - log p, in log p's storage
        q = log_q.exp_()
        div = torch.linalg.vecdot(q, d)
        grad = d.sub_(div.unsqueeze(-1)).mul_(q).mul_(w * t)
    else:
        beta = float(spec.beta)
        log_m = log_p + math.log(beta)
        torch.logaddexp(log_m, log_q + math.log(1 - beta), out=log_m)
        a = log_p.sub_(log_m)  # log p - log m
        div = beta * torch.linalg.vecdot(p, a)
        del p, a, log_p
        q = log_q.exp()
        b = log_q.sub_(log_m)  # log q - log m
        del log_m
        qb = torch.linalg.vecdot(q, b)
        div = div + (1 - beta) * qb
        grad = b.sub_(qb.unsqueeze(-1)).mul_(q).mul_((1 - beta) * w * t)
    loss = w * t * t * div.masked_fill(~keep, 0).sum()
    if c > 0:
        loss = loss + c * ce.sum()
        grad.add_(q if t == 1 else (s_logits - lse_1.unsqueeze(-1)).exp_(), alpha=c)  # q is softmax(s) at T = 1
        grad.scatter_add_(-1, safe, torch.full(safe.shape, -float(c), dtype=grad.dtype, device=grad.device))
    return loss, grad.masked_fill_(~keep.unsqueeze(-1), 0), metrics


def _walk(h_s, w_s, h_t, w_t, labels, spec, chunk, want_grad_h, want_grad_w, stats):
    """One pass over the chunks: summed loss, and (when asked) gradients of the summed loss.

    The chunk's logits are fresh buffers of this walk: the closed-form loss functions may overwrite them when
    they return metrics (at T = 1); when they return None for the metrics, they have left them intact."""
    total = torch.zeros((), dtype=torch.float32, device=h_s.device)
    grad_h = torch.zeros_like(h_s) if want_grad_h else None
    grad_w = torch.zeros(w_s.shape, dtype=torch.float32, device=w_s.device) if want_grad_w else None
    for start in range(0, h_s.shape[0], chunk):
        sl = slice(start, start + chunk)
        y = labels[sl]
        t_logits = _chunk_logits(h_t[sl], w_t) if h_t is not None else None
        s_logits = _chunk_logits(h_s[sl], w_s)
        metrics = None
        if want_grad_h or want_grad_w:
            if spec.kind in ("kl", "none"):
                part, g, metrics = _kl_ce_with_grad(s_logits, t_logits, y, spec)
            elif spec.kind in ("rkl", "jsd") and spec.needs_teacher:
                part, g, metrics = _rkl_jsd_with_grad(s_logits, t_logits, y, spec)
            else:
                with torch.enable_grad():
                    s_req = s_logits.detach().requires_grad_()
                    part = token_losses(s_req, t_logits, y, spec).sum()
                    (g,) = torch.autograd.grad(part, s_req)
            g = g.to(h_s.dtype)
            if want_grad_h:
                grad_h[sl] = g @ w_s
            if want_grad_w:
                if h_s.dtype == torch.float32:
                    grad_w.addmm_(g.t(), h_s[sl])  # in place: no [vocab, hidden] temporary per chunk
                else:
                    grad_w += (g.t() @ h_s[sl]).float()
            del g
        else:
            part = token_losses(s_logits, t_logits, y, spec).sum()
        total += part.detach()
        if stats is not None:
            if metrics is None:
                metrics = token_metrics(s_logits, t_logits, y)
            for k, v in metrics.items():
                stats[k] = stats.get(k, 0.0) + float(v)
    return total, grad_h, grad_w


class _ChunkedLogitLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h_s, w_s, h_t, w_t, labels, spec, chunk, precompute, stats):
        count = (labels != IGNORE_INDEX).sum().clamp(min=1)
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        early = precompute and (want_h or want_w)
        total, grad_h, grad_w = _walk(h_s, w_s, h_t, w_t, labels, spec, chunk, want_h and early, want_w and early, stats)
        ctx.spec, ctx.chunk, ctx.early, ctx.w_dtype = spec, chunk, early, w_s.dtype
        if early:
            ctx.save_for_backward(count, grad_h, grad_w)
        else:
            ctx.save_for_backward(count, h_s, w_s, h_t, w_t, labels)
        return total / count

    @staticmethod
    def backward(ctx, grad_out):
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if ctx.early:
            if getattr(ctx, "consumed", False):
                raise RuntimeError("chunked_logit_loss: a second backward through the same loss is not supported")
            ctx.consumed = True
            count, grad_h, grad_w = ctx.saved_tensors
        else:
            count, h_s, w_s, h_t, w_t, labels = ctx.saved_tensors
            _, grad_h, grad_w = _walk(h_s, w_s, h_t, w_t, labels, ctx.spec, ctx.chunk, want_h, want_w, None)
        scale = grad_out / count
        # scaled in place: the saved gradients are not needed afterwards, and a copy would double their memory
        gh = grad_h.mul_(scale.to(grad_h.dtype)) if want_h and grad_h is not None else None
        gw = grad_w.mul_(scale).to(ctx.w_dtype) if want_w and grad_w is not None else None
        return gh, gw, None, None, None, None, None, None, None


def chunked_logit_loss(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor | None,
    teacher_weight: torch.Tensor | None,
    labels: torch.Tensor,
    spec: LogitLossSpec,
    *,
    chunk_size: int = 256,
    precompute_grad: bool = True,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean per-token logit loss over tokens whose label is not -100, and the logged metrics (kl, ce).

    Hidden states are `[..., hidden]` with per-position targets `labels[...]` (see `losses.shift_labels`);
    weights are `[vocab, hidden]` as in `nn.Linear`. The teacher's inputs are treated as constants.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    h_s = student_hidden.reshape(-1, student_hidden.shape[-1])
    y = labels.reshape(-1)
    h_t = w_t = None
    if spec.needs_teacher:
        h_t = teacher_hidden.reshape(-1, teacher_hidden.shape[-1]).detach()
        w_t = teacher_weight.detach()
    stats: dict[str, float] = {}
    loss = _ChunkedLogitLoss.apply(h_s, student_weight, h_t, w_t, y, spec, int(chunk_size), bool(precompute_grad), stats)
    count = max(int((y != IGNORE_INDEX).sum()), 1)
    return loss, {k: v / count for k, v in stats.items()}
