"""Loss balancers (RLW, GLS, DWA, UW, GradNorm, FAMO) and CosReg against hand-derived values
from their papers' update rules, plus state, degenerate input, registry and backward()."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import fastmtl
from fastmtl.balancers import (
    DWA,
    FAMO,
    GLS,
    RLW,
    UW,
    CosReg,
    GradNorm,
    available_balancers,
    make_balancer,
)

D = torch.float64


def vec(*xs, grad=False):
    return torch.tensor(xs, dtype=D, requires_grad=grad)


def make(name, T=3, **kw):
    return make_balancer(name, **({} if name in ("rlw", "gls") else {"n_tasks": T}), **kw)


# ---- RLW -------------------------------------------------------------------------------


def test_rlw_is_softmax_of_a_normal_draw():
    L = vec(1.0, 2.0, 3.0, 4.0)
    w = RLW(generator=torch.Generator().manual_seed(7)).weights(L)
    eps = torch.randn(4, generator=torch.Generator().manual_seed(7), dtype=D)
    expected = torch.exp(eps) / torch.exp(eps).sum()
    torch.testing.assert_close(w, expected)
    w4 = RLW(scale=4.0).weights(L, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(w4, 4 * expected)
    loss = RLW(generator=torch.Generator().manual_seed(7)).loss(L)
    torch.testing.assert_close(loss, (expected * L).sum())


def test_rlw_draws_afresh():
    rlw = RLW(generator=torch.Generator().manual_seed(0))
    L = vec(1.0, 1.0, 1.0)
    assert not torch.equal(rlw.weights(L), rlw.weights(L))


# ---- GLS -------------------------------------------------------------------------------


def test_gls_geometric_mean_and_weights():
    L = vec(1.0, 4.0, 2.0, grad=True)  # product 8, geometric mean 2
    gls = GLS()
    loss = gls.loss(L)
    assert loss.item() == pytest.approx(2.0)
    w = gls.weights(L)
    torch.testing.assert_close(w, torch.tensor([2 / 3, 2 / 12, 2 / 6], dtype=D))
    # the weights give the geometric mean's gradient w.r.t. the losses
    (g,) = torch.autograd.grad(loss, L)
    torch.testing.assert_close(g, w)


def test_gls_degenerate():
    assert GLS().weights(vec(3.0)).item() == pytest.approx(1.0)
    w = GLS().weights(vec(0.0, 1.0))
    assert torch.isfinite(w).all() and w[0] > w[1]
    assert math.isfinite(GLS().loss(vec(0.0, 1.0)).item())
    with pytest.raises(ValueError, match="non-negative"):
        GLS().weights(vec(-1.0, 1.0))


# ---- DWA -------------------------------------------------------------------------------


def test_dwa_weights_from_epoch_averages():
    dwa = DWA(n_tasks=2, temperature=2.0)
    L = vec(1.0, 1.0)
    # epoch 1: iterations [2, 4] and [4, 8] -> average [3, 6]
    assert torch.equal(dwa.weights(L), torch.ones(2, dtype=D))
    dwa.step(vec(2.0, 4.0))
    dwa.loss(vec(4.0, 8.0))  # loss() records too
    dwa.epoch_end()
    # epoch 2 still uses equal weights (first two epochs)
    assert torch.equal(dwa.weights(L), torch.ones(2, dtype=D))
    dwa.step(vec(1.5, 6.0))
    dwa.epoch_end()
    # epoch 3: r = [1.5 / 3, 6 / 6] = [0.5, 1.0]
    e1, e2 = math.exp(0.5 / 2), math.exp(1.0 / 2)
    expected = torch.tensor([2 * e1 / (e1 + e2), 2 * e2 / (e1 + e2)], dtype=D)
    torch.testing.assert_close(dwa.weights(L), expected)
    # the window slides: epoch 3 averages [3, 3] -> r = [3 / 1.5, 3 / 6]
    dwa.step(vec(3.0, 3.0))
    dwa.epoch_end()
    e1, e2 = math.exp(2.0 / 2), math.exp(0.5 / 2)
    torch.testing.assert_close(
        dwa.weights(L), torch.tensor([2 * e1 / (e1 + e2), 2 * e2 / (e1 + e2)], dtype=D)
    )
    loss = dwa.loss(vec(1.0, 2.0))
    assert loss.item() == pytest.approx((2 * e1 + 2 * 2 * e2) / (e1 + e2))


def test_dwa_degenerate_and_misuse():
    dwa = DWA(n_tasks=2)
    with pytest.raises(ValueError, match="no losses"):
        dwa.epoch_end()
    for _ in range(2):
        dwa.step(vec(0.0, 0.0))
        dwa.epoch_end()
    w = dwa.weights(vec(1.0, 1.0))
    assert torch.isfinite(w).all() and w.sum().item() == pytest.approx(2.0)


# ---- UW --------------------------------------------------------------------------------


@pytest.mark.parametrize("half", [False, True])
def test_uw_loss_and_gradient(half):
    uw = UW(n_tasks=2, half=half)
    with torch.no_grad():
        uw.log_vars.copy_(torch.tensor([0.5, -1.0]))
    L = vec(2.0, 3.0, grad=True)
    c = 0.5 if half else 1.0
    s = [0.5, -1.0]
    expected = c * sum(math.exp(-si) * li + si for si, li in zip(s, [2.0, 3.0], strict=True))
    loss = uw.loss(L)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    gL, gs = torch.autograd.grad(loss, [L, uw.log_vars])
    torch.testing.assert_close(gs, torch.tensor([c * (1 - math.exp(-si) * li)
                                                 for si, li in zip(s, [2.0, 3.0], strict=True)]))
    torch.testing.assert_close(gL, torch.tensor([c * math.exp(-si) for si in s], dtype=D))
    torch.testing.assert_close(uw.weights(L), gL)
    assert isinstance(uw, nn.Module) and [p for p in uw.parameters()] == [uw.log_vars]


# ---- GradNorm ----------------------------------------------------------------------------


def _tiny_net(seed=0):
    torch.manual_seed(seed)
    enc = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    heads = nn.ModuleList([nn.Linear(3, 1).double() for _ in range(3)])
    x = torch.randn(6, 4, dtype=D)
    ys = [torch.randn(6, 1, dtype=D) for _ in range(3)]
    return enc, heads, x, ys


def _losses(enc, heads, x, ys, scale=(1.0, 1.0, 1.0)):
    z = enc(x)
    return [s * ((h(z) - y) ** 2).mean() for s, h, y in zip(scale, heads, ys, strict=True)], z


def _gradnorm_by_hand(w, L, L0, W, alpha, lr):
    """The paper's L_grad differentiated by autograd w.r.t. a leaf copy of the weights."""
    w = w.clone().requires_grad_(True)
    G = []
    for t in range(len(L)):
        g = torch.autograd.grad(w[t] * L[t], W, retain_graph=True, create_graph=True)
        G.append(torch.sqrt(sum((gi**2).sum() for gi in g)))
    G = torch.stack(G)
    Lt = L.detach() / L0
    target = (G.mean() * (Lt / Lt.mean()) ** alpha).detach()
    (grad_w,) = torch.autograd.grad((G - target).abs().sum(), w)
    new = w.detach() - lr * grad_w
    return len(L) * new / new.sum()


