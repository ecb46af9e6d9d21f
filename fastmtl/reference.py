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
    "feature_disentanglement",
    "graddrop",
    "philox_uniform",
    "gram_combine",
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
    lam = kappa / gw if gw > 1e-10 * math.sqrt(scale) else 0.0
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


def _nash_excess(M: Tensor, a: Tensor) -> float:
    """Residual beyond the rounding floor of ``a * (M @ a)`` (cancellation in ``M @ a``)."""
    floor = 8 * (M.shape[0] + 1) * torch.finfo(M.dtype).eps * a * (M * a).abs().sum(1)
    res = (a * (M @ a) - 1).abs()
    return float(torch.where(floor < 1e-2, res - floor, res).max())


def _ray_scale(M: Tensor, a: Tensor) -> Tensor:
    """The best multiple of ``a``: ``argmin_g f(g a)`` has ``g^2 = T / a^T M a``."""
    q = float(a @ M @ a)
    return a * math.sqrt(a.numel() / q) if 0 < q < 1e300 else a


def _nash_newton(M: Tensor, a: Tensor, max_iter: int, tol: float) -> tuple[Tensor, bool]:
    """Newton on f(a) = a^T M a / 2 - sum(log a): Armijo backtracking inside a > 0 and the
    best point on the ray through ``a`` while the decrement is >= 1/4, then full steps."""

    def f(x: Tensor) -> float:
        return float(0.5 * x @ M @ x - torch.log(x).sum())

    polish = 2
    a = _ray_scale(M, a)
    for _ in range(max_iter):
        res = _nash_excess(M, a)
        if not math.isfinite(res):
            return a, False
        if res <= tol:
            if polish == 0:
                return a, True
            polish -= 1
        grad = M @ a - 1 / a
        try:
            step = torch.linalg.solve(M + torch.diag(1 / a**2), -grad)
        except torch.linalg.LinAlgError:  # rounding made the Hessian singular: a diverges
            return a, False
        dec2 = float(-(grad @ step))
        if not dec2 > 0:
            return a, res <= tol
        if dec2 < 0.0625:
            a = a + step
            continue
        neg = step < 0
        t = min(1.0, float((-0.99 * a[neg] / step[neg]).min())) if bool(neg.any()) else 1.0
        f0 = f(a)
        for _ in range(60):
            if f(a + t * step) <= f0 - 1e-4 * t * dec2:
                break
            t *= 0.5
        a = _ray_scale(M, a + t * step)
    return a, _nash_excess(M, a) <= tol


def _nash_one(G: Tensor, max_iter: int, tol: float) -> tuple[Tensor, Tensor, Tensor]:
    T = G.shape[0]
    s = float(G.diagonal().sum()) / T
    if not s > 0:
        return torch.ones(T, dtype=G.dtype), torch.tensor(1.0, dtype=G.dtype), torch.tensor(False)
    M = G / s
    d = M.diagonal()
    a0 = torch.where(d > 1e-12, d.clamp_min(1e-300).rsqrt(), torch.ones_like(d))
    a, ok = _nash_newton(M, a0, max_iter, tol)
    if not ok:
        reg = M + 1e-8 * torch.eye(T, dtype=M.dtype)
        a, _ = _nash_newton(reg, torch.ones_like(d), max_iter, tol)
    res = (a * (M @ a) - 1).abs().max()
    return a / math.sqrt(s), res, torch.tensor(ok)


def nash_weights(G: Tensor, max_iter: int, tol: float) -> tuple[Tensor, Tensor, Tensor]:
    r"""Nash-MTL: :math:`\alpha > 0` with :math:`G\alpha = 1/\alpha`, the residual
    :math:`\max_i |\alpha_i (G\alpha)_i - 1|` and a convergence flag.

    Newton with a line search on :math:`\tfrac12 a^\top (G/s) a - \sum_i \log a_i`
    (:math:`s` the mean diagonal); without a solution (an unbounded problem), the same with
    :math:`10^{-8} I` added, and the flag False.
    """
    return _batched(lambda g: _nash_one(g, max_iter, tol), G)


def dual_cone_matrix(G: Tensor, norm_eps: float, reg_eps: float) -> Tensor:
    """torchjd's normalisation: ``G / trace(G)`` (zero below ``norm_eps``) plus ``reg_eps I``."""
    trace = float(G.diagonal().sum())
    A = G / trace if trace >= norm_eps and trace > 0 else torch.zeros_like(G)
    return A + reg_eps * torch.eye(G.shape[0], dtype=G.dtype)


