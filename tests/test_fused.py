"""gram_combine: a stateless Gramian method's Gram, solve and combine as one op (fork's
backward), against the step-by-step combine, its pure-PyTorch reference, and opcheck."""

from __future__ import annotations

import pytest
import torch

import fastmtl
from fastmtl import ops, reference

# every registered method, with the hyper-parameters that change the fused arguments
FUSED = {
    "mean": {}, "sum": {}, "mgda": {}, "cagrad": {"c": 0.7, "rescale": 2}, "imtlg": {},
    "alignedmtl": {"scale_mode": "median"}, "config": {}, "upgrad": {}, "dualproj": {},
    "pcgrad": {"reduction": "mean", "variant": "torchjd"},
}
NOT_FUSED = {"gradvac": {}, "nashmtl": {}, "rgw": {}, "graddrop": {},
             "mgda": {"normalization": "l2"}}


def _J(device, T=4, P=300, dtype=torch.float64):
    torch.manual_seed(0)
    J = torch.randn(T, P, device=device, dtype=dtype)
    J[1] -= 1.5 * J[0]  # a conflicting pair, so the methods differ from the mean
    return J


def test_every_method_is_classified():
    assert {name for name in fastmtl.available_methods()} >= set(FUSED) | set(NOT_FUSED)
    for name in fastmtl.available_methods():
        spec = fastmtl.make_combiner(name)._fused_solve(3, torch.device("cpu"), None)
        base = "mean" if name == "ew" else name
        assert (spec is not None) == (base in FUSED), name


@pytest.mark.parametrize("method", list(FUSED))
def test_matches_the_step_by_step_combine(method, device):
    J = _J(device)
    comb = fastmtl.make_combiner(method, **FUSED[method])
    spec = comb._fused_solve(J.shape[0], J.device, torch.Generator(device).manual_seed(3))
    d, w, G = ops.gram_combine(J, spec)
    expected = comb.combine(J, generator=torch.Generator(device).manual_seed(3))
    torch.testing.assert_close(G, J @ J.T)
    torch.testing.assert_close(w, expected.weights, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(d, expected.direction, rtol=1e-12, atol=1e-12)
    # a method that is not the mean has to give another direction on this J
    if method not in ("mean", "sum"):
        assert not torch.allclose(d, J.mean(0))


@pytest.mark.parametrize("method", list(FUSED))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_native_matches_reference(method, dtype, device):
    J = _J(device, dtype=dtype)
    comb = fastmtl.make_combiner(method, **FUSED[method])
    spec = comb._fused_solve(J.shape[0], J.device, torch.Generator(device).manual_seed(1))
    d, w, G = ops.gram_combine(J, spec)
    d_ref, w_ref, G_ref = reference.gram_combine(J, spec)
    assert d.dtype == dtype and w.dtype == torch.float64 and G.dtype == torch.float32
    torch.testing.assert_close(G, G_ref, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(w, w_ref, rtol=1e-4, atol=1e-6)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(d.float(), d_ref.float(), rtol=tol, atol=tol)


@pytest.mark.parametrize("method", ["mean", "mgda", "pcgrad", "upgrad", "alignedmtl"])
def test_opcheck(method):
    if not ops.has_native_kernel("gram_combine", "cpu"):
        pytest.skip("native extension not built")
    J = _J("cpu", dtype=torch.float32)
    solver, args, scale = fastmtl.make_combiner(method)._fused_solve(4, J.device, None)
    tensors, floats, ints = ops._solver_argument_lists(solver, args)
    torch.library.opcheck(torch.ops.fastmtl.gram_combine.default,
                          (J, solver, tensors, floats, ints, scale))


def test_fork_uses_the_fused_op_for_stateless_methods_only(device):
    torch.manual_seed(0)
    z = torch.randn(4, 6, device=device, requires_grad=True)
    for method, fused in (("mgda", True), ("gradvac", False)):
        seen: list = []
        zs = fastmtl.fork(z, 3, method, on_combine=lambda J, r, seen=seen: seen.append(r))
        sum((zs[t] * (t + 1) - t).pow(2).sum() for t in range(3)).backward()
        assert seen[0].extras.get("fused", False) is fused


def test_fused_fork_still_rejects_non_finite_gradients(device):
    z = torch.randn(4, 6, device=device, requires_grad=True)
    zs = fastmtl.fork(z, 2, "mgda")
    with pytest.raises(ValueError, match="NaN or Inf"):
        (zs[0].sum() * float("nan") + zs[1].sum()).backward()


def test_bad_arguments_are_reported():
    if not ops.has_native_kernel("gram_combine", "cpu"):
        pytest.skip("native extension not built")
    J = _J("cpu")
    with pytest.raises(RuntimeError, match="too few"):
        torch.ops.fastmtl.gram_combine(J, "aligned_mtl_weights", [], [], [0], 1.0)
    with pytest.raises(RuntimeError, match="more arguments"):
        torch.ops.fastmtl.gram_combine(J, "imtlg_weights", [], [1.0], [], 1.0)
    with pytest.raises(RuntimeError, match="2-D"):
        torch.ops.fastmtl.gram_combine(J[0], "", [], [], [], 1.0)
    with pytest.raises(RuntimeError, match="arguments for equal weights"):
        torch.ops.fastmtl.gram_combine(J, "", [], [1.0], [], 1.0)
    with pytest.raises(TypeError, match="takes 0 arguments"):
        ops.gram_combine(J, ("imtlg_weights", ("x",), 1.0))
    with pytest.raises(TypeError, match="'rank_eps' of 'aligned_mtl_weights' must be float"):
        ops.gram_combine(J, ("aligned_mtl_weights", (0, "x"), 1.0))


def test_an_int_for_a_float_argument_is_converted():
    J = _J("cpu")
    d, w, _ = ops.gram_combine(J, ("cagrad_weights", (1, 1, 100, 300), 1.0))
    expected = fastmtl.CAGrad(c=1.0).combine(J)
    torch.testing.assert_close(w, expected.weights, rtol=1e-12, atol=1e-12)


def test_a_subclass_with_its_own_solve_does_not_inherit_the_fused_path(device):
    class EqualMGDA(fastmtl.MGDA):
        def _solve(self, G, T, device, generator, losses):
            return torch.full((T,), 0.25, dtype=torch.float64, device=device), {}

    z = torch.randn(4, 6, device=device, requires_grad=True)
    seen: list = []
    zs = fastmtl.fork(z, 3, EqualMGDA(), on_combine=lambda J, r: seen.append(r))
    sum((zs[t] * (t + 1) - t).pow(2).sum() for t in range(3)).backward()
    assert "fused" not in seen[0].extras
    torch.testing.assert_close(seen[0].weights, torch.full((3,), 0.25, dtype=torch.float64,
                                                           device=device))