def test_gradnorm_updates_match_the_paper():
    enc, heads, x, ys = _tiny_net()
    W = list(enc[2].parameters())
    gn = GradNorm(n_tasks=3, alpha=1.5, lr=0.1)
    L, _ = _losses(enc, heads, x, ys)
    L = torch.stack(L)
    assert torch.equal(gn.weights(L), torch.ones(3, dtype=D))
    L0 = L.detach()
    expected = _gradnorm_by_hand(torch.ones(3, dtype=D), L, L0, W, 1.5, 0.1)
    torch.testing.assert_close(gn.update(L, shared=enc[2]), expected)
    # a second step with changed losses (r != 1): the weights of step 1, L(0) of step 1
    L2, _ = _losses(enc, heads, x, ys, scale=(0.5, 1.0, 2.0))
    L2 = torch.stack(L2)
    expected2 = _gradnorm_by_hand(expected, L2, L0, W, 1.5, 0.1)
    torch.testing.assert_close(gn.update(L2, shared=W), expected2)
    assert gn.weights(L2).sum().item() == pytest.approx(3.0)


def test_gradnorm_loss_with_shared_layer_uses_pre_update_weights():
    enc, heads, x, ys = _tiny_net(1)
    gn = GradNorm(n_tasks=3, lr=0.1, shared_layer=enc[2])
    ref = GradNorm(n_tasks=3, lr=0.1)
    L, _ = _losses(enc, heads, x, ys)
    loss = gn.loss(L)
    assert loss.item() == pytest.approx(sum(li.item() for li in L))  # weights were 1
    ref.update(L, shared=enc[2])
    torch.testing.assert_close(gn.task_weights, ref.task_weights)
    assert not torch.equal(gn.task_weights, torch.ones(3, dtype=D))
    loss.backward()  # the graph is still usable


