"""Training-step benchmarks (CPU): plain summed loss, feature level, fork, parameter level."""

from __future__ import annotations

import pytest
import torch

import fastmtl
from fastmtl.bench.step import dense_heads, resnet18_encoder


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    enc, heads = resnet18_encoder(16), dense_heads(128)
    x = torch.randn(4, 3, 32, 32)
    return enc, heads, x


def _losses(heads, z, zs=None):
    return [heads[t](z if zs is None else zs[t]).pow(2).mean() for t in range(len(heads))]


def test_plain(benchmark, model):
    enc, heads, x = model
    benchmark(lambda: sum(_losses(heads, enc(x))).backward())


@pytest.mark.parametrize("method", ["mean", "mgda", "pcgrad", "cagrad"])
def test_feature_level(benchmark, model, method):
    enc, heads, x = model

    def step():
        z = enc(x)
        fastmtl.backward(_losses(heads, z), features=z, combiner=method)

    benchmark(step)


@pytest.mark.parametrize("method", ["mean", "mgda"])
def test_fork(benchmark, model, method):
    enc, heads, x = model

    def step():
        zs = fastmtl.fork(enc(x), len(heads), method)
        sum(_losses(heads, None, zs)).backward()

    benchmark(step)


@pytest.mark.parametrize("batched", [False, True], ids=["loop", "batched"])
@pytest.mark.parametrize("method", ["mean", "mgda"])
def test_parameter_level(benchmark, model, method, batched):
    enc, heads, x = model

    def step():
        fastmtl.backward(_losses(heads, enc(x)), shared=enc.parameters(), combiner=method,
                         batched=batched)

    benchmark(step)
