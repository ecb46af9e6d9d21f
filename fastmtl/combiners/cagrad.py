r"""CAGrad: Liu et al., *Conflict-Averse Gradient Descent for Multi-task Learning*, NeurIPS 2021."""

from __future__ import annotations

import torch

from .. import ops
from .base import Combiner, register

__all__ = ["CAGrad"]


@register("cagrad")
class CAGrad(Combiner):
    r"""Conflict-averse gradient descent (Liu et al. 2021).

    CAGrad maximises the worst task improvement within a ball around the average gradient
    :math:`g_0 = \frac1T \sum_t g_t`: :math:`\max_d \min_t g_t^\top d` s.t.
    :math:`\|d - g_0\| \le c \|g_0\|`. Its dual over the simplex is

    .. math::  w^* = \arg\min_{w \in \Delta}\ w^\top G \mathbf{1}/T + c\|g_0\|\sqrt{w^\top G w},

    and the update is :math:`d = (g_0 + \lambda g_{w^*}) / s` with
    :math:`g_{w^*} = J^\top w^*`, :math:`\lambda = c\|g_0\| / \|g_{w^*}\|`, and
    :math:`s = 1, 1 + c^2, 1 + c` for ``rescale`` 0, 1, 2 (official code; default 1).

    The dual is solved exactly from :math:`G` (float64): it is a one-dimensional root search
    over a family of min-norm problems, each solved by Wolfe's algorithm, with no
    ``+1e-8`` fudge terms and no SLSQP tolerance. The official trainers multiply the result
    by :math:`T`; fastmtl does not (scale your learning rate, or use ``Sum`` semantics).

    Degenerate input: when :math:`g_0 = 0` or ``c = 0`` the direction is :math:`g_0 / s`.
    When the optimum has :math:`g_{w^*} = 0` (0 in the convex hull of the gradients) the
    paper's :math:`\lambda` is undefined; fastmtl drops that term and returns :math:`g_0/s`.
    ``extras`` holds ``w_star`` and ``converged``.
    """

    def __init__(self, c: float = 0.4, rescale: int = 1) -> None:
        super().__init__()
        if not isinstance(c, (int, float)) or isinstance(c, bool) or c < 0:
            raise ValueError(f"c must be a non-negative number, got {c!r}")
        if rescale not in (0, 1, 2):
            raise ValueError(f"rescale must be 0, 1 or 2, got {rescale!r}")
        self.c = float(c)
        self.rescale = int(rescale)

    def _hparams(self):
        return {"c": self.c, "rescale": self.rescale}

    def _solve(self, G, T, device, generator, losses):
        weights, w_star, converged = ops.cagrad_weights(G.to(torch.float64), self.c, self.rescale)
        return weights, {"w_star": w_star, "converged": converged}

    def _fused_solve(self, T, device, generator):
        return "cagrad_weights", (self.c, self.rescale, 100, ops.default_max_iter(T)), 1.0
