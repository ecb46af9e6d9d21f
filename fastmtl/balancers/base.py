r"""The loss-balancer interface and the input handling every balancer shares.

A loss balancer turns the ``T`` task losses :math:`L_1, \dots, L_T` of one step into task
weights :math:`w \in \mathbb{R}^T` (detached) and the scalar loss to backpropagate, which is
:math:`\sum_t w_t L_t` unless the method defines another combination (GLS, UW, FAMO; their
gradients w.r.t. the network are still :math:`\sum_t w_t \nabla L_t`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["Balancer", "register", "available_balancers", "make_balancer", "balancer_class",
           "as_loss_vector"]

_REGISTRY: dict[str, type[Balancer]] = {}


def register(name: str):
    """Class decorator: makes a balancer available to :func:`make_balancer` by name."""

    def deco(cls: type[Balancer]) -> type[Balancer]:
        _REGISTRY[name.lower()] = cls
        cls.name = name.lower()
        return cls

    return deco


def available_balancers() -> list[str]:
    """Every name accepted by :func:`make_balancer`, sorted."""
    return sorted(_REGISTRY)


def make_balancer(balancer: str | Balancer, **options: Any) -> Balancer:
    """A balancer instance from a registered name (case-insensitive) and its options, or the
    instance itself (then no options may be given)."""
    if isinstance(balancer, Balancer):
        if options:
            raise TypeError(
                f"options {sorted(options)} can only be given with a balancer name; "
                f"configure the {type(balancer).__name__} instance instead"
            )
        return balancer
    return balancer_class(balancer)(**options)


def balancer_class(name: str) -> type[Balancer]:
    """The balancer class registered under ``name`` (case-insensitive)."""
    if not isinstance(name, str):
        raise TypeError(f"balancer must be a str or a Balancer, got {type(name).__name__}")
    try:
        return _REGISTRY[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown balancer {name!r}; available: {', '.join(available_balancers())}"
        ) from None


def as_loss_vector(losses: Sequence[Tensor] | Tensor, n_tasks: int | None = None) -> Tensor:
    """The losses as a 1-D floating tensor ``[T]`` (keeping their graph); checks shape, dtype,
    devices and finiteness (``ValueError``/``TypeError`` naming ``losses``)."""
    if isinstance(losses, Tensor):
        if losses.dim() != 1:
            raise ValueError(
                f"losses must be a sequence of scalar tensors or a 1-D tensor, got shape "
                f"{tuple(losses.shape)}"
            )
        vec = losses
    else:
        if not isinstance(losses, Sequence) or isinstance(losses, str):
            raise TypeError(f"losses must be a sequence of tensors, got {type(losses).__name__}")
        items = []
        for t, loss in enumerate(losses):
            if not isinstance(loss, Tensor):
                raise TypeError(f"losses[{t}] must be a Tensor, got {type(loss).__name__}")
            if loss.numel() != 1:
                raise ValueError(f"losses[{t}] must be a scalar, got shape {tuple(loss.shape)}")
            if loss.device != losses[0].device:
                raise ValueError(
                    f"losses[{t}] is on {loss.device}, but losses[0] is on {losses[0].device}"
                )
            items.append(loss.reshape(()))
        if not items:
            raise ValueError("losses is empty: expected T >= 1 task losses")
        vec = torch.stack(items)
    if vec.numel() == 0:
        raise ValueError("losses is empty: expected T >= 1 task losses")
    if not vec.is_floating_point():
        raise TypeError(f"losses must be floating point, got {vec.dtype}")
    if n_tasks is not None and vec.numel() != n_tasks:
        raise ValueError(
            f"losses has {vec.numel()} entries, but this balancer has n_tasks={n_tasks}"
        )
    if not bool(torch.isfinite(vec.detach()).all()):
        raise ValueError("losses contains NaN or Inf")
    return vec


def check_n_tasks(n_tasks: Any, optional: bool = False) -> int | None:
    if optional and n_tasks is None:
        return None
    if isinstance(n_tasks, bool) or not isinstance(n_tasks, int) or n_tasks < 1:
        raise ValueError(f"n_tasks must be a positive int, got {n_tasks!r}")
    return n_tasks


def check_positive(value: Any, name: str, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not (value >= 0 if allow_zero else value > 0) or value != value or value == float("inf"):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound} and finite, got {value}")
    return value


class Balancer(nn.Module):
    r"""Base class of the loss balancers (``torch.nn.Module``, so ``state_dict()``,
    ``load_state_dict()`` and ``.to(device)`` work as usual).

    - :meth:`weights` ``(losses) -> Tensor[T]``: the detached task weights of this step, on
      the losses' device and in their dtype; it never changes the state.
    - :meth:`loss` ``(losses) -> scalar``: the loss to backpropagate (default
      :math:`\sum_t w_t L_t`); it records what the method keeps of this step (DWA's epoch
      average, FAMO's losses before the step, GradNorm's inner update, ...).
    - :meth:`reset`: back to the state of a fresh instance.

    ``n_tasks`` may be omitted (except for UW, whose parameters must exist before the
    optimiser is built): the state is then sized by the first call, or by
    ``load_state_dict``.

    :func:`fastmtl.backward` with ``balancer=`` calls :meth:`weights`, then the same recording
    as :meth:`loss` (``_observe``), multiplies the losses by the weights and, for balancers with
    learned parameters (UW), adds the gradient of their own loss to those parameters.
    """

    name: str = ""
    n_tasks: int | None = None
    #: keeps state across steps (a fresh instance per step, e.g. from a name, would restart it)
    stateful: bool = True
    #: a ``[T]`` entry of the state dict, to size a lazily built state when loading into it
    _size_key: str = ""

    def _init_state(self, n_tasks: int) -> None:
        """Builds the ``T``-sized state (stateful balancers)."""

    def _vector(self, losses: Sequence[Tensor] | Tensor) -> Tensor:
        """Checked losses; the first call of a balancer built without ``n_tasks`` sizes its
        state from them."""
        vec = as_loss_vector(losses, self.n_tasks)
        if self.n_tasks is None and self.stateful:
            self._init_state(vec.numel())
            self.n_tasks = vec.numel()
        return vec

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + self._size_key
        if self.n_tasks is None and self._size_key and key in state_dict:
            self._init_state(int(state_dict[key].shape[-1]))
            self.n_tasks = int(state_dict[key].shape[-1])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def weights(self, losses: Sequence[Tensor] | Tensor, **kwargs: Any) -> Tensor:
        vec = self._vector(losses)
        return self._weights(vec.detach(), **kwargs).to(device=vec.device, dtype=vec.dtype)

    def loss(self, losses: Sequence[Tensor] | Tensor, **kwargs: Any) -> Tensor:
        vec = self._vector(losses)
        w = self._weights(vec.detach(), **kwargs).to(device=vec.device, dtype=vec.dtype)
        self._observe(vec)
        return (w * vec).sum()

    def reset(self) -> None:
        """Forget all state (a no-op for stateless balancers)."""

    # ---- hooks of the subclasses -------------------------------------------------------
    def _weights(self, losses: Tensor, **kwargs: Any) -> Tensor:
        raise NotImplementedError

    def _observe(self, losses: Tensor) -> None:
        """Record this step's losses (``losses`` may carry a graph); default: nothing."""

    def _own_loss(self, losses: Tensor) -> Tensor | None:
        """The loss whose gradient the balancer's learned parameters receive, from the
        detached losses (UW); None when the balancer has none."""
        return None

    def forward(self, losses: Sequence[Tensor] | Tensor, **kwargs: Any) -> Tensor:
        return self.loss(losses, **kwargs)
