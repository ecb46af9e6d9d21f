"""fastmtl.combine and the combiner classes: shapes, buffers, options, hand-derived values."""

from __future__ import annotations

import math

import pytest
import torch

import fastmtl

METHODS = ["mean", "sum", "pcgrad", "mgda", "cagrad"]


def _grads(T=3, shape=(4, 5), dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, *shape, generator=g, dtype=torch.float64).to(device, dtype)


def test_available_methods_lists_the_registered_names():
    names = fastmtl.available_methods()
    for name in METHODS + ["ew"]:
        assert name in names


@pytest.mark.parametrize("method", METHODS)
def test_shapes_tensor_sequence_and_case(method, device):
    J = _grads(device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    d = fastmtl.combine(J, method, generator=gen)
    assert d.shape == (4, 5) and d.dtype == J.dtype and d.device == J.device
    gen.manual_seed(0)
    d_seq = fastmtl.combine(list(J), method.upper(), generator=gen)
    torch.testing.assert_close(d, d_seq)


@pytest.mark.parametrize("method", METHODS)
def test_out_buffer_is_written_in_place(method, device):
    J = _grads(device=device)
    out = torch.empty(4, 5, dtype=J.dtype, device=device)
    ptr = out.data_ptr()
    r = fastmtl.combine(J, method, out=out, return_weights=True, order=[0, 1, 2]) \
        if method == "pcgrad" else fastmtl.combine(J, method, out=out, return_weights=True)
    assert r.direction is out and out.data_ptr() == ptr
    torch.testing.assert_close(out.view(-1), r.weights @ J.view(3, -1))


@pytest.mark.parametrize("method", METHODS)
def test_input_is_not_modified(method):
    J = _grads()
    before = J.clone()
    fastmtl.combine(J, method)
    assert torch.equal(J, before)


def test_return_weights_result():
    J = _grads()
    r = fastmtl.combine(J, "mgda", return_weights=True)
    assert isinstance(r, fastmtl.CombineResult)
    assert r.weights.dtype == torch.float64 and r.weights.shape == (3,)
    torch.testing.assert_close(r.gram, J.view(3, -1) @ J.view(3, -1).T)
    torch.testing.assert_close(r.direction.view(-1), r.weights @ J.view(3, -1))


def test_mean_and_sum_without_gram():
    J = _grads()
    r = fastmtl.combine(J, "mean", return_weights=True, check_finite=False)
    assert r.gram is None
    torch.testing.assert_close(r.direction, J.mean(0))
    torch.testing.assert_close(fastmtl.combine(J, "sum"), J.sum(0))


def test_instance_and_options():
    J = _grads()
    a = fastmtl.combine(J, fastmtl.CAGrad(c=0.2, rescale=0))
    b = fastmtl.combine(J, "cagrad", c=0.2, rescale=0)
    torch.testing.assert_close(a, b)
    c = fastmtl.CAGrad(c=0.2, rescale=0)(J)  # nn.Module call
    torch.testing.assert_close(a, c)


def test_pcgrad_two_conflicting_tasks_by_hand():
    g1 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    g2 = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    # p1 = g1 - (g1.g2 / |g2|^2) g2 = (0.5, 0.5); p2 = g2 - (g2.g1 / |g1|^2) g1 = (0, 1)
    d = fastmtl.combine(torch.stack([g1, g2]), fastmtl.PCGrad(order=[0, 1]))
    torch.testing.assert_close(d, torch.tensor([0.5, 1.5], dtype=torch.float64))
    d_mean = fastmtl.combine(torch.stack([g1, g2]), fastmtl.PCGrad(reduction="mean", order=[1, 0]))
    torch.testing.assert_close(d_mean, torch.tensor([0.25, 0.75], dtype=torch.float64))


def test_pcgrad_random_order_follows_the_generator():
    J = _grads(T=6, seed=4)
    pc = fastmtl.PCGrad()
    a = fastmtl.combine(J, pc, generator=torch.Generator().manual_seed(1))
    b = fastmtl.combine(J, pc, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)
    orders = pc.visiting_orders(6, torch.device("cpu"), torch.Generator().manual_seed(1))
    assert all(sorted(row.tolist()) == list(range(6)) for row in orders)
    assert len({tuple(row.tolist()) for row in orders}) > 1  # each task draws its own order


def test_mgda_two_tasks_closed_form():
    g1 = torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64)
    g2 = torch.tensor([0.0, 3.0, -1.0], dtype=torch.float64)
    # gamma = (g2 - g1).g2 / |g1 - g2|^2 on the segment g = gamma g1 + (1 - gamma) g2
    gamma = float((g2 - g1).dot(g2) / (g1 - g2).dot(g1 - g2))
    expected = gamma * g1 + (1 - gamma) * g2
    torch.testing.assert_close(fastmtl.combine(torch.stack([g1, g2]), "mgda"), expected)


