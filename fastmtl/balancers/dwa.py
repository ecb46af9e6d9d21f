r"""DWA: Dynamic Weight Average (Liu et al., *End-to-End Multi-Task Learning with Attention*,
CVPR 2019, the MTAN paper)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .base import Balancer, check_n_tasks, check_positive, register

__all__ = ["DWA"]


@register("dwa")
class DWA(Balancer):
    r"""Dynamic Weight Average: task weights from the rate of change of each task's
    epoch-average loss.

    With :math:`\bar L_t(k)` the average training loss of task :math:`t` over epoch :math:`k`,
    the weights used throughout epoch :math:`k` are

    .. math::  r_t = \frac{\bar L_t(k-1)}{\bar L_t(k-2)}, \qquad
               w_t = \frac{T \exp(r_t / \tau)}{\sum_j \exp(r_j / \tau)},

    so they sum to :math:`T`. As in the paper, :math:`w = 1` for the first two epochs (no
    two previous averages yet), the window is the two previous epochs and the temperature
    :math:`\tau` defaults to 2. The averages are per epoch, over the recorded iterations, as
    in the official MTAN code.

    State: :meth:`step` (or :meth:`loss`, or :func:`fastmtl.backward` with ``balancer=``)
    adds one iteration's losses to the running epoch sum; :meth:`epoch_end` closes the epoch
    (its average becomes :math:`\bar L(k-1)`). Degenerate input: the denominator is clamped at
    ``eps`` (default ``1e-12``), so a zero average loss gives a finite ratio; the paper defines
    no behaviour there.

    Example::

        dwa = fastmtl.balancers.DWA(n_tasks=3, temperature=2.0)
        for epoch in range(n_epochs):
            for x, ys in loader:
                losses = [crit(out, y) for crit, out, y in zip(crits, model(x), ys)]
                opt.zero_grad(); dwa.loss(losses).backward(); opt.step()   # records losses
            dwa.epoch_end()
    """

    _size_key = "epoch_sum"

    def __init__(
        self, n_tasks: int | None = None, *, temperature: float = 2.0, eps: float = 1e-12
    ) -> None:
        super().__init__()
        self.temperature = check_positive(temperature, "temperature")
        self.eps = check_positive(eps, "eps")
        self.n_tasks = check_n_tasks(n_tasks, optional=True)
        if self.n_tasks is not None:
            self._init_state(self.n_tasks)

    def _init_state(self, n_tasks: int) -> None:
        self.register_buffer("epoch_sum", torch.zeros(n_tasks, dtype=torch.float64))
        self.register_buffer("epoch_count", torch.zeros((), dtype=torch.int64))
        # history[0] = average of epoch k-2, history[1] = average of epoch k-1
        self.register_buffer("history", torch.zeros(2, n_tasks, dtype=torch.float64))
        self.register_buffer("epochs_done", torch.zeros((), dtype=torch.int64))

    def reset(self) -> None:
        if self.n_tasks is None:
            return
        self.epoch_sum.zero_()
        self.epoch_count.zero_()
        self.history.zero_()
        self.epochs_done.zero_()

    def _weights(self, losses: Tensor) -> Tensor:
        T = self.n_tasks
        if int(self.epochs_done) < 2:
            return torch.ones(T, dtype=torch.float64, device=losses.device)
        hist = self.history.to(losses.device)
        r = hist[1] / hist[0].clamp_min(self.eps)
        return T * torch.softmax(r / self.temperature, dim=0)

    def step(self, losses: Sequence[Tensor] | Tensor) -> None:
        """Adds one iteration's losses to the running average of the current epoch."""
        self._observe(self._vector(losses))

    def _observe(self, losses: Tensor) -> None:
        self.epoch_sum.add_(losses.detach().to(self.epoch_sum))
        self.epoch_count.add_(1)

    def epoch_end(self) -> None:
        """Closes the epoch: its average loss becomes the newest of the two kept averages."""
        if self.n_tasks is None or int(self.epoch_count) == 0:
            raise ValueError("DWA.epoch_end: no losses were recorded in this epoch (call step)")
        avg = self.epoch_sum / self.epoch_count
        self.history.copy_(torch.stack([self.history[1], avg]))
        self.epochs_done.add_(1)
        self.epoch_sum.zero_()
        self.epoch_count.zero_()