def _lower_bound_qp(A: Tensor, u: Tensor, max_iter: int) -> tuple[Tensor, bool]:
    """min v^T A v / 2 over v >= u: Lawson-Hanson active set on x = v - u, re-solving the
    free block from scratch each time (the native op updates a Cholesky factor)."""
    T = A.shape[0]
    c = A @ u
    x = torch.zeros_like(u)
    free = torch.zeros(T, dtype=torch.bool)
    skipped = torch.zeros(T, dtype=torch.bool)
    tol = 1e-13 * float(u.abs().sum()) * float(A.diagonal().max().clamp_min(0))
    for _ in range(max_iter):
        grad = A @ x + c
        candidates = ~free & ~skipped
        if not bool(candidates.any()):
            return u + x, True
        j = int(torch.where(candidates, grad, torch.full_like(grad, math.inf)).argmin())
        if not float(grad[j]) < -tol:
            return u + x, True
        trial = free.clone()
        trial[j] = True
        idx = trial.nonzero().flatten()
        if torch.linalg.matrix_rank(A[idx][:, idx], hermitian=True, rtol=1e-12) < idx.numel():
            skipped[j] = True
            continue
        free = trial
        for _ in range(T + 1):
            idx = free.nonzero().flatten()
            z = torch.zeros_like(x)
            z[idx] = torch.linalg.solve(A[idx][:, idx], -c[idx])
            bad = free & (z <= 0)
            if not bool(bad.any()):
                x = z
                break
            ratios = torch.where(bad, x / (x - z), torch.full_like(x, math.inf))
            x = x + float(ratios.min()) * (z - x)
            x[bad & (ratios <= ratios.min())] = 0
            free &= x > 0
        others = trial & ~free
        others[j] = False
        if bool(others.any()):  # the free set lost a column: skipped ones may enter again
            skipped.zero_()
        if not bool(free[j]):
            skipped[j] = True
    return u + x, False


def dual_cone_weights(G: Tensor, U: Tensor, norm_eps: float, reg_eps: float,
                      max_iter: int) -> tuple[Tensor, Tensor]:
    r"""UPGrad / DualProj projections: for every row :math:`u_k` of ``U`` ``[K, T]``,
    :math:`v_k = \arg\min_{v \ge u_k} v^\top A v` with :math:`A` from
    :func:`dual_cone_matrix`; returns ``W`` ``[..., K, T]`` and a convergence flag."""
    Uc = U.to("cpu", torch.float64)

    def one(g: Tensor) -> tuple[Tensor, Tensor]:
        A = dual_cone_matrix(g, norm_eps, reg_eps)
        rows, oks = zip(*(_lower_bound_qp(A, u, max_iter) for u in Uc), strict=True)
        return torch.stack(rows), torch.tensor(all(oks))

    return _batched(one, G)
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


# ---- GradDrop ---------------------------------------------------------------------------

_MASK32 = 0xFFFFFFFF


def _mulhilo32(a: int, b: Tensor) -> tuple[Tensor, Tensor]:
    """High and low 32-bit words of ``a * b`` for a 32-bit constant and uint32 values held in
    int64 (the 64-bit product would overflow int64, so ``a`` is split in 16-bit halves)."""
    a_hi, a_lo = a >> 16, a & 0xFFFF
    low_part = a_lo * b  # < 2^48
    hi = (a_hi * b + (low_part >> 16)) >> 16
    lo = (a * b) & _MASK32  # int64 wraps modulo 2^64: the low word is exact
    return hi & _MASK32, lo


def philox4x32_10(counter: Tensor, key: tuple[int, int]) -> Tensor:
    """Philox4x32-10 (Salmon et al., SC 2011) of ``counter`` ``[..., 4]`` (uint32 values in
    int64) under ``key`` (two uint32 words): the ``[..., 4]`` random words, as int64."""
    c = [counter[..., i] & _MASK32 for i in range(4)]
    k0, k1 = key[0] & _MASK32, key[1] & _MASK32
    for _ in range(10):
        hi0, lo0 = _mulhilo32(0xD2511F53, c[0])
        hi1, lo1 = _mulhilo32(0xCD9E8D57, c[2])
        c = [hi1 ^ c[1] ^ k0, lo1, hi0 ^ c[3] ^ k1, lo0]
        k0, k1 = (k0 + 0x9E3779B9) & _MASK32, (k1 + 0xBB67AE85) & _MASK32
    return torch.stack(c, dim=-1)


