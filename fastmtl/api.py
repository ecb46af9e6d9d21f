"""``fastmtl.combine``: the one-call entry point of the combiners."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .combiners.base import Combiner, CombineResult, get_combiner_class

__all__ = ["combine", "make_combiner"]


def make_combiner(method: str | Combiner, **options: Any) -> Combiner:
    """A combiner instance from a registered name (case-insensitive) and its options."""
    if isinstance(method, Combiner):
        if options:
            raise TypeError(
                f"options {sorted(options)} can only be given with a method name; "
                f"configure the {type(method).__name__} instance instead"
            )
        return method
    return get_combiner_class(method)(**options)


def combine(
    grads: Tensor | Sequence[Tensor],
    method: str | Combiner,
    *,
    out: Tensor | None = None,
    return_weights: bool = False,
    generator: torch.Generator | None = None,
    losses: Tensor | Sequence[float] | None = None,
    check_finite: bool = True,
    **options: Any,
) -> Tensor | CombineResult:
    r"""Combines per-task gradients into one update direction.

    Args:
        grads: ``[T, P]`` or ``[T, *shape]`` tensor (row ``t`` is task ``t``'s gradient), or
            a sequence of ``T`` equal-shape tensors (stacked once). float16, bfloat16,
            float32 or float64, on any device.
        method: a registered name (``fastmtl.available_methods()``, case-insensitive) or a
            :class:`fastmtl.Combiner` instance.
        out: optional contiguous buffer of one task's size and the gradients' dtype; the
            direction is written into it and nothing of size ``P`` is allocated.
        return_weights: return a :class:`CombineResult` (``direction``, ``weights``,
            ``gram``, ``extras``) instead of the direction alone.
        generator: ``torch.Generator`` for random methods (PCGrad's visiting orders).
        losses: per-task losses ``[T]``, for methods that use them (MGDA loss normalisations).
        check_finite: raise ``ValueError`` on NaN/Inf gradients (one T x T host sync;
            skipped automatically under ``torch.compile`` and CUDA-graph capture).
        **options: the method's hyper-parameters when ``method`` is a name
            (e.g. ``c=0.4`` for CAGrad).

    Returns:
        The direction, shaped like one task's gradient (``out`` itself when given), or a
        :class:`CombineResult` with ``return_weights=True``.

    Nothing is modified in place except ``out``.
    """
    combiner = make_combiner(method, **options)
    result = combiner.combine(
        grads, out=out, generator=generator, losses=losses, check_finite=check_finite
    )
    return result if return_weights else result.direction
