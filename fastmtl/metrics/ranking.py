r"""Judging identifiers and methods: Ranking Similarity and the multi-task drop Δm.

These work on a handful of numbers per method and return Python floats (host side).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = ["ranking_similarity", "delta_m", "RankingSimilarity", "DeltaM"]


def _scores(values, name: str) -> tuple[list | None, np.ndarray]:
    """(keys or None, float64 1-D array) from a mapping, sequence, array or tensor."""
    keys = None
    if isinstance(values, Mapping):
        keys = list(values.keys())
        values = [values[k] for k in keys]
    try:
        import torch

        if isinstance(values, torch.Tensor):
            values = values.detach().cpu().to(torch.float64).numpy()
        elif isinstance(values, Sequence) and not isinstance(values, (str, bytes)):
            values = [float(v) if isinstance(v, torch.Tensor) else v for v in values]
    except ImportError:  # pragma: no cover
        pass
    if isinstance(values, (str, bytes)):
        raise TypeError(f"{name} must be numbers (a sequence, array or mapping), got a string")
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(
            f"{name} must be numbers (a sequence, array, tensor or mapping)"
        ) from None
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one number per entry), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return keys, arr


def _align(a, b, name_a: str, name_b: str):
    """Pairs the entries of two score sets, by key when both are mappings."""
    ka, va = _scores(a, name_a)
    kb, vb = _scores(b, name_b)
    if ka is not None and kb is not None:
        if set(ka) != set(kb):
            raise ValueError(
                f"{name_a} and {name_b} must have the same keys, got {sorted(map(str, ka))} "
                f"and {sorted(map(str, kb))}"
            )
        vb = np.array([vb[kb.index(k)] for k in ka])
    elif len(va) != len(vb):
        raise ValueError(
            f"{name_a} and {name_b} must have the same length, got {len(va)} and {len(vb)}"
        )
    return (ka if ka is not None else kb), va, vb


def _orientation(higher_is_better, name: str) -> tuple[bool, bool]:
    if isinstance(higher_is_better, bool):
        return higher_is_better, higher_is_better
    if (isinstance(higher_is_better, Sequence) and len(higher_is_better) == 2
            and all(isinstance(x, bool) for x in higher_is_better)):
        return higher_is_better[0], higher_is_better[1]
    raise TypeError(f"{name} must be a bool or a pair of bools, got {higher_is_better!r}")


@dataclass(frozen=True)
class RankingSimilarity:
    """Agreement of two rankings of the same methods.

    Attributes:
        kendall_tau: Kendall's tau-b in [-1, 1] (1: identical rankings, -1: reversed);
            ``float(result)`` gives it.
        spearman_rho: Spearman's rank correlation in [-1, 1].
        top_k_overlap: share of the identifier's best ``k`` methods that are also among the
            test set's best ``k`` (ties at the cut-off are kept in both sets; the share is
            taken over the larger set), in [0, 1].
        k: the ``k`` used.
        p_value: the two-sided p-value of tau-b from ``scipy.stats.kendalltau``.
    """

    kendall_tau: float
    spearman_rho: float
    top_k_overlap: float
    k: int
    p_value: float

    def __float__(self) -> float:
        return self.kendall_tau


def _top_k(oriented: np.ndarray, k: int) -> set[int]:
    # rank 1 = best; ties share the best rank ("min"), so every method tied at the cut-off
    # is in the set.
    ranks = stats.rankdata(-oriented, method="min")
    return {i for i, r in enumerate(ranks) if r <= k}


def ranking_similarity(
    identifier_scores, test_scores, *, higher_is_better: bool | tuple[bool, bool] = False,
    k: int | None = None,
) -> RankingSimilarity:
    r"""Ranking Similarity: does an identifier rank the methods as their test results do?

    Given one identifier score per method (e.g. the mean FD or the conflict fraction measured
    while training with it) and one test performance per method (e.g. :math:`\Delta m`), both
    are turned into rankings of the methods (best first) and compared with Kendall's
    :math:`\tau_b` (``scipy.stats.kendalltau``, which handles ties):

    .. math::  \tau_b = \frac{n_c - n_d}{\sqrt{(n_0 - n_1)(n_0 - n_2)}},

    :math:`n_c, n_d` the concordant and discordant pairs, :math:`n_0 = n(n-1)/2`,
    :math:`n_1, n_2` the pairs tied in either ranking. This is **our reading** of the
    Ranking Similarity score of arXiv 2402.03557 (agreement of the identifier-implied ranking
    with the ranking by test performance); Spearman's :math:`\rho` and the top-k overlap are
    reported alongside.

    Args:
        identifier_scores, test_scores: one number per method, as sequences, arrays, 1-D
            tensors in the same order, or mappings keyed by method name (matched by key).
        higher_is_better: whether a higher score is the better one; a bool for both, or a
            pair ``(identifier, test)``. Default False: lower is better for both (conflict
            fraction, :math:`\Delta m`); use ``(True, False)`` for FD against :math:`\Delta m`.
        k: size of the top sets for ``top_k_overlap`` (default ``ceil(n / 2)``).

    When every score of one side is tied the rankings carry no information: tau and rho are
    then reported as 0. Needs at least 2 methods.
    """
    _, a, b = _align(identifier_scores, test_scores, "identifier_scores", "test_scores")
    n = len(a)
    if n < 2:
        raise ValueError(f"ranking_similarity needs at least 2 methods, got {n}")
    hib_id, hib_test = _orientation(higher_is_better, "higher_is_better")
    a = a if hib_id else -a
    b = b if hib_test else -b
    if k is None:
        k = math.ceil(n / 2)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"k must be an int in [1, {n}], got {k!r}")
    degenerate = np.all(a == a[0]) or np.all(b == b[0])
    if degenerate:
        tau, p, rho = 0.0, 1.0, 0.0
    else:
        res = stats.kendalltau(a, b, variant="b")
        tau, p = float(res.statistic), float(res.pvalue)
        rho = float(stats.spearmanr(a, b).statistic)
        if not math.isfinite(p):  # n = 2: no p-value
            p = 1.0
    top_a, top_b = _top_k(a, k), _top_k(b, k)
    overlap = len(top_a & top_b) / max(len(top_a), len(top_b))
    return RankingSimilarity(kendall_tau=tau, spearman_rho=rho, top_k_overlap=overlap, k=k,
                             p_value=p)


@dataclass(frozen=True)
class DeltaM:
    """Multi-task performance drop, in percent.

    Attributes:
        per_metric: :math:`\\Delta_k` for every metric (a dict when the inputs were mappings,
            else a list in input order).
        mean: :math:`\\Delta m`, the mean of ``per_metric``; ``float(result)`` gives it.
    """

    per_metric: dict | list
    mean: float

    def __float__(self) -> float:
        return self.mean


def delta_m(results, baselines, higher_is_better) -> DeltaM:
    r""":math:`\Delta m` (Maninis et al. 2019): mean relative drop against single-task baselines.

    .. math::  \Delta m = \frac{100}{K} \sum_{k=1}^{K} (-1)^{l_k}
               \frac{M_{m,k} - M_{b,k}}{M_{b,k}} \;\%,

    with :math:`l_k = 1` when a higher value of metric ``k`` is better. Negative is better
    than the baselines, positive worse.

    Args:
        results: the multi-task model's metrics :math:`M_{m,k}` (sequence, array, tensor, or
            mapping by metric name).
        baselines: the baselines :math:`M_{b,k}` (same form; matched by key for mappings).
        higher_is_better: a bool for every metric, or one per metric (sequence, or mapping by
            metric name).

    A baseline of 0 raises ``ValueError`` (the relative drop is undefined).
    """
    keys, m, base = _align(results, baselines, "results", "baselines")
    if len(m) == 0:
        raise ValueError("results must hold at least one metric")
    if isinstance(higher_is_better, bool):
        hib = np.full(len(m), higher_is_better)
    elif isinstance(higher_is_better, Mapping):
        if keys is None:
            raise TypeError("higher_is_better may be a mapping only when results are mappings")
        missing = [k for k in keys if k not in higher_is_better]
        if missing:
            raise ValueError(f"higher_is_better has no entry for {missing}")
        hib = np.array([higher_is_better[k] for k in keys])
    elif isinstance(higher_is_better, Sequence) and not isinstance(higher_is_better, str):
        hib = np.asarray(list(higher_is_better))
        if len(hib) != len(m):
            raise ValueError(
                f"higher_is_better must have one entry per metric ({len(m)}), got {len(hib)}"
            )
    else:
        raise TypeError(
            f"higher_is_better must be a bool, a sequence or a mapping of bools, "
            f"got {type(higher_is_better).__name__}"
        )
    if hib.dtype != np.bool_:
        raise TypeError("higher_is_better must hold bools")
    if np.any(base == 0):
        bad = [keys[i] if keys else i for i in np.flatnonzero(base == 0)]
        raise ValueError(f"baselines must be nonzero (relative drop), got 0 for {bad}")
    sign = np.where(hib, -1.0, 1.0)
    per = 100.0 * sign * (m - base) / base
    per_metric = dict(zip(keys, per.tolist(), strict=True)) if keys else per.tolist()
    return DeltaM(per_metric=per_metric, mean=float(per.mean()))
