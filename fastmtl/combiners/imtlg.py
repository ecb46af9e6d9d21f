r"""IMTL-G: Liu et al., *Towards Impartial Multi-task Learning*, ICLR 2021 (gradient part)."""

from __future__ import annotations

import torch

from .. import ops
from .base import Combiner, register

__all__ = ["IMTLG"]


@register("imtlg")
class IMTLG(Combiner):
    r"""Impartial gradient weights (the gradient balancing of IMTL, Liu et al. 2021).

    The update :math:`d = \sum_t w_t g_t` with :math:`\sum_t w_t = 1` has the same projection
    on every unit task gradient, :math:`d \cdot u_t = d \cdot u_s`, which gives

    .. math::  G w = \mu\, n, \quad n_t = \|g_t\| \qquad\Rightarrow\qquad
               w = \frac{G^{+} n}{\mathbf{1}^\top G^{+} n}.

    This equals the paper's closed form :math:`a = g_1 U^\top (D U^\top)^{-1}` (nash-mtl,
    LibMTL) whenever :math:`G` is invertible, and torchjd's pseudo-inverse form otherwise.
    :math:`G^+` keeps the eigenvalues above :math:`T \epsilon \max|\lambda|`
    (``torch.linalg.pinv``'s default), in float64. Where a Cholesky factor of
    :math:`G - \tau I`, :math:`\tau = (T+2)^2 \epsilon \|G\|_\infty`, exists, every
    eigenvalue is kept (Cholesky's backward-error bound) and :math:`G^{-1} n` comes by
    iterative refinement on that factor; otherwise an eigen-decomposition (Householder
    tridiagonal reduction and implicit QL) decides which eigenvalues are kept.

    Degenerate input: when :math:`\mathbf{1}^\top G^+ n \approx 0` (e.g. exactly opposite
    gradients) no such direction exists and the weights (and direction) are 0, as in torchjd;
    ``extras["defined"]`` is False there. Zero rows get zero weight through the pseudo-inverse.
    """

    def _solve(self, G, T, device, generator, losses):
        w, defined = ops.imtlg_weights(G.to(torch.float64))
        return w, {"defined": defined}

    def _fused_solve(self, T, device, generator):
        return "imtlg_weights", (), 1.0
