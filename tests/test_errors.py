"""Malformed input raises ValueError/TypeError naming the argument; nothing is modified."""

from __future__ import annotations

import pytest
import torch

import fastmtl

J = torch.randn(3, 5, dtype=torch.float64)


@pytest.mark.parametrize(
    "grads,exc,match",
    [
        (torch.tensor(1.0), ValueError, "grads must have at least 2 dimensions"),
        (torch.randn(5), ValueError, "grads must have at least 2 dimensions"),
        (torch.empty(0, 5), ValueError, "T >= 1"),
        ([], ValueError, "T >= 1"),
        (torch.empty(3, 0), ValueError, "at least one element per task"),
        (torch.ones(3, 4, dtype=torch.int64), TypeError, "grads must be float16"),
        (torch.ones(3, 4, dtype=torch.bool), TypeError, "grads must be float16"),
        (torch.ones(3, 4, dtype=torch.complex64), TypeError, "grads must be float16"),
        ("abc", TypeError, "grads must be a Tensor"),
        (5, TypeError, "grads must be a Tensor"),
        ([torch.ones(3), torch.ones(4)], ValueError, r"grads\[1\] has shape"),
        ([torch.ones(3), torch.ones(3, dtype=torch.float64)], TypeError, r"grads\[1\] has dtype"),
        ([torch.ones(3), "x"], TypeError, "sequence of Tensors"),
    ],
)
def test_bad_grads(grads, exc, match):
    with pytest.raises(exc, match=match):
        fastmtl.combine(grads, "mean")


