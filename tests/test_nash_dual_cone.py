"""Nash-MTL, UPGrad and DualProj: golden values, native vs reference, properties, state."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_close_golden, entry_params, golden
from hypothesis import given
from test_properties import PROPERTY_SETTINGS, jacobians

import fastmtl
from fastmtl import ops, reference

EPS64 = float(np.finfo(np.float64).eps)


def _J(method: str, entry: dict, device: str) -> torch.Tensor:
    return torch.as_tensor(golden(method).J(entry["case"]), device=device)


def _cond(J: np.ndarray) -> float:
    """Condition number of G on its numerical range (T > P makes G singular)."""
    lam = np.linalg.eigvalsh(J @ J.T)
    kept = lam[lam > lam.max() * len(lam) * EPS64]
    return float(kept.max() / kept.min())


# ---- Nash-MTL ------------------------------------------------------------------------------


def _nash_tol(entry: dict, J: np.ndarray) -> dict:
    """The entry's tolerance, widened where the golden solve itself is less accurate.

    alpha is determined to about eps * cond(G) relative (forming G alpha cancels), and the
    golden exact solver stopped at its iteration cap on some cases with a Nash residual r
    (scalars.residual), which bounds its own accuracy to about 100 r.
    """
    widen = max(10 * EPS64 * _cond(J), 100 * (entry["scalars"].get("residual") or 0.0))
    tol = dict(entry["tol"])
    scale = float(np.linalg.norm(J, axis=1).max())
    tol["rtol"] = max(tol["rtol"], widen)
    tol["atol_w"] = max(tol["atol_w"], widen)
    tol["atol_d"] = max(tol["atol_d"], widen * scale)
    return tol


@pytest.mark.parametrize("entry", entry_params("nashmtl", {"maxnorm0__exact",
                                                           "maxnorm1__exact"}))
def test_nash_exact(entry, device):
    g = golden("nashmtl")
    J = g.J(entry["case"])
    r = fastmtl.combine(_J("nashmtl", entry, device),
                        fastmtl.NashMTL(max_norm=entry["params"]["max_norm"]), return_weights=True)
    if entry["case"].startswith("adv_opposite"):
        # Exactly opposite rows: no Nash point exists; the stored alpha (~5e7, the reference
        # solver's last iterate) is rounding noise. fastmtl says so and stays finite.
        assert not bool(r.extras["converged"])
        assert torch.isfinite(r.direction).all()
        return
    tol = _nash_tol(entry, J)
    assert bool(r.extras["converged"])
    assert float(r.extras["nash_residual"]) < 1e-6
    assert_close_golden(r.extras["alpha"].cpu(), g.array(entry, "alpha"), tol, "w")
    assert_close_golden(r.direction.cpu(), g.array(entry, "d"), tol)


def _no_nash_point() -> set[str]:
    exact = golden("nashmtl").entries(variants={"maxnorm0__exact"}, comparable_only=False)
    return {e["case"] for e in exact if e["status"] == "no_solution"} | {
        "adv_opposite_rows_T2_P7"}  # see test_nash_exact


CANONICAL_NASH = {f"maxnorm{m}__{s}" for m in (0, 1) for s in ("nashmtl", "libmtl", "torchjd")}


@pytest.mark.parametrize("entry", [  # cases without a Nash point: see the test below
    p for p in entry_params("nashmtl", CANONICAL_NASH)
    if p.values[0]["case"] not in _no_nash_point()])
def test_nash_against_canonical_procedures(entry):
    g = golden("nashmtl")
    J = torch.as_tensor(g.J(entry["case"]))
    r = fastmtl.combine(J, fastmtl.NashMTL(max_norm=entry["params"]["max_norm"]),
                        return_weights=True)
    if entry["tol"].get("comparable_to_exact"):
        # The official sequential procedure reached the Nash point: same direction within
        # its tolerance (torchjd's clipping differs from clip_grad_norm_ by the 1e-6 only).
        assert_close_golden(r.direction, g.array(entry, "d"), entry["tol"])
    else:
        # It stopped early (about one case in six): fastmtl is closer to the Nash point.
        theirs = entry["scalars"].get("max_abs_alpha_i_times_G_alpha_i_minus_1")
        if theirs is not None:
            assert float(r.extras["nash_residual"]) <= theirs


@pytest.mark.parametrize("entry", [
    p for p in entry_params("nashmtl", {"maxnorm0__exact"}, comparable_only=False)
    if p.values[0]["status"] == "no_solution"])
def test_nash_without_a_solution_is_flagged_and_finite(entry):
    J = torch.as_tensor(golden("nashmtl").J(entry["case"]))
    r = fastmtl.combine(J, fastmtl.NashMTL(max_norm=0.0), return_weights=True)
    assert not bool(r.extras["converged"])
    assert torch.isfinite(r.weights).all() and torch.isfinite(r.direction).all()


@pytest.mark.parametrize("entry", entry_params("nashmtl", {"maxnorm0__exact"})[::4])
def test_reference_nash(entry):
    J = golden("nashmtl").J(entry["case"])
    if entry["case"].startswith("adv_opposite"):
        pytest.skip("no Nash point")
    alpha, residual, ok = reference.nash_weights(torch.as_tensor(J @ J.T), 100, 1e-12)
    assert bool(ok)
    assert_close_golden(alpha, golden("nashmtl").array(entry, "alpha"), _nash_tol(entry, J), "w")


def _random_grams(batch, T, device, seed=0, P=None):
    g = torch.Generator().manual_seed(seed)
    J = torch.randn(*batch, T, P or T + 3, generator=g, dtype=torch.float64)
    return (J @ J.transpose(-1, -2)).to(device)


# T across the Cholesky factor's four-row panels and their eight-column chunks, with tails
@pytest.mark.parametrize("T", [1, 2, 3, 5, 7, 16, 37])
def test_nash_native_matches_reference(T, device):
    G = _random_grams((3,), T, device, seed=T)
    a, res, ok = ops.nash_weights(G)
    a_ref, res_ref, ok_ref = reference.nash_weights(G.cpu(), 100, 1e-12)
    torch.testing.assert_close(a.cpu(), a_ref, rtol=1e-10, atol=0)
    assert bool(ok.all()) and bool(ok_ref.all())
    # The Nash condition itself, checked independently of both solvers.
    torch.testing.assert_close(a * (G @ a.unsqueeze(-1)).squeeze(-1), torch.ones_like(a),
                               rtol=0, atol=1e-10)


def test_nash_max_norm_clips_like_clip_grad_norm():
    J = torch.randn(4, 50, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    free = fastmtl.combine(J, fastmtl.NashMTL(max_norm=0.0), return_weights=True)
    clipped = fastmtl.combine(J, fastmtl.NashMTL(max_norm=0.5), return_weights=True)
    norm = float(free.direction.norm())
    assert abs(norm - 2.0) < 1e-9  # ||d||^2 = alpha^T G alpha = T
    torch.testing.assert_close(clipped.direction, free.direction * 0.5 / (norm + 1e-6))
    torch.testing.assert_close(clipped.extras["alpha"], free.extras["alpha"])
    loose = fastmtl.combine(J, fastmtl.NashMTL(max_norm=10.0))
    torch.testing.assert_close(loose, free.direction)


def test_nash_update_weights_every_reuses_alpha_and_round_trips():
    gen = torch.Generator().manual_seed(2)
    Js = [torch.randn(3, 20, generator=gen, dtype=torch.float64) for _ in range(5)]
    nash = fastmtl.NashMTL(max_norm=0.0, update_weights_every=2)
    results = [fastmtl.combine(J, nash, return_weights=True) for J in Js[:3]]
    assert [r.extras["updated"] for r in results] == [True, False, True]
    torch.testing.assert_close(results[1].weights, results[0].weights)
    assert not torch.allclose(results[2].weights, results[0].weights)
    restored = fastmtl.NashMTL(max_norm=0.0, update_weights_every=2)
    restored.load_state_dict(nash.state_dict())
    for J in Js[3:]:
        a = fastmtl.combine(J, nash, return_weights=True)
        b = fastmtl.combine(J, restored, return_weights=True)
        assert torch.equal(a.weights, b.weights)
    nash.reset()
    assert fastmtl.combine(Js[0], nash, return_weights=True).extras["updated"]


def test_nash_bad_hyperparameters():
    with pytest.raises(ValueError, match="max_norm"):
        fastmtl.NashMTL(max_norm=-1.0)
    with pytest.raises(ValueError, match="update_weights_every"):
        fastmtl.NashMTL(update_weights_every=0)
    with pytest.raises(ValueError, match="optim_niter"):
        fastmtl.NashMTL(optim_niter=1.5)


@PROPERTY_SETTINGS
@given(J=jacobians())
def test_nash_is_scale_free_and_finite(J):
    # alpha scales like 1/a when J does like a: d = J^T alpha does not change.
    r = fastmtl.combine(J, fastmtl.NashMTL(max_norm=0.0), return_weights=True)
    assert torch.isfinite(r.direction).all() and torch.isfinite(r.weights).all()
    if bool(r.extras["converged"]):
        d2 = fastmtl.combine(1e3 * J, fastmtl.NashMTL(max_norm=0.0))
        torch.testing.assert_close(d2, r.direction, rtol=1e-6, atol=1e-9)


# ---- UPGrad and DualProj -------------------------------------------------------------------


def _objective(W: np.ndarray, J: np.ndarray) -> np.ndarray:
    A = J @ J.T
    return np.einsum("kt,ts,ks->k", W, A / np.trace(A), W)


@pytest.mark.parametrize("method", ["upgrad", "dualproj"])
def test_dual_cone_golden(method, device):
    g = golden(method)
    for entry in g.entries():
        J = _J(method, entry, device)
        eps = 0.0 if entry["variant"] == "exact_unregularised" else 1e-4
        comb = fastmtl.make_combiner(method, norm_eps=eps, reg_eps=eps)
        r = fastmtl.combine(J, comb, return_weights=True)
        assert bool(r.extras["converged"]), entry["entry"]
        Jn = g.J(entry["case"])
        lam = np.linalg.eigvalsh(Jn @ Jn.T)
        if eps == 0.0 and lam.min() < 1e-12 * lam.max():
            # A nearly singular, unregularised QP: w is ill-determined (the near-zero row's
            # weight reaches 1e6). The golden solve is not optimal there; ours is feasible
            # and at least as low in objective.
            W = (r.extras["W"] if method == "upgrad" else r.weights[None]).cpu().numpy()
            W_ref = g.array(entry, "W") if method == "upgrad" else g.array(entry, "w")[None]
            U = np.eye(len(Jn)) / len(Jn) if method == "upgrad" else np.full((1, len(Jn)),
                                                                               1 / len(Jn))
            assert (W >= U - 1e-15).all()
            # (objectives are in trace-normalised units: 1e-14 is rounding)
            assert (_objective(W, Jn) <= _objective(W_ref, Jn) * (1 + 1e-9) + 1e-14).all()
            continue
        assert_close_golden(r.direction.cpu(), g.array(entry, "d"), entry["tol"])
        if eps > 0:  # w is unique when A is positive definite
            assert_close_golden(r.weights.cpu(), g.array(entry, "w"), entry["tol"], "w")
            if "W" in entry["arrays"]:
                assert_close_golden(r.extras["W"].cpu(), g.array(entry, "W"), entry["tol"], "w")


@pytest.mark.parametrize("T", [1, 2, 6, 20])
@pytest.mark.parametrize("reg", [1e-4, 0.0])
def test_dual_cone_native_matches_reference(T, reg, device):
    G = _random_grams((2,), T, device, seed=10 + T, P=3 * T)
    U = torch.rand(3, T, generator=torch.Generator().manual_seed(T), dtype=torch.float64)
    W, ok = ops.dual_cone_weights(G, U.to(device), norm_eps=1e-4, reg_eps=reg)
    W_ref, ok_ref = reference.dual_cone_weights(G.cpu(), U, 1e-4, reg, 200)
    assert W.shape == (2, 3, T)
    torch.testing.assert_close(W.cpu(), W_ref, rtol=1e-9, atol=1e-12)
    assert bool(ok.all()) and bool(ok_ref.all())


@PROPERTY_SETTINGS
@given(J=jacobians())
def test_upgrad_and_dualproj_conflict_with_no_task(J):
    # d lies in the dual cone of the gradients (up to the 1e-4 regularisation and rounding).
    for method in ("upgrad", "dualproj"):
        r = fastmtl.combine(J, method, return_weights=True)
        assert torch.isfinite(r.direction).all() and bool(r.extras["converged"])
        scale = float((J * J).sum(1).max()) * float(r.weights.abs().sum()) + 1e-300
        assert bool(((J @ r.direction) >= -2e-4 * scale).all())
        # KKT of each QP: v >= u, and A v >= 0 wherever v > u.
        assert bool((r.weights >= -1e-15).all())


def test_dual_cone_preference_and_errors():
    J = torch.randn(3, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    p = [0.5, 0.3, 0.2]
    W = fastmtl.combine(J, fastmtl.UPGrad(pref_vector=p), return_weights=True).extras["W"]
    assert bool((W.diagonal() >= torch.tensor(p, dtype=torch.float64) - 1e-15).all())
    with pytest.raises(ValueError, match="pref_vector has 3 entries"):
        fastmtl.combine(J[:2], fastmtl.UPGrad(pref_vector=p))
    with pytest.raises(ValueError, match="pref_vector"):
        fastmtl.DualProj(pref_vector=[[1.0]])
    with pytest.raises(ValueError, match="reg_eps"):
        fastmtl.UPGrad(reg_eps=-1)
    with pytest.raises(ValueError, match="U must be"):
        ops.dual_cone_weights(torch.eye(3, dtype=torch.float64), torch.ones(2, 4,
                                                                            dtype=torch.float64))


def test_opcheck_nash_and_dual_cone(device):
    from test_ops import _opcheck

    G = _random_grams((2,), 4, device)
    U = torch.eye(4, dtype=torch.float64, device=device) / 4
    _opcheck(torch.ops.fastmtl.nash_weights.default, (G, 100, 1e-12))
    _opcheck(torch.ops.fastmtl.dual_cone_weights.default, (G, U, 1e-4, 1e-4, 40))


def test_documented_degenerate_outputs():
    e = torch.eye(3, dtype=torch.float64)
    zero = torch.zeros(3, 4, dtype=torch.float64)
    opposite = torch.stack([e[0], -e[0]])
    same = torch.stack([e[1], e[1], e[1]])
    for method in ("nashmtl", "upgrad", "dualproj"):
        assert torch.equal(fastmtl.combine(zero, method), torch.zeros(4, dtype=torch.float64))
    # Nash-MTL: no Nash point for opposite gradients; the regularised alpha cancels.
    r = fastmtl.combine(opposite, fastmtl.NashMTL(), return_weights=True)
    assert not bool(r.extras["converged"]) and float(r.direction.abs().max()) < 1e-6
    # three copies of g: alpha_t = 1/sqrt(3), d = sqrt(3) g (||d||^2 = T), before clipping
    torch.testing.assert_close(fastmtl.combine(same, fastmtl.NashMTL(max_norm=0.0)),
                               3**0.5 * e[1])
    # UPGrad/DualProj keep the regularisation: opposite gradients give a direction of
    # order reg_eps, and exactly 0 with reg_eps=0.
    for method in ("upgrad", "dualproj"):
        d = fastmtl.combine(opposite, method)
        assert float(d.abs().max()) < 1e-3
        exact = fastmtl.combine(opposite, fastmtl.make_combiner(method, reg_eps=0.0))
        assert float(exact.abs().max()) < 1e-12
        # identical gradients: nothing to project, d = sum_i p_i g_i = mean g
        torch.testing.assert_close(fastmtl.combine(same, method), e[1])
