r"""MGDA: Sener & Koltun, *Multi-Task Learning as Multi-Objective Optimization*, NeurIPS 2018."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import ops
from .base import Combiner, register

__all__ = ["MGDA"]

_NORMALIZATIONS = ("none", "l2", "loss", "loss+")


@register("mgda")
class MGDA(Combiner):
    r"""Min-norm point of the convex hull of the (normalised) task gradients.

    .. math::  w^* = \arg\min_{w \ge 0,\ \sum_t w_t = 1} \Big\| \sum_t w_t \hat g_t \Big\|^2,
               \qquad \hat g_t = g_t / n_t,

    with the paper's gradient normalisations :math:`n_t`: ``"none"`` (1), ``"l2"``
    (:math:`\|g_t\|`), ``"loss"`` (:math:`L_t`) and ``"loss+"`` (:math:`L_t \|g_t\|`); the
    loss-based ones need ``losses``. As in the paper's code (isl-org), the weights are
    applied to the raw gradients, :math:`d = \sum_t w^*_t g_t`; ``weights_on="normalized"``
    gives LibMTL's :math:`d = \sum_t w^*_t \hat g_t` instead.

    The problem is solved exactly, by Wolfe's finite min-norm-point algorithm on :math:`G`
    (float64, capped iterations, convergence flag in ``extras["converged"]``), not by a
    fixed number of Frank-Wolfe steps. :math:`d` is then the exact min-norm point, which has
    :math:`d \cdot g_t \ge \|d\|^2 \ge 0` for every task (no conflict).

    Degenerate input: if 0 lies in the hull (opposite rows, a zero row, Pareto-stationary
    gradients) the direction is 0. When the optimal weights are not unique (singular
    :math:`G`), some optimal ``w`` is returned; the direction is unique. A zero row under
    ``"l2"`` or ``"loss+"`` is treated as having norm 1 (it stays zero). Non-positive losses
    are clamped to ``1e-12`` for the loss normalisations.
    """

    def __init__(self, normalization: str = "none", weights_on: str = "raw") -> None:
        super().__init__()
        if normalization not in _NORMALIZATIONS:
            raise ValueError(
                f"normalization must be one of {_NORMALIZATIONS}, got {normalization!r}"
            )
        if weights_on not in ("raw", "normalized"):
            raise ValueError(f"weights_on must be 'raw' or 'normalized', got {weights_on!r}")
        self.normalization = normalization
        self.weights_on = weights_on
        self.needs_losses = normalization in ("loss", "loss+")

    def _hparams(self):
        return {"normalization": self.normalization, "weights_on": self.weights_on}

    def _scales(self, G: Tensor, losses: Tensor | None) -> Tensor | None:
        """The normalisers n_t, or None for 'none'."""
        if self.normalization == "none":
            return None
        n = torch.ones(G.shape[-1], dtype=torch.float64, device=G.device)
        if self.normalization in ("l2", "loss+"):
            norms = G.diagonal(dim1=-2, dim2=-1).clamp_min(0).sqrt()
            n = n * torch.where(norms > 0, norms, torch.ones_like(norms))
        if self.normalization in ("loss", "loss+"):
            if losses is None:
                raise ValueError(f"MGDA(normalization={self.normalization!r}) needs `losses`")
            n = n * losses.to(G.device, torch.float64).clamp_min(1e-12)
        return n

    def _solve(self, G, T, device, generator, losses):
        Gd = G.to(torch.float64)
        n = self._scales(Gd, losses)
        Gn = Gd if n is None else Gd / (n[:, None] * n[None, :])
        w_simplex, converged = ops.min_norm_weights(Gn)
        w = w_simplex / n if n is not None and self.weights_on == "normalized" else w_simplex
        return w, {"converged": converged, "simplex_weights": w_simplex}

    def _fused_solve(self, T, device, generator):
        if self.normalization != "none":  # the normalisers are applied in Python
            return None
        return "min_norm_weights", (ops.default_max_iter(T), 1e-14), 1.0

    def _weights(self, G: Tensor, *, generator=None, losses=None) -> Tensor:
        loss_vec = None if losses is None else torch.as_tensor(losses, dtype=torch.float64)
        return self._solve(G, G.shape[-1], G.device, generator, loss_vec)[0]
