r"""GradVac: Wang et al., *Gradient Vaccine: Investigating and Improving Multi-task
Optimization in Massively Multilingual Models*, ICLR 2021."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .. import ops
from .base import register
from .pcgrad import PCGrad

__all__ = ["GradVac"]


@register("gradvac")
class GradVac(PCGrad):
    r"""Gradient vaccine: steer each pair's cosine similarity towards an EMA target.

    For each task :math:`i`, :math:`p = g_i`; for every other task :math:`j` in the visiting
    order, with :math:`\rho = \frac{p \cdot g_j}{\|p\| \|g_j\| + \epsilon}` and the target
    :math:`\hat\rho_{ij}` (starting at 0):

    .. math::  \text{if } \rho < \hat\rho_{ij}:\quad p \mathrel{+}= g_j\,
               \frac{\|p\| \big(\hat\rho_{ij}\sqrt{1-\rho^2} - \rho\sqrt{1-\hat\rho_{ij}^2}\big)}
                    {\|g_j\| \sqrt{1-\hat\rho_{ij}^2} + \epsilon},
               \qquad \hat\rho_{ij} \leftarrow (1-\beta)\hat\rho_{ij} + \beta \rho ,

    (:math:`\rho` taken before the correction), and :math:`d = \sum_i p_i`. This is LibMTL's
    rule for one whole-model parameter group (torchjd's ``GradVac`` agrees). As for PCGrad,
    every :math:`p_i` is a combination of the rows, so fastmtl computes it from :math:`G`.

    The targets :math:`\hat\rho` (``[T, T]``, float64) are the state: ``state_dict()`` saves
    them, ``reset()`` sets them back to zero. ``order`` is ``"random"`` (a fresh order per
    task and step, from ``generator``) or a fixed permutation as for :class:`PCGrad`.
    """

    def __init__(self, beta: float = 0.5, eps: float = 1e-8,
                 order: str | Sequence[int] | Tensor = "random") -> None:
        super().__init__(reduction="sum", order=order, variant="torchjd")
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {beta!r}")
        if not eps >= 0.0:
            raise ValueError(f"eps must be non-negative, got {eps!r}")
        self.beta = float(beta)
        self.eps = float(eps)
        self.register_buffer("rho", torch.zeros(0, 0, dtype=torch.float64))

    def _hparams(self):
        return {"beta": self.beta, "eps": self.eps} | {"order": super()._hparams()["order"]}

    def reset(self) -> None:
        self.rho = torch.zeros(0, 0, dtype=torch.float64, device=self.rho.device)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "rho"
        if key in state_dict:  # the saved targets fix T: take their shape
            self.rho = torch.empty_like(state_dict[key], dtype=torch.float64)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _fused_solve(self, T, device, generator):
        return None  # stateful (the EMA targets): not PCGrad's one-op path

    def coefficients(self, G: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """``C`` with ``pc = C @ J``; advances the EMA targets by one step."""
        T = G.shape[-1]
        if self.rho.numel() == 0:
            self.rho = torch.zeros(T, T, dtype=torch.float64, device=G.device)
        elif self.rho.shape != (T, T):
            raise ValueError(
                f"GradVac holds targets for T = {self.rho.shape[0]}, got T = {T}; "
                "call reset() to start over"
            )
        elif self.rho.device != G.device:
            self.rho = self.rho.to(G.device)
        order = self.visiting_orders(T, G.device, generator)
        return ops.gradvac_coefficients(G.to(torch.float64), order, self.rho, beta=self.beta,
                                        eps=self.eps)