@pytest.mark.parametrize("method", ["mean", "sum", "pcgrad", "mgda", "cagrad"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_grads(method, bad):
    X = J.clone()
    X[1, 2] = bad
    out = torch.zeros(5, dtype=torch.float64)
    with pytest.raises(ValueError, match="NaN or Inf"):
        fastmtl.combine(X, method, out=out)
    assert torch.equal(out, torch.zeros(5, dtype=torch.float64))  # untouched on error


GRAMIAN = ["mean", "pcgrad", "mgda", "cagrad", "imtlg", "alignedmtl", "config", "nashmtl",
           "upgrad", "dualproj", "gradvac", "rgw"]


def _asymmetric() -> torch.Tensor:
    G = J @ J.T
    G[0, 1] += 0.5 * float(G.diagonal().max())
    return G


def _with_nan() -> torch.Tensor:
    G = J @ J.T
    G[2, 2] = float("nan")
    return G


@pytest.mark.parametrize("method", GRAMIAN)
@pytest.mark.parametrize(
    "G,exc,match",
    [
        ([[1.0]], TypeError, "G must be a torch.Tensor"),
        (torch.eye(3, dtype=torch.int64), TypeError, "G must be a floating-point tensor"),
        (torch.ones(3, 4, dtype=torch.float64), ValueError, r"G must be \[\.\.\., T, T\]"),
        (torch.ones(3, dtype=torch.float64), ValueError, r"G must be \[\.\.\., T, T\]"),
        (_with_nan(), ValueError, "G contains NaN or Inf"),
        (_asymmetric(), ValueError, "G must be symmetric"),
    ],
    ids=["list", "int64", "non-square", "1-d", "nan", "asymmetric"],
)
def test_bad_gram_for_weights(method, G, exc, match):
    comb = fastmtl.make_combiner(method)
    before = G.clone() if isinstance(G, torch.Tensor) else None
    with pytest.raises(exc, match=match):
        comb.weights(G)
    if before is not None:  # nothing modified
        torch.testing.assert_close(G, before, rtol=0, atol=0, equal_nan=True)


def test_weights_accepts_a_float32_gram_and_check_false_skips_the_checks():
    J32 = torch.randn(4, 1000)
    G32 = J32 @ J32.T  # BLAS: symmetric up to rounding at most
    w = fastmtl.make_combiner("imtlg").weights(G32)
    assert w.dtype == torch.float64 and torch.isfinite(w).all()
    # symmetric to rounding only: the weights are those of (G + G^T) / 2, G is left as it is
    noisy = J @ J.T
    noisy[0, 1] += 1e-9
    before = noisy.clone()
    for method in ("imtlg", "alignedmtl", "nashmtl"):
        comb = fastmtl.make_combiner(method)
        torch.testing.assert_close(comb.weights(noisy), comb.weights((noisy + noisy.T) / 2),
                                   rtol=0, atol=0)
    assert torch.equal(noisy, before)
    # unchecked, an asymmetric G goes through (the solvers read one triangle)
    assert torch.isfinite(fastmtl.make_combiner("mgda").weights(_asymmetric(), check=False)).all()


def test_custom_combiners_through_either_hook():
    # a subclass written against the public weights() (as before _weights existed), and one
    # implementing _weights: both combine, and weights() checks G for the second
    class PublicHook(fastmtl.Combiner):
        def weights(self, G, *, generator=None, losses=None, check=True):
            return torch.softmax(-G.diagonal().to(torch.float64), 0)

    class PrivateHook(fastmtl.Combiner):
        def _weights(self, G, *, generator=None, losses=None):
            return torch.softmax(-G.diagonal().to(torch.float64), 0)

    G = J @ J.T
    expected = torch.softmax(-G.diagonal(), 0) @ J
    for comb in (PublicHook(), PrivateHook()):
        torch.testing.assert_close(comb(J), expected)
    with pytest.raises(ValueError, match="G must be symmetric"):
        PrivateHook().weights(_asymmetric())


def test_unknown_method_lists_the_available_names():
    with pytest.raises(ValueError, match="unknown method 'nope'.*cagrad.*mgda.*pcgrad"):
        fastmtl.combine(J, "nope")
    with pytest.raises(TypeError, match="method must be a str or a Combiner"):
        fastmtl.combine(J, 3)


def test_options_with_an_instance():
    with pytest.raises(TypeError, match="options"):
        fastmtl.combine(J, fastmtl.CAGrad(), c=0.5)
    with pytest.raises(TypeError):
        fastmtl.combine(J, "cagrad", bogus=1)


@pytest.mark.parametrize(
    "out,exc,match",
    [
        (torch.zeros(4, dtype=torch.float64), ValueError, "out must have 5 elements"),
        (torch.zeros(5, dtype=torch.float32), TypeError, "out must have the gradients' dtype"),
        (torch.zeros(10, dtype=torch.float64)[::2], ValueError, "out must be contiguous"),
        ("buffer", TypeError, "out must be a Tensor"),
    ],
)
def test_bad_out(out, exc, match):
    with pytest.raises(exc, match=match):
        fastmtl.combine(J, "mgda", out=out)


def test_mixed_devices_meta():
    # The meta device stands in for a second device on machines without a GPU.
    with pytest.raises(ValueError, match=r"grads\[1\] is on meta"):
        fastmtl.combine([torch.ones(3), torch.ones(3, device="meta")], "mean")
    with pytest.raises(ValueError, match="out must be on the gradients' device cpu"):
        fastmtl.combine(J, "mean", out=torch.zeros(5, dtype=torch.float64, device="meta"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_mixed_devices():
    with pytest.raises(ValueError, match=r"grads\[1\] is on"):
        fastmtl.combine([torch.ones(3), torch.ones(3, device="cuda")], "mean")
    with pytest.raises(ValueError, match="out must be on"):
        fastmtl.combine(J, "mean", out=torch.zeros(5, dtype=torch.float64, device="cuda"))


def test_bad_hyper_parameters():
    with pytest.raises(ValueError, match="c must be"):
        fastmtl.CAGrad(c=-1)
    with pytest.raises(ValueError, match="rescale"):
        fastmtl.CAGrad(rescale=3)
    with pytest.raises(ValueError, match="reduction"):
        fastmtl.PCGrad(reduction="max")
    with pytest.raises(ValueError, match="variant"):
        fastmtl.PCGrad(variant="other")
    with pytest.raises(ValueError, match="order"):
        fastmtl.PCGrad(order="sorted")
    with pytest.raises(ValueError, match="order has shape"):
        fastmtl.combine(J, fastmtl.PCGrad(order=[0, 1]))
    with pytest.raises(ValueError, match="normalization"):
        fastmtl.MGDA(normalization="l1")
    with pytest.raises(ValueError, match="weights_on"):
        fastmtl.MGDA(weights_on="both")


def test_bad_losses():
    with pytest.raises(ValueError, match=r"losses must have shape \[T\] = \[3\]"):
        fastmtl.combine(J, fastmtl.MGDA("loss"), losses=[1.0, 2.0])


def test_ops_reject_bad_weights():
    with pytest.raises(ValueError, match="accumulate=True needs an `out`"):
        fastmtl.ops.combine_rows(torch.ones(3, dtype=torch.float64), J, accumulate=True)
