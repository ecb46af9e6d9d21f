"""Gradient combiners: one class per published method, registered by name."""

from .base import Combiner, CombineResult, as_matrix, available_methods, get_combiner_class
from .cagrad import CAGrad
from .ew import Mean, Sum
from .mgda import MGDA
from .pcgrad import PCGrad

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
]
