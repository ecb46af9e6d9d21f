r"""Analysis metrics: Feature Disentanglement, interference identifiers, Ranking Similarity, Δm.

- :func:`feature_disentanglement`: how exclusively each element of the shared
  representation serves one task, from the per-task feature gradients (arXiv 2402.03557).
- :func:`gradient_conflict`, :func:`magnitude_similarity`: the classic identifiers of task
  interference (pairwise cosines; gradient magnitude similarity of Yu et al. 2020), from
  ``J`` ``[T, P]`` or from the Gram matrix ``G = J J^T`` alone (``gram=True``).
- :func:`ranking_similarity`: agreement (Kendall's tau-b, ...) of the ranking of methods an
  identifier implies with the ranking by test performance.
- :func:`delta_m`: the multi-task performance drop Δm of Maninis et al. (2019), in percent.

Tensor results stay on the input's device and are computed without a host sync, except for
the optional finiteness check (``check_finite=True``, one scalar read).
"""

from .fd import feature_disentanglement
from .identifiers import (
    GradientConflict,
    MagnitudeSimilarity,
    gradient_conflict,
    magnitude_similarity,
)
from .ranking import DeltaM, RankingSimilarity, delta_m, ranking_similarity

__all__ = [
    "feature_disentanglement",
    "gradient_conflict",
    "magnitude_similarity",
    "ranking_similarity",
    "delta_m",
    "GradientConflict",
    "MagnitudeSimilarity",
    "RankingSimilarity",
    "DeltaM",
]
