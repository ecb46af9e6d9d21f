"""Shared fixtures: devices, dtypes and the golden reference values."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch

REFERENCE_DIR = Path(__file__).parent / "data" / "reference"

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
FLOAT_DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


def pytest_report_header(config):
    import fastmtl

    return (
        f"fastmtl native={fastmtl.native_available()} devices={DEVICES} "
        f"torch={torch.__version__}"
    )


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param


class Golden:
    """One golden file: its cases' inputs and its entries' outputs."""

    def __init__(self, method: str) -> None:
        self.npz = np.load(REFERENCE_DIR / f"{method}.npz")
        self.index = json.loads(str(self.npz["__index__"]))
        self.cases = {c["id"]: c for c in self.index["cases"]}

    def J(self, case: str) -> np.ndarray:
        return self.npz[f"{case}/J"]

    def array(self, entry: dict, field: str) -> np.ndarray:
        return self.npz[f"{entry['entry']}/{field}"]

    def entries(self, *, variants=None, comparable_only=True):
        for e in self.index["entries"]:
            if variants is not None and e["variant"] not in variants:
                continue
            if comparable_only and (e["status"] != "ok" or e["tol"]["rtol"] is None):
                continue
            yield e


@cache
def golden(method: str) -> Golden:
    return Golden(method)


def entry_params(method: str, variants, comparable_only=True):
    """pytest params (one per golden entry), with readable ids."""
    return [
        pytest.param(e, id=e["entry"])
        for e in golden(method).entries(variants=variants, comparable_only=comparable_only)
    ]


def assert_close_golden(actual, expected, tol: dict, kind: str = "d") -> None:
    """np.allclose with the entry's recommended tolerance (atol_d or atol_w)."""
    actual = np.asarray(actual, dtype=np.float64)
    atol = tol["atol_d"] if kind == "d" else tol["atol_w"]
    if not np.allclose(actual, expected, rtol=tol["rtol"], atol=atol):
        err = np.abs(actual - expected).max()
        raise AssertionError(
            f"{kind} differs from the golden value: max abs error {err:.3e} "
            f"(rtol {tol['rtol']}, atol {atol:.3e})\nactual   {actual}\nexpected {expected}"
        )
