"""Combine-step benchmarks on [10, 4M] float32 (CPU): ops, every method, and TorchJD."""

from __future__ import annotations

import pytest
import torch
from conftest import record_ratio

import fastmtl
from fastmtl import ops
from fastmtl.bench.combine import TORCHJD_MATCH, solver_gram

METHODS = ["mean", "sum", "pcgrad", "mgda", "cagrad", "graddrop"]


def _combiner(method: str, T: int):
    if method == "pcgrad":
        return fastmtl.PCGrad(order=list(range(T)))
    return fastmtl.make_combiner(method)


def test_j_sum(benchmark, jacobian):
    J, t_sum = jacobian
    benchmark(J.sum)
    record_ratio(benchmark, t_sum)


def test_gram(benchmark, jacobian):
    J, t_sum = jacobian
    benchmark(ops.gram, J)
    record_ratio(benchmark, t_sum)


def test_matmul_gram(benchmark, jacobian):
    J, t_sum = jacobian
    benchmark(lambda: J @ J.T)
    record_ratio(benchmark, t_sum)


def test_combine_rows(benchmark, jacobian):
    J, t_sum = jacobian
    w = torch.rand(J.shape[0], dtype=torch.float64)
    out = torch.empty(J.shape[1])
    benchmark(ops.combine_rows, w, J, out=out)
    record_ratio(benchmark, t_sum)


@pytest.mark.parametrize("method", METHODS)
def test_combine_out(benchmark, jacobian, method):
    J, t_sum = jacobian
    comb = _combiner(method, J.shape[0])
    out = torch.empty(J.shape[1])
    benchmark(comb, J, out=out)
    record_ratio(benchmark, t_sum)


@pytest.mark.parametrize("method", METHODS)
def test_torchjd(benchmark, jacobian, method):
    agg = pytest.importorskip("torchjd.aggregation")
    J, t_sum = jacobian
    name, _, kwargs = TORCHJD_MATCH[method]
    try:
        peer = getattr(agg, name)(**kwargs)
    except ImportError as exc:
        pytest.skip(str(exc))
    benchmark.pedantic(peer, args=(J,), rounds=3)
    record_ratio(benchmark, t_sum)


@pytest.mark.parametrize("method", ["pcgrad", "mgda", "cagrad", "nashmtl", "upgrad", "dualproj",
                                    "imtlg", "alignedmtl", "config", "gradvac"])
def test_solver_t128(benchmark, method):
    G = solver_gram(128)
    benchmark(fastmtl.make_combiner(method).weights, G, generator=torch.Generator())
