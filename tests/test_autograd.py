"""fastmtl.backward and fastmtl.fork against hand-written autograd, for every combiner."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fastmtl
from fastmtl import reference

T = 3
METHODS = fastmtl.available_methods()


def _mlp(device):
    torch.manual_seed(0)
    enc = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 8), nn.Tanh()).to(device)
    heads = nn.ModuleList(nn.Linear(8, 2) for _ in range(T)).to(device)
    x = torch.randn(5, 6, device=device)
    ys = [torch.randn(5, 2, device=device) for _ in range(T)]
    return enc, heads, x, ys


def _conv(device):
    torch.manual_seed(1)
    enc = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()).to(device)
    heads = nn.ModuleList(nn.Conv2d(8, 1, 1) for _ in range(T)).to(device)
    x = torch.randn(2, 3, 6, 6, device=device)
    ys = [torch.randn(2, 1, 6, 6, device=device) for _ in range(T)]
    return enc, heads, x, ys


MODELS = {"mlp": _mlp, "conv": _conv}


def _losses(heads, z, ys, zs=None):
    return [((heads[t](z if zs is None else zs[t]) - ys[t]) ** 2).mean() for t in range(T)]


def _grads(*modules):
    return [p.grad.clone() if p.grad is not None else None
            for m in modules for p in m.parameters()]


def _zero(*modules):
    for m in modules:
        for p in m.parameters():
            p.grad = None


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert (x is None) == (y is None)
        if x is not None:
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-7)


def _graddrop_seed(device):
    return fastmtl.GradDrop.draw_seed(torch.device(device), torch.Generator(device).manual_seed(0))


def _hand_graddrop_parameter_level(losses, shared, heads, device):
    """GradDrop per parameter tensor, Philox stream i for the i-th shared parameter."""
    seed = _graddrop_seed(device)
    leak = torch.zeros(T, dtype=torch.float64, device=device)
    blocks = [torch.stack(g).reshape(T, -1) for g in zip(*(
        torch.autograd.grad(loss, shared, retain_graph=True) for loss in losses), strict=True)]
    torch.autograd.backward(losses, inputs=list(heads.parameters()))
    for i, (p, block) in enumerate(zip(shared, blocks, strict=True)):
        p.grad = reference.graddrop(block, leak, seed, None, i).view_as(p).clone()


def _hand_parameter_level(enc, heads, x, ys, method):
    z = enc(x)
    losses = _losses(heads, z, ys)
    shared = list(enc.parameters())
    if method == "graddrop":
        return _hand_graddrop_parameter_level(losses, shared, heads, x.device)
    rows = []
    for loss in losses:
        g = torch.autograd.grad(loss, shared, retain_graph=True)
        rows.append(torch.cat([t.reshape(-1) for t in g]))
    J = torch.stack(rows)
    d = fastmtl.combine(J, method, generator=torch.Generator(x.device).manual_seed(0),
                        losses=torch.stack([loss.detach() for loss in losses]))
    torch.autograd.backward(losses, inputs=list(heads.parameters()))
    offset = 0
    for p in shared:
        p.grad = d[offset:offset + p.numel()].view_as(p).clone()
        offset += p.numel()


def _hand_feature_level(enc, heads, x, ys, method):
    z = enc(x)
    losses = _losses(heads, z, ys)
    rows = [torch.autograd.grad(loss, z, retain_graph=True)[0] for loss in losses]
    J = torch.stack(rows)
    if method == "graddrop":  # the paper's rule: purity of sum_b sign(z_b) g_tb
        B = z.shape[0]
        purity = torch.einsum("tbi,bi->ti", J.reshape(T, B, -1), z.detach().sign().reshape(B, -1))
        d = reference.graddrop(J.reshape(T, -1), torch.zeros(T, dtype=torch.float64,
                               device=x.device), _graddrop_seed(x.device), purity, 0).view_as(z)
    else:
        d = fastmtl.combine(J, method, generator=torch.Generator(x.device).manual_seed(0),
                            losses=torch.stack([loss.detach() for loss in losses]))
    torch.autograd.backward(losses, inputs=list(heads.parameters()))
    z.backward(d)


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("batched", [False, True])
def test_parameter_level_matches_hand_written(model, method, batched, device):
    enc, heads, x, ys = MODELS[model](device)
    _hand_parameter_level(enc, heads, x, ys, method)
    expected = _grads(enc, heads)
    _zero(enc, heads)
    z = enc(x)
    r = fastmtl.backward(_losses(heads, z, ys), shared=enc.parameters(), combiner=method,
                         generator=torch.Generator(device).manual_seed(0), batched=batched)
    assert r.level == "parameter"
    assert r.weights is None if method == "graddrop" else r.weights.shape == (T,)
    _assert_same(_grads(enc, heads), expected)


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("method", METHODS)
def test_feature_level_and_fork_match_hand_written(model, method, device):
    enc, heads, x, ys = MODELS[model](device)
    _hand_feature_level(enc, heads, x, ys, method)
    expected = _grads(enc, heads)
    _zero(enc, heads)
    z = enc(x)
    r = fastmtl.backward(_losses(heads, z, ys), features=z, combiner=method,
                         generator=torch.Generator(device).manual_seed(0))
    assert r.level == "feature"
    _assert_same(_grads(enc, heads), expected)
    if fastmtl.make_combiner(method).needs_losses:
        return  # fork sees no losses
    _zero(enc, heads)
    zs = fastmtl.fork(enc(x), T, method, generator=torch.Generator(device).manual_seed(0))
    sum(_losses(heads, None, ys, zs)).backward()
    _assert_same(_grads(enc, heads), expected)


def test_fork_mgda_reports_the_combine(device):
    enc, heads, x, ys = _mlp(device)
    seen = []
    zs = fastmtl.fork(enc(x), T, "mgda", on_combine=lambda J, r: seen.append((J.shape, r)))
    sum(_losses(heads, None, ys, zs)).backward()
    (shape, result), = seen
    assert shape == (T, 5, 8) and result.level == "feature"
    assert abs(float(result.weights.sum()) - 1.0) < 1e-12
    fork_grads = _grads(enc, heads)
    _zero(enc, heads)
    z = enc(x)
    fastmtl.backward(_losses(heads, z, ys), features=z, combiner="mgda")
    _assert_same(_grads(enc, heads), fork_grads)


def test_shared_parameters_detected_when_not_given(device):
    enc, heads, x, ys = _mlp(device)
    fastmtl.backward(_losses(heads, enc(x), ys), shared=enc.parameters(), combiner="mgda")
    expected = _grads(enc, heads)
    _zero(enc, heads)
    r = fastmtl.backward(_losses(heads, enc(x), ys), combiner="mgda")
    assert r.level == "parameter"
    _assert_same(_grads(enc, heads), expected)


def test_gradients_accumulate_over_calls(device):
    enc, heads, x, ys = _mlp(device)
    fastmtl.backward(_losses(heads, enc(x), ys), shared=enc.parameters(), combiner="cagrad")
    once = _grads(enc, heads)
    fastmtl.backward(_losses(heads, enc(x), ys), shared=enc.parameters(), combiner="cagrad")
    _assert_same(_grads(enc, heads), [2 * g for g in once])
    z = enc(x)
    _zero(enc, heads)
    fastmtl.backward(_losses(heads, z, ys), features=z, combiner="pcgrad", order=[0, 1, 2])
    once = _grads(enc, heads)
    z = enc(x)
    fastmtl.backward(_losses(heads, z, ys), features=z, combiner="pcgrad", order=[0, 1, 2])
    _assert_same(_grads(enc, heads), [2 * g for g in once])


def test_unused_parameters_are_untouched(device):
    enc, heads, x, ys = _mlp(device)
    spare = nn.Linear(3, 3).to(device)
    fastmtl.backward(_losses(heads, enc(x), ys), shared=enc.parameters(), combiner="mgda")
    assert all(p.grad is None for p in spare.parameters())


def test_single_task_is_an_ordinary_backward(device):
    enc, heads, x, ys = _mlp(device)
    loss = ((heads[0](enc(x)) - ys[0]) ** 2).mean()
    loss.backward(retain_graph=True)
    expected = _grads(enc, heads)
    _zero(enc, heads)
    r = fastmtl.backward([loss], shared=enc.parameters(), combiner="mgda")
    assert r.level == "single"
    _assert_same(_grads(enc, heads), expected)


def test_low_precision_features_combine(device):
    enc, heads, x, ys = _mlp(device)
    enc, heads = enc.to(torch.bfloat16), heads.to(torch.bfloat16)
    z = enc(x.to(torch.bfloat16))
    losses = [((heads[t](z) - ys[t].to(torch.bfloat16)) ** 2).mean() for t in range(T)]
    r = fastmtl.backward(losses, features=z, combiner="mgda")
    assert r.gram.dtype == torch.float64
    assert all(torch.isfinite(p.grad).all() for p in enc.parameters())


def test_fork_under_torch_compile(device):
    enc, heads, x, ys = _mlp(device)
    torch._dynamo.reset()

    def step(x):
        zs = fastmtl.fork(enc(x), T, "mgda")
        loss = sum(((heads[t](zs[t]) - ys[t]) ** 2).mean() for t in range(T))
        loss.backward()
        return loss

    torch.compile(step, backend="aot_eager")(x)
    compiled = _grads(enc, heads)
    _zero(enc, heads)
    step(x)
    _assert_same(compiled, _grads(enc, heads))


# ---- bad input: ValueError naming the argument, and no .grad touched -----------------


def _no_grads(*modules):
    return all(p.grad is None for m in modules for p in m.parameters())


def test_bad_input(device):
    enc, heads, x, ys = _mlp(device)
    z = enc(x)
    losses = _losses(heads, z, ys)
    with pytest.raises(ValueError, match=r"losses\[1\] must be a scalar"):
        fastmtl.backward([losses[0], heads[1](z).sum(1), losses[2]], shared=enc.parameters())
    with pytest.raises(ValueError, match=r"losses\[2\] does not require grad"):
        fastmtl.backward([losses[0], losses[1], torch.tensor(1.0)], shared=enc.parameters())
    with pytest.raises(ValueError, match=r"shared\[1\] appears twice"):
        p = next(enc.parameters())
        fastmtl.backward(losses, shared=[p, p])
    with pytest.raises(ValueError, match=r"features\[0\] does not require grad"):
        fastmtl.backward(losses, features=z.detach())
    unrelated = (nn.Linear(2, 1).to(device).weight ** 2).sum()
    with pytest.raises(ValueError, match=r"losses\[3\] does not depend on any shared"):
        fastmtl.backward(losses + [unrelated], shared=enc.parameters())
    with pytest.raises(ValueError, match=r"losses\[3\] does not depend on the features"):
        fastmtl.backward(losses + [unrelated], features=z)
    with pytest.raises(ValueError, match="not both"):
        fastmtl.backward(losses, shared=enc.parameters(), features=z)
    with pytest.raises(ValueError, match="feature_reduction"):
        fastmtl.backward(losses, features=z, feature_reduction="mean")
    with pytest.raises(ValueError, match="losses must be a non-empty"):
        fastmtl.backward([], shared=enc.parameters())
    with pytest.raises(ValueError, match=r"losses\[1\] is on meta"):
        fastmtl.backward([losses[0], torch.ones((), device="meta", requires_grad=True)])
    with pytest.raises(ValueError, match="z does not require grad"):
        fastmtl.fork(z.detach(), T)
    with pytest.raises(ValueError, match="n_tasks"):
        fastmtl.fork(z, 0)
    assert _no_grads(enc, heads)


def test_non_finite_gradients_leave_grad_untouched(device):
    enc, heads, x, ys = _mlp(device)
    z = enc(x)
    losses = _losses(heads, z, ys)
    losses[1] = losses[1] * float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        fastmtl.backward(losses, shared=enc.parameters(), combiner="mgda")
    with pytest.raises(ValueError, match="NaN or Inf"):
        fastmtl.backward(losses, features=z, combiner="mgda")
    assert _no_grads(enc, heads)


def test_batch_sum_feature_reduction(device):
    # weights decided on the batch-summed [T, D] gradients, applied to the full ones
    enc, heads, x, ys = _mlp(device)
    z = enc(x)
    losses = _losses(heads, z, ys)
    rows = torch.stack([torch.autograd.grad(loss, z, retain_graph=True)[0] for loss in losses])
    w = fastmtl.combine(rows.sum(1), "mgda", return_weights=True).weights
    r = fastmtl.backward(losses, features=z, combiner="mgda", feature_reduction="batch_sum")
    torch.testing.assert_close(r.weights, w)


def test_multi_scale_features(device):
    # Two feature maps: their gradients are concatenated per task before combining.
    enc, heads, x, ys = _mlp(device)
    z = enc(x)
    z1, z2 = z[:, :4], z[:, 4:]
    losses = [((heads[t](torch.cat([z1, z2], 1)) - ys[t]) ** 2).mean() for t in range(T)]
    rows = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, [z1, z2],
                                                                   retain_graph=True)])
            for loss in losses]
    w = fastmtl.combine(torch.stack(rows), "mgda", return_weights=True).weights
    r = fastmtl.backward(losses, features=[z1, z2], combiner="mgda")
    torch.testing.assert_close(r.weights, w)
    assert all(p.grad is not None for p in enc.parameters())


def test_grad_scaler_recipe(device):
    # Scaled losses through fastmtl.backward, then the scaler's unscale: same gradients.
    enc, heads, x, ys = _mlp(device)
    fastmtl.backward(_losses(heads, enc(x), ys), shared=enc.parameters(), combiner="mgda")
    expected = _grads(enc, heads)
    _zero(enc, heads)
    scaler = torch.amp.GradScaler(device, init_scale=2.0**10)
    opt = torch.optim.SGD(list(enc.parameters()) + list(heads.parameters()), lr=0.0)
    losses = [scaler.scale(loss) for loss in _losses(heads, enc(x), ys)]
    fastmtl.backward(losses, shared=enc.parameters(), combiner="mgda")
    scaler.unscale_(opt)
    _assert_same(_grads(enc, heads), expected)
