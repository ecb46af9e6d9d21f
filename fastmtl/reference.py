r"""Pure-PyTorch reference of every native op.

These functions are the readable definition of each op, the oracle the tests compare the
native kernels against, and the fallback when ``fastmtl._C`` is not available. They favour
clarity over speed: they solve in float64 with plain loops and may synchronise with the host.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "gram",
    "combine_rows",
    "pcgrad_coefficients",
    "min_norm_weights",
    "cagrad_weights",
    "gram_dtype",
]


def gram_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype of the Gram matrix: float64 for float64 input, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def gram(J: Tensor) -> Tensor:
    r""":math:`G = J J^\top` for ``J`` of shape ``[T, P]``, formed in float64."""
    Jd = J.to(torch.float64)
    return (Jd @ Jd.T).to(gram_dtype(J.dtype))


def combine_rows(w: Tensor, J: Tensor) -> Tensor:
    r""":math:`d = w^\top J`, accumulated in float64, returned in ``J``'s dtype."""
    return (w.to(torch.float64) @ J.to(torch.float64)).to(J.dtype)


def _batched(fn, G: Tensor, *extra: Tensor):
    """Applies a single-problem solver to every [T, T] matrix of a [..., T, T] batch."""
    T = G.shape[-1]
    flat = G.reshape(-1, T, T).to("cpu", torch.float64)
    extras = [e.reshape(-1, *e.shape[-2:]).cpu() for e in extra]
    results = [fn(flat[b], *(e[b] for e in extras)) for b in range(flat.shape[0])]
    if not isinstance(results[0], tuple):
        results = [(r,) for r in results]
    outs = []
    for k, first in enumerate(results[0]):
        stacked = torch.stack([r[k] for r in results]) if results else first
        outs.append(stacked.reshape((*G.shape[:-2], *first.shape)).to(G.device))
    return outs[0] if len(outs) == 1 else tuple(outs)


def pcgrad_coefficients(
    G: Tensor, order: Tensor, include_self: bool = True, eps: float = 0.0,
    eps_on_norm: bool = False,
) -> Tensor:
    r"""Coefficients ``C`` with ``pc_i = sum_k C[i, k] g_k`` for PCGrad's projected gradients.

    For task ``i``, ``p = g_i``; for ``j`` in ``order[i]`` (skipping ``j = i`` unless
    ``include_self``): if :math:`p \cdot g_j < 0`, :math:`p \leftarrow p - \frac{p \cdot
    g_j}{\|g_j\|^2 + \epsilon} g_j` (or :math:`(\|g_j\| + \epsilon)^2` with ``eps_on_norm``).
    Because ``p`` stays in the span of the rows, every dot product comes from ``G``.
    """

    def one(Gm: Tensor, om: Tensor) -> Tensor:
        T = Gm.shape[0]
        C = torch.eye(T, dtype=torch.float64)
        for i in range(T):
            for j in om[i].tolist():
                if j == i and not include_self:
                    continue
                dot = float(C[i] @ Gm[:, j])
                if dot < 0.0:
                    gjj = float(Gm[j, j])
                    denom = (math.sqrt(max(gjj, 0.0)) + eps) ** 2 if eps_on_norm else gjj + eps
                    if denom > 0.0:
                        C[i, j] -= dot / denom
        return C

    return _batched(one, G, order)


def _affine_minimiser(Gs: Tensor) -> Tensor:
    """argmin a^T Gs a subject to sum(a) = 1, from the bordered KKT system."""
    s = Gs.shape[0]
    K = torch.zeros(s + 1, s + 1, dtype=torch.float64)
    K[:s, :s] = Gs
    K[:s, s] = 1.0
    K[s, :s] = 1.0
    rhs = torch.zeros(s + 1, dtype=torch.float64)
    rhs[s] = 1.0
    return torch.linalg.lstsq(K, rhs.unsqueeze(1)).solution[:s, 0]


