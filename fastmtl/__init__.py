"""fastmtl: fast multi-task gradient manipulation for PyTorch.

Per-task gradients ``J`` ``[T, P]`` go in, one update direction comes out. Gramian methods
read ``J`` twice (``G = J J^T``, then ``d = w^T J``) with native CPU/CUDA kernels, and
solve the small ``T x T`` problem exactly in float64.
"""

from . import balancers, metrics, ops, reference
from ._native import native_available
from .api import combine, make_combiner
from .autograd import BackwardResult, backward, fork
from .combiners import (
    IMTLG,
    MGDA,
    RGW,
    AlignedMTL,
    CAGrad,
    Combiner,
    CombineResult,
    ConFIG,
    DualProj,
    GradDrop,
    GradVac,
    Mean,
    NashMTL,
    PCGrad,
    Sum,
    UPGrad,
    available_methods,
)
from .monitor import Monitor

__version__ = "0.1.0"

__all__ = [
    "combine",
    "make_combiner",
    "backward",
    "fork",
    "BackwardResult",
    "available_methods",
    "native_available",
    "Combiner",
    "CombineResult",
    "Mean",
    "Sum",
    "PCGrad",
    "MGDA",
    "CAGrad",
    "IMTLG",
    "AlignedMTL",
    "ConFIG",
    "GradVac",
    "RGW",
    "NashMTL",
    "UPGrad",
    "DualProj",
    "GradDrop",
    "balancers",
    "ops",
    "reference",
    "metrics",
    "Monitor",
]
