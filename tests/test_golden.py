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


# ---- eigen-based and stateful methods ----------------------------------------------------

EPS64 = float(np.finfo(np.float64).eps)


def _conditioned(entry: dict, J: np.ndarray, power: float, normalise: bool = False) -> dict:
    """The entry's tolerance, widened to the float64 accuracy of a Gram-based eigen solve.

    These methods invert G or its square root. Working from G = J J^T instead of J, a
    backward-stable solver's relative error is about eps * cond(G)^power (first-order
    perturbation of the eigenvalues), which on the nearly collinear / opposite adversarial
    cases is above the reference's tolerance; elsewhere the entry's own tolerance applies.
    """
    if normalise:
        n = np.linalg.norm(J, axis=1)
        J = J[n > 0] / n[n > 0, None]
    lam = np.linalg.eigvalsh(J @ J.T)
    kept = lam[lam > lam.max() * len(lam) * EPS64]
    widen = 10 * EPS64 * (kept.max() / kept.min()) ** power
    tol = dict(entry["tol"])
    scale = float(np.linalg.norm(J, axis=1).max())
    tol["rtol"] = max(tol["rtol"], widen)
    tol["atol_d"] = max(tol["atol_d"], widen * scale)
    tol["atol_w"] = max(tol["atol_w"], widen)
    return tol



@pytest.mark.parametrize("entry", entry_params("imtlg", None))
def test_imtlg(entry, device):
    g = golden("imtlg")
    r = fastmtl.combine(_J("imtlg", entry, device), fastmtl.IMTLG(), return_weights=True)
    tol = _conditioned(entry, g.J(entry["case"]), 1.0)
    assert_close_golden(r.direction.cpu(), g.array(entry, "d"), tol)
    assert_close_golden(r.weights.cpu(), g.array(entry, "w"), tol, "w")


ALIGNED_VARIANTS = {  # golden variant suffix -> (rank_eps, divide by T)
    "samsung": (1.1920928955078125e-07, False),
    "libmtl": (1.1920928955078125e-07, False),
    "samsung_eps64": (2.220446049250313e-16, False),
    "torchjd": (2.220446049250313e-16, True),  # pref_vector = mean: d / T
}


@pytest.mark.parametrize("entry", entry_params("alignedmtl", None))
def test_aligned_mtl(entry, device):
    g = golden("alignedmtl")
    mode, source = entry["variant"].split("__")
    rank_eps, by_T = ALIGNED_VARIANTS[source]
    J = _J("alignedmtl", entry, device)
    r = fastmtl.combine(J, fastmtl.AlignedMTL(mode, rank_eps), return_weights=True)
    scale = J.shape[0] if by_T else 1
    # An eigenvalue's rounding (eps lambda_max) moves lambda^(-1/2) by ~eps cond relative;
    # the rmse scale sqrt(mean lambda) multiplies that term by up to sqrt(cond) more.
    tol = _conditioned(entry, g.J(entry["case"]), 1.5 if mode == "rmse" else 1.0)
    assert_close_golden(r.direction.cpu() / scale, g.array(entry, "d"), tol)
    assert_close_golden(r.weights.cpu() / scale, g.array(entry, "w"), tol, "w")
    if "eigvals_kept" in entry["arrays"]:
        assert int(r.extras["rank"]) == len(g.array(entry, "eigvals_kept"))


@pytest.mark.parametrize("entry", entry_params("config", None))
def test_config(entry, device):
    g = golden("config")
    r = fastmtl.combine(_J("config", entry, device), fastmtl.ConFIG(), return_weights=True)
    tol = _conditioned(entry, g.J(entry["case"]), 1.0, normalise=True)
    assert_close_golden(r.direction.cpu(), g.array(entry, "d"), tol)
    if "w_derived" in entry["arrays"]:
        assert_close_golden(r.weights.cpu(), g.array(entry, "w_derived"), tol, "w")


@pytest.mark.parametrize("entry", entry_params("gradvac", None))
def test_gradvac_two_steps(entry, device):
    g = golden("gradvac")
    p = entry["params"]
    tol = dict(entry["tol"])
    opposite = entry["case"].startswith("adv_opposite")
    if opposite:
        # rho = -1 exactly: sqrt(1 - rho^2) turns G's rounding (1e-16) into ~1e-8. The
        # projected p of the opposite task then vanishes to rounding, and the cosine of that
        # ~0 vector with the next task (hence its EMA target) is rounding noise in the
        # reference too: its targets are not compared here.
        scale = float(np.linalg.norm(g.J(entry["case"]), axis=1).max())
        tol.update(rtol=1e-7, atol_d=1e-7 * scale, atol_w=1e-7)
    gv = fastmtl.GradVac(beta=p["beta"], eps=p["eps"], order=p["order"])
    r = fastmtl.combine(_J("gradvac", entry, device), gv, return_weights=True)
    assert_close_golden(r.direction.cpu(), g.array(entry, "d"), tol)
    if entry["variant"].endswith("libmtl"):
        assert_close_golden(r.weights.cpu(), g.array(entry, "w"), tol, "w")
    if not opposite:
        assert_close_golden(gv.rho.cpu(), g.array(entry, "rho_after"), tol, "w")
    # Step 2 continues from the saved state, through a state_dict round trip.
    restored = fastmtl.GradVac(beta=p["beta"], eps=p["eps"], order=p["order"])
    restored.load_state_dict(gv.state_dict())
    J2 = torch.as_tensor(g.npz[f"{entry['case']}/J2"], device=device)
    r2 = fastmtl.combine(J2, restored, return_weights=True)
    assert torch.isfinite(r2.direction).all()
    if not opposite:  # step 2 starts from the targets that are noise there (see above)
        assert_close_golden(r2.direction.cpu(), g.array(entry, "d_step2"), tol)
        assert_close_golden(restored.rho.cpu(), g.array(entry, "rho_after_step2"), tol, "w")