def philox_uniform(n: int, key: tuple[int, int], stream: int = 0,
                   device: torch.device | str = "cpu") -> Tensor:
    """The float32 uniforms in (0, 1) the GradDrop op draws for elements ``0 .. n-1``:
    element ``d`` takes lane ``d % 4`` of the block counter ``(d // 4, 0, stream, 0)`` and
    maps its top 23 bits ``m`` to ``(m + 1/2) 2^-23`` (exact, never 0 or 1)."""
    blocks = torch.arange((n + 3) // 4, dtype=torch.int64, device=device)
    counter = torch.stack([blocks & _MASK32, blocks >> 32, torch.full_like(blocks, stream),
                           torch.zeros_like(blocks)], dim=-1)
    words = philox4x32_10(counter, key).reshape(-1)[:n]
    return ((words >> 9).to(torch.float32) + 0.5) * 2.0 ** -23


def graddrop(J: Tensor, leak: Tensor, seed: Tensor, purity: Tensor | None = None,
             stream: int = 0) -> Tensor:
    r"""GradDrop (Chen et al. 2020, Algorithm 1) of ``J`` ``[T, N]`` with the uniforms of
    :func:`philox_uniform` under key ``seed`` ``[2]``.

    With :math:`x_t` the purity source (``J``'s column, or column ``d`` of ``purity``
    ``[T, D]`` for element ``n = b D + d``), :math:`x^+ = \sum_t \max(x_t, 0)` and
    :math:`x^- = \sum_t \min(x_t, 0)`: :math:`P = \frac12 (1 + (x^+ + x^-) / (x^+ - x^-))`
    (1/2 where every :math:`x_t = 0`), :math:`M_t = [P > u][x_t > 0] + [P < u][x_t < 0]` and
    :math:`d_n = \sum_t (k_t + (1 - k_t) M_t) J_{tn}`. Without ``purity`` the kept part is
    :math:`x^+` or :math:`x^-`, so :math:`d = \sum_t k_t x_t + \sum_t (1 - k_t)
    x_t^{\pm}` is formed from sums taken before the decision (as the native op does).
    Sums run in float32 in task order (float64 for float64 input); the result has ``J``'s
    dtype.
    """
    acc = torch.float64 if J.dtype == torch.float64 else torch.float32
    T, N = J.shape
    src = J if purity is None else purity
    D = src.shape[1]
    if N == 0:
        return J.new_empty(0)
    key = (int(seed[0]), int(seed[1]))
    zero = torch.zeros(D, dtype=acc, device=J.device)
    rows = [src[t].to(acc) for t in range(T)]
    pos, neg = zero, zero
    for x in rows:
        pos = pos + x.clamp_min(0)
        neg = neg + x.clamp_max(0)
    s, a = pos + neg, pos - neg
    P = torch.where(a > 0, 0.5 * (1 + s / a), torch.full_like(s, 0.5))
    u = philox_uniform(D, key, stream, J.device).to(acc)
    keep = (P > u).to(torch.int8) - (P < u).to(torch.int8)
    k = [float(v) for v in leak]
    if purity is None:
        ks, wpos, wneg = zero, zero, zero
        for t, x in enumerate(rows):
            ks = ks + k[t] * x
            wpos = wpos + (1 - k[t]) * x.clamp_min(0)
            wneg = wneg + (1 - k[t]) * x.clamp_max(0)
        if not any(k):
            ks, wpos, wneg = zero, pos, neg
        # a tie keeps nothing: 0, or NaN where the column held Inf (P = Inf/Inf); a NaN
        # column has P = 1/2 and NaN parts, so its result is NaN either way
        none = (pos + neg) * 0
        kept = torch.where(keep > 0, wpos, torch.where(keep < 0, wneg, none))
        return (ks + kept).to(J.dtype)
    out = torch.zeros(N // D, D, dtype=acc, device=J.device)
    for t, x in enumerate(rows):
        c = torch.where((keep != 0) & (torch.sign(x).to(torch.int8) == keep),
                        torch.ones_like(x), torch.full_like(x, k[t]))
        out = out + J[t].to(acc).view(-1, D) * c
    return out.reshape(N).to(J.dtype)


def gram_combine(J: Tensor, solve: tuple[str, tuple, float]) -> tuple[Tensor, Tensor, Tensor]:
    """``(d, w, G)``: ``G = gram(J)``, ``w = scale * solver(float64 G, *args)`` (rows summed
    for a ``[K, T]`` result, equal weights for the solver ``""``), ``d = w^T J``."""
    solver, args, scale = solve
    G = gram(J)
    if not solver:
        w = torch.full((J.shape[0],), float(scale), dtype=torch.float64, device=J.device)
    else:
        out = globals()[solver](G.to(torch.float64), *args)
        w = out[0] if isinstance(out, tuple) else out
        w = (w.sum(0) if w.dim() == 2 else w) * scale
    return combine_rows(w, J), w, G