def _min_norm_one(G: Tensor, max_iter: int, tol: float) -> tuple[Tensor, Tensor]:
    """Wolfe's min-norm-point algorithm on a single Gram matrix (vertex start)."""
    T = G.shape[0]
    scale = float(G.diagonal().max())
    if not scale > 0.0:
        return torch.full((T,), 1.0 / T, dtype=torch.float64), torch.tensor(True)
    S = [int(G.diagonal().argmin())]
    lam = torch.ones(1, dtype=torch.float64)
    for _ in range(max_iter):
        alpha = _affine_minimiser(G[S][:, S])
        if bool((alpha <= 1e-14).any()):
            mask = alpha <= 1e-14
            ratios = lam[mask] / (lam[mask] - alpha[mask])
            theta = float(ratios.min())
            lam = lam + theta * (alpha - lam)
            blocking = int(torch.nonzero(mask)[int(ratios.argmin())])
            keep = [p for p in range(len(S)) if p != blocking and lam[p] > 1e-16]
            S, lam = [S[p] for p in keep], lam[keep].clamp_min(0.0)
            lam = lam / lam.sum()
            continue
        lam = alpha
        Gx = G[:, S] @ lam
        xx = float(lam @ Gx[S])
        outside = [k for k in range(T) if k not in S]
        if not outside:
            break
        j = min(outside, key=lambda k: float(Gx[k]))
        if xx - float(Gx[j]) <= tol * scale:
            break
        # Stop when (g_j, 1) is affinely dependent on S to rounding.
        M = G[S + [j]][:, S + [j]] + scale
        if float(torch.linalg.eigvalsh(M)[0]) <= 1e-14 * float(M.diagonal().max()):
            break
        S = S + [j]
        lam = torch.cat([lam, lam.new_zeros(1)])
    w = torch.zeros(T, dtype=torch.float64)
    w[S] = lam
    return w, torch.tensor(True)


def min_norm_weights(G: Tensor, max_iter: int, tol: float) -> tuple[Tensor, Tensor]:
    r"""Min-norm point of the convex hull: :math:`\arg\min_{w \in \Delta} w^\top G w`.

    Returns the weights and a convergence flag, batched over the leading dimensions.
    """
    return _batched(lambda g: _min_norm_one(g, max_iter, tol), G)


def _cagrad_one(G: Tensor, c: float, rescale: int, max_outer: int,
                max_inner: int) -> tuple[Tensor, Tensor, Tensor]:
    T = G.shape[0]
    s_div = {1: 1.0 + c * c, 2: 1.0 + c}.get(rescale, 1.0)
    b = G.sum(1) / T
    g0sq = float(b.sum()) / T
    scale = float(G.diagonal().max())
    uniform = torch.full((T,), 1.0 / T, dtype=torch.float64)
    if not (g0sq > 0.0 and c > 0.0 and scale > 0.0):
        return uniform / s_div, uniform, torch.tensor(True)
    kappa = c * math.sqrt(g0sq)

    def inner(beta: float) -> tuple[float, Tensor]:
        Gp = G + beta * (b[:, None] + b[None, :]) + beta * beta * g0sq
        w, _ = _min_norm_one(Gp, max_inner, 1e-15)
        return kappa * beta - math.sqrt(max(float(w @ G @ w), 0.0)), w

    lo, hi = 0.0, math.sqrt(scale) / kappa * (1.0 + 1e-12)
    f_lo, w = inner(lo)
    best = (abs(f_lo), w)
    if f_lo >= 0.0:
        probe, found = hi, False
        for _ in range(60):
            probe *= 0.5
            f, w = inner(probe)
            best = min(best, (abs(f), w), key=lambda t: t[0])
            if f < 0.0:
                lo, f_lo, found = probe, f, True
                break
        if not found:
            return uniform / s_div, best[1], torch.tensor(True)
    f_hi, w = inner(hi)
    best = (abs(f_hi), w)  # forget phi(0) = 0 when 0 lies in the hull: not the root we want
    f_hi = f_hi if f_hi > 0.0 else 1e-300
    side = 0
    for _ in range(max_outer):  # Illinois regula falsi
        beta = (lo * f_hi - hi * f_lo) / (f_hi - f_lo)
        if not lo < beta < hi:
            beta = 0.5 * (lo + hi)
        f, w = inner(beta)
        best = min(best, (abs(f), w), key=lambda t: t[0])
        if f > 0.0:
            hi, f_hi = beta, f
            if side == 1:
                f_lo *= 0.5
            side = 1
        elif f < 0.0:
            lo, f_lo = beta, f
            if side == -1:
                f_hi *= 0.5
            side = -1
        else:
            break
        if hi - lo <= 1e-14 * hi or abs(f) <= 1e-14 * kappa * beta:
            break
    w_star = best[1]
    gw = math.sqrt(max(float(w_star @ G @ w_star), 0.0))
    lam = kappa / gw if gw > 1e-12 * math.sqrt(scale) else 0.0
    return (1.0 / T + lam * w_star) / s_div, w_star, torch.tensor(True)


