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

# Computes every CPU streaming op on fixed inputs and saves the results to argv[1].
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
torch.save(out, sys.argv[1])
"""


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
        tol = 2e-2 if name == "rows16" else 1e-5
        torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=name)
        assert not torch.equal(a, torch.zeros_like(a)), name
