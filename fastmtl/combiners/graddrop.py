r"""GradDrop: Chen et al., *Just Pick a Sign: Optimizing Deep Multitask Models with Gradient
Sign Dropout*, NeurIPS 2020."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .. import ops
from .base import (
    Combiner,
    CombineResult,
    _check_out,
    _skip_data_checks,
    all_finite,
    as_matrix,
    register,
)

__all__ = ["GradDrop"]


@register("graddrop")
class GradDrop(Combiner):
    r"""Gradient sign dropout (Algorithm 1 of the paper), element-wise and fused in one pass.

    For every element :math:`j` of the per-task gradients :math:`g_{tj}` (rows of ``J``):

    .. math::
        P_j = \tfrac12 \Big(1 + \frac{\sum_t g_{tj}}{\sum_t |g_{tj}|}\Big), \quad
        u_j \sim U(0, 1), \quad
        M_{tj} = [P_j > u_j]\,[g_{tj} > 0] + [P_j < u_j]\,[g_{tj} < 0],

    .. math::  d_j = \sum_t \big(k_t + (1 - k_t) M_{tj}\big)\, g_{tj}.

    :math:`P_j` is the positive sign purity; with probability :math:`P_j` only the positive
    components of element :math:`j` pass, otherwise only the negative ones. ``leak``
    :math:`k_t \in [0, 1]` (one value or one per task; default 0, the paper's and TorchJD's
    default) lets task :math:`t`'s gradient through unmasked with weight :math:`k_t`. The
    paper's monotone :math:`f(P)` is the identity here, as in its experiments.

    **Feature level** (:func:`fastmtl.backward` with ``features=z``, :func:`fastmtl.fork`,
    or :meth:`feature_direction`): as in the paper, for a batch-separated representation
    ``z`` ``[B, ...]`` the purity and the signs come from the sign-corrected batch sum
    :math:`\tilde g_{tj} = \sum_b \operatorname{sign}(z_{bj})\, g_{t,bj}`, and the mask of
    element :math:`j` multiplies the per-sample gradients :math:`g_{t,bj}` of every sample
    (``feature_reduction`` does not apply). At the parameter level and in
    :func:`fastmtl.combine` the rows are used as they are (TorchJD's ``GradDrop``).

    Randomness: the uniforms are Philox4x32-10 numbers of a key drawn from ``generator`` (two
    int64 draws, on the generator's device, or the gradients' device without one), so the op
    is a pure function of its inputs and the same key gives the same direction on CPU and CUDA.

    GradDrop is not a Gramian method: the direction is no combination :math:`w^\top J`, so
    ``weights`` is None in the results and :meth:`weights` raises. Degenerate input: an element
    that is 0 for every task has :math:`P_j = 1/2` and :math:`d_j = 0`; identical rows keep
    every component (:math:`P_j \in \{0, 1\}`), so :math:`d = \sum_t g_t`; exactly opposite
    rows give :math:`P_j = 1/2` and keep one sign at random. With ``check_finite=True`` a
    NaN/Inf gradient raises ``ValueError`` (checked on the direction, one host sync, after
    ``out`` was written).
    """

    requires_gram = False
    is_random = True
    is_gramian = False

    def __init__(self, leak: float | Sequence[float] = 0.0) -> None:
        super().__init__()
        values = [leak] if isinstance(leak, (int, float)) else list(leak)
        if not values:
            raise ValueError("leak must be a number or a non-empty sequence of numbers")
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise TypeError(f"leak must hold numbers, got {type(v).__name__}")
            if not (0.0 <= v <= 1.0) or math.isnan(v):
                raise ValueError(f"leak values must be in [0, 1], got {v!r}")
        self.leak = float(leak) if isinstance(leak, (int, float)) else tuple(map(float, values))

    def _hparams(self):
        return {"leak": self.leak}

    def _leak_vector(self, T: int, device: torch.device) -> Tensor:
        if isinstance(self.leak, float):
            return torch.full((T,), self.leak, dtype=torch.float64, device=device)
        if len(self.leak) != T:
            raise ValueError(f"leak has {len(self.leak)} values, but there are T = {T} tasks")
        return torch.tensor(self.leak, dtype=torch.float64, device=device)

    @staticmethod
    def draw_seed(device: torch.device, generator: torch.Generator | None = None) -> Tensor:
        """The Philox key of one step: int64 ``[2]`` on ``device``, drawn from ``generator``."""
        gen_device = generator.device if generator is not None else device
        seed = torch.randint(0, 2**32, (2,), generator=generator, device=gen_device,
                             dtype=torch.int64)
        return seed.to(device)

    def weights(self, G: Tensor, *, generator=None, losses=None, check: bool = True) -> Tensor:
        raise TypeError(
            "GradDrop is element-wise: its direction is not a combination w^T J of the task "
            "gradients, so it has no task weights; call it on the gradients"
        )

    def _solve(self, G, T, device, generator, losses):
        return self.weights(G, check=False), {}

    def direction(
        self, J: Tensor, seed: Tensor, *, purity: Tensor | None = None, stream: int = 0,
        out: Tensor | None = None, accumulate: bool = False,
    ) -> Tensor:
        """The fused op on ``J`` ``[T, N]`` (see :func:`fastmtl.ops.graddrop`)."""
        leak = self._leak_vector(J.shape[0], J.device)
        return ops.graddrop(J, leak, seed, purity=purity, stream=stream, out=out,
                            accumulate=accumulate)

    def feature_direction(
        self, feature_grads: Tensor, features: Tensor, seed: Tensor, *, stream: int = 0,
    ) -> Tensor:
        r"""The paper's batch-separated rule for feature gradients ``[T, B, ...]`` of the
        representation ``features`` ``[B, ...]``: purity and signs from
        :math:`\sum_b \operatorname{sign}(z_b) g_{t,b}`, masks applied to every sample.
        Returns ``[B, ...]``; a 1-D representation is treated element-wise."""
        T = feature_grads.shape[0]
        if tuple(feature_grads.shape[1:]) != tuple(features.shape):
            raise ValueError(
                f"feature_grads must be [T, *features.shape] = [{T}, "
                f"{', '.join(map(str, features.shape))}], got {tuple(feature_grads.shape)}"
            )
        J = feature_grads.reshape(T, -1)
        purity = None
        if features.dim() >= 2:
            B = features.shape[0]
            signs = features.detach().sign().reshape(1, B, -1).to(J.dtype)
            purity = (J.view(T, B, -1) * signs).sum(1)
        return self.direction(J, seed, purity=purity, stream=stream).view(features.shape)

    def combine(
        self, grads: Tensor | Sequence[Tensor], *, out: Tensor | None = None,
        generator: torch.Generator | None = None, losses: Tensor | Sequence[float] | None = None,
        check_finite: bool = True,
    ) -> CombineResult:
        J, task_shape = as_matrix(grads)
        out_flat = _check_out(out, J) if out is not None else None
        self._check_losses(losses, J.shape[0], J.device)
        seed = self.draw_seed(J.device, generator)
        d = self.direction(J, seed, out=out_flat)
        if check_finite:
            check_finite_direction(d)
        direction = out if out is not None else d.view(task_shape)
        return CombineResult(direction=direction, weights=None, gram=None,
                             extras={"seed": seed})


def check_finite_direction(direction: Tensor) -> None:
    """NaN/Inf in any task gradient reaches GradDrop's direction (c_t > 0 or 0 * Inf)."""
    if not _skip_data_checks() and not bool(all_finite(direction)):
        raise ValueError("grads contain NaN or Inf; every combiner needs finite gradients")
