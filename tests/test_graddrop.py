"""GradDrop: the Philox generator, the fused op against its reference, the paper's rule by
hand, the feature-level sign rule, and the combiner's API."""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICES, FLOAT_DTYPES

import fastmtl
from fastmtl import reference
from fastmtl.combiners.graddrop import GradDrop

needs_native = pytest.mark.skipif(not fastmtl.native_available(), reason="needs fastmtl._C")


# Known-answer vectors of Philox4x32-10 from the Random123 distribution (kat_vectors).
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter, key, expected", PHILOX_KAT)
def test_philox_known_answers(counter, key, expected):
    words = reference.philox4x32_10(torch.tensor(counter, dtype=torch.int64), key)
    assert tuple(int(w) for w in words) == expected


def test_philox_uniforms_are_open_unit_and_uniform():
    u = reference.philox_uniform(200_000, (12345, 678))
    assert float(u.min()) > 0.0 and float(u.max()) < 1.0
    assert abs(float(u.mean()) - 0.5) < 0.005
    counts = torch.histc(u, bins=10, min=0, max=1)
    assert float((counts / 20_000 - 1).abs().max()) < 0.05
    assert not torch.equal(u, reference.philox_uniform(200_000, (12345, 678), stream=1))


def _seed(device, s=0):
    return GradDrop.draw_seed(torch.device(device), torch.Generator(device).manual_seed(s))


def _tol(dtype):
    return {torch.float64: 1e-12, torch.float32: 1e-5}.get(dtype, 1e-2)


@needs_native
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("T, N", [(2, 1), (3, 1031), (5, 4096), (10, 20_003)])
def test_op_matches_reference(dtype, T, N, device):
    torch.manual_seed(T * N)
    J = torch.randn(T, N, device=device).to(dtype)
    leak = torch.rand(T, dtype=torch.float64, device=device) * (torch.rand(T, device=device) < 0.5)
    seed = _seed(device, T)
    for stream in (0, 7):
        got = torch.ops.fastmtl.graddrop(J, leak, seed, None, stream)
        want = reference.graddrop(J, leak, seed, None, stream)
        torch.testing.assert_close(got, want, rtol=_tol(dtype), atol=_tol(dtype))


@needs_native
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_op_with_purity_source_strides_and_out(dtype, device):
    T, B, D = 4, 3, 1000
    base = torch.randn(T, 2 * B * D, device=device).to(dtype)
    J = base[:, : B * D]  # strided rows
    S = torch.randn(T, D, device=device).to(dtype)
    leak = torch.tensor([0.0, 0.3, 1.0, 0.0], dtype=torch.float64, device=device)
    seed = _seed(device, 3)
    want = reference.graddrop(J, leak, seed, S, 2)
    torch.testing.assert_close(torch.ops.fastmtl.graddrop(J, leak, seed, S, 2), want,
                               rtol=_tol(dtype), atol=_tol(dtype))
    out = torch.randn(B * D, device=device).to(dtype)
    start = out.clone()
    fastmtl.ops.graddrop(J, leak, seed, purity=S, stream=2, out=out, accumulate=True)
    torch.testing.assert_close(out, (start.double() + want.double()).to(dtype),
                               rtol=_tol(dtype), atol=2 * _tol(dtype))
    fastmtl.ops.graddrop(J, leak, seed, purity=S, stream=2, out=out)
    torch.testing.assert_close(out, want, rtol=_tol(dtype), atol=_tol(dtype))


@needs_native
def test_purity_view_of_J_itself_is_a_purity_source(device):
    # the first sample's columns as the purity source: a view starting at J's own data
    T, B, D = 3, 4, 777
    J = torch.randn(T, B * D, device=device, dtype=torch.float64)
    leak = torch.tensor([0.0, 0.5, 0.0], dtype=torch.float64, device=device)
    seed = _seed(device, 11)
    S = J[:, :D]
    want = reference.graddrop(J, leak, seed, S.clone(), 1)
    torch.testing.assert_close(torch.ops.fastmtl.graddrop(J, leak, seed, S, 1), want)