def test_mgda_loss_normalisation_by_hand():
    J = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    losses = torch.tensor([2.0, 0.5], dtype=torch.float64)
    # normalised rows (1, 0) and (0, 2): min-norm weights (0.8, 0.2), applied to raw rows.
    r = fastmtl.combine(J, fastmtl.MGDA("loss"), losses=losses, return_weights=True)
    torch.testing.assert_close(r.weights, torch.tensor([0.8, 0.2], dtype=torch.float64))
    # loss+: rows / (loss * norm) = (0.5, 0) and (0, 2): weights (16/17, 1/17)
    r = fastmtl.combine(J, fastmtl.MGDA("loss+"), losses=[2.0, 0.5], return_weights=True)
    torch.testing.assert_close(r.weights, torch.tensor([16 / 17, 1 / 17], dtype=torch.float64))
    with pytest.raises(ValueError, match="losses"):
        fastmtl.combine(J, fastmtl.MGDA("loss"))
    # losses may be tensors that still require grad (taken straight from the model)
    live = [torch.tensor(2.0, requires_grad=True), torch.tensor(0.5, requires_grad=True)]
    r = fastmtl.combine(J, fastmtl.MGDA("loss"), losses=live, return_weights=True)
    torch.testing.assert_close(r.weights, torch.tensor([0.8, 0.2], dtype=torch.float64))


def test_cagrad_two_orthogonal_tasks_by_hand():
    # g1 = e1, g2 = e2: by symmetry w* = (1/2, 1/2), g_w = g0 = (1/2, 1/2), lambda = c, and
    # d = (1 + c) g0 / s.
    J = torch.eye(2, dtype=torch.float64)
    for c, rescale, s in [(0.4, 0, 1.0), (0.4, 1, 1.16), (0.5, 2, 1.5)]:
        d = fastmtl.combine(J, fastmtl.CAGrad(c, rescale))
        torch.testing.assert_close(d, torch.full((2,), 0.5 * (1 + c) / s, dtype=torch.float64))


def test_cagrad_zero_c_is_the_mean():
    J = _grads()
    torch.testing.assert_close(fastmtl.combine(J, "cagrad", c=0.0, rescale=0), J.mean(0))


def test_cagrad_worst_case_improvement_is_optimal():
    # CAGrad maximises min_i g_i.d over the ball |d - g0| <= c|g0|: no feasible random
    # direction in that ball does better than the returned (unrescaled) direction.
    J = _grads(T=4, shape=(6,), seed=7)
    c = 0.5
    d = fastmtl.combine(J, "cagrad", c=c, rescale=0)
    g0 = J.mean(0)
    assert (d - g0).norm() <= c * g0.norm() * (1 + 1e-9)
    best = (J @ d).min()
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(2000, 6, generator=gen, dtype=torch.float64)
    cand = g0 + c * g0.norm() * u / u.norm(dim=1, keepdim=True) * torch.rand(2000, 1, generator=gen,
                                                                               dtype=torch.float64)
    assert (cand @ J.T).min(dim=1).values.max() <= best + 1e-9


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("method", METHODS)
def test_low_precision_inputs(method, dtype, device):
    J = _grads(T=4, shape=(300,), dtype=dtype, device=device)
    opts = {"order": [0, 1, 2, 3]} if method == "pcgrad" else {}
    d = fastmtl.combine(J, method, **opts)
    assert d.dtype == dtype and bool(torch.isfinite(d).all())
    expected = fastmtl.combine(J.double(), method, **opts)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    assert float((d.double() - expected).abs().max()) <= tol * float(J.double().norm(dim=1).max())


