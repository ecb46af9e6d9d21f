r"""UW: uncertainty weighting (Kendall, Gal and Cipolla, *Multi-Task Learning Using
Uncertainty to Weigh Losses for Scene Geometry and Semantics*, CVPR 2018)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .base import Balancer, check_n_tasks, register

__all__ = ["UW"]


@register("uw")
class UW(Balancer):
    r"""Uncertainty weighting with learned log-variances :math:`s_t = \log \sigma_t^2`.

    .. math::  \mathcal L = \sum_t c\,\big(e^{-s_t} L_t + s_t\big), \qquad
               w_t = c\, e^{-s_t} \ (\text{detached}),

    with :math:`c = 1` by default (``half=False``, the common implementation, e.g. the
    authors' later code and many libraries) or :math:`c = 1/2` (``half=True``: the paper's
    regression form :math:`\frac{1}{2\sigma^2} L + \log\sigma`, also LibMTL's). Both have the
    same minimiser in :math:`s` (:math:`s_t = \log L_t`); :math:`c` only scales the gradients.
    The paper's classification form :math:`\frac1{\sigma^2} L + \log \sigma` mixes the two
    factors and is not offered. :math:`\partial\mathcal L/\partial s_t = c(1 - e^{-s_t}L_t)`.

    ``log_vars`` is an ``nn.Parameter`` (initial value ``init``, default 0): give
    ``uw.parameters()`` to the optimiser. :func:`fastmtl.backward` with ``balancer=uw`` weights
    the losses by :math:`w` and also accumulates :math:`\partial\mathcal L/\partial s` into
    ``log_vars.grad``.

    Example::

        uw = fastmtl.balancers.UW(n_tasks=3)
        opt = torch.optim.Adam([*model.parameters(), *uw.parameters()], lr=1e-3)
        opt.zero_grad(); uw.loss(losses).backward(); opt.step()
    """

    def __init__(self, n_tasks: int, *, init: float = 0.0, half: bool = False) -> None:
        super().__init__()
        self.n_tasks = check_n_tasks(n_tasks)
        self.init = float(init)
        self.half = bool(half)
        self.log_vars = nn.Parameter(torch.full((n_tasks,), self.init))

    @property
    def _c(self) -> float:
        return 0.5 if self.half else 1.0

    def reset(self) -> None:
        with torch.no_grad():
            self.log_vars.fill_(self.init)

    def _weights(self, losses: Tensor) -> Tensor:
        return self._c * torch.exp(-self.log_vars.detach().to(losses.device, torch.float64))

    def loss(self, losses: Sequence[Tensor] | Tensor, **kwargs: Any) -> Tensor:
        vec = self._vector(losses)
        s = self.log_vars.to(vec.device)
        return (self._c * (torch.exp(-s) * vec + s)).sum()

    def _own_loss(self, losses: Tensor) -> Tensor:
        return self.loss(losses.detach())
