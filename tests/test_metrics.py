"""fastmtl.metrics: known answers, agreement of the native FD op with its reference, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import DEVICES, FLOAT_DTYPES

import fastmtl
from fastmtl import metrics, ops, reference
from fastmtl.metrics import (
    delta_m,
    feature_disentanglement,
    gradient_conflict,
    magnitude_similarity,
    ranking_similarity,
)

# ---- Feature Disentanglement: known answers -------------------------------------------


def test_fd_importable_as_attribute():
    assert fastmtl.metrics.feature_disentanglement is feature_disentanglement


@pytest.mark.parametrize("T", [2, 3, 7])
def test_fd_disjoint_supports_is_one(T, device):
    # Task t uses only elements t, t + T, t + 2T, ...: every element serves one task.
    g = torch.zeros(T, 4, 5 * T, device=device)
    for t in range(T):
        g[t, :, t::T] = torch.rand(4, 5, generator=torch.Generator().manual_seed(t)) + 0.1
    for reduce in ("mean", "weighted"):
        fd = feature_disentanglement(g, reduce=reduce)
        assert fd.shape == () and fd.device.type == device
        assert float(fd) == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(feature_disentanglement(g, reduce="none").cpu(), torch.ones(4, 5 * T))


@pytest.mark.parametrize("T", [2, 3, 5])
def test_fd_identical_gradients_is_zero(T, device):
    row = torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(1)).to(device)
    g = row.expand(T, *row.shape)
    for kw in ({}, {"reduce": "weighted"}, {"temperature": 0.5}, {"channel_dim": 2}):
        assert float(feature_disentanglement(g, **kw)) == pytest.approx(0.0, abs=1e-6), kw
    # opposite signs have the same saliency
    g2 = torch.stack([row, -row])
    assert float(feature_disentanglement(g2)) == pytest.approx(0.0, abs=1e-6)


def test_fd_hand_computed_two_tasks_four_elements(device):
    # g_1 = [1, 0, 1, 3], g_2 = [0, 2, 1, 1]; T = 2, so H / log T is the entropy in bits.
    #   element 0: p = (1, 0)      H = 0
    #   element 1: p = (0, 1)      H = 0
    #   element 2: p = (1/2, 1/2)  H = 1 bit
    #   element 3: p = (3/4, 1/4)  H = -(3/4 log2 3/4 + 1/4 log2 1/4) = 2 - 3/4 log2 3 = 0.811278...
    # map = 1 - H = [1, 1, 0, 3/4 log2 3 - 1]
    # mean: FD = 1 - (0 + 0 + 1 + 0.811278) / 4 = 0.547180...
    # weighted by s = [1, 2, 2, 4] (sum 9): FD = 1 - (2 * 1 + 4 * 0.811278) / 9 = 0.417210...
    g = torch.tensor([[1.0, 0.0, 1.0, 3.0], [0.0, 2.0, 1.0, 1.0]], device=device)
    h3 = 2 - 0.75 * math.log2(3)
    assert float(feature_disentanglement(g)) == pytest.approx(1 - (1 + h3) / 4, rel=1e-6)
    assert float(feature_disentanglement(g, reduce="weighted")) == pytest.approx(
        1 - (2 + 4 * h3) / 9, rel=1e-6)
    fd_map = feature_disentanglement(g, reduce="none")
    assert fd_map.shape == (4,)
    np.testing.assert_allclose(fd_map.cpu().numpy(), [1, 1, 0, 1 - h3], atol=1e-6)


def test_fd_temperature_softmax_by_hand(device):
    # T = 2, tau = 1: p = softmax(|g|) per element. Element 0: |g| = (0, log 3) -> p = (1/4, 3/4);
    # element 1: |g| = (1, 1) -> p = (1/2, 1/2). H in bits: 0.811278, 1 -> FD = 1 - 1.811278 / 2.
    g = torch.tensor([[0.0, 1.0], [-math.log(3), 1.0]], device=device)
    h = 2 - 0.75 * math.log2(3)
    assert float(feature_disentanglement(g, temperature=1.0)) == pytest.approx(
        1 - (h + 1) / 2, rel=1e-6)


def test_fd_excludes_unused_elements(device):
    g = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 2.0]], device=device)
    # element 1 is used by no task: FD is the mean over elements 0 and 2 only.
    assert float(feature_disentanglement(g)) == pytest.approx(1.0, abs=1e-6)
    assert feature_disentanglement(g, reduce="none").cpu().tolist() == pytest.approx([1, 0, 1])
    # nothing used at all: documented 0, finite
    z = torch.zeros(3, 5, device=device)
    assert float(feature_disentanglement(z)) == 0.0
    assert float(feature_disentanglement(z, reduce="weighted")) == 0.0


def test_fd_channel_dim_averages_saliency_over_channels(device):
    # [T=2, B=1, C=2, H=1, W=2]: channel 0 belongs to task 0, channel 1 to task 1 at every
    # pixel, so per pixel the mean saliencies are equal: FD over pixels = 0, while per element
    # (no channel averaging) FD = 1.
    g = torch.zeros(2, 1, 2, 1, 2, device=device)
    g[0, :, 0] = 1.0
    g[1, :, 1] = -3.0 / 3.0
    assert float(feature_disentanglement(g)) == pytest.approx(1.0, abs=1e-6)
    assert float(feature_disentanglement(g, channel_dim=2)) == pytest.approx(0.0, abs=1e-6)
    m = feature_disentanglement(g, channel_dim=-3, reduce="none")
    assert m.shape == (1, 1, 2)


def test_fd_sequence_input_and_no_in_place_change():
    a, b = torch.randn(4, 6), torch.randn(4, 6)
    a0 = a.clone()
    fd_seq = feature_disentanglement([a, b])
    assert torch.equal(a, a0)
    assert float(fd_seq) == pytest.approx(float(feature_disentanglement(torch.stack([a, b]))))


def test_fd_dtypes_of_result():
    g = torch.randn(3, 10, dtype=torch.float64)
    assert feature_disentanglement(g).dtype == torch.float64
    assert feature_disentanglement(g.half()).dtype == torch.float32


@pytest.mark.parametrize("bad,exc,match", [
    (torch.randn(1, 5), ValueError, "T >= 2"),
    (torch.randn(5), ValueError, r"\[T, B"),
    (torch.ones(2, 3, dtype=torch.int64), TypeError, "float"),
    ("abc", TypeError, "feature_grads"),
    ([torch.randn(3), torch.randn(4)], ValueError, "shape"),
    (torch.tensor([[1.0, float("nan")], [1.0, 2.0]]), ValueError, "NaN"),
    (torch.tensor([[1.0, float("inf")], [1.0, 2.0]]), ValueError, "NaN or Inf"),
])
def test_fd_bad_input(bad, exc, match):
    with pytest.raises(exc, match=match):
        feature_disentanglement(bad)


def test_fd_bad_options():
    g = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match="reduce"):
        feature_disentanglement(g, reduce="sum")
    with pytest.raises(ValueError, match="temperature"):
        feature_disentanglement(g, temperature=-1.0)
    with pytest.raises(ValueError, match="channel_dim"):
        feature_disentanglement(g, channel_dim=0)
    with pytest.raises(ValueError, match="channel_dim"):
        feature_disentanglement(g, channel_dim=3)
    with pytest.raises(ValueError, match="NaN"):
        feature_disentanglement(torch.tensor([[float("nan")], [1.0]]), reduce="none")


def test_fd_unchecked_nan_propagates():
    g = torch.tensor([[1.0, float("nan")], [1.0, 2.0]])
    assert math.isnan(float(feature_disentanglement(g, check_finite=False)))


# ---- the FD op: native against reference ----------------------------------------------

FD_RTOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 2e-5, torch.float16: 2e-5}


def _grads(T, N, dtype, device, seed=0, zeros=True):
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(T, N, generator=gen, dtype=torch.float64)
    if zeros:  # sparse supports, some all-zero columns, as after a ReLU
        g = g * (torch.rand(T, N, generator=gen) < 0.6)
    return g.to(device=device, dtype=dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("T,N", [(2, 1), (2, 7), (3, 1000), (5, 4099), (16, 333)])
@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_fd_op_matches_reference(T, N, dtype, temperature, device):
    if not ops.has_native_kernel("feature_disentanglement", device):
        pytest.skip("no native FD kernel for this device")
    g = _grads(T, N, dtype, device)
    for code in (0, 1, 2):
        got = ops.feature_disentanglement(g, temperature, code)
        want = reference.feature_disentanglement(g, temperature, code)
        assert got.dtype == want.dtype and got.shape == want.shape
        assert got.device == g.device
        torch.testing.assert_close(got.double(), want.double(), rtol=FD_RTOL[dtype],
                                   atol=FD_RTOL[dtype])


def test_fd_op_strided_rows():
    if not ops.has_native_kernel("feature_disentanglement", "cpu"):
        pytest.skip("no native FD kernel")
    big = _grads(3, 2000, torch.float32, "cpu")
    g = big[:, :1500]  # rows strided by 2000
    for code in (0, 1, 2):
        torch.testing.assert_close(ops.feature_disentanglement(g, 0.0, code),
                                   reference.feature_disentanglement(g, 0.0, code),
                                   rtol=2e-5, atol=2e-5)


def test_fd_op_nan_gives_nan():
    if not ops.has_native_kernel("feature_disentanglement", "cpu"):
        pytest.skip("no native FD kernel")
    g = _grads(3, 100, torch.float32, "cpu")
    g[1, 37] = float("nan")
    assert torch.isnan(ops.feature_disentanglement(g, 0.0, 1))
    assert torch.isnan(ops.feature_disentanglement(g, 0.0, 2))
    m = ops.feature_disentanglement(g, 0.0, 0)
    assert torch.isnan(m[37]) and torch.isfinite(torch.cat([m[:37], m[38:]])).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_fd_opcheck(dtype, device):
    if not ops.has_native_kernel("feature_disentanglement", device):
        pytest.skip("no native FD kernel for this device")
    g = _grads(3, 257, dtype, device)
    for code in (0, 1, 2):
        torch.library.opcheck(
            torch.ops.fastmtl.feature_disentanglement.default, (g, 0.0, code),
            test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


# ---- gradient conflict and magnitude similarity ----------------------------------------


def test_conflict_orthogonal_is_zero(device):
    J = torch.eye(3, 6, device=device) * torch.tensor([[1.0], [5.0], [0.2]], device=device)
    r = gradient_conflict(J)
    assert r.cosine.device.type == device
    torch.testing.assert_close(r.cosine.cpu(), torch.eye(3, dtype=torch.float64))
    assert float(r.conflict_fraction) == 0.0
    assert float(r.mean_cosine) == pytest.approx(0.0, abs=1e-12)
    assert float(r.min_cosine) == pytest.approx(0.0, abs=1e-12)


def test_conflict_hand_computed(device):
    # g0 = (1, 0), g1 = (-1, 0), g2 = (1, 1): cos01 = -1, cos02 = 1/sqrt2, cos12 = -1/sqrt2
    J = torch.tensor([[1.0, 0, 0], [-1.0, 0, 0], [1.0, 1, 0]], device=device)
    r = gradient_conflict(J, gram=False)
    s = 1 / math.sqrt(2)
    np.testing.assert_allclose(r.cosine.cpu().numpy(),
                               [[1, -1, s], [-1, 1, -s], [s, -s, 1]], atol=1e-12)
    assert float(r.conflict_fraction) == pytest.approx(2 / 3)
    assert float(r.mean_cosine) == pytest.approx(-1 / 3)
    assert float(r.min_cosine) == pytest.approx(-1.0)
    # the same from G alone
    G = J.double() @ J.double().T
    r2 = gradient_conflict(G, gram=True)
    torch.testing.assert_close(r2.cosine, r.cosine)


def test_conflict_zero_gradient_has_cosine_zero():
    J = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    r = gradient_conflict(J)
    assert torch.isfinite(r.cosine).all()
    assert r.cosine[0, 1] == 0 and r.cosine[1, 1] == 0


def test_magnitude_equal_norms_is_one(device):
    J = torch.tensor([[3.0, 4.0, 0.0, 0.0], [0.0, -5.0, 0.0, 0.0], [0.0, 0.0, 5.0, 0.0]],
                     device=device)
    r = magnitude_similarity(J)
    torch.testing.assert_close(r.similarity.cpu(), torch.ones(3, 3, dtype=torch.float64))
    assert float(r.mean) == pytest.approx(1.0)
    assert float(r.norm_ratio) == pytest.approx(1.0)


def test_magnitude_hand_computed():
    # norms 1 and 3: 2 * 1 * 3 / (1 + 9) = 0.6; ratio 3
    r = magnitude_similarity([torch.tensor([1.0, 0.0]), torch.tensor([0.0, 3.0])])
    assert float(r.similarity[0, 1]) == pytest.approx(0.6)
    assert float(r.mean) == pytest.approx(0.6)
    assert float(r.norm_ratio) == pytest.approx(3.0)
    torch.testing.assert_close(r.norms, torch.tensor([1.0, 3.0], dtype=torch.float64))


def test_magnitude_zero_gradients_documented():
    r = magnitude_similarity(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]]), gram=False)
    assert float(r.similarity[0, 1]) == 0.0 and float(r.similarity[0, 2]) == 1.0
    assert math.isinf(float(r.norm_ratio))
    r0 = magnitude_similarity(torch.zeros(2, 3))
    assert float(r0.norm_ratio) == 1.0 and float(r0.mean) == 1.0


def test_square_input_is_never_guessed():
    sq = torch.randn(3, 3)
    for fn in (gradient_conflict, magnitude_similarity):
        with pytest.raises(ValueError, match="gram=True"):
            fn(sq)
        fn(sq, gram=False)
        fn(sq @ sq.T, gram=True)


@pytest.mark.parametrize("fn", [gradient_conflict, magnitude_similarity])
def test_identifier_bad_input(fn):
    with pytest.raises(ValueError, match="T >= 2"):
        fn(torch.randn(1, 5))
    with pytest.raises(ValueError, match="NaN"):
        fn(torch.tensor([[1.0, float("nan"), 0.0], [1.0, 2.0, 0.0]]))
    with pytest.raises(ValueError, match="NaN"):
        fn(torch.tensor([[1.0, float("inf")], [1.0, 2.0]]), gram=True)
    with pytest.raises(ValueError, match=r"\[T, T\]"):
        fn(torch.randn(2, 3), gram=True)
    with pytest.raises(TypeError, match="float"):
        fn(torch.ones(2, 4, dtype=torch.int32))
    with pytest.raises(TypeError, match="gram"):
        fn(torch.randn(2, 4), gram="yes")
    with pytest.raises(ValueError, match="dimensions"):
        fn(torch.randn(4))


# ---- ranking similarity ---------------------------------------------------------------


def test_ranking_identical_and_reversed():
    ident = [0.1, 0.5, 0.3, 0.9]
    r = ranking_similarity(ident, [1.0, 5.0, 3.0, 9.0])
    assert float(r) == pytest.approx(1.0) and r.spearman_rho == pytest.approx(1.0)
    assert r.top_k_overlap == 1.0 and r.k == 2
    r = ranking_similarity(ident, [9.0, 1.0, 5.0, 0.0])
    assert r.kendall_tau == pytest.approx(-1.0) and r.spearman_rho == pytest.approx(-1.0)
    assert r.top_k_overlap == 0.0


def test_ranking_orientation():
    # FD: higher better; delta m: lower better. A method with higher FD and lower delta m
    # agrees.
    fd = {"a": 0.2, "b": 0.5, "c": 0.8}
    dm = {"c": -3.0, "b": 1.0, "a": 4.0}  # keys matched, not positions
    assert float(ranking_similarity(fd, dm, higher_is_better=(True, False))) == pytest.approx(1)
    assert float(ranking_similarity(fd, dm, higher_is_better=False)) == pytest.approx(-1)


def test_ranking_ties_tau_b_by_hand():
    # x = (1, 1, 2), y = (1, 2, 3): pairs (0,1) tied in x, (0,2) and (1,2) concordant:
    # tau_b = (2 - 0) / sqrt((3 - 1) * (3 - 0)) = 2 / sqrt(6)
    r = ranking_similarity([1, 1, 2], [1, 2, 3], higher_is_better=True)
    assert r.kendall_tau == pytest.approx(2 / math.sqrt(6))
    # top-2 of x: rank('min') <= 2 keeps {2} and both tied 1s -> {0,1,2}; of y: {1,2}
    assert r.top_k_overlap == pytest.approx(2 / 3)


def test_ranking_degenerate_and_bad():
    r = ranking_similarity([1, 1, 1], [1, 2, 3])
    assert r.kendall_tau == 0.0 and r.spearman_rho == 0.0
    with pytest.raises(ValueError, match="at least 2"):
        ranking_similarity([1], [2])
    with pytest.raises(ValueError, match="same length"):
        ranking_similarity([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="NaN"):
        ranking_similarity([1, float("nan")], [1, 2])
    with pytest.raises(ValueError, match="same keys"):
        ranking_similarity({"a": 1, "b": 2}, {"a": 1, "c": 2})
    with pytest.raises(TypeError, match="higher_is_better"):
        ranking_similarity([1, 2], [1, 2], higher_is_better="yes")
    with pytest.raises(ValueError, match="k must"):
        ranking_similarity([1, 2], [1, 2], k=3)
    with pytest.raises(ValueError, match="1-D"):
        ranking_similarity([[1, 2]], [[1, 2]])


def test_ranking_accepts_tensors():
    r = ranking_similarity(torch.tensor([3.0, 1.0, 2.0]), np.array([30.0, 10.0, 20.0]))
    assert r.kendall_tau == pytest.approx(1.0)


# ---- delta m --------------------------------------------------------------------------


def test_delta_m_hand_computed_table():
    # metric     baseline  result  higher better   Delta_k = (-1)^l (M - B) / B * 100
    # mIoU         40.0     42.0      yes          -(42 - 40) / 40 * 100 = -5.0
    # pix acc      0.80     0.76      yes          -(0.76 - 0.80) / 0.80 * 100 = +5.0
    # depth err    0.50     0.45      no            (0.45 - 0.50) / 0.50 * 100 = -10.0
    # normal err  20.0     23.0       no            (23 - 20) / 20 * 100 = +15.0
    # mean: (-5 + 5 - 10 + 15) / 4 = +1.25 (worse than the baselines)
    base = {"miou": 40.0, "pix": 0.80, "depth": 0.50, "normal": 20.0}
    res = {"miou": 42.0, "pix": 0.76, "depth": 0.45, "normal": 23.0}
    hib = {"miou": True, "pix": True, "depth": False, "normal": False}
    d = delta_m(res, base, hib)
    assert d.per_metric == pytest.approx({"miou": -5.0, "pix": 5.0, "depth": -10.0,
                                          "normal": 15.0})
    assert float(d) == pytest.approx(1.25)
    d2 = delta_m([42.0, 0.76, 0.45, 23.0], [40.0, 0.80, 0.50, 20.0], [True, True, False, False])
    assert d2.per_metric == pytest.approx([-5.0, 5.0, -10.0, 15.0])
    assert d2.mean == pytest.approx(1.25)


def test_delta_m_sign_and_bad_input():
    assert delta_m([2.0], [1.0], True).mean == pytest.approx(-100.0)  # better -> negative
    assert delta_m([2.0], [1.0], False).mean == pytest.approx(100.0)
    with pytest.raises(ValueError, match="nonzero"):
        delta_m([1.0, 2.0], [0.0, 1.0], True)
    with pytest.raises(ValueError, match="same length"):
        delta_m([1.0, 2.0], [1.0], True)
    with pytest.raises(ValueError, match="one entry per metric"):
        delta_m([1.0, 2.0], [1.0, 1.0], [True])
    with pytest.raises(TypeError, match="higher_is_better"):
        delta_m([1.0], [1.0], "yes")
    with pytest.raises(ValueError, match="no entry"):
        delta_m({"a": 1.0}, {"a": 2.0}, {"b": True})
    with pytest.raises(ValueError, match="NaN"):
        delta_m([float("inf")], [1.0], True)


def test_public_names():
    for name in metrics.__all__:
        assert hasattr(fastmtl.metrics, name)
    assert DEVICES[0] == "cpu"