def test_gradnorm_needs_a_layer():
    L = vec(1.0, 2.0, grad=True) * 1
    with pytest.raises(ValueError, match="shared"):
        GradNorm(n_tasks=2).update(L)


# ---- FAMO ------------------------------------------------------------------------------


def test_famo_weights_and_loss_gradient():
    famo = FAMO(n_tasks=2, eps=0.0 + 1e-300)
    L = vec(1.0, 2.0, grad=True)
    # z = [1/2, 1/2]: w = (z/L) / sum(z/L) = [2/3, 1/3]
    torch.testing.assert_close(famo.weights(L), torch.tensor([2 / 3, 1 / 3], dtype=D))
    (g,) = torch.autograd.grad(famo.loss(L), L)
    torch.testing.assert_close(g, famo.weights(L))


def test_famo_sgd_update_is_algorithm_1():
    famo = FAMO(n_tasks=3, optimizer="sgd", lr=0.5, weight_decay=0.1)
    xi0 = torch.tensor([0.2, -0.1, 0.4], dtype=D)
    famo.logits.copy_(xi0)
    before, after = vec(1.0, 2.0, 4.0), vec(0.5, 1.9, 1.0)
    famo.loss(before)
    famo.update(after)
    z = torch.exp(xi0) / torch.exp(xi0).sum()
    jac = torch.diag(z) - torch.outer(z, z)  # d softmax / d xi
    delta = jac.T @ (torch.log(before + 1e-8) - torch.log(after + 1e-8))
    torch.testing.assert_close(famo.logits, xi0 - 0.5 * (delta + 0.1 * xi0))


def test_famo_adam_update_matches_torch_adam():
    famo = FAMO(n_tasks=2)  # official defaults: Adam, lr 0.025, weight decay 0.01
    xi = torch.zeros(2, dtype=D, requires_grad=True)
    opt = torch.optim.Adam([xi], lr=0.025, weight_decay=0.01)
    for before, after in [((1.0, 2.0), (0.8, 1.9)), ((0.8, 1.9), (0.7, 1.0))]:
        famo.loss(vec(*before))
        famo.update(vec(*after))
        z = torch.softmax(xi, 0)
        dlog = torch.log(vec(*before) + 1e-8) - torch.log(vec(*after) + 1e-8)
        (xi.grad,) = torch.autograd.grad(z, xi, grad_outputs=dlog)
        opt.step()
        torch.testing.assert_close(famo.logits, xi.detach())
    assert famo.logits[1] > famo.logits[0]  # the task that improved less gains weight


def test_famo_misuse():
    with pytest.raises(ValueError, match="loss"):
        FAMO(n_tasks=2).update(vec(1.0, 1.0))
    with pytest.raises(ValueError, match="min_losses"):
        FAMO(n_tasks=2, min_losses=[1.0, 0.0]).weights(vec(0.5, 1.0))


# ---- shared properties ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["rlw", "gls", "dwa", "uw", "gradnorm", "famo"])
def test_degenerate_and_bad_input(name):
    b = make(name, T=3)
    for losses in (vec(0.0, 0.0, 0.0), vec(1e-30, 1.0, 1e30)):
        w = b.weights(losses)
        assert w.shape == (3,) and torch.isfinite(w).all() and not w.requires_grad
        if name != "gradnorm":
            assert torch.isfinite(b.loss(losses))
    one = make(name, T=1)
    assert torch.isfinite(one.weights(vec(2.0))).all()
    for bad in (vec(float("nan"), 1.0, 1.0), vec(1.0, float("inf"), 1.0)):
        with pytest.raises(ValueError, match="NaN or Inf"):
            b.weights(bad)
    with pytest.raises(ValueError, match="losses"):
        b.weights(torch.tensor([], dtype=D))
    with pytest.raises(ValueError, match="losses"):
        b.weights(torch.ones(2, 2, dtype=D))
    with pytest.raises(TypeError, match="losses"):
        b.weights([1.0, 2.0, 3.0])
    if name not in ("rlw", "gls"):
        with pytest.raises(ValueError, match="n_tasks"):
            b.weights(vec(1.0, 2.0))


