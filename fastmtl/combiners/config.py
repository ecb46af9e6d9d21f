r"""ConFIG: Liu et al., *ConFIG: Towards Conflict-free Training of Physics Informed Neural
Networks*, ICLR 2025."""

from __future__ import annotations

import torch

from .. import ops
from .base import Combiner, register

__all__ = ["ConFIG"]


@register("config")
class ConFIG(Combiner):
    r"""Conflict-free update: equal positive cosine to every task gradient.

    With unit gradients :math:`u_i = g_i / \|g_i\|` stacked in :math:`U`,

    .. math::  b = U^{+} \mathbf{1}, \qquad e = b / \|b\|, \qquad
               d = \Big(\sum_i g_i \cdot e\Big)\, e ,

    the official ``ConFIG_update`` with the all-ones preference (torchjd ``ConFIG``). From
    :math:`G` alone: :math:`b = U^\top c` with :math:`c = (U U^\top)^{+} \mathbf{1}`, so
    :math:`w_j = \frac{\sum_i g_i \cdot b}{\|b\|^2} \frac{c_j}{\|g_j\|}`. The pseudo-inverse
    of the normalised Gram matrix keeps eigenvalues above :math:`T \epsilon \max\lambda`.

    Degenerate input: a zero row has :math:`u_i = 0` and weight 0; when :math:`b = 0` the
    direction is 0 (``extras["defined"]`` False).
    """

    def _solve(self, G, T, device, generator, losses):
        w, defined = ops.config_weights(G.to(torch.float64))
        return w, {"defined": defined}

    def _fused_solve(self, T, device, generator):
        return "config_weights", (), 1.0
