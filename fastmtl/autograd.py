r"""Training integration: one call per step that fills ``.grad`` with a combined direction.

Two levels of per-task gradients:

- **parameter level** (exact): :math:`g_t = \partial L_t / \partial \theta_{shared}`, combined
  into the shared parameters' ``.grad``;
- **feature level** (the fast surrogate of MGDA-UB and arXiv 2402.03557):
  :math:`g_t = \partial L_t / \partial z` for the shared representation :math:`z`; the
  combined feature gradient is then sent once through the encoder.

Either way every head parameter receives its own task's gradient, and parameters reached by
no loss are untouched. Gradients accumulate into ``.grad`` like ``Tensor.backward``.

Mixed precision: with ``torch.amp.GradScaler``, pass the *scaled* losses
(``[scaler.scale(l) for l in losses]``) and call ``scaler.step(optimizer)`` as usual. Every
combiner here is positively homogeneous (``d(aJ) = a d(J)``, checked by the property tests)
and the loss normalisations are scale-free, so combining scaled gradients gives the scaled
combination and the scaler's unscaling stays exact. Under ``torch.autocast`` float16 or
bfloat16 gradients are combined with float32 accumulation.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from . import ops
from .api import make_combiner
from .combiners.base import Combiner, check_finite_gram

__all__ = ["backward", "fork", "BackwardResult"]


@dataclass
class BackwardResult:
    """What one :func:`backward` (or :func:`fork`) step did, for logging.

    Attributes:
        level: ``"parameter"``, ``"feature"`` or ``"single"`` (T = 1: a plain backward).
        weights: float64 ``[T]`` task weights of the combined direction (None for T = 1).
        gram: the ``T x T`` Gram matrix of the per-task gradients (None for T = 1).
        extras: the combiner's diagnostics (convergence flags, ...).
        path: how the per-task gradients were taken (``"batched"`` or ``"loop"``).
    """

    level: str
    weights: Tensor | None = None
    gram: Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    path: str | None = None


# ---- input checks ---------------------------------------------------------------------


def _check_losses(losses: Sequence[Tensor]) -> list[Tensor]:
    if isinstance(losses, Tensor):
        if losses.dim() != 1:
            raise ValueError(
                f"losses must be a sequence of scalar losses or a 1-D tensor, got shape "
                f"{tuple(losses.shape)}"
            )
        losses = list(losses.unbind(0))
    if not isinstance(losses, Sequence) or len(losses) == 0:
        raise ValueError("losses must be a non-empty sequence of scalar tensors")
    out = []
    for t, loss in enumerate(losses):
        if not isinstance(loss, Tensor):
            raise TypeError(f"losses[{t}] must be a Tensor, got {type(loss).__name__}")
        if loss.numel() != 1:
            raise ValueError(f"losses[{t}] must be a scalar, got shape {tuple(loss.shape)}")
        if not loss.requires_grad:
            raise ValueError(f"losses[{t}] does not require grad: it depends on no parameter")
        if loss.device != losses[0].device:
            raise ValueError(
                f"losses[{t}] is on {loss.device}, but losses[0] is on {losses[0].device}"
            )
        out.append(loss.reshape(()))
    return out


def _check_params(params: Iterable[Tensor], name: str) -> list[Tensor]:
    if isinstance(params, Tensor):
        params = [params]
    params = list(params)
    seen: set[int] = set()
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise TypeError(f"{name}[{i}] must be a Tensor, got {type(p).__name__}")
        if not p.requires_grad:
            raise ValueError(f"{name}[{i}] does not require grad")
        if id(p) in seen:
            raise ValueError(f"{name}[{i}] appears twice: every parameter must be listed once")
        seen.add(id(p))
    if not params:
        raise ValueError(f"{name} is empty")
    return params


def _leaves_reached(loss: Tensor, stop: set[Any] = frozenset()) -> list[Tensor]:
    """Leaf tensors (parameters) whose gradient ``loss`` reaches, not crossing ``stop`` nodes."""
    found: dict[int, Tensor] = {}
    seen: set[Any] = set()
    stack = [loss.grad_fn] if loss.grad_fn is not None else []
    while stack:
        node = stack.pop()
        if node is None or node in seen or node in stop:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)
        if variable is not None:  # AccumulateGrad: a leaf that will receive .grad
            found.setdefault(id(variable), variable)
            continue
        stack.extend(next_node for next_node, _ in node.next_functions)
    return list(found.values())


# ---- the shared combine step -----------------------------------------------------------


def _solve(
    combiner: Combiner, blocks: list[Tensor], losses: list[Tensor] | None,
    generator: torch.Generator | None, check_finite: bool,
) -> tuple[Tensor, Tensor, dict]:
    """G = sum of the blocks' Gram matrices (G is additive over columns), then the weights.
    ``losses`` may be None (fork sees no losses); combiners that need them then raise.
    Element-wise combiners (GradDrop) get no weights (None) but the Philox key of the step
    in ``extras["seed"]``; their G serves the finiteness check and the monitor."""
    T = blocks[0].shape[0]
    G = sum(ops.gram(b).to(torch.float64) for b in blocks)
    if check_finite:
        check_finite_gram(G)
    if not combiner.is_gramian:
        return None, G, {"seed": combiner.draw_seed(G.device, generator)}
    loss_vec = None
    if combiner.needs_losses and losses is not None:
        loss_vec = torch.stack([loss.detach().to(torch.float64) for loss in losses])
    w, extras = combiner._solve(G, T, G.device, generator, loss_vec)
    return w, G, extras


def _accumulate(param: Tensor, grad: Tensor) -> None:
    if param.grad is None:
        param.grad = grad.detach().reshape(param.shape).clone()
    else:
        param.grad.add_(grad.reshape(param.shape))


def _combine_into_grad(comb: Combiner, w: Tensor | None, extras: dict, stream: int,
                       block: Tensor, param: Tensor) -> None:
    """d = w^T block (or the element-wise direction, on Philox stream ``stream``) added to
    param.grad, in place when the buffer allows it."""
    g = param.grad
    into = g is not None and g.is_contiguous() and g.dtype == block.dtype
    if w is None:
        seed = extras["seed"]
        if into:
            comb.direction(block, seed, stream=stream, out=g.view(-1), accumulate=True)
        else:
            _accumulate(param, comb.direction(block, seed, stream=stream))
    elif into:
        ops.combine_rows(w, block, out=g.view(-1), accumulate=True)
    else:
        _accumulate(param, ops.combine_rows(w, block))


_FALLBACK_WARNED = False


def _per_task_grads(
    losses: list[Tensor], inputs: list[Tensor], batched: bool | None
) -> tuple[list[Tensor], str]:
    """``[T, *shape]`` gradients of every loss w.r.t. every input (zeros where unused)."""
    global _FALLBACK_WARNED
    T = len(losses)
    if batched is not False:
        try:
            grads = torch.autograd.grad(
                torch.stack(losses), inputs,
                grad_outputs=torch.eye(T, device=losses[0].device, dtype=losses[0].dtype),
                is_grads_batched=True, retain_graph=True, allow_unused=True,
            )
            out = [g if g is not None else x.new_zeros((T, *x.shape))
                   for g, x in zip(grads, inputs, strict=True)]
            return out, "batched"
        except RuntimeError as exc:
            if batched:
                raise
            if not _FALLBACK_WARNED:
                warnings.warn(
                    "fastmtl.backward: the batched backward (is_grads_batched) is not supported "
                    f"by this graph ({str(exc).splitlines()[0]}); using a loop of T backward "
                    "passes instead",
                    RuntimeWarning,
                    stacklevel=3,
                )
                _FALLBACK_WARNED = True
    rows: list[list[Tensor]] = [[] for _ in inputs]
    for loss in losses:
        grads = torch.autograd.grad(loss, inputs, retain_graph=True, allow_unused=True)
        for i, (g, x) in enumerate(zip(grads, inputs, strict=True)):
            rows[i].append(g if g is not None else torch.zeros_like(x))
    return [torch.stack(r) for r in rows], "loop"


# ---- public API ------------------------------------------------------------------------


def backward(
    losses: Sequence[Tensor] | Tensor,
    shared: Iterable[Tensor] | None = None,
    features: Tensor | Sequence[Tensor] | None = None,
    combiner: str | Combiner = "mean",
    *,
    generator: torch.Generator | None = None,
    feature_reduction: str = "flatten",
    batched: bool | None = False,
    check_finite: bool = True,
    balancer: str | Any | None = None,
    monitor: Any = None,
    **options: Any,
) -> BackwardResult:
    r"""Per-task gradients, combined, written into ``.grad``: one call per training step.

    Args:
        losses: the ``T`` scalar task losses (a sequence or a 1-D tensor).
        shared: the shared parameters (parameter level, exact). With ``shared=None`` and
            ``features=None`` they are detected as the parameters reached by more than one
            loss.
        features: the shared representation ``z`` (a tensor, or a sequence of tensors for
            multi-scale features) for the feature-level surrogate: per-task gradients are
            taken w.r.t. ``z``, combined, and sent once through the encoder.
        combiner: a registered method name or a :class:`fastmtl.Combiner`.
        generator: for random combiners (PCGrad's visiting orders).
        feature_reduction: ``"flatten"`` (default): the feature gradients are flattened over
            batch and feature dimensions, ``[T, B*D]``, as MGDA-UB and Aligned-MTL-UB do;
            ``"batch_sum"``: the weights are decided on gradients summed over the batch
            (dimension 0), ``[T, D]``, the convention of some libraries, then applied to the
            full per-sample gradients.
        batched: parameter level only: the per-task gradients in one batched backward
            (``is_grads_batched=True``; True), a loop of ``T`` backward passes with a
            retained graph (False, the default: not slower on the CPU in
            ``fastmtl bench step``), or the batched one with a fallback to the loop that is
            reported once (None). The feature level always runs each head's backward once.
        check_finite: raise ``ValueError`` (before any ``.grad`` is touched) if a per-task
            gradient holds NaN or Inf.
        balancer: a loss balancer of :mod:`fastmtl.balancers`: an instance, or the name of a
            stateless one (``"rlw"``, ``"gls"``; stateful ones by name raise). Its
            detached weights multiply the losses before the per-task gradients are taken, so
            at either level the heads get :math:`w_t \nabla L_t` and the combiner sees the
            balanced per-task gradients; the step is recorded as by ``balancer.loss`` (DWA's
            epoch average, FAMO's pre-step losses, GradNorm's inner update, which needs
            ``GradNorm(shared_layer=...)``), and UW's log-variances receive the gradient of
            its own loss. The weights are in ``result.extras["loss_weights"]``.
        monitor: a :class:`fastmtl.Monitor` that records this step's interference metrics
            (FD at the feature level, cosines and norms from ``G``, weights, losses) when due;
            T = 1 steps are not recorded.
        **options: the combiner's hyper-parameters when ``combiner`` is a name.

    Returns:
        A :class:`BackwardResult` with the weights and Gram matrix, for logging.

    With ``T = 1`` this is an ordinary ``losses[0].backward()``. Bad input (a non-scalar loss,
    a loss that reaches no shared parameter or feature, features that do not require grad,
    duplicate parameters, losses on different devices) raises ``ValueError`` before any
    ``.grad`` is modified.
    """
    losses = _check_losses(losses)
    if balancer is not None:
        return _balanced_backward(balancer, losses, shared, features, combiner, generator,
                                  feature_reduction, batched, check_finite, monitor, options)
    comb = make_combiner(combiner, **options)
    if feature_reduction not in ("flatten", "batch_sum"):
        raise ValueError(
            f"feature_reduction must be 'flatten' or 'batch_sum', got {feature_reduction!r}"
        )
    if features is not None and shared is not None:
        raise ValueError("give either `shared` (parameter level) or `features`, not both")
    if features is not None:
        zs = _check_features(features)
        if len(losses) == 1:
            losses[0].backward()
            return BackwardResult("single")
        return _feature_level(losses, zs, comb, generator, feature_reduction, check_finite,
                              monitor)
    if shared is None:
        reached = [_leaves_reached(loss) for loss in losses]
        counts: dict[int, int] = {}
        by_id: dict[int, Tensor] = {}
        for params in reached:
            for p in params:
                counts[id(p)] = counts.get(id(p), 0) + 1
                by_id[id(p)] = p
        shared_params = [by_id[i] for i, c in counts.items() if c > 1]
        if not shared_params and len(losses) > 1:
            raise ValueError("no parameter is reached by more than one loss: pass `shared=`")
    else:
        shared_params = _check_params(shared, "shared")
    if len(losses) == 1:
        losses[0].backward()
        return BackwardResult("single")
    return _parameter_level(losses, shared_params, comb, generator, batched, check_finite,
                            monitor)


def _balanced_backward(balancer, losses, shared, features, combiner, generator,
                       feature_reduction, batched, check_finite, monitor,
                       options) -> BackwardResult:
    """``backward`` of the losses multiplied by the balancer's (detached) weights."""
    from .balancers import Balancer, GradNorm
    from .balancers.base import balancer_class

    if isinstance(balancer, Balancer):
        bal = balancer
    else:
        cls = balancer_class(balancer)
        if cls.stateful:
            raise ValueError(f"balancer={balancer!r} keeps state across steps: create it once "
                             "(fastmtl.balancers.make_balancer or the class), pass the instance")
        bal = cls()
    if isinstance(bal, GradNorm) and not bal.has_shared_layer:
        raise ValueError("balancer: GradNorm needs the last shared layer for its update in "
                         "fastmtl.backward: construct GradNorm(n_tasks, shared_layer=...)")
    vec = torch.stack(losses)
    w = bal.weights(vec)
    bal._observe(vec)  # before the graph is freed: GradNorm's update reads it
    result = backward([w[t] * loss for t, loss in enumerate(losses)], shared, features,
                      combiner, generator=generator, feature_reduction=feature_reduction,
                      batched=batched, check_finite=check_finite, monitor=monitor, **options)
    own = bal._own_loss(vec.detach())
    if own is not None:  # UW: the gradient of its loss w.r.t. its log-variances
        params = [p for p in bal.parameters() if p.requires_grad]
        if params:
            torch.autograd.backward(own, inputs=params)
    result.extras["loss_weights"] = w.detach()
    return result


def _check_features(features) -> list[Tensor]:
    zs = [features] if isinstance(features, Tensor) else list(features)
    if not zs:
        raise ValueError("features is empty")
    for i, z in enumerate(zs):
        if not isinstance(z, Tensor):
            raise TypeError(f"features[{i}] must be a Tensor, got {type(z).__name__}")
        if not z.requires_grad:
            raise ValueError(
                f"features[{i}] does not require grad: pass the encoder's output, computed "
                "with autograd enabled"
            )
    return zs


def _parameter_level(losses, shared, comb, generator, batched, check_finite,
                     monitor=None) -> BackwardResult:
    shared_ids = {id(p) for p in shared}
    reached = [_leaves_reached(loss) for loss in losses]
    for t, params in enumerate(reached):
        if not any(id(p) in shared_ids for p in params):
            raise ValueError(f"losses[{t}] does not depend on any shared parameter")
    heads: dict[int, Tensor] = {}
    for params in reached:
        for p in params:
            if id(p) not in shared_ids:
                heads.setdefault(id(p), p)

    grads, path = _per_task_grads(losses, shared, batched)
    blocks = [g.reshape(len(losses), -1) for g in grads]
    w, G, extras = _solve(comb, blocks, losses, generator, check_finite)
    # Nothing was written so far: from here on, .grad is updated.
    if heads:
        torch.autograd.backward(losses, inputs=list(heads.values()))
    for i, (block, p) in enumerate(zip(blocks, shared, strict=True)):
        _combine_into_grad(comb, w, extras, i, block, p)
    if monitor is not None:
        monitor._observe(G=G, weights=w, losses=losses)
    return BackwardResult("parameter", w, G, extras, path)


def _feature_level(losses, zs, comb, generator, reduction, check_finite, monitor=None):
    T = len(losses)
    stop = {z.grad_fn if z.grad_fn is not None else z for z in zs}
    z_leaf_ids = {id(z) for z in zs if z.grad_fn is None}
    head_params = [
        [p for p in _leaves_reached(loss, stop) if id(p) not in z_leaf_ids] for loss in losses
    ]
    z_grads: list[list[Tensor]] = [[] for _ in zs]
    head_grads: list[tuple[Tensor, Tensor]] = []
    for t, loss in enumerate(losses):
        inputs = list(zs) + head_params[t]
        grads = torch.autograd.grad(loss, inputs, retain_graph=True, allow_unused=True)
        if all(g is None for g in grads[: len(zs)]):
            raise ValueError(f"losses[{t}] does not depend on the features")
        for i, z in enumerate(zs):
            z_grads[i].append(grads[i] if grads[i] is not None else torch.zeros_like(z))
        own = zip(head_params[t], grads[len(zs):], strict=True)
        head_grads += [(p, g) for p, g in own if g is not None]
    blocks = [torch.stack(g).reshape(T, -1) for g in z_grads]
    decide = blocks if reduction == "flatten" else [
        torch.stack(g).sum(1).reshape(T, -1) for g in z_grads
    ]
    w, G, extras = _solve(comb, decide, losses, generator, check_finite)
    for p, g in head_grads:
        _accumulate(p, g)
    if w is None:  # element-wise (GradDrop): the paper's batch-separated feature rule
        combined = [comb.feature_direction(b.view(T, *z.shape), z, extras["seed"], stream=i)
                    for i, (b, z) in enumerate(zip(blocks, zs, strict=True))]
    else:
        combined = [ops.combine_rows(w, b).view_as(z) for b, z in zip(blocks, zs, strict=True)]
    torch.autograd.backward(zs, grad_tensors=combined)
    if monitor is not None:
        monitor._observe(feature_blocks=[b.view(T, *z.shape) for b, z in zip(blocks, zs,
                         strict=True)], G=G, weights=w, losses=losses)
    return BackwardResult("feature", w, G, extras, "loop")


# ---- fork ------------------------------------------------------------------------------


class _ForkState:
    def __init__(self, combiner, generator, check_finite, on_combine):
        self.combiner = combiner
        self.generator = generator
        self.check_finite = check_finite
        self.on_combine = on_combine
        self.last: BackwardResult | None = None


def _fused_solve_is_current(comb: Combiner) -> bool:
    """Whether ``comb``'s ``_fused_solve`` describes its own solve: no class between its
    type and the one defining ``_fused_solve`` overrides the solve (a subclass of MGDA
    with its own ``weights`` must not inherit MGDA's fused path)."""
    for klass in type(comb).__mro__:
        if "_fused_solve" in vars(klass):
            return klass is not Combiner
        if any(name in vars(klass) for name in ("_solve", "_weights", "weights", "coefficients")):
            return False
    return False


def _fused_combine(state: _ForkState, J: Tensor) -> tuple[Tensor, Tensor, Tensor] | None:
    """Gram, solve and combine of a stateless Gramian method in one native op
    (:func:`fastmtl.ops.gram_combine`); None for the other methods, which take the
    step-by-step path. The finiteness check reads the returned G."""
    if not _fused_solve_is_current(state.combiner):
        return None
    spec = state.combiner._fused_solve(J.shape[0], J.device, state.generator)
    if spec is None:
        return None
    d, w, G = ops.gram_combine(J, spec)
    G = G.to(torch.float64)
    if state.check_finite:
        check_finite_gram(G)
    return d, w, G


class _Fork(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: Tensor, n_tasks: int, state: _ForkState):
        ctx.state = state
        if not state.combiner.is_gramian:  # GradDrop reads the signs of z
            ctx.save_for_backward(z)
        return tuple(z.view_as(z) for _ in range(n_tasks))

    @staticmethod
    def backward(ctx, *grads):
        state: _ForkState = ctx.state
        ref = next(g for g in grads if g is not None)
        rows = [g if g is not None else torch.zeros_like(ref) for g in grads]
        J = torch.stack(rows).reshape(len(rows), -1)
        fused = _fused_combine(state, J)
        if fused is not None:  # stateless Gramian methods: one native op
            d, w, G = fused
            d, extras = d.view_as(ref), {"fused": True}
        else:
            w, G, extras = _solve(state.combiner, [J], None, state.generator,
                                  state.check_finite)
            if w is None:
                (z,) = ctx.saved_tensors
                d = state.combiner.feature_direction(J.view(len(rows), *ref.shape), z,
                                                     extras["seed"])
            else:
                d = ops.combine_rows(w, J).view_as(ref)
        state.last = BackwardResult("feature", w, G, extras, "fork")
        if state.on_combine is not None:
            state.on_combine(J.view(len(rows), *ref.shape), state.last)
        return d, None, None


def fork(
    z: Tensor, n_tasks: int, combiner: str | Combiner = "mean", *,
    generator: torch.Generator | None = None, check_finite: bool = True, on_combine=None,
    monitor: Any = None, **options: Any,
) -> tuple[Tensor, ...]:
    r"""``n_tasks`` copies of the shared representation whose backward combines the tasks.

    Head ``t`` reads ``zs[t]``; one ordinary ``sum(losses).backward()`` then delivers all
    ``T`` feature gradients to this node at once, which combines them (Gram matrix, the
    combiner's solve, ``d = w^T J``) and sends the single combined gradient into the
    encoder: the feature-level surrogate with each head's backward run once.

    For the stateless Gramian methods (mean, sum, MGDA without normalisation, PCGrad,
    CAGrad, IMTL-G, Aligned-MTL, ConFIG, UPGrad, DualProj) the combine is one native op,
    :func:`fastmtl.ops.gram_combine`, which queues the Gram matrix, the solve and
    :math:`w^\top J` on the device with no host synchronisation (``result.extras["fused"]``
    is True; the solvers' convergence flags are not reported on this path). Stateful or
    element-wise methods (GradVac, Nash-MTL, RGW, GradDrop) take the step-by-step path. With
    ``check_finite=True`` (the default) the NaN/Inf test on ``G`` is the one host sync; pass
    ``check_finite=False`` for a sync-free backward.

    ``on_combine(feature_grads, result)``, if given, receives the ``[T, *z.shape]`` feature
    gradients and the :class:`BackwardResult` of every combine (for monitoring, at no extra
    backward pass). Tasks whose loss does not use ``zs[t]`` count as zero gradients.
    ``monitor``, a :class:`fastmtl.Monitor`, records FD, the cosines and norms from ``G``
    and the weights at every due combine (fork sees no losses).
    """
    if not isinstance(z, Tensor):
        raise TypeError(f"z must be a Tensor, got {type(z).__name__}")
    if not z.requires_grad:
        raise ValueError("z does not require grad: fork the encoder's output")
    if not isinstance(n_tasks, int) or n_tasks < 1:
        raise ValueError(f"n_tasks must be a positive int, got {n_tasks!r}")
    if monitor is not None:
        on_combine = _with_monitor(monitor, on_combine)
    state = _ForkState(make_combiner(combiner, **options), generator, check_finite, on_combine)
    return _Fork.apply(z, n_tasks, state)


def _with_monitor(monitor, on_combine):
    def hook(feature_grads: Tensor, result: BackwardResult) -> None:
        monitor._observe(feature_blocks=[feature_grads], G=result.gram, weights=result.weights)
        if on_combine is not None:
            on_combine(feature_grads, result)
    return hook
