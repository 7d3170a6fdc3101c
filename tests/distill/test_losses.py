"""Each logit and intermediate-state loss against a plain float64 reference, masking, and the chunked path."""

from __future__ import annotations

import pytest
import torch

from minitron.distill.chunked import chunked_logit_loss
from minitron.distill.losses import (
    IntermediateSpec,
    LogitLossSpec,
    StateProjection,
    combine,
    generalized_jsd,
    intermediate_loss,
    logit_loss,
    shift_labels,
    token_losses,
)
from minitron.errors import MinitronError


def _logits(seed: int, n: int = 6, v: int = 11) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, v, generator=g) * 2, torch.randn(n, v, generator=g) * 2


def _ref_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return (p * (p.log() - q.log())).sum(-1)


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_forward_and_reverse_kl_match_a_float64_reference(temperature):
    s, t = _logits(0)
    labels = torch.arange(6)
    p = torch.softmax(t.double() / temperature, -1)
    q = torch.softmax(s.double() / temperature, -1)
    got = token_losses(s, t, labels, LogitLossSpec(kind="kl", temperature=temperature))
    torch.testing.assert_close(got.double(), temperature**2 * _ref_kl(p, q), rtol=1e-5, atol=1e-6)
    got = token_losses(s, t, labels, LogitLossSpec(kind="rkl", temperature=temperature))
    torch.testing.assert_close(got.double(), temperature**2 * _ref_kl(q, p), rtol=1e-5, atol=1e-6)