def _drive(b, steps, seed):
    """A few steps of each balancer's own protocol; returns the last weights."""
    g = torch.Generator().manual_seed(seed)
    enc, heads, x, ys = _tiny_net(seed)
    out = None
    for k in range(steps):
        L = torch.rand(3, generator=g, dtype=D) + 0.1
        if isinstance(b, GradNorm):
            Ls, _ = _losses(enc, heads, x, ys, scale=tuple(L.tolist()))
            b.update(Ls, shared=enc[2])
        elif isinstance(b, FAMO):
            b.loss(L)
            b.update(L * 0.9)
        elif isinstance(b, DWA):
            b.step(L)
            if k % 2:
                b.epoch_end()
        elif isinstance(b, UW):
            with torch.no_grad():
                b.log_vars.add_(0.1 * L.float())
        out = b.weights(L)
    return out


@pytest.mark.parametrize("name", ["dwa", "uw", "gradnorm", "famo"])
def test_state_dict_round_trip_and_reset(name):
    a = make(name)
    _drive(a, 6, 0)
    b = make(name)
    b.load_state_dict(a.state_dict())
    wa, wb = _drive(a, 4, 1), _drive(b, 4, 1)
    assert not torch.equal(wa, torch.ones(3, dtype=D))
    torch.testing.assert_close(wa, wb, rtol=0, atol=0)
    a.reset()
    fresh = make(name)
    for k, v in fresh.state_dict().items():
        torch.testing.assert_close(a.state_dict()[k], v, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["dwa", "gradnorm", "famo"])
def test_n_tasks_is_optional_for_buffer_state(name):
    a = make(name)
    _drive(a, 5, 0)
    lazy = make_balancer(name)
    assert lazy.n_tasks is None and lazy.state_dict() == {}
    lazy.load_state_dict(a.state_dict())  # sized by the loaded state
    assert lazy.n_tasks == 3
    torch.testing.assert_close(_drive(a, 3, 1), _drive(lazy, 3, 1), rtol=0, atol=0)
    first = make_balancer(name)  # sized by the first call
    assert first.weights(vec(1.0, 2.0)).shape == (2,) and first.n_tasks == 2
    with pytest.raises(ValueError, match="n_tasks"):
        first.weights(vec(1.0, 2.0, 3.0))


def test_weights_follow_the_losses_device_and_dtype(device):
    L = torch.tensor([1.0, 2.0], device=device)
    for name in available_balancers():
        w = make(name, T=2).weights(L)
        assert w.dtype == L.dtype and w.device == L.device


def test_registry():
    assert available_balancers() == ["dwa", "famo", "gls", "gradnorm", "rlw", "uw"]
    assert isinstance(make_balancer("DWA", n_tasks=2, temperature=3.0), DWA)
    assert make_balancer("dwa", n_tasks=2, temperature=3.0).temperature == 3.0
    inst = FAMO(n_tasks=2)
    assert make_balancer(inst) is inst
    with pytest.raises(TypeError, match="options"):
        make_balancer(inst, lr=0.1)
    with pytest.raises(ValueError, match="unknown balancer"):
        make_balancer("nope")
    with pytest.raises(ValueError, match="n_tasks"):
        UW(n_tasks=0)
    assert fastmtl.balancers.RLW is RLW


# ---- fastmtl.backward(balancer=...) ---------------------------------------------------------


