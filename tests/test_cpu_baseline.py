"""The baseline-ISA builds of the CPU loops (what a CPU without AVX2 runs) against the builds
this process uses: FASTMTL_CPU_BASELINE=1 in a subprocess selects the baseline ones."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import fastmtl

pytestmark = pytest.mark.skipif(not fastmtl.native_available(), reason="native extension")

# Computes every CPU streaming and solver op on fixed inputs and saves the results to argv[1].
SCRIPT = r"""
import sys, torch, fastmtl
torch.manual_seed(0)
J = torch.randn(5, 20_011)
w = torch.rand(5, dtype=torch.float64)
leak = torch.tensor([0.0, 0.2, 0.0, 1.0, 0.5], dtype=torch.float64)
seed = torch.tensor([123456789, 987654321])
B, D = 7, 2_003
Jb = torch.randn(5, B * D)
S = torch.randn(5, D)
g = torch.randn(3, 4, 5_001)
ops = torch.ops.fastmtl
out = {
    "gram": ops.gram(J), "gram64": ops.gram(J.double()),
    "rows": ops.combine_rows(w, J), "rows16": ops.combine_rows(w, J.bfloat16()),
    "graddrop": ops.graddrop(J, torch.zeros(5, dtype=torch.float64), seed, None, 3),
    "graddrop_leak": ops.graddrop(J, leak, seed, None, 0),
    "graddrop_purity": ops.graddrop(Jb, leak, seed, S, 1),
    "fd_map": ops.feature_disentanglement(g.reshape(3, -1), 0.0, 0),
    "fd_mean": ops.feature_disentanglement(g.reshape(3, -1), 0.5, 1),
    "fd_weighted": ops.feature_disentanglement(g.reshape(3, -1), 0.0, 2),
}
# the solvers (compiled once more for AVX2+FMA) on a batch of mixed-conflict Gram matrices
T = 24
A = torch.randn(3, T, 60, dtype=torch.float64) + torch.randn(3, 1, 60, dtype=torch.float64)
G = A @ A.transpose(1, 2)
order = torch.rand(3, T, T).argsort(-1)
f = fastmtl.ops
out |= {
    "pcgrad": f.pcgrad_coefficients(G, order),
    "mgda": f.min_norm_weights(G)[0],
    "cagrad": f.cagrad_weights(G, 0.4, 1)[0],
    "eigenvalues": f.eigh(G)[0].sort(-1).values,
    "imtlg": f.imtlg_weights(G)[0],
    "alignedmtl": f.aligned_mtl_weights(G, 0, 1e-7)[0],
    "config": f.config_weights(G)[0],
    "gradvac": f.gradvac_coefficients(G, order, torch.full_like(G, 0.1), beta=0.5, eps=1e-8),
    "nashmtl": f.nash_weights(G)[0],
    "upgrad": f.dual_cone_weights(G, torch.eye(T, dtype=torch.float64))[0],
}
torch.save(out, sys.argv[1])
"""


SOLVERS = ("pcgrad", "mgda", "cagrad", "eigenvalues", "imtlg", "alignedmtl", "config", "gradvac",
           "nashmtl", "upgrad")


def _run(path, baseline: bool) -> dict:
    env = dict(os.environ, FASTMTL_CPU_BASELINE="1" if baseline else "0")
    subprocess.run([sys.executable, "-c", SCRIPT, str(path)], env=env, check=True,
                   capture_output=True, timeout=300)
    return torch.load(path)


def test_baseline_builds_match_the_vector_builds(tmp_path):
    fast = _run(tmp_path / "fast.pt", baseline=False)
    base = _run(tmp_path / "base.pt", baseline=True)
    assert fast.keys() == base.keys()
    for name in fast:
        a, b = fast[name].double(), base[name].double()
        # same math, other vector widths: sums differ by rounding only; GradDrop draws the
        # same Philox uniforms in both, so its decisions (and zeros) agree
        tol = 2e-2 if name == "rows16" else 1e-8 if name in SOLVERS else 1e-5
        torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=name)
        assert not torch.equal(a, torch.zeros_like(a)), name
