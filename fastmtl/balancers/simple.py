r"""Stateless loss balancers: RLW (random weights) and GLS (geometric mean of the losses)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .base import Balancer, check_n_tasks, check_positive, register

__all__ = ["RLW", "GLS"]


@register("rlw")
class RLW(Balancer):
    r"""Random Loss Weighting (Lin et al., *Reasonable Effectiveness of Random Weighting: A
    Litmus Test for Multi-Task Learning*, TMLR 2022).

    At every step a fresh draw :math:`\epsilon \sim \mathcal N(0, I_T)` gives

    .. math::  w = s \cdot \operatorname{softmax}(\epsilon), \qquad
               \mathcal L = \sum_t w_t L_t .

    The paper (and LibMTL's ``RLW``) use :math:`s = 1`, weights on the simplex; that is the
    default ``scale=1.0``. ``scale=T`` gives weights with mean 1, on the scale of the plain sum
    of the losses. The draw comes from ``generator`` (the call's, else the instance's, else
    the global one), in float64 on the generator's device, so a seeded generator reproduces
    the weights. :meth:`weights` draws afresh on every call; :meth:`loss` draws once.

    Example::

        rlw = fastmtl.balancers.RLW(generator=torch.Generator().manual_seed(0))
        for x, ys in loader:
            losses = [crit(out, y) for crit, out, y in zip(crits, model(x), ys)]
            opt.zero_grad(); rlw.loss(losses).backward(); opt.step()
    """

    stateful = False

    def __init__(
        self, n_tasks: int | None = None, *, scale: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.n_tasks = check_n_tasks(n_tasks, optional=True)
        self.scale = check_positive(scale, "scale")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        self.generator = generator

    def _weights(self, losses: Tensor, generator: torch.Generator | None = None) -> Tensor:
        gen = generator if generator is not None else self.generator
        device = gen.device if gen is not None else losses.device
        eps = torch.randn(losses.numel(), generator=gen, device=device, dtype=torch.float64)
        return self.scale * torch.softmax(eps, dim=0)


@register("gls")
class GLS(Balancer):
    r"""Geometric Loss Strategy (Chennupati et al., *MultiNet++: Multi-Stream Feature
    Aggregation and Geometric Loss Strategy for Multi-Task Learning*, CVPR-W 2019).

    The combined loss is the geometric mean of the task losses,

    .. math::  \mathcal L = \Big(\prod_{t=1}^T L_t\Big)^{1/T}
               = \exp\Big(\tfrac1T \sum_t \log L_t\Big),

    whose gradient is :math:`\sum_t w_t \nabla L_t` with the detached loss weights

    .. math::  w_t = \frac{\mathcal L}{T\, L_t} .

    :meth:`loss` returns :math:`\mathcal L` itself (LibMTL's ``GLS`` form); :meth:`weights`
    returns :math:`w` (what :func:`fastmtl.backward` multiplies the losses by, giving the same
    gradient). The losses must be non-negative (``ValueError`` otherwise). Degenerate input:
    each loss is clamped to at least ``eps`` (default ``1e-12``) before the logarithm, so a zero
    loss gives a finite (large) weight and a finite loss; the paper defines no behaviour there.
    With ``T = 1`` the weight is 1.

    Example::

        gls = fastmtl.balancers.GLS()
        opt.zero_grad(); gls.loss(losses).backward(); opt.step()
    """

    stateful = False

    def __init__(self, n_tasks: int | None = None, *, eps: float = 1e-12) -> None:
        super().__init__()
        self.n_tasks = check_n_tasks(n_tasks, optional=True)
        self.eps = check_positive(eps, "eps")

    def _clamped_log(self, vec: Tensor) -> Tensor:
        if bool((vec.detach() < 0).any()):
            raise ValueError("GLS needs non-negative losses (their geometric mean)")
        return vec.clamp_min(self.eps).log()

    def _weights(self, losses: Tensor) -> Tensor:
        log = self._clamped_log(losses.to(torch.float64))
        return torch.exp(log.mean() - log) / losses.numel()

    def loss(self, losses: Sequence[Tensor] | Tensor, **kwargs: Any) -> Tensor:
        vec = self._vector(losses)
        return self._clamped_log(vec).mean().exp()
