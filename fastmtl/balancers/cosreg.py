r"""CosReg: the orthogonality regulariser of Suteu and Guo, *Regularizing Deep Multi-Task
Networks using Orthogonal Gradients* (arXiv 1912.06844, 2019)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from .base import as_loss_vector, check_positive

__all__ = ["CosReg"]


class CosReg(nn.Module):
    r"""A penalty on the squared pairwise cosines of the task gradients, added to the loss:

    .. math::  \Omega = \sum_{i<j} \cos^2(g_i, g_j)
               = \sum_{i<j} \frac{(g_i^\top g_j)^2}{\lVert g_i\rVert^2 \lVert g_j\rVert^2},
               \qquad \mathcal L = \sum_t L_t + \lambda\, \Omega,

    with :math:`\lambda` = ``weight`` (default 1.0; a hyper-parameter). ``squared=False``
    penalises :math:`\sum_{i<j} |\cos(g_i, g_j)|` instead (same minimiser, orthogonality;
    the squared form is smooth at orthogonality). The sum runs over
    unordered pairs (each pair once); a sum over ordered pairs is :math:`2\Omega`, i.e.
    ``weight`` doubled. :math:`g_t = \partial L_t / \partial x` is taken with
    ``create_graph=True``, so :math:`\Omega` is differentiable and its gradient (a
    second-order term) reaches the parameters when :math:`\mathcal L` is backpropagated.

    What :math:`x` is: the paper takes the gradients w.r.t. the **shared parameters**
    (pass them, e.g. ``model.encoder.parameters()``; the gradients of all given tensors are
    flattened and concatenated per task). The feature-level variant passes the **shared
    representation** ``z`` (a tensor, or several), which is much cheaper; then :math:`g_t`
    is flattened over batch and feature dimensions.

    Degenerate input: squared norms are clamped at ``eps`` (default ``1e-12``), so a zero task
    gradient contributes cosine 0 and the output stays finite; with ``T = 1`` the penalty is 0.

    Example::

        reg = fastmtl.balancers.CosReg(weight=0.1)
        losses = [crit(out, y) for crit, out, y in zip(crits, model(x), ys)]
        opt.zero_grad(); reg.loss(losses, model.encoder.parameters()).backward(); opt.step()
    """

    def __init__(self, weight: float = 1.0, *, squared: bool = True, eps: float = 1e-12) -> None:
        super().__init__()
        self.squared = bool(squared)
        self.weight = check_positive(weight, "weight", allow_zero=True)
        self.eps = check_positive(eps, "eps")

    def reset(self) -> None:
        """Stateless: nothing to forget."""

    def penalty(
        self, losses: Sequence[Tensor] | Tensor, params_or_features: Tensor | Iterable[Tensor]
    ) -> Tensor:
        r""":math:`\Omega = \sum_{i<j}\cos^2(g_i, g_j)`, differentiable (``create_graph``)."""
        vec = as_loss_vector(losses)
        if not vec.requires_grad:
            raise ValueError("CosReg needs the losses' graph (losses do not require grad)")
        inputs = [params_or_features] if isinstance(params_or_features, Tensor) \
            else list(params_or_features)
        if not inputs:
            raise ValueError("params_or_features is empty")
        for i, x in enumerate(inputs):
            if not isinstance(x, Tensor):
                raise TypeError(f"params_or_features[{i}] must be a Tensor, got "
                                f"{type(x).__name__}")
            if not x.requires_grad:
                raise ValueError(f"params_or_features[{i}] does not require grad")
        T = vec.numel()
        if T == 1:
            return vec.new_zeros(())
        rows = []
        for t in range(T):
            grads = torch.autograd.grad(vec[t], inputs, create_graph=True, retain_graph=True,
                                        allow_unused=True)
            rows.append(torch.cat([
                (g if g is not None else torch.zeros_like(x)).reshape(-1)
                for g, x in zip(grads, inputs, strict=True)
            ]))
        J = torch.stack(rows)
        G = J @ J.T
        sq = torch.diagonal(G).clamp_min(self.eps)
        denom = sq[:, None] * sq[None, :]
        pen = G.pow(2) / denom if self.squared else G.abs() / denom.sqrt()
        iu = torch.triu_indices(T, T, offset=1, device=G.device)
        return pen[iu[0], iu[1]].sum()

    def loss(
        self, losses: Sequence[Tensor] | Tensor, params_or_features: Tensor | Iterable[Tensor]
    ) -> Tensor:
        r""":math:`\sum_t L_t + \lambda\,\Omega`."""
        vec = as_loss_vector(losses)
        return vec.sum() + self.weight * self.penalty(vec, params_or_features)

    def forward(self, losses, params_or_features) -> Tensor:
        return self.loss(losses, params_or_features)