def _hand_parameter_level(enc, heads, L, w, combiner):
    shared = list(enc.parameters())
    rows = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(
        w[t] * L[t], shared, retain_graph=True)]) for t in range(len(L))]
    d = fastmtl.combine(torch.stack(rows), combiner)
    expected = {}
    offset = 0
    for p in shared:
        expected[p] = d[offset:offset + p.numel()].view_as(p)
        offset += p.numel()
    for t, h in enumerate(heads):
        for p, g in zip(h.parameters(), torch.autograd.grad(w[t] * L[t], list(h.parameters()),
                                                            retain_graph=True), strict=True):
            expected[p] = g
    return expected


def _hand_feature_level(enc, heads, L, z, w, combiner):
    rows = [torch.autograd.grad(w[t] * L[t], z, retain_graph=True)[0] for t in range(len(L))]
    d = fastmtl.combine(torch.stack(rows).reshape(len(L), -1), combiner).view_as(z)
    expected = dict(zip(enc.parameters(), torch.autograd.grad(z, list(enc.parameters()), d,
                                                              retain_graph=True), strict=True))
    for t, h in enumerate(heads):
        for p, g in zip(h.parameters(), torch.autograd.grad(w[t] * L[t], list(h.parameters()),
                                                            retain_graph=True), strict=True):
            expected[p] = g
    return expected


def _dwa_with_history():
    dwa = DWA(n_tasks=3)
    for avg in ([1.0, 2.0, 3.0], [0.5, 2.0, 1.0]):
        dwa.step(vec(*avg))
        dwa.epoch_end()
    return dwa


@pytest.mark.parametrize("level", ["parameter", "feature"])
@pytest.mark.parametrize("combiner", ["mgda", "sum"])
def test_backward_with_balancer_matches_hand_autograd(level, combiner):
    enc, heads, x, ys = _tiny_net(2)
    dwa = _dwa_with_history()
    L, z = _losses(enc, heads, x, ys)
    w = dwa.weights(torch.stack(L))
    assert not torch.allclose(w, torch.ones(3, dtype=D))
    if level == "parameter":
        expected = _hand_parameter_level(enc, heads, L, w, combiner)
        res = fastmtl.backward(L, shared=enc.parameters(), combiner=combiner, balancer=dwa)
    else:
        expected = _hand_feature_level(enc, heads, L, z, w, combiner)
        res = fastmtl.backward(L, features=z, combiner=combiner, balancer=dwa)
    torch.testing.assert_close(res.extras["loss_weights"], w)
    for p, g in expected.items():
        torch.testing.assert_close(p.grad, g)
    assert int(dwa.epoch_count) == 1  # backward recorded the step


@pytest.mark.parametrize("level", ["parameter", "feature"])
def test_backward_with_uw_fills_log_variance_grads(level):
    enc, heads, x, ys = _tiny_net(3)
    uw = UW(n_tasks=3)
    with torch.no_grad():
        uw.log_vars.copy_(torch.tensor([0.3, -0.2, 0.0]))
    L, z = _losses(enc, heads, x, ys)
    w = torch.exp(-uw.log_vars.detach().double())
    expected = (_hand_parameter_level(enc, heads, L, w, "mean") if level == "parameter"
                else _hand_feature_level(enc, heads, L, z, w, "mean"))
    kw = {"shared": enc.parameters()} if level == "parameter" else {"features": z}
    fastmtl.backward(L, combiner="mean", balancer=uw, **kw)
    for p, g in expected.items():
        torch.testing.assert_close(p.grad, g)
    Ld = torch.stack(L).detach().float()
    torch.testing.assert_close(uw.log_vars.grad, 1 - torch.exp(-uw.log_vars.detach()) * Ld)


def test_backward_with_gradnorm_and_famo_by_name_and_instance():
    enc, heads, x, ys = _tiny_net(4)
    gn = GradNorm(n_tasks=3, lr=0.1, shared_layer=enc[2])
    ref = GradNorm(n_tasks=3, lr=0.1)
    L, _ = _losses(enc, heads, x, ys)
    expected = _hand_parameter_level(enc, heads, L, torch.ones(3, dtype=D), "mean")
    ref.update(L, shared=enc[2])
    res = fastmtl.backward(L, shared=enc.parameters(), balancer=gn)
    torch.testing.assert_close(res.extras["loss_weights"], torch.ones(3, dtype=D))
    torch.testing.assert_close(gn.task_weights, ref.task_weights)
    for p, g in expected.items():
        torch.testing.assert_close(p.grad, g)
    L, _ = _losses(enc, heads, x, ys)
    for p in [*enc.parameters(), *heads.parameters()]:
        p.grad = None
    with pytest.raises(ValueError, match="shared_layer"):
        fastmtl.backward(L, shared=enc.parameters(), balancer=GradNorm(n_tasks=3))
    with pytest.raises(ValueError, match="keeps state"):
        fastmtl.backward(L, shared=enc.parameters(), balancer="famo")
    assert all(p.grad is None for p in [*enc.parameters(), *heads.parameters()])
    famo = FAMO(n_tasks=3)
    fastmtl.backward(L, shared=enc.parameters(), balancer=famo)
    assert bool(famo.has_prev)
    torch.testing.assert_close(famo.prev_log_losses, torch.log(torch.stack(L).detach() + 1e-8))


