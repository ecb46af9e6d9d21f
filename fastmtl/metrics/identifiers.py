r"""The classic identifiers of task interference: gradient conflict and magnitude similarity.

Both are functions of the Gram matrix :math:`G = J J^\top` alone (cosines and norms), so
they accept either the stacked per-task gradients ``J`` ``[T, P]`` (``[T, *shape]`` or a
sequence of ``T`` tensors) or ``G`` ``[T, T]`` itself.

**J or G.** A non-square or higher-rank tensor (or a sequence) is ``J``. A square ``[T, T]``
tensor is ambiguous (``T`` tasks with ``P = T`` parameters, or a Gram matrix), so it is never
guessed: pass ``gram=True`` for ``G`` or ``gram=False`` for ``J``, otherwise ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .. import ops
from ..combiners.base import _check_dtype, _skip_data_checks, all_finite, as_matrix

__all__ = ["gradient_conflict", "magnitude_similarity", "GradientConflict",
           "MagnitudeSimilarity", "gram_of"]


def gram_of(J_or_G: Tensor | Sequence[Tensor], gram: bool | None, check_finite: bool) -> Tensor:
    """float64 ``G`` ``[T, T]`` on the input's device from ``J`` or ``G`` (see the module)."""
    if gram is not None and not isinstance(gram, bool):
        raise TypeError(f"gram must be True, False or None, got {gram!r}")
    is_tensor = isinstance(J_or_G, Tensor)
    if is_tensor and J_or_G.dim() == 2 and J_or_G.shape[0] == J_or_G.shape[1] and gram is None:
        raise ValueError(
            f"J_or_G is square {tuple(J_or_G.shape)}: pass gram=True if it is the Gram "
            "matrix G = J J^T, or gram=False if it is J (T tasks of T elements)"
        )
    if gram:
        if not is_tensor:
            raise TypeError(f"with gram=True J_or_G must be a Tensor, got {type(J_or_G).__name__}")
        G = J_or_G.detach()
        if G.dim() != 2 or G.shape[0] != G.shape[1]:
            raise ValueError(f"with gram=True J_or_G must be [T, T], got {tuple(G.shape)}")
        _check_dtype(G, "J_or_G")
        G = G.to(torch.float64)
    else:
        J, _ = as_matrix(J_or_G, "J_or_G")
        G = ops.gram(J).to(torch.float64)
    if G.shape[0] < 2:
        raise ValueError(f"J_or_G must hold T >= 2 tasks, got T = {G.shape[0]}")
    if check_finite and not _skip_data_checks() and not bool(all_finite(G)):
        # NaN/Inf in J reach G's diagonal.
        raise ValueError("J_or_G contains NaN or Inf (or its Gram matrix overflows)")
    return G


def _pairs(M: Tensor) -> Tensor:
    """The ``T (T - 1) / 2`` entries above the diagonal."""
    T = M.shape[0]
    i, j = torch.triu_indices(T, T, offset=1, device=M.device)
    return M[i, j]


def _norms(G: Tensor) -> Tensor:
    return G.diagonal().clamp_min(0).sqrt()


@dataclass
class GradientConflict:
    """Pairwise cosines of the task gradients (float64 tensors on the input's device).

    Attributes:
        cosine: ``[T, T]`` matrix :math:`\\cos(g_i, g_j) = G_{ij} / \\sqrt{G_{ii} G_{jj}}`;
            0 in the row and column of a zero gradient (diagonal included).
        conflict_fraction: share of the ``T (T-1)/2`` pairs with cosine < 0 (0-d).
        mean_cosine: mean cosine over the pairs (0-d).
        min_cosine: smallest cosine over the pairs (0-d).
    """

    cosine: Tensor
    conflict_fraction: Tensor
    mean_cosine: Tensor
    min_cosine: Tensor


@dataclass
class MagnitudeSimilarity:
    """Pairwise gradient magnitude similarity (float64 tensors on the input's device).

    Attributes:
        similarity: ``[T, T]``, :math:`2\\|g_i\\|\\|g_j\\| / (\\|g_i\\|^2 + \\|g_j\\|^2)` in
            [0, 1] (1: equal norms; 1 for two zero gradients, 0 for one zero gradient).
        mean: mean similarity over the ``T (T-1)/2`` pairs (0-d).
        norm_ratio: :math:`\\max_t \\|g_t\\| / \\min_t \\|g_t\\|` (0-d; ``inf`` when some but
            not all gradients are zero, 1 when all are).
        norms: ``[T]`` gradient norms.
    """

    similarity: Tensor
    mean: Tensor
    norm_ratio: Tensor
    norms: Tensor


def gradient_conflict(
    J_or_G: Tensor | Sequence[Tensor], *, gram: bool | None = None, check_finite: bool = True
) -> GradientConflict:
    r"""Gradient conflict: the pairwise cosines of the task gradients and their summaries.

    .. math::  c_{ij} = \frac{\langle g_i, g_j\rangle}{\|g_i\|\|g_j\|}
               = \frac{G_{ij}}{\sqrt{G_{ii} G_{jj}}}, \qquad
               \text{conflict\_fraction} = \frac{|\{i < j : c_{ij} < 0\}|}{T(T-1)/2}.

    Args:
        J_or_G: per-task gradients ``J`` (``[T, P]``, ``[T, *shape]`` or a sequence of ``T``
            tensors), or the Gram matrix ``G`` ``[T, T]`` with ``gram=True``.
        gram: True: the input is ``G``; False: it is ``J``; None (default): ``J`` unless the
            input is a square 2-D tensor, which raises ``ValueError`` (ambiguous).
        check_finite: raise ``ValueError`` on NaN/Inf (one ``T x T`` read to the host).

    A zero gradient has cosine 0 with every gradient. Needs ``T >= 2``.
    """
    G = gram_of(J_or_G, gram, check_finite)
    n = _norms(G)
    nn = n[:, None] * n[None, :]
    cos = torch.where(nn > 0, G / torch.where(nn > 0, nn, torch.ones_like(nn)),
                      torch.zeros_like(G)).clamp(-1.0, 1.0)
    p = _pairs(cos)
    return GradientConflict(
        cosine=cos,
        conflict_fraction=(p < 0).to(torch.float64).mean(),
        mean_cosine=p.mean(),
        min_cosine=p.min(),
    )


def magnitude_similarity(
    J_or_G: Tensor | Sequence[Tensor], *, gram: bool | None = None, check_finite: bool = True
) -> MagnitudeSimilarity:
    r"""Gradient magnitude similarity (Yu et al. 2020, PCGrad) of every pair of tasks.

    .. math::  \Phi(g_i, g_j) = \frac{2\|g_i\|\|g_j\|}{\|g_i\|^2 + \|g_j\|^2},

    with the norms :math:`\|g_t\| = \sqrt{G_{tt}}`. Arguments as :func:`gradient_conflict`.
    """
    G = gram_of(J_or_G, gram, check_finite)
    n = _norms(G)
    sq = G.diagonal().clamp_min(0)
    den = sq[:, None] + sq[None, :]
    sim = torch.where(den > 0, 2 * n[:, None] * n[None, :] / torch.where(
        den > 0, den, torch.ones_like(den)), torch.ones_like(den))
    n_max, n_min = n.max(), n.min()
    ratio = torch.where(n_min > 0, n_max / torch.where(n_min > 0, n_min, torch.ones_like(n_min)),
                        torch.where(n_max > 0, torch.full_like(n_max, float("inf")),
                                    torch.ones_like(n_max)))
    return MagnitudeSimilarity(similarity=sim, mean=_pairs(sim).mean(), norm_ratio=ratio, norms=n)
