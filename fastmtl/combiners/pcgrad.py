r"""PCGrad: Yu et al., *Gradient Surgery for Multi-Task Learning*, NeurIPS 2020."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .. import ops
from .base import Combiner, register

__all__ = ["PCGrad"]

# (include_self, eps, eps_on_norm) of each published projection rule.
_VARIANTS = {
    "paper": (True, 0.0, False),        # Pytorch-PCGrad and nash-mtl: j = i visited, no eps
    "libmtl": (True, 1e-8, False),      # LibMTL: ||g_j||^2 + 1e-8
    "torchjd": (False, 0.0, False),     # torchjd: j = i skipped
    "cagrad_repo": (False, 1e-8, True),  # CAGrad repo: unit vectors g_j / (||g_j|| + 1e-8)
}


@register("pcgrad")
class PCGrad(Combiner):
    r"""Projecting conflicting gradients (Yu et al. 2020).

    For each task :math:`i`, start from :math:`p = g_i` and visit the tasks :math:`j` in a
    random order; whenever :math:`p \cdot g_j < 0`, project :math:`p` onto the normal plane
    of the *original* :math:`g_j`:

    .. math::  p \leftarrow p - \frac{p \cdot g_j}{\|g_j\|^2}\, g_j .

    The projected gradients are summed (``reduction="sum"``, the paper) or averaged
    (``"mean"``). Every :math:`p` stays a combination :math:`\sum_k C_{ik} g_k` of the rows,
    so fastmtl computes the coefficients :math:`C` from :math:`G = J J^\top` alone and the
    direction is :math:`d = (\mathbf{1}^\top C) J` (divided by :math:`T` for the mean).

    Args:
        reduction: ``"sum"`` (default, as in the paper) or ``"mean"``.
        order: ``"random"`` (default): each task draws its own random visiting order, as the
            paper's code does; or a fixed permutation of ``range(T)`` used for every task
            (what the golden reference values use); or a ``[T, T]`` tensor of per-task orders.
        variant: the projection rule. ``"paper"`` (default) visits ``j = i`` too (a no-op
            unless ``p`` has turned against ``g_i``) with denominator :math:`\|g_j\|^2`, as
            Pytorch-PCGrad and nash-mtl; ``"libmtl"`` adds ``1e-8`` to the denominator;
            ``"torchjd"`` skips ``j = i``; ``"cagrad_repo"`` skips ``j = i`` and projects on
            :math:`g_j / (\|g_j\| + 10^{-8})`.

    Degenerate input: a zero row is never projected on (its dot products are zero); exactly
    opposite rows project each other to zero, giving a zero direction.
    """

    def __init__(
        self, reduction: str = "sum", order: str | Sequence[int] | Tensor = "random",
        variant: str = "paper",
    ) -> None:
        super().__init__()
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        if variant not in _VARIANTS:
            raise ValueError(f"variant must be one of {sorted(_VARIANTS)}, got {variant!r}")
        if isinstance(order, str):
            if order != "random":
                raise ValueError(f"order must be 'random' or a permutation, got {order!r}")
            self._order = None
        else:
            self._order = torch.as_tensor(order, dtype=torch.int64)
            if self._order.dim() not in (1, 2):
                raise ValueError("order must be a permutation [T] or per-task orders [T, T]")
        self.reduction = reduction
        self.variant = variant
        self.is_random = self._order is None

    def _hparams(self):
        order = "random" if self._order is None else self._order.tolist()
        return {"reduction": self.reduction, "order": order, "variant": self.variant}

    def visiting_orders(
        self, T: int, device: torch.device, generator: torch.Generator | None = None
    ) -> Tensor:
        """The ``[T, T]`` int64 visiting orders (row ``i`` for task ``i``) of one step."""
        if self._order is None:
            gen_device = generator.device if generator is not None else device
            keys = torch.rand((T, T), generator=generator, device=gen_device)
            return keys.argsort(dim=1).to(device)
        order = self._order.to(device)
        if order.shape[-1] != T or (order.dim() == 2 and order.shape[0] != T):
            raise ValueError(f"order has shape {tuple(order.shape)}, expected [{T}] or [{T}, {T}]")
        if order.dim() == 1:
            order = order.expand(T, T)
        return order.contiguous()

    def coefficients(self, G: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """``C`` (float64 ``[T, T]``) with projected gradients ``pc = C @ J``."""
        T = G.shape[-1]
        include_self, eps, eps_on_norm = _VARIANTS[self.variant]
        order = self.visiting_orders(T, G.device, generator)
        return ops.pcgrad_coefficients(
            G.to(torch.float64), order, include_self=include_self, eps=eps,
            eps_on_norm=eps_on_norm,
        )

    def _fused_solve(self, T, device, generator):
        include_self, eps, eps_on_norm = _VARIANTS[self.variant]
        order = self.visiting_orders(T, device, generator)
        args = (order, bool(include_self), float(eps), bool(eps_on_norm))
        return "pcgrad_coefficients", args, 1.0 / T if self.reduction == "mean" else 1.0

    def _weights(self, G: Tensor, *, generator=None, losses=None) -> Tensor:
        w = self.coefficients(G, generator=generator).sum(dim=-2)
        return w / G.shape[-1] if self.reduction == "mean" else w
