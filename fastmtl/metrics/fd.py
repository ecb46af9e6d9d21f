r"""Feature Disentanglement (FD) from per-task gradients w.r.t. the shared representation."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .. import ops
from ..combiners.base import _check_dtype, _skip_data_checks, all_finite
from ..reference import FD_REDUCE_CODES

__all__ = ["feature_disentanglement", "fd_saliency"]


def _stack_tasks(grads: Tensor | Sequence[Tensor], name: str) -> Tensor:
    """``[T, ...]`` tensor from a tensor or a sequence of T equal-shape tensors."""
    if isinstance(grads, Tensor):
        g = grads.detach()
    elif isinstance(grads, Sequence) and not isinstance(grads, (str, bytes)):
        if not all(isinstance(x, Tensor) for x in grads):
            raise TypeError(f"{name} must be a Tensor [T, ...] or a sequence of T Tensors")
        if len(grads) == 0:
            raise ValueError(f"{name} must hold T >= 2 task gradients, got T = 0")
        first = grads[0]
        for t, x in enumerate(grads):
            if x.shape != first.shape:
                raise ValueError(
                    f"{name}[{t}] has shape {tuple(x.shape)}, expected {tuple(first.shape)}"
                )
            if x.dtype != first.dtype:
                raise TypeError(f"{name}[{t}] has dtype {x.dtype}, expected {first.dtype}")
            if x.device != first.device:
                raise ValueError(f"{name}[{t}] is on {x.device}, expected {first.device}")
        g = torch.stack([x.detach() for x in grads])
    else:
        raise TypeError(
            f"{name} must be a Tensor [T, ...] or a sequence of T Tensors, "
            f"got {type(grads).__name__}"
        )
    _check_dtype(g, name)
    if g.dim() < 2:
        raise ValueError(
            f"{name} must be [T, B, ...] (one gradient per task), got shape {tuple(g.shape)}"
        )
    if g.shape[0] < 2:
        raise ValueError(f"{name} must hold T >= 2 task gradients, got T = {g.shape[0]}")
    if g[0].numel() == 0:
        raise ValueError(f"{name} has no elements per task, shape {tuple(g.shape)}")
    return g


def fd_saliency(g: Tensor, channel_dim: int | None) -> Tensor:
    """``[T, N]`` view of the gradients the FD op reads: the gradients themselves (the op takes
    ``|g|``), or ``|g|`` averaged over ``channel_dim`` of ``g`` (``[T, B, ...]``)."""
    T = g.shape[0]
    if channel_dim is not None:
        if not isinstance(channel_dim, int) or isinstance(channel_dim, bool):
            raise TypeError(f"channel_dim must be an int or None, got {channel_dim!r}")
        d = channel_dim + g.dim() if channel_dim < 0 else channel_dim
        if not 1 <= d < g.dim():
            raise ValueError(
                f"channel_dim must index a dimension of feature_grads {tuple(g.shape)} other "
                f"than the task dimension 0, got {channel_dim}"
            )
        acc = torch.float64 if g.dtype == torch.float64 else torch.float32
        g = g.abs().mean(dim=d, dtype=acc)
    flat = g.reshape(T, -1)
    if flat.shape[1] > 1 and flat.stride(1) != 1:
        flat = flat.contiguous()
    return flat


def feature_disentanglement(
    feature_grads: Tensor | Sequence[Tensor],
    *,
    temperature: float = 0.0,
    channel_dim: int | None = None,
    reduce: str = "mean",
    check_finite: bool = True,
) -> Tensor:
    r"""Feature Disentanglement (FD) of per-task gradients w.r.t. a shared representation.

    ``feature_grads`` is ``[T, B, ...]``: row ``t`` is :math:`\partial L_t / \partial z` for
    the shared representation ``z`` (or a sequence of ``T`` such tensors). For every element
    ``j`` of ``z`` the task saliencies :math:`a_{tj} = |g_{tj}|` are turned into a
    distribution over tasks,

    .. math::  p_{tj} = \frac{a_{tj}}{\sum_k a_{kj}}
               \quad\text{or, for } \tau > 0,\quad
               p_{tj} = \frac{e^{a_{tj}/\tau}}{\sum_k e^{a_{kj}/\tau}},

    with entropy :math:`H_j = -\sum_t p_{tj} \log p_{tj}` (:math:`0 \log 0 = 0`), and

    .. math::  \mathrm{FD} = 1 - \frac{1}{|\mathcal{J}|}\sum_{j \in \mathcal{J}}
               \frac{H_j}{\log T},

    over the set :math:`\mathcal{J}` of elements with nonzero total saliency (an element no
    task uses is excluded). FD = 1: every element serves exactly one task (fully
    disentangled); FD = 0: every element serves all tasks equally.

    arXiv 2402.03557 describes the construction (saliency from the gradients w.r.t. the
    shared representation, a distribution over tasks per element); the exact normalisation
    here (absolute-value ratio or softmax, entropy divided by :math:`\log T`, exclusion of
    unused elements, the mean over elements) is **ours**, not taken from the paper's code.

    Args:
        feature_grads: ``[T, B, ...]`` floating-point gradients, ``T >= 2``.
        temperature: 0 (default) for the ratio :math:`a / \sum a`; :math:`\tau > 0` for a
            softmax of :math:`a/\tau` (note: this depends on the gradients' scale).
        channel_dim: a dimension of ``feature_grads`` (e.g. ``2`` for ``[T, B, C, H, W]``;
            negative counts from the end) over which the saliencies :math:`|g|` are averaged
            before the distributions are formed.
        reduce: ``"mean"`` (the FD above, a 0-d tensor), ``"weighted"`` (elements weighted
            by their total saliency :math:`s_j = \sum_t a_{tj}`:
            :math:`1 - \sum_j s_j H_j / (\log T \sum_j s_j)`), or ``"none"`` (the map
            :math:`1 - H_j/\log T` of shape ``feature_grads.shape[1:]``, minus
            ``channel_dim``; 0 at excluded elements).
        check_finite: raise ``ValueError`` on NaN/Inf gradients (reads one scalar, or for
            ``reduce="none"`` one flag, back to the host); with False non-finite input gives
            NaN and nothing synchronises.

    Returns:
        float32 (float64 for float64 input) tensor on the input's device. With no element
        used by any task, the scalar is 0.

    One fused pass over the gradients (native CPU/CUDA op ``fastmtl::feature_disentanglement``).
    """
    if reduce not in FD_REDUCE_CODES:
        raise ValueError(f"reduce must be 'mean', 'weighted' or 'none', got {reduce!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a float, got {type(temperature).__name__}")
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be finite and >= 0, got {temperature}")
    g = _stack_tasks(feature_grads, "feature_grads")
    flat = fd_saliency(g, channel_dim)
    out = ops.feature_disentanglement(flat, float(temperature), FD_REDUCE_CODES[reduce])
    if check_finite and not _skip_data_checks() and not bool(all_finite(out)):
        raise ValueError("feature_grads contain NaN or Inf")
    if reduce == "none":
        shape = list(g.shape[1:])
        if channel_dim is not None:
            d = channel_dim + g.dim() if channel_dim < 0 else channel_dim
            del shape[d - 1]
        out = out.view(shape)
    return out
