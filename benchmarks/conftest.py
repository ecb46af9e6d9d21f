"""pytest-benchmark suites. Run: python -m pytest benchmarks --benchmark-only

Absolute times on a shared machine are noise; every benchmark also records, in
``extra_info``, its time as a multiple of one ``J.sum()`` pass measured in the same process.
"""

from __future__ import annotations

import pytest
import torch

from fastmtl.bench.combine import time_call


@pytest.fixture(scope="module")
def jacobian():
    torch.manual_seed(0)
    J = torch.randn(10, 4_000_000)
    t_sum = time_call(lambda: J.sum(), torch.device("cpu"), repeats=7)
    return J, t_sum


def record_ratio(benchmark, t_sum: float) -> None:
    stats = benchmark.stats.stats
    benchmark.extra_info["median_over_J_sum"] = stats.median / t_sum
