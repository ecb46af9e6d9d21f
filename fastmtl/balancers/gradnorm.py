r"""GradNorm (Chen et al., *GradNorm: Gradient Normalization for Adaptive Loss Balancing in
Deep Multitask Networks*, ICML 2018)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from .base import Balancer, check_n_tasks, check_positive, register

__all__ = ["GradNorm"]


def _param_list(layer: nn.Module | Tensor | Iterable[Tensor], name: str) -> list[Tensor]:
    if isinstance(layer, nn.Module):
        params = [p for p in layer.parameters() if p.requires_grad]
    elif isinstance(layer, Tensor):
        params = [layer]
    else:
        params = list(layer)
    if not params:
        raise ValueError(f"{name} holds no parameter that requires grad")
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise TypeError(f"{name}[{i}] must be a Tensor, got {type(p).__name__}")
        if not p.requires_grad:
            raise ValueError(f"{name}[{i}] does not require grad")
    return params


@register("gradnorm")
class GradNorm(Balancer):
    r"""GradNorm: learned loss weights that equalise the tasks' gradient norms at the last
    shared layer :math:`W`, pulled towards their relative training rates.

    With weights :math:`w_t` (initially 1), :math:`G_t = \lVert \nabla_W\, w_t L_t \rVert_2 =
    w_t n_t`, :math:`\bar G = \frac1T\sum_t G_t`, :math:`\tilde L_t = L_t / L_t(0)` (the
    losses of the first update as :math:`L(0)`) and :math:`r_t = \tilde L_t / \frac1T \sum_j
    \tilde L_j`, the gradient-norm loss is

    .. math::  L_{grad} = \sum_t \big| G_t - \bar G\, r_t^{\alpha} \big|_1 ,

    with the target :math:`\bar G r_t^\alpha` held constant (as in the paper). Its gradient is
    :math:`\partial L_{grad} / \partial w_t = \operatorname{sign}(G_t - \bar G r_t^\alpha)\, n_t`,
    and the inner update (plain gradient descent with step ``lr``) is followed by the paper's
    renormalisation to :math:`\sum_t w_t = T`:

    .. math::  w \leftarrow w - \mathrm{lr}\, \nabla_w L_{grad}, \quad
               w \leftarrow \max(w, \epsilon), \quad w \leftarrow T\, w / \textstyle\sum_t w_t.

    The paper updates :math:`w` with the network's optimiser; here the update is GradNorm's
    own (``lr``, default ``0.025``; a hyper-parameter to tune). The clamp at ``eps`` (default
    ``1e-8``) keeps the weights positive, which the paper assumes but does not enforce.
    ``alpha`` defaults to 1.5. Degenerate input: :math:`L(0)` and the mean of :math:`\tilde L`
    are clamped at ``eps``, so zero losses give finite weights.

    The network loss of a step is :math:`\sum_t w_t L_t` with the weights *before* that step's
    inner update (Algorithm 1 of the paper).

    Supported ways of giving it the shared layer:

    - ``GradNorm(n_tasks, shared_layer=model.encoder[-1])`` (a module, a tensor or a list of
      tensors): then :meth:`loss` and :func:`fastmtl.backward` with ``balancer=`` run the
      inner update themselves, from the losses' graph (which they keep);
    - or call :meth:`update` ``(losses, shared=...)`` yourself before the graph is freed.

    Example::

        gn = fastmtl.balancers.GradNorm(n_tasks=3, alpha=1.5, shared_layer=model.encoder[-1])
        opt.zero_grad()
        loss = gn.loss(losses)       # sum w_t L_t, then the inner update of w
        loss.backward(); opt.step()
    """

    def __init__(
        self, n_tasks: int | None = None, *, alpha: float = 1.5, lr: float = 0.025,
        shared_layer: nn.Module | Tensor | Iterable[Tensor] | None = None, eps: float = 1e-8,
    ) -> None:
        super().__init__()
        self.alpha = check_positive(alpha, "alpha", allow_zero=True)
        self.lr = check_positive(lr, "lr")
        self.eps = check_positive(eps, "eps")
        # a plain list: the layer's parameters belong to the model, not to this state_dict
        self._shared = None if shared_layer is None else _param_list(shared_layer, "shared_layer")
        self.n_tasks = check_n_tasks(n_tasks, optional=True)
        if self.n_tasks is not None:
            self._init_state(self.n_tasks)

    _size_key = "task_weights"

    def _init_state(self, n_tasks: int) -> None:
        self.register_buffer("task_weights", torch.ones(n_tasks, dtype=torch.float64))
        self.register_buffer("initial_losses", torch.zeros(n_tasks, dtype=torch.float64))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @property
    def has_shared_layer(self) -> bool:
        return self._shared is not None

    def reset(self) -> None:
        if self.n_tasks is None:
            return
        self.task_weights.fill_(1.0)
        self.initial_losses.zero_()
        self.initialized.fill_(False)

    def _weights(self, losses: Tensor) -> Tensor:
        return self.task_weights.to(losses.device, copy=True)  # not aliased by the update

    def _observe(self, losses: Tensor) -> None:
        if self._shared is not None:
            self._update(losses, self._shared)

    def update(
        self, losses: Sequence[Tensor] | Tensor,
        shared: nn.Module | Tensor | Iterable[Tensor] | None = None,
    ) -> Tensor:
        """One inner update of the weights from this step's losses (with their graph) and the
        last shared layer (``shared``, else the one given at construction). Returns the new
        weights."""
        vec = self._vector(losses)
        params = _param_list(shared, "shared") if shared is not None else self._shared
        if params is None:
            raise ValueError("GradNorm.update needs the last shared layer: pass shared= or "
                             "construct GradNorm(shared_layer=...)")
        self._update(vec, params)
        return self.task_weights.clone()

    def _update(self, losses: Tensor, params: list[Tensor]) -> None:
        if not losses.requires_grad:
            raise ValueError("GradNorm needs the losses' graph (losses do not require grad)")
        norms = []
        for t in range(self.n_tasks):
            grads = torch.autograd.grad(losses[t], params, retain_graph=True, allow_unused=True)
            sq = sum((g.detach().to(torch.float64) ** 2).sum() for g in grads if g is not None)
            norms.append(torch.as_tensor(sq, dtype=torch.float64, device=losses.device).sqrt())
        n = torch.stack(norms).to(self.task_weights.device)
        L = losses.detach().to(self.task_weights)
        if not bool(self.initialized):
            self.initial_losses.copy_(L)
            self.initialized.fill_(True)
        w = self.task_weights
        G = w * n
        ratio = L / self.initial_losses.clamp_min(self.eps)
        r = ratio / ratio.mean().clamp_min(self.eps)
        target = G.mean() * r.pow(self.alpha)
        grad_w = torch.sign(G - target) * n
        new = (w - self.lr * grad_w).clamp_min(self.eps)
        self.task_weights.copy_(self.n_tasks * new / new.sum())
