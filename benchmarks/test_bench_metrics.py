"""Feature Disentanglement on [3, 64, 512, 16, 16] float32 (CPU), against x.abs().sum().

Each benchmark records ``median_over_abs_sum`` in ``extra_info``: its time over one
``x.abs().sum()`` pass measured in the same process (the issue's target for FD is <= 2).
"""

from __future__ import annotations

import pytest
import torch

from fastmtl import ops
from fastmtl.bench.combine import time_call
from fastmtl.bench.fd import DEFAULT_SHAPE
from fastmtl.metrics import (
    feature_disentanglement,
    gradient_conflict,
    magnitude_similarity,
)


@pytest.fixture(scope="module")
def feature_grads():
    torch.manual_seed(0)
    x = torch.randn(DEFAULT_SHAPE).clamp_min_(-0.5)
    t_abs_sum = time_call(lambda: x.abs().sum(), torch.device("cpu"), repeats=7)
    return x, t_abs_sum


def _record(benchmark, t_ref: float) -> None:
    benchmark.extra_info["median_over_abs_sum"] = benchmark.stats.stats.median / t_ref


def test_abs_sum(benchmark, feature_grads):
    x, t = feature_grads
    benchmark(lambda: x.abs().sum())
    _record(benchmark, t)


@pytest.mark.parametrize("reduce", ["mean", "weighted", "none"])
def test_fd(benchmark, feature_grads, reduce):
    x, t = feature_grads
    benchmark(feature_disentanglement, x, reduce=reduce)
    _record(benchmark, t)


def test_fd_op_no_check(benchmark, feature_grads):
    x, t = feature_grads
    flat = x.view(x.shape[0], -1)
    benchmark(ops.feature_disentanglement, flat, 0.0, 1)
    _record(benchmark, t)


def test_fd_temperature(benchmark, feature_grads):
    x, t = feature_grads
    benchmark(feature_disentanglement, x, temperature=1.0)
    _record(benchmark, t)


def test_conflict_and_magnitude_from_j(benchmark, feature_grads):
    x, t = feature_grads

    def both():
        gradient_conflict(x)
        magnitude_similarity(x)

    benchmark(both)
    _record(benchmark, t)