@needs_native
def test_opcheck():
    J = torch.randn(3, 257, dtype=torch.float64)
    leak = torch.zeros(3, dtype=torch.float64)
    seed = torch.tensor([5, 9])
    S = torch.randn(3, 1, dtype=torch.float64)  # D = 1: B = 257 samples
    torch.library.opcheck(torch.ops.fastmtl.graddrop.default, (J, leak, seed, None, 0))
    torch.library.opcheck(torch.ops.fastmtl.graddrop.default, (J, leak, seed, S, 1))
    out = torch.zeros(257, dtype=torch.float64)
    torch.library.opcheck(torch.ops.fastmtl.graddrop_out.default,
                          (J, leak, seed, None, 0, out, True))


@pytest.mark.skipif(len(DEVICES) < 2, reason="needs a GPU")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_same_key_same_direction_on_cpu_and_cuda(dtype):
    J = torch.randn(6, 50_001, dtype=dtype)
    leak = torch.full((6,), 0.2, dtype=torch.float64)
    seed = torch.tensor([123, 456])
    cpu = fastmtl.ops.graddrop(J, leak, seed, stream=3)
    gpu = fastmtl.ops.graddrop(J.cuda(), leak.cuda(), seed.cuda(), stream=3)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=_tol(dtype), atol=_tol(dtype))


# ---- the paper's rule, by hand ------------------------------------------------------------


def test_rule_by_hand_on_a_small_case(device):
    """P and the masks of Algorithm 1 written out element by element."""
    J = torch.tensor([[1.0, -2.0, 0.5, 0.0, 3.0], [-1.0, -1.0, 0.5, 0.0, -1.0]],
                     dtype=torch.float64, device=device)
    k = [0.0, 0.25]
    seed = _seed(device, 11)
    u = reference.philox_uniform(5, (int(seed[0]), int(seed[1])), 0).double().tolist()
    expected = []
    for j in range(5):
        g = J[:, j].tolist()
        total = sum(abs(x) for x in g)
        P = 0.5 * (1 + sum(g) / total) if total > 0 else 0.5
        d = 0.0
        for t in range(2):
            M = (P > u[j] and g[t] > 0) or (P < u[j] and g[t] < 0)
            d += (k[t] + (1 - k[t]) * M) * g[t]
        expected.append(d)
    got = GradDrop(leak=k).direction(J, seed)
    torch.testing.assert_close(got.cpu(), torch.tensor(expected, dtype=torch.float64))


def test_positive_sign_is_kept_with_probability_purity(device):
    """g1 = 1, g2 = -1/2 everywhere: P = 2/3, so d = 1 on about 2/3 of the elements, else -1/2."""
    N = 60_000
    J = torch.stack([torch.ones(N), torch.full((N,), -0.5)]).to(device)
    d = fastmtl.combine(J, "graddrop", generator=torch.Generator(device).manual_seed(1))
    assert set(torch.unique(d).tolist()) == {1.0, -0.5}
    frac = float((d == 1).double().mean())
    assert abs(frac - 2 / 3) < 0.01  # 5 standard deviations of the binomial share


@pytest.mark.parametrize("leak", [0.0, 0.4])
def test_degenerate_inputs(leak, device):
    gd = GradDrop(leak=leak)
    gen = torch.Generator(device).manual_seed(0)
    g = torch.randn(1000, device=device, dtype=torch.float64)
    # identical rows: P is 0 or 1, every component passes whatever the leak
    torch.testing.assert_close(gd(torch.stack([g, g, g]), generator=gen), 3 * g)
    # opposite rows: P = 1/2, one sign of each element passes (plus the leak of the other)
    d = gd(torch.stack([g, -g]), generator=gen)
    torch.testing.assert_close(d.abs(), (1 - leak) * g.abs())
    assert 0.4 < float((d * g > 0).double().mean()) < 0.6
    # zero gradients, and T > P
    assert torch.equal(gd(torch.zeros(3, 5, device=device), generator=gen),
                       torch.zeros(5, device=device))
    assert torch.isfinite(gd(torch.randn(8, 2, device=device), generator=gen)).all()


