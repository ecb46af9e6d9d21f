"""torch.compile of fastmtl.combine for every method, and CUDA-graph capture on a GPU."""

from __future__ import annotations

import pytest
import torch

import fastmtl

pytestmark = pytest.mark.skipif(not fastmtl.native_available(), reason="needs fastmtl._C")

DETERMINISTIC = {
    "mean": fastmtl.Mean,
    "sum": fastmtl.Sum,
    "pcgrad_fixed_order": lambda: fastmtl.PCGrad(order=[2, 0, 1]),
    "mgda": fastmtl.MGDA,
    "mgda_l2": lambda: fastmtl.MGDA(normalization="l2"),
    "cagrad": fastmtl.CAGrad,
    "imtlg": fastmtl.IMTLG,
    "alignedmtl_median": lambda: fastmtl.AlignedMTL("median"),
    "config": fastmtl.ConFIG,
    "gradvac_fixed_order": lambda: fastmtl.GradVac(order=[1, 2, 0]),
}


@pytest.mark.parametrize("name", list(DETERMINISTIC))
def test_compile_fullgraph(name, device):
    torch._dynamo.reset()
    # one instance per path: GradVac carries state from call to call
    eager, traced = DETERMINISTIC[name](), DETERMINISTIC[name]()
    J = torch.randn(3, 64, dtype=torch.float32, device=device)
    compiled = torch.compile(lambda J: fastmtl.combine(J, traced), fullgraph=True,
                             backend="aot_eager")
    for _ in range(2):  # the second call sees the state left by the first
        torch.testing.assert_close(compiled(J), fastmtl.combine(J, eager), rtol=1e-5, atol=1e-5)


def test_compile_random_pcgrad_with_graph_breaks(device):
    torch._dynamo.reset()
    pc = fastmtl.PCGrad()
    J = torch.randn(4, 32, dtype=torch.float64, device=device)

    def step(J, gen):
        return fastmtl.combine(J, pc, generator=gen)

    compiled = torch.compile(step, backend="aot_eager")
    a = compiled(J, torch.Generator(device=device).manual_seed(5))
    b = step(J, torch.Generator(device=device).manual_seed(5))
    torch.testing.assert_close(a, b)


def test_compile_out_buffer_mutation(device):
    torch._dynamo.reset()
    J = torch.randn(3, 50, dtype=torch.float64, device=device)
    out = torch.zeros(50, dtype=torch.float64, device=device)

    def step(J, out):
        fastmtl.combine(J, "mgda", out=out)
        return out

    torch.compile(step, fullgraph=True, backend="aot_eager")(J, out)
    torch.testing.assert_close(out, fastmtl.combine(J, "mgda"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("method", ["mean", "mgda", "cagrad"])
def test_cuda_graph_capture(method):
    J = torch.randn(4, 4096, device="cuda")
    out = torch.empty(4096, device="cuda")
    fastmtl.combine(J, method, out=out)  # warm-up outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fastmtl.combine(J, method, out=out)
    J.copy_(torch.randn(4, 4096, device="cuda"))
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, fastmtl.combine(J, method), rtol=1e-5, atol=1e-5)
