r"""The combiner interface and the input handling every combiner shares.

A combiner turns per-task gradients :math:`J \in \mathbb{R}^{T \times P}` (row :math:`t` is
:math:`g_t`) into one update direction. Gramian combiners decide from :math:`G = J J^\top`
alone and return a combination of the rows:

.. math::  G = J J^\top, \qquad w = \mathrm{weights}(G), \qquad d = w^\top J,

so a combine step reads ``J`` twice (``gram`` and ``combine_rows``) whatever the method.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from .. import ops

__all__ = [
    "Combiner",
    "CombineResult",
    "register",
    "get_combiner_class",
    "available_methods",
    "as_matrix",
]

_REGISTRY: dict[str, type[Combiner]] = {}


def register(*names: str):
    """Class decorator: makes a combiner available to :func:`fastmtl.combine` by name."""

    def deco(cls: type[Combiner]) -> type[Combiner]:
        for name in names:
            _REGISTRY[name.lower()] = cls
        cls.name = names[0]
        return cls

    return deco


def available_methods() -> list[str]:
    """Every name accepted by :func:`fastmtl.combine`, sorted."""
    return sorted(_REGISTRY)


def get_combiner_class(name: str) -> type[Combiner]:
    if not isinstance(name, str):
        raise TypeError(f"method must be a str or a Combiner, got {type(name).__name__}")
    try:
        return _REGISTRY[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown method {name!r}; available methods: {', '.join(available_methods())}"
        ) from None


@dataclass
class CombineResult:
    """What a combine step produced.

    Attributes:
        direction: the combined update, shaped like one task's gradient.
        weights: float64 ``[T]`` with ``direction = weights @ J``; None for element-wise
            methods (GradDrop), whose direction is no combination of the rows.
        gram: the Gram matrix ``J J^T`` (float32, or float64 for float64 input), or None
            for methods that do not form it when ``check_finite=False``.
        extras: method-specific diagnostics (convergence flags, dual solutions, ...).
    """

    direction: Tensor
    weights: Tensor | None
    gram: Tensor | None
    extras: dict[str, Any] = field(default_factory=dict)


def as_matrix(grads: Tensor | Sequence[Tensor], name: str = "grads") -> tuple[Tensor, torch.Size]:
    """Views per-task gradients as a ``[T, P]`` matrix; returns it and one task's shape.

    A ``[T, *shape]`` tensor is viewed without a copy when its trailing dimensions are
    contiguous; a sequence of T equal-shape tensors is stacked (one copy).
    """
    if isinstance(grads, Tensor):
        J = grads
    elif isinstance(grads, Sequence) and not isinstance(grads, (str, bytes)):
        if len(grads) == 0:
            raise ValueError(f"{name} must hold at least one task gradient (T >= 1), got T = 0")
        if not all(isinstance(g, Tensor) for g in grads):
            raise TypeError(f"{name} must be a Tensor or a sequence of Tensors")
        first = grads[0]
        for t, g in enumerate(grads):
            if g.shape != first.shape:
                raise ValueError(
                    f"{name}[{t}] has shape {tuple(g.shape)}, expected {tuple(first.shape)} "
                    f"like {name}[0]"
                )
            if g.dtype != first.dtype:
                raise TypeError(f"{name}[{t}] has dtype {g.dtype}, expected {first.dtype}")
            if g.device != first.device:
                raise ValueError(f"{name}[{t}] is on {g.device}, expected {first.device}")
        _check_dtype(first, name)
        J = torch.stack([g.detach() for g in grads])
    else:
        raise TypeError(
            f"{name} must be a Tensor [T, ...] or a sequence of T tensors, "
            f"got {type(grads).__name__}"
        )
    if J.dim() < 2:
        raise ValueError(
            f"{name} must have at least 2 dimensions [T, ...] (one row per task), "
            f"got shape {tuple(J.shape)}"
        )
    if J.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one task gradient (T >= 1), got T = 0")
    _check_dtype(J, name)
    task_shape = J.shape[1:]
    if task_shape.numel() == 0:
        raise ValueError(
            f"{name} must have at least one element per task, got shape {tuple(J.shape)}"
        )
    J = J.detach().reshape(J.shape[0], -1)
    if J.shape[1] > 1 and J.stride(1) != 1:
        J = J.contiguous()
    return J, task_shape


def _check_dtype(t: Tensor, name: str) -> None:
    if t.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(
            f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}"
        )


def _check_out(out: Tensor, J: Tensor) -> Tensor:
    if not isinstance(out, Tensor):
        raise TypeError(f"out must be a Tensor, got {type(out).__name__}")
    if out.dtype != J.dtype:
        raise TypeError(f"out must have the gradients' dtype {J.dtype}, got {out.dtype}")
    if out.device != J.device:
        raise ValueError(f"out must be on the gradients' device {J.device}, got {out.device}")
    if out.numel() != J.shape[1]:
        raise ValueError(
            f"out must have {J.shape[1]} elements (one task's gradient), got shape "
            f"{tuple(out.shape)}"
        )
    if not out.is_contiguous():
        raise ValueError("out must be contiguous")
    return out.view(-1)


def _skip_data_checks() -> bool:
    """Data-dependent checks need a host sync: skip them while tracing or capturing."""
    if torch.compiler.is_compiling():
        return True
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def all_finite(x: Tensor) -> Tensor:
    """0-d bool tensor: whether ``x`` holds no NaN/Inf. One read of ``x`` with no temporary
    (its min and max, which carry any NaN): ``torch.isfinite(x).all()`` writes a bool
    tensor as large as ``x`` and costs over 30 times as much on a large CPU tensor."""
    if x.numel() == 0:
        return torch.ones((), dtype=torch.bool, device=x.device)
    lo, hi = torch.aminmax(x)
    return torch.isfinite(lo) & torch.isfinite(hi)


def check_finite_gram(G: Tensor) -> None:
    """Raises ValueError if the gradients held NaN/Inf (they reach G's diagonal)."""
    if not _skip_data_checks() and not bool(all_finite(G)):
        raise ValueError(
            "grads contain NaN or Inf (or are so large that their Gram matrix overflows "
            "float32); every combiner needs finite gradients"
        )


def check_gram_argument(G: object) -> Tensor:
    """Checks the ``G`` a user passes to :meth:`Combiner.weights` (combine forms its own):
    a floating-point ``[..., T, T]`` tensor, finite and symmetric to ``1e-4 max_i |G_ii|``
    (a float32 ``J @ J.T`` may differ from its transpose by rounding). The two data checks
    share one host sync, and are skipped while compiling or capturing a CUDA graph.

    Returns ``G``, or ``(G + G^T) / 2`` (a new tensor) where ``G`` is symmetric only to
    rounding: the solvers read one triangle or the other depending on the path they take,
    and would otherwise see two different matrices."""
    if not isinstance(G, Tensor):
        raise TypeError(f"G must be a torch.Tensor (a Gram matrix J J^T), got {type(G).__name__}")
    if not G.is_floating_point():
        raise TypeError(f"G must be a floating-point tensor, got {G.dtype}")
    if G.ndim < 2 or G.shape[-1] != G.shape[-2] or G.shape[-1] < 1:
        raise ValueError(f"G must be [..., T, T] with T >= 1, got {list(G.shape)}")
    if _skip_data_checks():
        return G
    # a NaN or infinite entry makes max |G - G^T| NaN or infinite, so one reduction checks
    # both; the two numbers come back in one transfer
    asymmetry = (G - G.mT).abs_().amax()
    scale = G.diagonal(dim1=-2, dim2=-1).abs().amax()
    asymmetry, scale = torch.stack((asymmetry, scale)).tolist()
    if not (math.isfinite(asymmetry) and math.isfinite(scale)):
        raise ValueError("G contains NaN or Inf")
    if asymmetry > 1e-4 * scale:
        raise ValueError(
            f"G must be symmetric (a Gram matrix J J^T): max |G - G^T| = {asymmetry:.3g} "
            f"against max |G_ii| = {scale:.3g}"
        )
    return G if asymmetry == 0.0 else (G + G.mT) / 2


class Combiner(torch.nn.Module):
    r"""Base class of the gradient combiners.

    Subclasses implement :meth:`_weights` (or :meth:`_solve`, with diagnostics), mapping the
    Gram matrix :math:`G` (``[T, T]``) to float64 weights :math:`w` with direction
    :math:`d = w^\top J`; :meth:`weights` checks a user's ``G``, then calls it. Calling a
    combiner on per-task gradients returns the direction; :meth:`combine` also returns the
    weights and Gram matrix. Combiners are ``nn.Module`` s so that stateful ones save their
    state with ``state_dict()``; :meth:`reset` clears it.
    """

    name: ClassVar[str] = ""
    #: False for methods whose weights do not depend on G (Mean, Sum).
    requires_gram: ClassVar[bool] = True
    #: False for element-wise methods (GradDrop): no weights, the direction is no w^T J.
    is_gramian: ClassVar[bool] = True
    #: True for methods that need the per-task losses (MGDA's loss normalisations).
    needs_losses: bool = False
    #: True for methods that draw random numbers (they accept a torch.Generator).
    is_random: bool = False

    def weights(
        self, G: Tensor, *, generator: torch.Generator | None = None,
        losses: Tensor | None = None, check: bool = True,
    ) -> Tensor:
        """Task weights (float64 ``[T]``) from the Gram matrix ``G`` ``[T, T]``.

        Raises ``TypeError`` if ``G`` is not a floating-point tensor and ``ValueError`` if
        it is not square, holds NaN/Inf or is not symmetric; a ``G`` symmetric only to
        rounding is symmetrised first (see :func:`check_gram_argument`). ``check=False``
        skips all that and its host sync, for a ``G`` known to be good and exactly
        symmetric (one from :func:`fastmtl.ops.gram`).
        """
        if check:
            G = check_gram_argument(G)
        return self._weights(G, generator=generator, losses=losses)

    def _weights(
        self, G: Tensor, *, generator: torch.Generator | None, losses: Tensor | None,
    ) -> Tensor:
        """:meth:`weights` without its checks."""
        if type(self).weights is not Combiner.weights:  # a subclass overriding the public hook
            return self.weights(G, generator=generator, losses=losses)
        if type(self)._solve is Combiner._solve:
            raise NotImplementedError(f"{type(self).__name__} defines neither _weights nor _solve")
        return self._solve(G, G.shape[-1], G.device, generator, losses)[0]

    def _solve(
        self, G: Tensor | None, T: int, device: torch.device,
        generator: torch.Generator | None, losses: Tensor | None,
    ) -> tuple[Tensor, dict[str, Any]]:
        """Weights and diagnostics. A subclass overrides this one (methods with diagnostics)
        or :meth:`_weights` (the rest); each default is defined by the other."""
        assert G is not None
        return self._weights(G, generator=generator, losses=losses), {}

    def _fused_solve(
        self, T: int, device: torch.device, generator: torch.Generator | None
    ) -> ops.FusedSolve | None:
        """This step's solve as data for :func:`fastmtl.ops.gram_combine` (the one-op
        backward of :func:`fastmtl.fork`): the weight op, its arguments after ``G`` and a
        scale, drawing from ``generator`` exactly as :meth:`_solve` does, for the weights of
        :meth:`_solve` up to rounding (a scale of 1/T instead of a division by T). None (the
        default) where the method keeps state, needs the losses or post-processes in Python.
        On this path the NaN/Inf check reads ``G`` after the solve, not before it."""
        return None

    def forward(
        self, grads: Tensor | Sequence[Tensor], *, out: Tensor | None = None,
        generator: torch.Generator | None = None, losses: Tensor | Sequence[float] | None = None,
    ) -> Tensor:
        """The combined direction, shaped like one task's gradient."""
        return self.combine(grads, out=out, generator=generator, losses=losses).direction

    def combine(
        self, grads: Tensor | Sequence[Tensor], *, out: Tensor | None = None,
        generator: torch.Generator | None = None, losses: Tensor | Sequence[float] | None = None,
        check_finite: bool = True,
    ) -> CombineResult:
        """Combines per-task gradients; see :func:`fastmtl.combine` for the arguments."""
        J, task_shape = as_matrix(grads)
        T = J.shape[0]
        out_flat = _check_out(out, J) if out is not None else None
        loss_vec = self._check_losses(losses, T, J.device)
        G = ops.gram(J) if (self.requires_gram or check_finite) else None
        if check_finite and G is not None:
            check_finite_gram(G)
        w, extras = self._solve(G, T, J.device, generator, loss_vec)
        d = ops.combine_rows(w, J, out=out_flat)
        direction = out if out is not None else d.view(task_shape)
        return CombineResult(direction=direction, weights=w, gram=G, extras=extras)

    def _check_losses(self, losses, T: int, device: torch.device) -> Tensor | None:
        if losses is None:
            if self.needs_losses:
                raise ValueError(f"{type(self).__name__} with these options needs `losses`")
            return None
        if isinstance(losses, Tensor):
            loss_vec = losses.detach().to(torch.float64)
        else:
            loss_vec = torch.stack([
                torch.as_tensor(v).detach().to("cpu", torch.float64).reshape(()) for v in losses
            ])
        if loss_vec.dim() != 1 or loss_vec.shape[0] != T:
            raise ValueError(f"losses must have shape [T] = [{T}], got {tuple(loss_vec.shape)}")
        return loss_vec.to(device)

    def reset(self) -> None:
        """Clears any state carried between steps (no-op for stateless combiners)."""

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self._hparams().items())

    def _hparams(self) -> dict[str, Any]:
        return {}
