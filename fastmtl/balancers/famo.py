r"""FAMO (Liu, Liu, Jin, Stone and Liu, *FAMO: Fast Adaptive Multitask Optimization*,
NeurIPS 2023)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .base import Balancer, check_n_tasks, check_positive, register

__all__ = ["FAMO"]


@register("famo")
class FAMO(Balancer):
    r"""Fast Adaptive Multitask Optimization: a balancer that decreases every task's loss at
    about the same *relative* rate, with O(1) space and time per step.

    Logits :math:`\xi \in \mathbb{R}^T` (initially 0) give :math:`z = \operatorname{softmax}(\xi)`.
    With :math:`\ell_t = L_t - L_t^{min} + \epsilon` (``min_losses`` default 0, ``eps``
    default ``1e-8``, as in the official code), the step direction of Algorithm 1 is
    :math:`d = c\sum_t \frac{z_t}{\ell_t}\nabla L_t`, :math:`c = (\sum_t z_t/\ell_t)^{-1}`,
    i.e. the gradient of the combined loss

    .. math::  \mathcal L = c \sum_t z_t \log \ell_t \quad (c\ \text{detached}),
               \qquad w_t = \frac{z_t/\ell_t}{\sum_j z_j/\ell_j} \quad(\textstyle\sum w = 1).

    :meth:`loss` returns :math:`\mathcal L`; :meth:`weights` returns :math:`w` (same gradient).
    Both :meth:`loss` and :func:`fastmtl.backward` with ``balancer=`` remember
    :math:`\log \ell(\theta_t)`. After the optimiser step, :meth:`update` takes the losses at
    :math:`\theta_{t+1}` (same batch, recomputed under ``torch.no_grad()``) and updates the logits:

    .. math::  \delta = J_z(\xi)^\top \big(\log \ell(\theta_t) - \log \ell(\theta_{t+1})\big)
               = z \odot (\Delta - z^\top \Delta), \qquad g = \delta + \gamma\,\xi,

    then ``optimizer="adam"`` (default, as in the official code: Adam with ``lr`` 0.025 and
    L2 weight decay :math:`\gamma` = ``weight_decay`` = 0.01 folded into the gradient, the
    defaults of the official ``famo.py``; its experiments tune both) or
    ``optimizer="sgd"`` (Algorithm 1 of the paper literally: :math:`\xi \leftarrow \xi - \beta g`
    with :math:`\beta` = ``lr``). Losses below ``min_losses`` raise ``ValueError``. The
    official ``backward`` also clips the shared gradient norm (``max_norm`` 1.0); that is the
    training loop's business here (``torch.nn.utils.clip_grad_norm_``).

    Example::

        famo = fastmtl.balancers.FAMO(n_tasks=3)
        for x, ys in loader:
            losses = torch.stack([crit(o, y) for crit, o, y in zip(crits, model(x), ys)])
            opt.zero_grad(); famo.loss(losses).backward(); opt.step()
            with torch.no_grad():
                new = torch.stack([crit(o, y) for crit, o, y in zip(crits, model(x), ys)])
            famo.update(new)
    """

    def __init__(
        self, n_tasks: int | None = None, *, lr: float = 0.025, weight_decay: float = 0.01,
        optimizer: str = "adam", min_losses: Sequence[float] | Tensor | None = None,
        eps: float = 1e-8, betas: tuple[float, float] = (0.9, 0.999), adam_eps: float = 1e-8,
    ) -> None:
        super().__init__()
        self.lr = check_positive(lr, "lr")
        self.weight_decay = check_positive(weight_decay, "weight_decay", allow_zero=True)
        if optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
        self.optimizer = optimizer
        self.eps = check_positive(eps, "eps")
        self.betas = (float(betas[0]), float(betas[1]))
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        self.adam_eps = check_positive(adam_eps, "adam_eps")
        self._min_losses = None if min_losses is None else \
            torch.as_tensor(min_losses, dtype=torch.float64).reshape(-1).clone()
        if self._min_losses is not None and not bool(torch.isfinite(self._min_losses).all()):
            raise ValueError("min_losses must be finite")
        self.n_tasks = check_n_tasks(n_tasks, optional=True)
        if self.n_tasks is not None:
            self._init_state(self.n_tasks)

    _size_key = "logits"

    def _init_state(self, n_tasks: int) -> None:
        mins = torch.zeros(n_tasks, dtype=torch.float64) if self._min_losses is None \
            else self._min_losses
        if mins.numel() != n_tasks:
            raise ValueError(f"min_losses has {mins.numel()} entries, expected {n_tasks}")
        self.register_buffer("min_losses", mins.clone())
        self.register_buffer("logits", torch.zeros(n_tasks, dtype=torch.float64))
        self.register_buffer("prev_log_losses", torch.zeros(n_tasks, dtype=torch.float64))
        self.register_buffer("has_prev", torch.zeros((), dtype=torch.bool))
        self.register_buffer("exp_avg", torch.zeros(n_tasks, dtype=torch.float64))
        self.register_buffer("exp_avg_sq", torch.zeros(n_tasks, dtype=torch.float64))
        self.register_buffer("adam_step", torch.zeros((), dtype=torch.int64))

    def reset(self) -> None:
        if self.n_tasks is None:
            return
        for buf in (self.logits, self.prev_log_losses, self.exp_avg, self.exp_avg_sq):
            buf.zero_()
        self.has_prev.fill_(False)
        self.adam_step.zero_()

    def _shifted(self, vec: Tensor) -> Tensor:
        shifted = vec - self.min_losses.to(vec.device, vec.dtype)
        if bool((shifted.detach() < 0).any()):
            raise ValueError("FAMO: losses must not be below min_losses")
        return shifted + self.eps

    def _weights(self, losses: Tensor) -> Tensor:
        z = torch.softmax(self.logits.to(losses.device), dim=0)
        q = z / self._shifted(losses.to(torch.float64))
        return q / q.sum()

    def loss(self, losses: Sequence[Tensor] | Tensor, **kwargs: Any) -> Tensor:
        vec = self._vector(losses)
        ell = self._shifted(vec)
        z = torch.softmax(self.logits.to(vec.device), dim=0).to(vec.dtype)
        c = (z / ell.detach()).sum()
        self._observe(vec)
        return (z * ell.log()).sum() / c

    def _observe(self, losses: Tensor) -> None:
        ell = self._shifted(losses.detach().to(torch.float64))
        self.prev_log_losses.copy_(ell.log().to(self.prev_log_losses.device))
        self.has_prev.fill_(True)

    def update(self, losses: Sequence[Tensor] | Tensor) -> Tensor:
        """The post-step update of the logits from the losses at the new parameters (same
        batch as the last :meth:`loss`). Returns the new weights :math:`z = softmax(\\xi)`."""
        if self.n_tasks is None or not bool(self.has_prev):
            raise ValueError("FAMO.update: call loss() (or fastmtl.backward with balancer=) "
                             "before the optimiser step first")
        vec = self._vector(losses).detach().to(torch.float64)
        new_log = self._shifted(vec).log().to(self.logits.device)
        delta = self.prev_log_losses - new_log
        z = torch.softmax(self.logits, dim=0)
        g = z * (delta - (z * delta).sum()) + self.weight_decay * self.logits
        if self.optimizer == "sgd":
            self.logits.sub_(self.lr * g)
        else:
            b1, b2 = self.betas
            self.adam_step.add_(1)
            k = int(self.adam_step)
            self.exp_avg.mul_(b1).add_((1 - b1) * g)
            self.exp_avg_sq.mul_(b2).add_((1 - b2) * g * g)
            m_hat = self.exp_avg / (1 - b1**k)
            v_hat = self.exp_avg_sq / (1 - b2**k)
            self.logits.sub_(self.lr * m_hat / (v_hat.sqrt() + self.adam_eps))
        return torch.softmax(self.logits, dim=0)
