"""fastmtl.Monitor: by hand, attached to backward and fork, JSON Lines, plot, host transfers."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import fastmtl
from fastmtl.metrics import feature_disentanglement, gradient_conflict, magnitude_similarity

T = 3


def _model():
    torch.manual_seed(0)
    enc = nn.Sequential(nn.Linear(6, 8), nn.ReLU())
    heads = nn.ModuleList(nn.Linear(8, 2) for _ in range(T))
    x = torch.randn(5, 6)
    ys = [torch.randn(5, 2) for _ in range(T)]
    return enc, heads, x, ys


def _losses(heads, zs, ys):
    return [((heads[t](zs[t]) - ys[t]) ** 2).mean() for t in range(T)]


def test_record_by_hand_known_values(tmp_path):
    path = tmp_path / "m.jsonl"
    # disjoint supports (FD 1), orthogonal (conflict 0, cosines 0), norms 1, 2, 2
    fg = torch.zeros(T, 2, 6)
    for t in range(T):
        fg[t, :, 2 * t:2 * t + 2] = float(t + 1) / 2
    G = torch.diag(torch.tensor([1.0, 4.0, 4.0], dtype=torch.float64))
    with fastmtl.Monitor(every=1, path=path) as m:
        rec = m.record(0, feature_grads=fg, G=G, weights=torch.tensor([0.2, 0.3, 0.5]),
                       losses=[torch.tensor(1.5), torch.tensor(0.5), 2.0])
    assert rec["step"] == 0
    assert rec["fd"] == pytest.approx(1.0, abs=1e-6)
    assert rec["conflict_fraction"] == 0.0 and rec["mean_cosine"] == 0.0
    assert rec["min_cosine"] == 0.0
    # pairs (1,2): 2*1*2/(1+4) = 0.8 twice, (2,2): 1 -> mean 0.8667
    assert rec["magnitude_similarity"] == pytest.approx((0.8 + 0.8 + 1.0) / 3)
    assert rec["norm_ratio"] == pytest.approx(2.0)
    assert rec["weights"] == pytest.approx([0.2, 0.3, 0.5])
    assert rec["losses"] == pytest.approx([1.5, 0.5, 2.0])
    lines = path.read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0]) == rec
    assert fastmtl.Monitor.load(path) == [rec]


def test_every_n_steps_and_counter():
    m = fastmtl.Monitor(every=3)
    J = torch.randn(T, 10)
    out = [m.record(J=J) for _ in range(7)]
    assert [r is not None for r in out] == [True, False, False, True, False, False, True]
    assert [r["step"] for r in m.records] == [0, 3, 6]
    assert m.record(9, J=J)["step"] == 9 and m.record(10, J=J) is None
    assert m.due(12) and not m.due(13)


def test_sources_of_the_cosines_agree():
    J = torch.randn(T, 50, generator=torch.Generator().manual_seed(3))
    m = fastmtl.Monitor()
    a = m.record(0, J=J)
    b = m.record(0, G=J.double() @ J.double().T)
    c = m.record(0, feature_grads=J.view(T, 5, 10))
    gc = gradient_conflict(J)
    for r in (a, b, c):
        assert r["mean_cosine"] == pytest.approx(float(gc.mean_cosine), rel=1e-5, abs=1e-6)
        assert r["min_cosine"] == pytest.approx(float(gc.min_cosine), rel=1e-5, abs=1e-6)
    assert "fd" in c and "fd" not in a
    assert c["fd"] == pytest.approx(float(feature_disentanglement(J.view(T, 5, 10))), rel=1e-5)


def test_at_most_one_host_transfer_per_record(monkeypatch):
    m = fastmtl.Monitor()
    fg = torch.randn(T, 4, 8)
    G = torch.randn(T, 7, dtype=torch.float64)
    G = G @ G.T
    calls = []
    for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__"):
        orig = getattr(torch.Tensor, name)

        def wrapped(self, *a, _orig=orig, _name=name, **k):
            calls.append(_name)
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, wrapped)
    m.record(0, feature_grads=fg, G=G, weights=torch.rand(T), losses=torch.rand(T))
    monkeypatch.undo()
    assert calls == ["tolist"], calls


def test_non_finite_values_written_as_null(tmp_path):
    m = fastmtl.Monitor(path=tmp_path / "x.jsonl")
    rec = m.record(0, J=torch.tensor([[1.0, 0.0], [0.0, 0.0]]))  # a zero gradient
    assert rec["norm_ratio"] is None  # inf
    m.close()
    assert json.loads((tmp_path / "x.jsonl").read_text())["norm_ratio"] is None


def test_attached_to_feature_level_backward(tmp_path):
    enc, heads, x, ys = _model()
    m = fastmtl.Monitor(every=2, path=tmp_path / "b.jsonl")
    results = []
    for _ in range(3):
        z = enc(x)
        losses = _losses(heads, [z] * T, ys)
        fg = torch.stack([torch.autograd.grad(loss, z, retain_graph=True)[0]
                          for loss in losses])
        results.append((fg, [float(v.detach()) for v in losses],
                        fastmtl.backward(losses, features=z, combiner="mgda", monitor=m)))
    assert [r["step"] for r in m.records] == [0, 2]
    for rec, (fg, losses, res) in zip(m.records, [results[0], results[2]], strict=True):
        assert rec["fd"] == pytest.approx(float(feature_disentanglement(fg)), rel=1e-5)
        assert rec["weights"] == pytest.approx(res.weights.tolist())
        assert rec["losses"] == pytest.approx(losses)
        gc = gradient_conflict(res.gram, gram=True)
        assert rec["conflict_fraction"] == pytest.approx(float(gc.conflict_fraction))
    m.close()
    assert len((tmp_path / "b.jsonl").read_text().splitlines()) == 2


def test_attached_to_parameter_level_backward():
    enc, heads, x, ys = _model()
    m = fastmtl.Monitor()
    z = enc(x)
    losses = _losses(heads, [z] * T, ys)
    res = fastmtl.backward(losses, shared=enc.parameters(), combiner="pcgrad", monitor=m)
    (rec,) = m.records
    assert "fd" not in rec  # no feature gradients at the parameter level
    ms = magnitude_similarity(res.gram, gram=True)
    assert rec["magnitude_similarity"] == pytest.approx(float(ms.mean))
    assert rec["weights"] == pytest.approx(res.weights.tolist())
    assert len(rec["losses"]) == T


def test_attached_to_fork_keeps_user_hook():
    enc, heads, x, ys = _model()
    m = fastmtl.Monitor()
    seen = []
    z = enc(x)
    zs = fastmtl.fork(z, T, "mgda", monitor=m, on_combine=lambda fg, r: seen.append(fg.clone()))
    sum(_losses(heads, zs, ys)).backward()
    (rec,) = m.records
    assert len(seen) == 1
    assert rec["fd"] == pytest.approx(float(feature_disentanglement(seen[0])), rel=1e-5)
    assert "losses" not in rec and len(rec["weights"]) == T


def test_plot_writes_png(tmp_path):
    m = fastmtl.Monitor(fd_reduce="weighted")
    for s in range(4):
        m.record(s, feature_grads=torch.randn(T, 3, 5), weights=torch.rand(T),
                 losses=torch.rand(T))
    out = m.plot(tmp_path / "sub" / "curves.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    with pytest.raises(ValueError, match="no records"):
        fastmtl.Monitor().plot(tmp_path / "empty.png")


def test_bad_arguments():
    with pytest.raises(ValueError, match="every"):
        fastmtl.Monitor(every=0)
    with pytest.raises(ValueError, match="fd_reduce"):
        fastmtl.Monitor(fd_reduce="none")
    with pytest.raises(ValueError, match="fd_temperature"):
        fastmtl.Monitor(fd_temperature=-1)
    m = fastmtl.Monitor()
    with pytest.raises(ValueError, match="step"):
        m.record(-1)
    with pytest.raises(ValueError, match="T >= 2"):
        m.record(0, feature_grads=torch.randn(1, 4))


def test_multi_scale_features_concatenate_for_fd():
    # Two feature maps: each task uses a disjoint half of each -> FD 1 over both together.
    enc, heads, x, ys = _model()
    z1 = enc(x)
    z2 = enc(x) * 2
    losses = [((z1[:, :4] if t == 0 else z1[:, 4:]).sum() + (z2[:, :4] if t == 0 else
               z2[:, 4:]).sum()) * (t + 1) for t in range(2)]
    m = fastmtl.Monitor()
    fastmtl.backward(losses, features=[z1, z2], combiner="mean", monitor=m)
    (rec,) = m.records
    assert rec["fd"] == pytest.approx(1.0, abs=1e-6)
    assert rec["conflict_fraction"] == 0.0 and rec["losses"] == pytest.approx(
        [float(v.detach()) for v in losses])
