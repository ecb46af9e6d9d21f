r"""Nash-MTL: Navon et al., *Multi-Task Learning as a Bargaining Game*, ICML 2022."""

from __future__ import annotations

import torch

from .. import ops
from .base import Combiner, register

__all__ = ["NashMTL"]


@register("nashmtl")
class NashMTL(Combiner):
    r"""The Nash bargaining solution of the tasks: :math:`d = \sum_t \alpha_t g_t` with

    .. math::  G \alpha = 1 / \alpha \quad (\text{element-wise}), \qquad \alpha > 0,

    i.e. every task's utility :math:`g_t \cdot d` equals :math:`1/\alpha_t`; then
    :math:`\|d\|^2 = \alpha^\top G \alpha = T`. The official code (and LibMTL, torchjd)
    approaches this point by a sequence of convex programs solved with cvxpy/ECOS, which
    stops early on about one case in six of fastmtl's golden set. fastmtl solves it exactly:
    :math:`\alpha` minimises the convex :math:`\tfrac12 a^\top G a - \sum_t \log a_t`, found
    by damped Newton in float64 on the device (:func:`fastmtl.ops.nash_weights`).

    Args:
        max_norm: as the official ``max_norm``: when > 0 the direction is clipped as
            ``torch.nn.utils.clip_grad_norm_`` does, :math:`d \leftarrow d \min(1,
            \text{max\_norm} / (\|d\| + 10^{-6}))` (folded into the returned weights;
            ``extras["alpha"]`` keeps the unclipped :math:`\alpha`). Since
            :math:`\|d\| = \sqrt T`, the default 1.0 always clips for :math:`T \ge 2`.
        update_weights_every: recompute :math:`\alpha` on steps 0, k, 2k, ... and reuse the
            last one in between, as the official code does (this is the state).
        optim_niter: cap on Newton iterations. The official value (20) counts convex
            sub-problems, a different unit; Newton from fastmtl's start needs 5-15 iterations
            on random cases and up to ~40 when :math:`\alpha` spans decades, hence 100.
        tol: Newton stops when :math:`\max_t |\alpha_t (G\alpha)_t - 1|` is below ``tol``
            beyond the rounding floor of forming :math:`G\alpha`.

    Diagnostics in ``extras``: ``alpha``, ``nash_residual`` (:math:`\max_t |\alpha_t
    (G\alpha)_t - 1|`, how well the Nash condition holds), ``converged`` and ``updated``.

    Degenerate input: the point does not exist when some non-zero :math:`v \ge 0` has
    :math:`J^\top v = 0` (a zero gradient, opposite gradients, 0 inside the cone of the
    gradients, T > P typically). fastmtl then solves the problem with :math:`G +
    10^{-8} \bar G I` (:math:`\bar G` the mean diagonal): large but finite :math:`\alpha` on
    the degenerate tasks, whose contribution to :math:`d` cancels; ``converged`` is False and
    ``nash_residual`` is about 1. All-zero gradients give :math:`\alpha = 1`, :math:`d = 0`.
    """

    def __init__(self, max_norm: float = 1.0, update_weights_every: int = 1,
                 optim_niter: int = 100, tol: float = 1e-12) -> None:
        super().__init__()
        if not isinstance(max_norm, (int, float)) or not max_norm >= 0:
            raise ValueError(f"max_norm must be a non-negative number, got {max_norm!r}")
        for name, value in (("update_weights_every", update_weights_every),
                            ("optim_niter", optim_niter)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(tol, (int, float)) or not tol > 0:
            raise ValueError(f"tol must be a positive number, got {tol!r}")
        self.max_norm = float(max_norm)
        self.update_weights_every = update_weights_every
        self.optim_niter = optim_niter
        self.tol = float(tol)
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        self.register_buffer("prev_alpha", torch.zeros(0, dtype=torch.float64))

    def _hparams(self):
        return {"max_norm": self.max_norm, "update_weights_every": self.update_weights_every,
                "optim_niter": self.optim_niter}

    def reset(self) -> None:
        self.step = torch.zeros((), dtype=torch.int64, device=self.step.device)
        self.prev_alpha = torch.zeros(0, dtype=torch.float64, device=self.prev_alpha.device)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "prev_alpha"
        if key in state_dict:  # the saved alpha fixes T: take its shape
            self.prev_alpha = torch.empty_like(state_dict[key], dtype=torch.float64)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _solve(self, G, T, device, generator, losses):
        G = G.to(torch.float64)
        # The step counter lives on the host: the schedule is known without reading G.
        step = int(self.step)
        reuse = step % self.update_weights_every != 0 and self.prev_alpha.numel() == T
        if reuse:
            alpha = self.prev_alpha.to(device)
            residual = ops.nash_weights(G, max_iter=1, tol=self.tol)[1]  # diagnostics only
            extras = {"converged": None, "updated": False}
        else:
            alpha, residual, converged = ops.nash_weights(G, max_iter=self.optim_niter,
                                                          tol=self.tol)
            extras = {"converged": converged, "updated": True}
            self.prev_alpha = alpha
        self.step = self.step + 1
        extras |= {"alpha": alpha, "nash_residual": residual}
        if self.max_norm > 0:
            norm = (alpha @ G @ alpha).clamp_min(0).sqrt()
            w = alpha * (self.max_norm / (norm + 1e-6)).clamp(max=1.0)
        else:
            w = alpha
        return w, extras