# ---- CosReg ------------------------------------------------------------------------------


def test_cosreg_penalty_against_hand_formula():
    theta = torch.tensor([0.5, -1.0, 2.0], dtype=D, requires_grad=True)
    a = torch.tensor([1.0, 2.0, 0.5], dtype=D)
    b = torch.tensor([-1.0, 0.3, 1.0], dtype=D)
    # g1 = theta^2, g2 = a, g3 = sin(theta) * b
    losses = [(theta**3).sum() / 3, a @ theta, (-torch.cos(theta) * b).sum()]

    def cos2(u, v):
        return (u @ v) ** 2 / ((u @ u) * (v @ v))

    def hand(th):
        g = [th**2, a, torch.sin(th) * b]
        return cos2(g[0], g[1]) + cos2(g[0], g[2]) + cos2(g[1], g[2])

    reg = CosReg(weight=0.3)
    pen = reg.penalty(losses, [theta])
    th = theta.detach().clone().requires_grad_(True)
    expected = hand(th)
    torch.testing.assert_close(pen, expected)
    (g_pen,) = torch.autograd.grad(pen, theta, retain_graph=True)
    (g_hand,) = torch.autograd.grad(expected, th)
    torch.testing.assert_close(g_pen, g_hand)
    total = reg.loss(losses, theta)
    torch.testing.assert_close(total, sum(losses) + 0.3 * expected)
    absolute = CosReg(squared=False).penalty(losses, theta)
    g = [th**2, a, torch.sin(th) * b]
    torch.testing.assert_close(absolute, sum(
        (u @ v).abs() / ((u @ u) * (v @ v)).sqrt() for u, v in [(g[0], g[1]), (g[0], g[2]),
                                                                 (g[1], g[2])]).detach())


def test_cosreg_feature_level_and_degenerate():
    enc, heads, x, ys = _tiny_net(5)
    L, z = _losses(enc, heads, x, ys)
    rows = [torch.autograd.grad(li, z, retain_graph=True)[0].reshape(-1) for li in L]
    J = torch.stack(rows)
    C = (J @ J.T) / torch.outer(J.norm(dim=1), J.norm(dim=1))
    expected = C[0, 1] ** 2 + C[0, 2] ** 2 + C[1, 2] ** 2
    pen = CosReg().penalty(L, z)
    torch.testing.assert_close(pen, expected)
    pen.backward()  # differentiable down to the encoder
    assert all(p.grad is not None for p in enc.parameters())
    theta = torch.zeros(2, dtype=D, requires_grad=True)
    zero_grad = [(theta**2).sum(), theta.sum()]  # first gradient is 0 at theta = 0
    assert torch.isfinite(CosReg().penalty(zero_grad, theta))
    assert CosReg().penalty([theta.sum()], theta).item() == 0.0
    with pytest.raises(ValueError, match="require grad"):
        CosReg().penalty(vec(1.0, 2.0), theta)


def test_backward_with_a_stateless_balancer_by_name():
    enc, heads, x, ys = _tiny_net(6)
    L, z = _losses(enc, heads, x, ys)
    Lv = torch.stack(L).detach()
    w = torch.exp(Lv.log().mean()) / (3 * Lv)  # GLS weights by hand
    expected = _hand_feature_level(enc, heads, L, z, w, "mgda")
    fastmtl.backward(L, features=z, combiner="mgda", balancer="gls")
    for p, g in expected.items():
        torch.testing.assert_close(p.grad, g)
