r"""UPGrad and DualProj: Quinton & Rey, *Jacobian Descent for Multi-Objective Optimization*,
2024 (the TorchJD library)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .. import ops
from .base import Combiner, register

__all__ = ["UPGrad", "DualProj"]


class _DualConeCombiner(Combiner):
    """Shared hyper-parameters and solve of the two projections onto the dual cone."""

    def __init__(self, pref_vector: Sequence[float] | Tensor | None = None,
                 norm_eps: float = 1e-4, reg_eps: float = 1e-4) -> None:
        super().__init__()
        for name, value in (("norm_eps", norm_eps), ("reg_eps", reg_eps)):
            if not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name} must be a non-negative number, got {value!r}")
        self.norm_eps = float(norm_eps)
        self.reg_eps = float(reg_eps)
        if pref_vector is None:
            self.pref_vector = None
        else:
            p = torch.as_tensor(pref_vector, dtype=torch.float64).detach().cpu()
            if p.dim() != 1 or p.numel() == 0 or not bool(torch.isfinite(p).all()):
                raise ValueError("pref_vector must be a non-empty 1-D sequence of finite numbers")
            self.pref_vector = p

    def _hparams(self):
        return {"pref_vector": None if self.pref_vector is None else self.pref_vector.tolist(),
                "norm_eps": self.norm_eps, "reg_eps": self.reg_eps}

    def _preference(self, T: int, device: torch.device) -> Tensor:
        if self.pref_vector is None:
            return torch.full((T,), 1.0 / T, dtype=torch.float64, device=device)
        if self.pref_vector.numel() != T:
            raise ValueError(
                f"pref_vector has {self.pref_vector.numel()} entries but there are {T} tasks"
            )
        return self.pref_vector.to(device)

    def _project(self, G: Tensor, U: Tensor) -> tuple[Tensor, Tensor]:
        return ops.dual_cone_weights(G.to(torch.float64), U, norm_eps=self.norm_eps,
                                     reg_eps=self.reg_eps)

    def _preferences(self, T: int, device: torch.device) -> Tensor:
        """The rows u_k of the projections: UPGrad diag(p), DualProj p."""
        raise NotImplementedError

    def _fused_solve(self, T, device, generator):
        # the K x T projections are summed over rows, as _solve does (DualProj: K = 1)
        args = (self._preferences(T, device), self.norm_eps, self.reg_eps, 4 * T + 20)
        return "dual_cone_weights", args, 1.0


@register("upgrad")
class UPGrad(_DualConeCombiner):
    r"""Unconflicting projection of gradients: project each gradient onto the dual cone of
    all of them, then sum the projections (weighted by the preference vector :math:`p`).

    In weight space, with :math:`A = G / \operatorname{tr} G + \epsilon_{reg} I`,

    .. math::  v_i = \arg\min_{v \ge p_i e_i} v^\top A v, \qquad w = \sum_i v_i,
               \qquad d = J^\top w,

    and :math:`J^\top v_i` is the projection of :math:`p_i g_i` onto the dual cone
    :math:`\{x : J x \ge 0\}`, so :math:`d` conflicts with no task gradient. The default
    :math:`p = 1/T` and the normalisation (:math:`A` uses 0 instead of :math:`G/\operatorname
    {tr} G` when the trace is below ``norm_eps``, an absolute threshold) and regularisation
    (``reg_eps``) are torchjd's, whose ``UPGrad`` this matches to 1e-8; ``reg_eps=0`` gives
    the exact, unregularised projections. The :math:`T` small QPs are solved natively and in
    parallel by an active-set method (:func:`fastmtl.ops.dual_cone_weights`) instead of one
    quadprog call per row on the host.

    ``extras["W"]`` holds the rows :math:`v_i` and ``extras["converged"]`` the solver flag.
    Degenerate input: all-zero gradients (trace below ``norm_eps``) give :math:`v_i = p_i e_i`
    and a zero direction; with ``reg_eps=0`` and a singular :math:`G`, :math:`w` is not unique
    but :math:`d` is.
    """

    def _preferences(self, T, device):
        return torch.diag(self._preference(T, device))

    _fused_solve = _DualConeCombiner._fused_solve  # describes this _solve (see fork)

    def _solve(self, G, T, device, generator, losses):
        W, converged = self._project(G, self._preferences(T, device))
        return W.sum(-2), {"W": W, "converged": converged}


@register("dualproj")
class DualProj(_DualConeCombiner):
    r"""Project the (preference-weighted) mean gradient onto the dual cone of the gradients:

    .. math::  w = \arg\min_{v \ge p} v^\top A v, \qquad d = J^\top w,

    with :math:`A` and the defaults as in :class:`UPGrad` (torchjd's ``DualProj``, matched
    to 1e-8). ``extras["converged"]`` is the solver flag.
    """

    def _preferences(self, T, device):
        return self._preference(T, device)[None]

    _fused_solve = _DualConeCombiner._fused_solve  # describes this _solve (see fork)

    def _solve(self, G, T, device, generator, losses):
        W, converged = self._project(G, self._preferences(T, device))
        return W[0], {"converged": converged}
