r"""Equal weighting: :math:`d = \frac{1}{T}\sum_t g_t` (Mean) or :math:`\sum_t g_t` (Sum)."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Combiner, register

__all__ = ["Mean", "Sum"]


class _Equal(Combiner):
    requires_gram = False
    _scale_by_T: bool = False

    def _weights(self, G: Tensor, *, generator=None, losses=None) -> Tensor:
        return self._equal(G.shape[-1], G.device)

    def _equal(self, T: int, device: torch.device) -> Tensor:
        value = 1.0 / T if self._scale_by_T else 1.0
        return torch.full((T,), value, dtype=torch.float64, device=device)

    def _solve(self, G, T, device, generator, losses):
        return self._equal(T, device), {}

    def _fused_solve(self, T, device, generator):
        return "", (), 1.0 / T if self._scale_by_T else 1.0


@register("mean", "ew")
class Mean(_Equal):
    r"""Equal weights :math:`w_t = 1/T`: the mean of the task gradients.

    The ``ew`` baseline of the multi-task literature (torchjd ``Mean``). With
    ``check_finite=False`` it skips the Gram matrix and reads ``J`` once.
    """

    _scale_by_T = True


@register("sum")
class Sum(_Equal):
    r"""Unit weights :math:`w_t = 1`: the sum of the task gradients (the summed-loss gradient).

    Equals nash-mtl's ``LinearScalarization`` and torchjd's ``Sum``.
    """
