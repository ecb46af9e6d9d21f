r"""RGW: Lin et al., *Reasonable Effectiveness of Random Weighting*, TMLR 2022."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Combiner, register

__all__ = ["RGW"]


@register("rgw")
class RGW(Combiner):
    r"""Random gradient weighting: :math:`w = \operatorname{softmax}(z)`, :math:`z \sim
    \mathcal N(0, I_T)` drawn afresh at every step (LibMTL's ``RGW``), :math:`d = w^\top J`.

    The draw comes from ``generator`` (on the generator's device, or the gradients' device
    when none is given). The weights do not depend on :math:`G`; with ``check_finite=False``
    the Gram matrix is skipped and ``J`` is read once.
    """

    requires_gram = False
    is_random = True

    def _draw(self, T: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
        gen_device = generator.device if generator is not None else device
        z = torch.randn(T, generator=generator, device=gen_device, dtype=torch.float64)
        return torch.softmax(z, dim=0).to(device)

    def _weights(self, G: Tensor, *, generator=None, losses=None) -> Tensor:
        return self._draw(G.shape[-1], G.device, generator)

    def _solve(self, G, T, device, generator, losses):
        return self._draw(T, device, generator), {}
