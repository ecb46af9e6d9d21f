"""Every method against the golden values of the canonical implementations.

Float64 inputs are compared with each entry's own tolerance (see
tests/data/reference/README.md), on every device present, both through the native path
(`fastmtl.combine`) and through the pure-PyTorch reference solvers.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_close_golden, entry_params, golden

import fastmtl
from fastmtl import reference

PCGRAD_VARIANTS = {  # golden variant suffix -> PCGrad options
    "nashmtl_sum": {"reduction": "sum", "variant": "paper"},
    "nashmtl_mean": {"reduction": "mean", "variant": "paper"},
    "libmtl_sum": {"reduction": "sum", "variant": "libmtl"},
    "torchjd_sum": {"reduction": "sum", "variant": "torchjd"},
    "cagrad_repo_mean": {"reduction": "mean", "variant": "cagrad_repo"},
    # Pytorch-PCGrad always returns the mean, whatever reduction was asked for.
    "pytorch_pcgrad_reduction_sum": {"reduction": "mean", "variant": "paper"},
    "pytorch_pcgrad_reduction_mean": {"reduction": "mean", "variant": "paper"},
}


def _J(method: str, entry: dict, device: str) -> torch.Tensor:
    return torch.as_tensor(golden(method).J(entry["case"]), device=device)


@pytest.mark.parametrize("entry", entry_params("ew", None))
def test_ew(entry, device):
    J = _J("ew", entry, device)
    method = fastmtl.Mean() if entry["variant"] == "mean" else fastmtl.Sum()
    r = fastmtl.combine(J, method, return_weights=True)
    assert_close_golden(r.direction.cpu(), golden("ew").array(entry, "d"), entry["tol"])
    assert_close_golden(r.weights.cpu(), golden("ew").array(entry, "w"), entry["tol"], "w")


@pytest.mark.parametrize("entry", entry_params("pcgrad", None))
def test_pcgrad(entry, device):
    g = golden("pcgrad")
    J = _J("pcgrad", entry, device)
    suffix = entry["variant"].split("__", 1)[1]
    combiner = fastmtl.PCGrad(order=entry["params"]["order"], **PCGRAD_VARIANTS[suffix])
    r = fastmtl.combine(J, combiner, return_weights=True)
    assert_close_golden(r.direction.cpu(), g.array(entry, "d"), entry["tol"])
    if "w" in entry["arrays"] and not suffix.startswith("libmtl"):
        assert_close_golden(r.weights.cpu(), g.array(entry, "w"), entry["tol"], "w")
    if "pc" in entry["arrays"]:
        C = combiner.coefficients(r.gram)
        assert_close_golden((C @ J).cpu(), g.array(entry, "pc"), entry["tol"])


def test_pcgrad_libmtl_weights_are_its_batch_weights():
    # LibMTL's returned batch_weight is the same sum of coefficients.
    g = golden("pcgrad")
    for entry in g.entries(variants={"identity__libmtl_sum"}):
        J = torch.as_tensor(g.J(entry["case"]))
        combiner = fastmtl.PCGrad(order=entry["params"]["order"], variant="libmtl")
        w = fastmtl.combine(J, combiner, return_weights=True).weights
        assert_close_golden(w, g.array(entry, "w"), entry["tol"], "w")


@pytest.mark.parametrize("entry", entry_params("mgda", {"exact_qp"}))
def test_mgda_exact(entry, device):
    g = golden("mgda")
    J = _J("mgda", entry, device)
    r = fastmtl.combine(J, fastmtl.MGDA(), return_weights=True)
    assert bool(r.extras["converged"])
    assert_close_golden(r.direction.cpu(), g.array(entry, "d"), entry["tol"])
    if entry["scalars"].get("w_unique", True):
        assert_close_golden(r.weights.cpu(), g.array(entry, "w"), entry["tol"], "w")


@pytest.mark.parametrize("entry", entry_params("mgda", {"exact_qp_l2"}))
@pytest.mark.parametrize("weights_on", ["raw", "normalized"])
def test_mgda_exact_l2(entry, device, weights_on):
    g = golden("mgda")
    J = _J("mgda", entry, device)
    combiner = fastmtl.MGDA(normalization="l2", weights_on=weights_on)
    r = fastmtl.combine(J, combiner, return_weights=True)
    w_unique = entry["scalars"].get("w_unique", True)
    tol = dict(entry["tol"])
    if entry["case"].startswith("adv_nearly_collinear"):
        # Unit rows 1e-6 apart: G's float64 rounding (1e-16) is 1e-4 of their differences,
        # so any Gram-based solver is accurate to ~1e-10 here (the reference solved on J).
        tol["rtol"] = 1e-8
    if weights_on == "normalized":  # the min-norm point itself: always unique
        assert_close_golden(r.direction.cpu(), g.array(entry, "d_on_normalised"), tol)
    elif w_unique:  # raw gradients weighted by w: unique only when w is
        assert_close_golden(r.direction.cpu(), g.array(entry, "d_isl_convention"), entry["tol"])
    if w_unique:
        w = r.extras["simplex_weights"].cpu()
        assert_close_golden(w, g.array(entry, "w"), entry["tol"], "w")


APPROXIMATE_MGDA = {"isl_pgd", "isl_fw", "libmtl_none", "torchjd"}


@pytest.mark.parametrize("entry", entry_params("mgda", APPROXIMATE_MGDA))
def test_mgda_is_at_least_as_good_as_canonical_solvers(entry):
    # The canonical solvers stop early; the exact min-norm point is never longer.
    g = golden("mgda")
    J = torch.as_tensor(g.J(entry["case"]))
    d = fastmtl.combine(J, "mgda")
    theirs = torch.as_tensor(g.array(entry, "d"))
    scale = J.norm(dim=1).max() ** 2
    assert d.dot(d) <= theirs.dot(theirs) + 1e-12 * scale


# torchjd's CAGrad (trace-normalised G, weights zeroed when ||g_w|| < 1e-4) has no rescale
# and is an approximation of the `exact` r0 entries, which are compared instead.
CAGRAD_VARIANTS = {
    e["variant"] for e in golden("cagrad").index["entries"] if not e["variant"].endswith("torchjd")
}


@pytest.mark.parametrize("entry", entry_params("cagrad", CAGRAD_VARIANTS))
def test_cagrad(entry, device):
    g = golden("cagrad")
    variant = entry["variant"]
    J = _J("cagrad", entry, device)
    p = entry["params"]
    r = fastmtl.combine(J, fastmtl.CAGrad(c=p["c"], rescale=p["rescale"]), return_weights=True)
    assert bool(r.extras["converged"])
    d = r.direction.cpu().numpy()
    if variant.endswith("__exact"):
        assert_close_golden(d, g.array(entry, "d"), entry["tol"])
        if g.cases[entry["case"]]["kind"] == "random":
            assert_close_golden(r.extras["w_star"].cpu(), g.array(entry, "w"), entry["tol"], "w")
            assert_close_golden(r.weights.cpu(), g.array(entry, "weights"), entry["tol"], "w")
    else:
        # SLSQP-based canonical code: its distance to the exact optimum is recorded; ours
        # is the exact optimum, so the two must be that far apart, not further.
        gap = entry["scalars"]["abs_gap_to_exact_over_max_row_norm"]
        max_norm = float(np.linalg.norm(g.J(entry["case"]), axis=1).max())
        assert np.abs(d - g.array(entry, "d")).max() <= (1.01 * gap + 1e-8) * max_norm


# ---- the pure-PyTorch reference solvers against the same golden values ----------------


@pytest.mark.parametrize("entry", entry_params("mgda", {"exact_qp"}))
def test_reference_min_norm(entry):
    g = golden("mgda")
    J = torch.as_tensor(g.J(entry["case"]))
    w, ok = reference.min_norm_weights(reference.gram(J), 1000, 1e-14)
    assert bool(ok)
    assert_close_golden(w @ J, g.array(entry, "d"), entry["tol"])


@pytest.mark.parametrize("entry", entry_params("cagrad", {"c0.4_r1__exact", "c0.2_r0__exact"}))
def test_reference_cagrad(entry):
    g = golden("cagrad")
    J = torch.as_tensor(g.J(entry["case"]))
    p = entry["params"]
    weights, _, _ = reference.cagrad_weights(reference.gram(J), p["c"], p["rescale"], 100, 1000)
    assert_close_golden(weights @ J, g.array(entry, "d"), entry["tol"])


@pytest.mark.parametrize(
    "entry", entry_params("pcgrad", {"perm__nashmtl_sum", "perm__torchjd_sum"})
)
def test_reference_pcgrad(entry):
    g = golden("pcgrad")
    J = torch.as_tensor(g.J(entry["case"]))
    T = J.shape[0]
    order = torch.as_tensor(entry["params"]["order"]).expand(T, T).contiguous()
    C = reference.pcgrad_coefficients(reference.gram(J), order, entry["params"]["include_self"])
    assert_close_golden(C.sum(0) @ J, g.array(entry, "d"), entry["tol"])


# ---- lower precision: the same random cases, within the dtype's accuracy ----------------

LOW_PRECISION_ATOL = {torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float16: 1e-2}


def _random_entries(method, variants):
    return [e for e in entry_params(method, variants) if e.values[0]["case"].startswith("rand_")]


@pytest.mark.parametrize("dtype", list(LOW_PRECISION_ATOL), ids=str)
@pytest.mark.parametrize(
    "method,variants,make",
    [
        ("ew", {"mean"}, lambda e: fastmtl.Mean()),
        ("pcgrad", {"perm__nashmtl_sum"}, lambda e: fastmtl.PCGrad(order=e["params"]["order"])),
        ("mgda", {"exact_qp"}, lambda e: fastmtl.MGDA()),
        ("cagrad", {"c0.4_r1__exact"}, lambda e: fastmtl.CAGrad(0.4, 1)),
    ],
    ids=["ew", "pcgrad", "mgda", "cagrad"],
)
def test_low_precision_random_cases(method, variants, make, dtype, device):
    g = golden(method)
    for param in _random_entries(method, variants):
        entry = param.values[0]
        J64 = torch.as_tensor(g.J(entry["case"]), device=device)
        J = J64.to(dtype)
        d = fastmtl.combine(J, make(entry))
        assert d.dtype == dtype
        # Compare with the method applied to the rounded input in float64: that isolates the
        # arithmetic error of the low-precision path from the rounding of the input itself.
        expected = fastmtl.combine(J.to(torch.float64), make(entry)).cpu()
        scale = float(J64.norm(dim=1).max())
        err = float((d.cpu().double() - expected).abs().max())
        assert err <= LOW_PRECISION_ATOL[dtype] * scale, (entry["case"], err, scale)