def test_large_magnitudes_stay_finite():
    J = _grads(T=3, shape=(50,)) * torch.tensor([[1e-8], [1.0], [1e8]], dtype=torch.float64)
    for method in METHODS:
        assert torch.isfinite(fastmtl.combine(J, method)).all(), method
    J32 = J.float() * 1e-8  # norms 1e-16 .. 1 in float32
    for method in METHODS:
        assert torch.isfinite(fastmtl.combine(J32, method)).all(), method


def test_state_dict_round_trip_and_repr():
    pc = fastmtl.PCGrad(reduction="mean", order=[1, 0, 2])
    assert "reduction='mean'" in repr(pc)
    assert pc.state_dict() == {}  # stateless
    pc.reset()
    assert math.isclose(fastmtl.CAGrad(c=0.3).c, 0.3)


@pytest.mark.parametrize("method", METHODS)
def test_pure_pytorch_fallback_matches_native(method, monkeypatch):
    # Without the compiled kernels every op falls back to fastmtl.reference.
    J = _grads(T=4, shape=(30,), seed=11)
    opts = {"order": [3, 1, 0, 2]} if method == "pcgrad" else {}
    native = fastmtl.combine(J, method, **opts)
    monkeypatch.setattr(fastmtl.ops, "_KERNELS", frozenset())
    assert not fastmtl.ops.has_native_kernel("gram", "cpu")
    fallback = fastmtl.combine(J, method, **opts)
    torch.testing.assert_close(fallback, native, rtol=1e-9, atol=1e-12)


def test_cagrad_optimum_at_a_zero_gradient_is_order_independent():
    """A zero task gradient beside rows 1e3 times longer: the dual optimum is g_w = 0, and
    the root search's noise around it (||g_w|| ~ 1e-12 max||g||) must not pick the direction
    (it once did, by task order: found by the permutation property test)."""
    J = torch.tensor([
        [-2.3104e+03, -3.7325e+02, -1.0608e+03, 9.9951e+02, -8.8403e+02, -1.2755e+03,
         -6.2322e+02, -8.6644e+02],
        [-1.2956, 1.5236, 0.32366, 2.0177, 1.1357, -1.2269, 0.071388, 0.33802],
        [0.15352, -0.63327, -1.2609, -0.72695, -0.019965, 0.21030, 0.17719, -0.83051],
        [1.0112, -0.24268, -0.77301, -1.5952, -0.68700, 1.4881, -0.44842, -0.89100],
        [0.0] * 8,
        [0.65392, 0.14822, -1.1461, 1.8728, -0.30991, 0.24018, -1.3488, 0.24440],
        [-3.1453, -0.11373, 1.6962, -0.66520, -0.58722, 2.8321, 0.90400, 0.94784],
        [-1.3809, -2.0548, 0.047577, -0.38557, -0.27503, 0.88659, 1.4857, -0.0078556],
    ], dtype=torch.float64)
    d = fastmtl.combine(J, "cagrad")
    torch.testing.assert_close(d, J.mean(0) / 1.16)  # g_w* = 0: d = g0 / (1 + c^2)
    g = torch.Generator().manual_seed(0)
    for _ in range(60):
        perm = torch.randperm(8, generator=g)
        torch.testing.assert_close(fastmtl.combine(J[perm], "cagrad"), d, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_all_finite_sees_every_nan_and_inf(dtype, device):
    from fastmtl.combiners.base import all_finite

    x = torch.randn(1000, device=device).to(dtype)
    assert bool(all_finite(x)) and bool(all_finite(x[:0]))
    for bad in (float("nan"), float("inf"), -float("inf")):
        y = x.clone()
        y[637] = bad
        assert not bool(all_finite(y))
    y = x.clone()
    y[1], y[2] = float("inf"), -float("inf")
    assert not bool(all_finite(y))