def test_forward_kl_gradients_and_infinite_logits_match_the_masked_form():
    from minitron.distill.losses import _kl_from_log, forward_kl

    s, t = _logits(1)
    t[0, :3] = -float("inf")  # vocabulary entries the teacher masks: 0 log 0 counts as 0
    s_ref = s.clone().requires_grad_()
    ref = _kl_from_log(torch.log_softmax(t, -1), torch.log_softmax(s_ref, -1))
    s_new = s.clone().requires_grad_()
    got = forward_kl(s_new, t)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    got.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(s_new.grad, s_ref.grad, rtol=1e-5, atol=1e-6)
    # a -inf student logit where the teacher also puts no mass, and teacher logits that carry gradients
    s[0, :3] = -float("inf")
    assert torch.isfinite(forward_kl(s, t)).all()
    t_req = t.clone().requires_grad_()
    torch.testing.assert_close(forward_kl(s, t_req), forward_kl(s, t), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_generalized_jsd_matches_its_definition(beta):
    s, t = _logits(1)
    p, q = torch.softmax(t.double(), -1), torch.softmax(s.double(), -1)
    m = beta * p + (1 - beta) * q
    expected = beta * _ref_kl(p, m) + (1 - beta) * _ref_kl(q, m)
    torch.testing.assert_close(generalized_jsd(s, t, beta).double(), expected, rtol=1e-5, atol=1e-6)
    if beta == 0.5:  # symmetric and bounded by log 2
        torch.testing.assert_close(generalized_jsd(s, t, 0.5), generalized_jsd(t, s, 0.5), rtol=1e-5, atol=1e-6)
        assert (generalized_jsd(s, t, 0.5) <= torch.log(torch.tensor(2.0)) + 1e-6).all()


def test_topk_kl_is_the_kl_over_the_teachers_top_k_renormalised():
    s, t = _logits(2)
    k = 3
    idx = t.topk(k, -1).indices
    p = torch.softmax(t.double().gather(-1, idx), -1)
    q = torch.softmax(s.double().gather(-1, idx), -1)
    got = token_losses(s, t, torch.zeros(6, dtype=torch.long), LogitLossSpec(kind="topk", top_k=k))
    torch.testing.assert_close(got.double(), _ref_kl(p, q), rtol=1e-5, atol=1e-6)
    # with k = vocab it is the full forward KL
    full = token_losses(s, t, torch.zeros(6, dtype=torch.long), LogitLossSpec(kind="topk", top_k=11))
    torch.testing.assert_close(full, token_losses(s, t, torch.zeros(6, dtype=torch.long), LogitLossSpec()))


def test_ce_weight_adds_the_cross_entropy_and_masking_drops_ignored_tokens():
    s, t = _logits(3)
    labels = torch.tensor([1, 2, -100, 4, -100, 6])
    spec = LogitLossSpec(kind="kl", weight=0.5, ce_weight=2.0)
    loss, metrics = logit_loss(s, t, labels, spec)
    keep = labels != -100
    p, q = torch.softmax(t.double()[keep], -1), torch.softmax(s.double()[keep], -1)
    ce = -torch.log_softmax(s.double()[keep], -1).gather(-1, labels[keep, None]).squeeze(-1)
    expected = (0.5 * _ref_kl(p, q) + 2.0 * ce).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert metrics["kl"] == pytest.approx(_ref_kl(p, q).mean().item(), rel=1e-5)
    assert metrics["ce"] == pytest.approx(ce.mean().item(), rel=1e-5)
    # whatever the ignored tokens' logits, the loss does not move
    s2 = s.clone()
    s2[~keep] = 100.0
    assert logit_loss(s2, t, labels, spec)[0].item() == pytest.approx(loss.item(), rel=1e-6)


def test_logged_kl_is_the_true_kl_zero_for_identical_models_at_any_temperature():
    s, _ = _logits(4)
    labels = torch.arange(6)
    for spec in (LogitLossSpec(), LogitLossSpec(temperature=3.0), LogitLossSpec(kind="jsd"), LogitLossSpec(kind="rkl")):
        loss, metrics = logit_loss(s, s.clone(), labels, spec)
        assert abs(loss.item()) < 1e-6 and abs(metrics["kl"]) < 1e-6
    loss, metrics = logit_loss(s, torch.zeros_like(s), labels, LogitLossSpec(temperature=3.0))
    assert metrics["kl"] > 0 and loss.item() > 0


def test_shift_labels_aligns_targets_with_positions():
    assert shift_labels(torch.tensor([[5, 6, 7, -100]])).tolist() == [[6, 7, -100, -100]]


def test_bad_specs_are_one_line_errors():
    with pytest.raises(MinitronError, match="kind='xx'"):
        LogitLossSpec(kind="xx")
    with pytest.raises(MinitronError, match="beta"):
        LogitLossSpec(kind="jsd", beta=1.0)
    with pytest.raises(MinitronError, match="temperature"):
        LogitLossSpec(temperature=0)
    with pytest.raises(MinitronError, match="empty"):
        LogitLossSpec(kind="none")
    with pytest.raises(MinitronError, match="cosine or mse"):
        IntermediateSpec(pairs=((1, 1),), kind="l1")


def test_intermediate_losses_cosine_and_mse_with_a_projection():
    g = torch.Generator().manual_seed(5)
    s = [torch.randn(2, 3, 8, generator=g), torch.randn(2, 3, 8, generator=g)]
    t = [torch.randn(2, 3, 12, generator=g), torch.randn(2, 3, 12, generator=g)]
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    proj = StateProjection(8, 12)
    torch.nn.init.normal_(proj.proj.weight, generator=g)

    def ref(kind):
        total = 0.0
        keep = mask.reshape(-1).bool()
        for a, b in zip(s, t):
            a = proj(torch.nn.functional.layer_norm(a, (8,))).reshape(-1, 12)[keep].double()
            b = torch.nn.functional.layer_norm(b, (12,)).reshape(-1, 12)[keep].double()
            if kind == "cosine":
                total += (1 - torch.nn.functional.cosine_similarity(a, b, dim=-1)).mean()
            else:
                total += (a - b).pow(2).mean(-1).mean()
        return total / len(s)

    for kind in ("cosine", "mse"):
        got = intermediate_loss(s, t, mask, IntermediateSpec(pairs=((1, 1), (2, 2)), kind=kind), proj)
        assert got.item() == pytest.approx(ref(kind).item(), rel=1e-5)
    # equal widths need no projection, and equal states give zero
    same = intermediate_loss(t, [x.clone() for x in t], mask, IntermediateSpec(pairs=((1, 1), (2, 2))))
    assert abs(same.item()) < 1e-6
    assert StateProjection(12, 12).proj is None


def test_dynamic_alpha_balances_the_terms_and_is_detached():
    logit_term = torch.tensor(2.0, requires_grad=True)
    is_term = torch.tensor(0.5, requires_grad=True)
    total, alpha = combine(logit_term * 1, is_term * 1, IntermediateSpec(pairs=((1, 1),)))
    assert alpha == pytest.approx(4.0) and total.item() == pytest.approx(4.0)
    total.backward()
    assert logit_term.grad.item() == 1.0 and is_term.grad.item() == pytest.approx(4.0)
    total, alpha = combine(torch.tensor(2.0), torch.tensor(0.5), IntermediateSpec(pairs=((1, 1),), weight=0.1))
    assert alpha == pytest.approx(0.1) and total.item() == pytest.approx(2.05)


SPECS = [
    LogitLossSpec(),
    LogitLossSpec(ce_weight=0.5),
    LogitLossSpec(temperature=2.0, ce_weight=0.3, weight=0.7),
    LogitLossSpec(kind="rkl"),
    LogitLossSpec(kind="rkl", temperature=2.0, ce_weight=0.4, weight=0.6),
    LogitLossSpec(kind="rkl", ce_weight=0.5),
    LogitLossSpec(kind="jsd", beta=0.3),
    LogitLossSpec(kind="jsd", beta=0.7, temperature=1.5, ce_weight=0.2, weight=0.8),
    LogitLossSpec(kind="jsd", beta=0.5, ce_weight=1.0),
    LogitLossSpec(kind="topk", top_k=5),
    LogitLossSpec(kind="none", ce_weight=1.0),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.kind}-T{s.temperature}-ce{s.ce_weight}-w{s.weight}")
@pytest.mark.parametrize("precompute", [True, False])
def test_chunked_loss_equals_the_plain_loss_in_value_and_gradients(spec, precompute):
    g = torch.Generator().manual_seed(6)
    n, hs, ht, v = 37, 8, 12, 50
    h_s = torch.randn(n, hs, generator=g, dtype=torch.float64).float().requires_grad_()
    w_s = (torch.randn(v, hs, generator=g) * 0.5).requires_grad_()
    h_t, w_t = torch.randn(n, ht, generator=g), torch.randn(v, ht, generator=g) * 0.5
    labels = torch.randint(0, v, (n,), generator=g)
    labels[::4] = -100

    teacher_logits = h_t @ w_t.t() if spec.needs_teacher else None
    plain, plain_metrics = logit_loss(h_s @ w_s.t(), teacher_logits, labels, spec)
    gh, gw = torch.autograd.grad(plain, [h_s, w_s])
    chunked, metrics = chunked_logit_loss(h_s, w_s, h_t, w_t, labels, spec, chunk_size=8, precompute_grad=precompute)
    ch, cw = torch.autograd.grad(chunked * 3.0, [h_s, w_s])  # a non-unit upstream gradient is honoured
    torch.testing.assert_close(chunked, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ch, 3.0 * gh, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cw, 3.0 * gw, rtol=1e-5, atol=1e-5)
    assert metrics.keys() == plain_metrics.keys()
    for k in metrics:
        assert metrics[k] == pytest.approx(plain_metrics[k], rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("kind", ["kl", "rkl", "jsd"])
def test_chunked_gradients_are_closed_form_for_kl_rkl_and_jsd(kind, monkeypatch):
    """No autograd on the chunks: the per-token loss of `losses` is never called while gradients are formed."""
    import minitron.distill.chunked as chunked

    def refuse(*args, **kwargs):
        raise AssertionError("the chunked loss fell back to autograd on the chunk")

    monkeypatch.setattr(chunked, "token_losses", refuse)
    g = torch.Generator().manual_seed(8)
    h_s = torch.randn(20, 6, generator=g).requires_grad_()
    w_s = torch.randn(40, 6, generator=g).requires_grad_()
    h_t, w_t = torch.randn(20, 6, generator=g), torch.randn(40, 6, generator=g)
    labels = torch.randint(0, 40, (20,), generator=g)
    loss, metrics = chunked_logit_loss(h_s, w_s, h_t, w_t, labels, LogitLossSpec(kind=kind, ce_weight=0.5), chunk_size=8)
    loss.backward()
    assert torch.isfinite(w_s.grad).all() and set(metrics) == {"ce", "kl"}


def test_chunked_rkl_and_jsd_stay_finite_where_probabilities_underflow():
    """Logit gaps of hundreds make exp underflow to 0 in float32; the closed forms must not give 0 * inf."""
    s = torch.tensor([[0.0, -300.0, 5.0], [200.0, 0.0, -200.0]])
    t = torch.tensor([[-300.0, 0.0, 1.0], [0.0, 250.0, 0.0]])
    labels = torch.tensor([2, 0])
    eye = torch.eye(3)
    for spec in (LogitLossSpec(kind="rkl"), LogitLossSpec(kind="jsd", beta=0.4)):
        h_s = s.clone().requires_grad_()
        plain, _ = logit_loss(h_s, t, labels, spec)
        (gp,) = torch.autograd.grad(plain, [h_s])
        h_c = s.clone().requires_grad_()
        chunked, _ = chunked_logit_loss(h_c, eye, t, eye, labels, spec, chunk_size=1)
        (gc,) = torch.autograd.grad(chunked, [h_c])
        assert torch.isfinite(chunked) and torch.isfinite(gc).all(), spec.kind
        torch.testing.assert_close(chunked, plain, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(gc, gp, rtol=1e-5, atol=1e-5)


def test_chunked_loss_never_builds_full_logits():
    """The largest float tensor allocated has chunk x vocab elements, not tokens x vocab."""
    n, h, v, chunk = 64, 4, 300, 8
    g = torch.Generator().manual_seed(7)
    h_s = torch.randn(n, h, generator=g).requires_grad_()
    w_s = torch.randn(v, h, generator=g).requires_grad_()
    h_t, w_t = torch.randn(n, h, generator=g), torch.randn(v, h, generator=g)
    labels = torch.randint(0, v, (n,), generator=g)
    biggest = 0

    def track(t):
        nonlocal biggest
        biggest = max(biggest, t.numel())

    from torch.utils._python_dispatch import TorchDispatchMode

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for o in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(o, torch.Tensor):
                    track(o)
            return out

    with Watch():
        loss, _ = chunked_logit_loss(h_s, w_s, h_t, w_t, labels, LogitLossSpec(), chunk_size=chunk)
        loss.backward()
    assert biggest <= max(chunk * v, v * h) < n * v


def test_generalized_jsd_matches_trls_when_it_is_installed():
    trl_gkd = pytest.importorskip("trl.experimental.gkd")
    s, t = _logits(8, n=5, v=17)
    labels = torch.tensor([1, -100, 3, 4, -100])
    for beta in (0.2, 0.5, 0.8):
        theirs = trl_gkd.GKDTrainer.generalized_jsd_loss(s[None], t[None], labels=labels[None], beta=beta)
        ours, _ = logit_loss(s, t, labels, LogitLossSpec(kind="jsd", beta=beta))
        assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)
