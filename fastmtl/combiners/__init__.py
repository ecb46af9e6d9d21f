"""Gradient combiners: one class per published method, registered by name."""

from .aligned_mtl import AlignedMTL
from .base import Combiner, CombineResult, as_matrix, available_methods, get_combiner_class
from .cagrad import CAGrad
from .config import ConFIG
from .dual_cone import DualProj, UPGrad
from .ew import Mean, Sum
from .graddrop import GradDrop
from .gradvac import GradVac
from .imtlg import IMTLG
from .mgda import MGDA
from .nash_mtl import NashMTL
from .pcgrad import PCGrad
from .rgw import RGW

__all__ = [
    "Combiner",
    "CombineResult",
    "available_methods",
    "get_combiner_class",
    "as_matrix",
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
]
