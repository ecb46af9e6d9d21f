"""Native ops against their pure-PyTorch references, and torch.library.opcheck."""

from __future__ import annotations

import pytest
import torch
from conftest import FLOAT_DTYPES

import fastmtl
from fastmtl import ops, reference

pytestmark = pytest.mark.skipif(not fastmtl.native_available(), reason="needs fastmtl._C")

# Relative accuracy of the float32 accumulation over P = a few thousand elements.
GRAM_RTOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-5, torch.float16: 1e-5}


def _matrix(T, P, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, P, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("T,P", [(1, 1), (2, 7), (3, 1000), (10, 4099), (17, 333), (40, 2048)])
def test_gram_matches_reference(T, P, dtype, device):
    J = _matrix(T, P, dtype, device)
    G = ops.gram(J)
    assert G.dtype == reference.gram_dtype(dtype) and G.shape == (T, T)
    expected = reference.gram(J).double()
    scale = float(expected.diagonal().max())
    torch.testing.assert_close(G.double(), expected, rtol=0, atol=GRAM_RTOL[dtype] * scale)
    assert torch.equal(G, G.T)


def test_gram_strided_rows(device):
    big = _matrix(6, 500, torch.float32, device)
    J = big[::2, 10:400]  # rows 2 apart, unit stride along P
    torch.testing.assert_close(ops.gram(J).double(), reference.gram(J.contiguous()).double(),
                               rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("T,P", [(1, 5), (3, 1000), (10, 4099), (40, 777)])
def test_combine_rows_matches_reference(T, P, dtype, device):
    J = _matrix(T, P, dtype, device)
    w = torch.randn(T, dtype=torch.float64, device=device)
    d = ops.combine_rows(w, J)
    assert d.dtype == dtype and d.shape == (P,)
    expected = reference.combine_rows(w, J)
    tol = {torch.float64: 1e-12, torch.float32: 1e-5}.get(dtype, 1e-2)
    torch.testing.assert_close(d.double(), expected.double(), rtol=tol, atol=tol)


def test_combine_rows_out_and_accumulate(device):
    J = _matrix(4, 300, torch.float64, device)
    w = torch.tensor([0.5, -1.0, 2.0, 0.25], dtype=torch.float64, device=device)
    out = torch.full((300,), 7.0, dtype=torch.float64, device=device)
    ptr = out.data_ptr()
    ops.combine_rows(w, J, out=out)
    torch.testing.assert_close(out, w @ J)
    ops.combine_rows(w, J, out=out, accumulate=True)
    torch.testing.assert_close(out, 2 * (w @ J))
    assert out.data_ptr() == ptr


def _random_grams(batch, T, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    J = torch.randn(*batch, T, 2 * T + 3, generator=g, dtype=torch.float64)
    J = J * torch.exp(torch.randn(*batch, T, 1, generator=g, dtype=torch.float64))
    return (J @ J.transpose(-1, -2)).to(device)


@pytest.mark.parametrize("T", [1, 2, 5, 12])
def test_min_norm_matches_reference(T, device):
    G = _random_grams((3,), T, device)
    w, ok = ops.min_norm_weights(G)
    w_ref, _ = reference.min_norm_weights(G.cpu(), 1000, 1e-14)
    assert ok.all() and w.shape == (3, T)
    # The min-norm point (w^T G w) is unique even where w is not.
    q = torch.einsum("bi,bij,bj->b", w.cpu(), G.cpu(), w.cpu())
    q_ref = torch.einsum("bi,bij,bj->b", w_ref, G.cpu(), w_ref)
    torch.testing.assert_close(q, q_ref, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(w.sum(-1).cpu(), torch.ones(3, dtype=torch.float64))


@pytest.mark.parametrize("T", [2, 5, 12])
def test_cagrad_matches_reference(T, device):
    G = _random_grams((2,), T, device, seed=1)
    weights, w_star, ok = ops.cagrad_weights(G, 0.4, 1)
    expected, _, _ = reference.cagrad_weights(G.cpu(), 0.4, 1, 100, 1000)
    assert ok.all()
    torch.testing.assert_close(weights.cpu(), expected, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("include_self,eps,eps_on_norm", [(True, 0.0, False), (False, 1e-8, True)])
def test_pcgrad_coefficients_match_reference(include_self, eps, eps_on_norm, device):
    G = _random_grams((2,), 6, device, seed=2)
    order = torch.rand(2, 6, 6, generator=torch.Generator().manual_seed(3)).argsort(-1)
    C = ops.pcgrad_coefficients(G, order.to(device), include_self=include_self, eps=eps,
                                eps_on_norm=eps_on_norm)
    expected = reference.pcgrad_coefficients(G.cpu(), order, include_self, eps, eps_on_norm)
    torch.testing.assert_close(C.cpu(), expected, rtol=1e-12, atol=1e-12)


# ---- opcheck: schemas, fake kernels, autograd registration, dispatch -------------------


def _opcheck(op, args):
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor",
                                                "test_autograd_registration"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_opcheck_streaming(dtype, device):
    J = _matrix(3, 257, dtype, device)
    w = torch.rand(3, dtype=torch.float64, device=device)
    _opcheck(torch.ops.fastmtl.gram.default, (J,))
    _opcheck(torch.ops.fastmtl.combine_rows.default, (w, J))
    out = torch.empty(257, dtype=dtype, device=device)
    _opcheck(torch.ops.fastmtl.combine_rows_out.default, (w, J, out, False))


def test_opcheck_solvers(device):
    G = _random_grams((2,), 4, device)
    order = torch.arange(4, device=device).expand(2, 4, 4).contiguous()
    _opcheck(torch.ops.fastmtl.pcgrad_coefficients.default, (G, order, True, 0.0, False))
    _opcheck(torch.ops.fastmtl.min_norm_weights.default, (G, 300, 1e-14))
    _opcheck(torch.ops.fastmtl.cagrad_weights.default, (G, 0.4, 1, 100, 300))


def test_native_op_errors_are_value_errors():
    with pytest.raises(ValueError, match="2-D"):
        torch.ops.fastmtl.gram(torch.zeros(3))
    with pytest.raises(ValueError, match="w must have shape"):
        torch.ops.fastmtl.combine_rows(torch.zeros(2, dtype=torch.float64), torch.zeros(3, 4))
    with pytest.raises(TypeError, match="float64"):
        torch.ops.fastmtl.min_norm_weights(torch.eye(3), 10, 1e-14)


def test_symmetric_eigh_decomposes(device):
    G = _random_grams((3,), 7, device, seed=4)
    lam, V = ops.eigh(G)
    eye = torch.eye(7, dtype=torch.float64, device=device).expand(3, 7, 7)
    torch.testing.assert_close(V.transpose(-1, -2) @ V, eye, rtol=0, atol=1e-13)
    scale = float(G.abs().max())
    torch.testing.assert_close(V @ torch.diag_embed(lam) @ V.transpose(-1, -2), G, rtol=0,
                               atol=1e-13 * scale)
    torch.testing.assert_close(lam.sort(-1).values.cpu(), torch.linalg.eigvalsh(G.cpu()),
                               rtol=0, atol=1e-13 * scale)


# T across the Cholesky factor's four-row panels and their eight-column chunks, with tails;
# T = 64: rows of the factor padded apart (cholesky_ld)
@pytest.mark.parametrize("T", [1, 2, 3, 5, 9, 13, 37, 64])
def test_eigen_weights_match_reference(T, device):
    G = _random_grams((2,), T, device, seed=5)
    for native, ref in [
        (ops.imtlg_weights(G), reference.imtlg_weights(G.cpu())),
        (ops.config_weights(G), reference.config_weights(G.cpu())),
        (ops.aligned_mtl_weights(G, 1, 1e-7), reference.aligned_mtl_weights(G.cpu(), 1, 1e-7)),
    ]:
        torch.testing.assert_close(native[0].cpu(), ref[0], rtol=1e-9, atol=1e-11)
        assert torch.equal(native[1].cpu(), ref[1])


@pytest.mark.parametrize("rank", [40, 25])
def test_pinv_weights_on_both_branches(rank, device):
    # full rank: the Cholesky branch of the pseudo-inverse solve; rank 25 of 40: some
    # eigenvalues fall below the cut-off, and the eigen-decomposition branch decides
    torch.manual_seed(rank)
    J = torch.randn(rank, 300, dtype=torch.float64)
    J = torch.cat([J, torch.rand(40 - rank, rank, dtype=torch.float64) @ J])
    G = (J @ J.T).to(device)
    lam = torch.linalg.eigvalsh(G.cpu())
    assert (lam.min() > 40 * 2.2e-16 * lam.abs().max()) == (rank == 40)
    for native, ref in [(ops.imtlg_weights(G), reference.imtlg_weights(G.cpu())),
                        (ops.config_weights(G), reference.config_weights(G.cpu()))]:
        torch.testing.assert_close(native[0].cpu(), ref[0], rtol=1e-7, atol=1e-9)
        assert torch.equal(native[1].cpu(), ref[1])


def _gram_with_spectrum(lam: torch.Tensor, seed: int) -> torch.Tensor:
    Q, _ = torch.linalg.qr(torch.randn(len(lam), len(lam), dtype=torch.float64,
                                       generator=torch.Generator().manual_seed(seed)))
    G = Q @ torch.diag(lam) @ Q.T
    return (G + G.T) / 2


def _certificate_shift(G: torch.Tensor) -> float:
    # psd_pinv_solve's tau = (T + 2)^2 eps ||G||_inf
    T = G.shape[0]
    return (T + 2) ** 2 * torch.finfo(torch.float64).eps * float(G.abs().sum(1).max())


@pytest.mark.parametrize("T", [40, 128])  # 128: the factor's rows padded apart
@pytest.mark.parametrize("case", ["certified", "certified, cond 1e6", "refinement stalls",
                                  "beyond certificate", "rank deficient"])
def test_imtlg_solve_on_every_path(case, T, device):
    # The pseudo-inverse solve has four paths: a Cholesky factor of G - tau I certifies
    # full rank and refinement on it solves (lambda_min >> tau); refinement diverges when
    # lambda_min < 2 tau and a Cholesky solve of G takes over; beyond the certificate the
    # eigenvalues decide (all kept: Cholesky); below the cut-off the eigenvectors are used.
    # At cond 1e6 refinement stops at its rounding floor (~cond eps) and that is accepted.
    # (IMTL-G's normalisation w / sum(w) hides an error along a near-null direction, which
    # dominates w there; the checks below are on what the weights define.)
    lam = torch.logspace(0, 1, T, dtype=torch.float64)
    G = _gram_with_spectrum(lam, seed=3)
    tau = _certificate_shift(G)
    if case == "certified, cond 1e6":
        lam[0] = 1e-5
    elif case == "refinement stalls":
        lam[0] = 1.5 * tau
    elif case == "beyond certificate":
        lam[0] = 0.05 * tau
    elif case == "rank deficient":
        lam[:5] = 0.0
    G = _gram_with_spectrum(lam, seed=3)
    tau = _certificate_shift(G)
    lam_min = float(torch.linalg.eigvalsh(G).min())
    expect = {"certified": lam_min > 1e6 * tau,
              "certified, cond 1e6": 1e3 * tau < lam_min < 1e-4 * float(lam.max()),
              "refinement stalls": tau < lam_min < 2 * tau,
              "beyond certificate": T * 2.3e-16 * 10 < lam_min < tau,
              "rank deficient": lam_min < T * 2.2e-16 * 10}
    assert expect[case], (lam_min, tau)
    w, ok = ops.imtlg_weights(G.to(device))
    w = w.cpu()
    assert bool(ok) and torch.isfinite(w).all()
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-12)
    if case == "rank deficient":  # n is not in G's range: compare with pinv's least squares
        torch.testing.assert_close(w, reference.imtlg_weights(G)[0], rtol=1e-9, atol=1e-11)
        return
    # full rank: G w = mu n (equal projections on the unit gradients) up to backward error;
    # only the well-conditioned case can compare w itself with the reference
    n = G.diagonal().sqrt()
    mu = float(n @ (G @ w)) / float(n @ n)
    residual = float((G @ w - mu * n).abs().max())
    assert residual <= 1e-12 * float(G.abs().max() * w.abs().sum()), residual
    if case == "certified":  # cond 10: as exact as a direct float64 solve
        torch.testing.assert_close(w, reference.imtlg_weights(G)[0], rtol=1e-13, atol=1e-15)
    elif case == "certified, cond 1e6":
        torch.testing.assert_close(w, reference.imtlg_weights(G)[0], rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("spectrum", ["full rank", "rank 25 of 40", "repeated", "T = 128"])
@pytest.mark.parametrize("scale_mode", [0, 1, 2])
def test_aligned_mtl_without_eigenvectors_matches_reference(spectrum, scale_mode, device):
    # The native path applies V only to two vectors (reflections + logged QL rotations);
    # the reference forms V with torch.linalg.eigh.
    T = 128 if spectrum == "T = 128" else 40
    lam = torch.logspace(-3, 1, T, dtype=torch.float64)
    if spectrum == "rank 25 of 40":
        lam[:15] = 0.0
    elif spectrum == "repeated":
        lam = torch.tensor([1.0, 2.0, 5.0, 5.0], dtype=torch.float64).repeat_interleave(10)
    G = _gram_with_spectrum(lam, seed=T + scale_mode)
    w, rank = ops.aligned_mtl_weights(G.to(device), scale_mode, 1e-7)
    w_ref, rank_ref = reference.aligned_mtl_weights(G, scale_mode, 1e-7)
    assert int(rank) == int(rank_ref) == int((lam > 0).sum())
    torch.testing.assert_close(w.cpu(), w_ref, rtol=1e-9, atol=1e-11 * float(w_ref.abs().max()))


def test_gradvac_coefficients_match_reference(device):
    G = _random_grams((2,), 5, device, seed=6)
    order = torch.rand(2, 5, 5, generator=torch.Generator().manual_seed(7)).argsort(-1)
    rho = torch.rand(2, 5, 5, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    rho_ref = rho.clone()
    rho = rho.to(device)
    C = ops.gradvac_coefficients(G, order.to(device), rho, beta=0.3, eps=1e-8)
    C_ref = reference.gradvac_coefficients(G.cpu(), order, rho_ref, 0.3, 1e-8)
    torch.testing.assert_close(C.cpu(), C_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rho.cpu(), rho_ref, rtol=1e-12, atol=1e-12)


def test_opcheck_eigen_solvers(device):
    G = _random_grams((2,), 4, device)
    order = torch.arange(4, device=device).expand(2, 4, 4).contiguous()
    rho = torch.zeros(2, 4, 4, dtype=torch.float64, device=device)
    _opcheck(torch.ops.fastmtl.symmetric_eigh.default, (G,))
    _opcheck(torch.ops.fastmtl.imtlg_weights.default, (G,))
    _opcheck(torch.ops.fastmtl.config_weights.default, (G,))
    _opcheck(torch.ops.fastmtl.aligned_mtl_weights.default, (G, 0, 1e-7))
    _opcheck(torch.ops.fastmtl.gradvac_coefficients.default, (G, order, rho, 0.5, 1e-8))
