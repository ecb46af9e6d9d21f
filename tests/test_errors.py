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
