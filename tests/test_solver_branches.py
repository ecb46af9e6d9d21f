"""The solvers' generic branch, the arithmetic each CUDA thread runs, checked on the host.

tests/native/solver_branches.cpp compiles the header solvers twice, as the CPU build does
and through the branch selected by ``__CUDA_ARCH__``, and reports per solver the largest
relative difference between the two on the same Gram matrices (T from 1 to 128, full rank
and rank deficient). They differ only in the order of their sums, so the differences must
stay at rounding level; a logic error in the device branch shows as an O(1) difference.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest

SOURCE = Path(__file__).parent / "native" / "solver_branches.cpp"
INCLUDE = Path(__file__).parents[1] / "csrc" / "include"
SOLVERS = {"imtlg", "config", "alignedmtl", "nashmtl", "eigenvalues"}


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")


@pytest.mark.skipif(_compiler() is None, reason="needs a C++ compiler")
def test_generic_branch_matches_vector_branch(tmp_path):
    exe = tmp_path / "solver_branches"
    # the extension's CPU flags (setup.py), so that both branches round as they do there
    subprocess.run([_compiler(), "-std=c++17", "-O2", "-fno-math-errno", "-fno-trapping-math",
                    "-ffp-contract=fast", f"-I{INCLUDE}", str(SOURCE), "-o", str(exe)],
                   check=True, capture_output=True, timeout=300)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True, timeout=120)
    worst = {name: float(value) for name, value in map(str.split, out.stdout.splitlines())}
    assert set(worst) == SOLVERS
    for name, value in worst.items():
        assert math.isfinite(value) and value <= 1e-9, (name, value)
