r"""Aligned-MTL: Senushkin et al., *Independent Component Alignment for Multi-Task Learning*,
CVPR 2023."""

from __future__ import annotations

import torch

from .. import ops
from .base import Combiner, register

__all__ = ["AlignedMTL"]

_SCALE_MODES = {"min": 0, "median": 1, "rmse": 2}


@register("alignedmtl")
class AlignedMTL(Combiner):
    r"""Align the principal components of the gradient system (condition number 1).

    With :math:`G = V \operatorname{diag}(\lambda) V^\top`, eigenvalues below
    :math:`\lambda_{\max} T \epsilon_{rank}` are dropped, and

    .. math::  B = \sqrt{\sigma}\, V \operatorname{diag}(\lambda^{-1/2}) V^\top, \qquad
               w = B \mathbf{1}, \qquad d = J^\top w = \sum_t (B J)_t,

    where :math:`\sigma` is the smallest kept eigenvalue (``scale_mode="min"``, the paper's
    default), their lower median (``"median"``, as ``torch.median``) or mean (``"rmse"``).

    ``rank_eps`` defaults to float32's machine epsilon, 1.19e-7, as in the official code
    (SamsungLabs/MTL), which takes ``torch.finfo()`` of the float32 training dtype; pass
    ``rank_eps=2.22e-16`` for float64's (what torchjd does for float64 input). torchjd's
    ``AlignedMTL`` uses the mean as preference vector, i.e. returns this direction / T.

    Degenerate input: all-zero gradients keep no eigenvalue and give a zero direction.
    ``extras["rank"]`` is the number of eigenvalues kept.
    """

    def __init__(self, scale_mode: str = "min", rank_eps: float = 1.1920928955078125e-07) -> None:
        super().__init__()
        if scale_mode not in _SCALE_MODES:
            raise ValueError(
                f"scale_mode must be one of {sorted(_SCALE_MODES)}, got {scale_mode!r}"
            )
        if not isinstance(rank_eps, (int, float)) or not rank_eps >= 0:
            raise ValueError(f"rank_eps must be a non-negative number, got {rank_eps!r}")
        self.scale_mode = scale_mode
        self.rank_eps = float(rank_eps)

    def _hparams(self):
        return {"scale_mode": self.scale_mode, "rank_eps": self.rank_eps}

    def _solve(self, G, T, device, generator, losses):
        w, rank = ops.aligned_mtl_weights(
            G.to(torch.float64), _SCALE_MODES[self.scale_mode], self.rank_eps
        )
        return w, {"rank": rank}

    def _fused_solve(self, T, device, generator):
        args = (_SCALE_MODES[self.scale_mode], float(self.rank_eps))
        return "aligned_mtl_weights", args, 1.0