def cagrad_weights(
    G: Tensor, c: float, rescale: int, max_outer: int, max_inner: int
) -> tuple[Tensor, Tensor, Tensor]:
    r"""CAGrad's weights ``(1/T + lambda w*) / s``, the dual solution ``w*``, a flag.

    :math:`w^* = \arg\min_{w \in \Delta} b^\top w + c \|g_0\| \sqrt{w^\top G w}` with
    :math:`b = G \mathbf{1} / T`, solved as a root in :math:`\beta` of the family of
    min-norm problems on :math:`G + \beta (b 1^\top + 1 b^\top) + \beta^2 \|g_0\|^2 1 1^\top`.
    """
    return _batched(lambda g: _cagrad_one(g, c, rescale, max_outer, max_inner), G)


def eigh(G: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues and eigenvectors (columns) of symmetric ``G`` ``[..., T, T]``."""
    return torch.linalg.eigh(G.to(torch.float64))


def _pinv_apply(G: Tensor, y: Tensor) -> Tensor:
    lam, V = torch.linalg.eigh(G)
    cutoff = G.shape[-1] * torch.finfo(torch.float64).eps * lam.abs().max()
    inv = torch.where(lam > cutoff, 1.0 / lam, torch.zeros_like(lam))
    return V @ (inv * (V.T @ y))


def _imtlg_one(G: Tensor) -> tuple[Tensor, Tensor]:
    n = G.diagonal().clamp_min(0).sqrt()
    w = _pinv_apply(G, n)
    total = w.sum()
    if not bool(total.abs() > 1e-12 * w.abs().sum()):
        return torch.zeros_like(w), torch.tensor(False)
    return w / total, torch.tensor(True)


def imtlg_weights(G: Tensor) -> tuple[Tensor, Tensor]:
    r"""IMTL-G: :math:`w = G^+ n / (1^\top G^+ n)` with :math:`n_i = \|g_i\|`, and a flag."""
    return _batched(_imtlg_one, G)


def _aligned_one(G: Tensor, scale_mode: int, rank_eps: float) -> tuple[Tensor, Tensor]:
    lam, V = torch.linalg.eigh(G)
    keep = (lam > lam.max() * G.shape[0] * rank_eps) & (lam > 0)
    if not bool(keep.any()):
        return torch.zeros(G.shape[0], dtype=torch.float64), torch.tensor(0)
    kept = lam[keep].sort().values
    sigma = {0: kept[0], 1: kept[(kept.numel() - 1) // 2], 2: kept.mean()}[scale_mode]
    Vk = V[:, keep]
    B = sigma.sqrt() * Vk @ torch.diag(lam[keep].rsqrt()) @ Vk.T
    return B.sum(1), torch.tensor(int(keep.sum()))


def aligned_mtl_weights(G: Tensor, scale_mode: int, rank_eps: float) -> tuple[Tensor, Tensor]:
    r"""Aligned-MTL: :math:`w = B 1`, :math:`B = \sqrt{\sigma} V \Lambda^{-1/2} V^\top`."""
    return _batched(lambda g: _aligned_one(g, scale_mode, rank_eps), G)


def _config_one(G: Tensor) -> tuple[Tensor, Tensor]:
    n = G.diagonal().clamp_min(0).sqrt()
    safe = torch.where(n > 0, n, torch.ones_like(n))
    Gn = torch.where((n[:, None] > 0) & (n[None, :] > 0), G / (safe[:, None] * safe[None, :]),
                     torch.zeros_like(G))
    c = _pinv_apply(Gn, (n > 0).to(torch.float64))
    bb = c @ Gn @ c
    if not bool(bb > 1e-20):  # 1 orthogonal to the span: b = 0 up to rounding
        return torch.zeros_like(n), torch.tensor(False)
    gb = (G.sum(0) * c / safe * (n > 0)).sum()
    return torch.where(n > 0, gb / bb * c / safe, torch.zeros_like(n)), torch.tensor(True)


def config_weights(G: Tensor) -> tuple[Tensor, Tensor]:
    r"""ConFIG: :math:`d = (\sum_i g_i \cdot e) e`, :math:`e = U^+ 1 / \|U^+ 1\|`, as weights."""
    return _batched(_config_one, G)


def gradvac_coefficients(G: Tensor, order: Tensor, rho: Tensor, beta: float,
                         eps: float) -> Tensor:
    """GradVac coefficients ``C`` (``pc = C @ J``); updates ``rho`` in place."""
    T = G.shape[-1]
    flatG, flatO = G.reshape(-1, T, T).cpu(), order.reshape(-1, T, T).cpu()
    flatR = rho.reshape(-1, T, T)
    out = []
    for b in range(flatG.shape[0]):
        Gm, om, rh = flatG[b], flatO[b], flatR[b].cpu().clone()
        C = torch.eye(T, dtype=torch.float64)
        for i in range(T):
            pp = float(Gm[i, i])
            for j in om[i].tolist():
                if j == i:
                    continue
                pg, gjj = float(C[i] @ Gm[:, j]), max(float(Gm[j, j]), 0.0)
                np_, nj = math.sqrt(max(pp, 0.0)), math.sqrt(gjj)
                r, target = pg / (np_ * nj + eps), float(rh[i, j])
                if r < target:
                    s_r, s_t = math.sqrt(max(1 - r * r, 0.0)), math.sqrt(max(1 - target**2, 0.0))
                    a = np_ * (target * s_r - r * s_t) / (nj * s_t + eps)
                    C[i, j] += a
                    pp += 2 * a * pg + a * a * gjj
                rh[i, j] = (1 - beta) * target + beta * r
        flatR[b].copy_(rh)
        out.append(C)
    return torch.stack(out).reshape(G.shape).to(G.device)


FD_REDUCE_CODES = {"none": 0, "mean": 1, "weighted": 2}


def feature_disentanglement(grads: Tensor, temperature: float = 0.0, reduce: int = 1) -> Tensor:
    r"""Feature Disentanglement of per-task gradients ``grads`` ``[T, N]``, formed in float64.

    Per element ``j``, the saliencies :math:`a_{tj} = |g_{tj}|` become a distribution over
    tasks, :math:`p_{tj} = a_{tj} / \sum_k a_{kj}` (or :math:`\mathrm{softmax}_t(a_{tj}/\tau)`
    for ``temperature`` :math:`\tau > 0`), with entropy :math:`H_j = -\sum_t p_{tj}\log p_{tj}`
    (:math:`0 \log 0 = 0`). Elements with :math:`\sum_t a_{tj} = 0` are excluded.

    ``reduce``: 0 gives the map :math:`1 - H_j/\log T` (``[N]``, 0 at excluded elements);
    1 gives :math:`1 - \overline{H}/\log T` over the included elements (0-d); 2 weights the
    elements by :math:`s_j = \sum_t a_{tj}`: :math:`1 - \sum_j s_j H_j / (\log T \sum_j s_j)`.
    With no included element the scalar is 0. NaN/Inf input gives NaN. The result is float32
    (float64 for float64 input).
    """
    T = grads.shape[0]
    a = grads.to(torch.float64).abs()
    s = a.sum(0)
    # `s != 0` (not `s > 0`) keeps NaN elements, so non-finite input reaches the result.
    included = s != 0
    if temperature > 0:
        p = torch.softmax(a / temperature, dim=0)
    else:
        p = a / torch.where(included, s, torch.ones_like(s))
    H = -torch.xlogy(p, p).sum(0)
    log_t = math.log(T)
    out_dtype = gram_dtype(grads.dtype)
    if reduce == 0:
        return torch.where(included, 1.0 - H / log_t, torch.zeros_like(H)).to(out_dtype)
    H = torch.where(included, H, torch.zeros_like(H))
    if reduce == 1:
        num, den = H.sum(), included.sum().to(torch.float64)
    elif reduce == 2:
        num, den = (s * H).sum(), s.sum()
    else:
        raise ValueError(f"reduce must be 0 (none), 1 (mean) or 2 (weighted), got {reduce}")
    den_ok = den != 0
    fd = 1.0 - num / (torch.where(den_ok, den, torch.ones_like(den)) * log_t)
    return torch.where(den_ok, fd, torch.zeros_like(fd)).to(out_dtype)