def test_leak_one_is_the_sum(device):
    J = torch.randn(4, 777, device=device, dtype=torch.float64)
    torch.testing.assert_close(fastmtl.combine(J, "graddrop", leak=1.0), J.sum(0))


def test_generator_reproducibility(device):
    J = torch.randn(3, 5000, device=device)
    a = fastmtl.combine(J, "graddrop", generator=torch.Generator(device).manual_seed(4))
    b = fastmtl.combine(J, "graddrop", generator=torch.Generator(device).manual_seed(4))
    c = fastmtl.combine(J, "graddrop", generator=torch.Generator(device).manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_feature_direction_is_the_sign_corrected_batch_rule(device):
    T, B = 3, 4
    z = torch.randn(B, 5, 6, device=device, dtype=torch.float64)
    grads = torch.randn(T, B, 5, 6, device=device, dtype=torch.float64)
    seed = _seed(device, 2)
    purity = torch.einsum("tbi,bi->ti", grads.reshape(T, B, -1), z.sign().reshape(B, -1))
    want = reference.graddrop(grads.reshape(T, -1), torch.zeros(T, dtype=torch.float64,
                              device=device), seed, purity, 0).view(B, 5, 6)
    got = GradDrop().feature_direction(grads, z, seed)
    torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="feature_grads"):
        GradDrop().feature_direction(grads[:, :2], z, seed)


def test_out_check_finite_and_result(device):
    J = torch.randn(3, 100, device=device)
    out = torch.empty(100, device=device)
    r = fastmtl.combine(J, "graddrop", out=out, return_weights=True)
    assert r.direction is out and r.weights is None and r.gram is None
    assert r.extras["seed"].shape == (2,)
    bad = J.clone()
    bad[1, 7] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        fastmtl.combine(bad, "graddrop")
    bad[1, 7] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        fastmtl.combine(bad, "graddrop")


def test_bad_hyper_parameters():
    with pytest.raises(ValueError, match="leak"):
        GradDrop(leak=1.5)
    with pytest.raises(ValueError, match="leak"):
        GradDrop(leak=[0.1, float("nan")])
    with pytest.raises(TypeError, match="leak"):
        GradDrop(leak=["a"])
    with pytest.raises(ValueError, match="T = 3"):
        GradDrop(leak=[0.1, 0.2])(torch.randn(3, 4))
    with pytest.raises(TypeError, match="no task weights"):
        GradDrop().weights(torch.eye(3, dtype=torch.float64))
    assert "leak=0.5" in repr(GradDrop(leak=0.5))


@needs_native
def test_op_rejects_bad_arguments():
    J = torch.randn(3, 8)
    leak = torch.zeros(3, dtype=torch.float64)
    seed = torch.tensor([1, 2])
    with pytest.raises(ValueError, match="leak must have shape"):
        torch.ops.fastmtl.graddrop(J, leak[:2], seed, None, 0)
    with pytest.raises(TypeError, match="seed must be int64"):
        torch.ops.fastmtl.graddrop(J, leak, seed.float(), None, 0)
    with pytest.raises(ValueError, match="must divide"):
        torch.ops.fastmtl.graddrop(J, leak, seed, torch.randn(3, 3), 0)
    with pytest.raises(ValueError, match="stream"):
        torch.ops.fastmtl.graddrop(J, leak, seed, None, -1)


@needs_native
def test_compile_fullgraph(device):
    J = torch.randn(3, 4099, device=device)
    seed = _seed(device, 8)
    gd = GradDrop(leak=0.1)
    fn = torch.compile(lambda J, seed: gd.direction(J, seed), fullgraph=True)
    torch.testing.assert_close(fn(J, seed), gd.direction(J, seed))
