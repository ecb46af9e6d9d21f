r"""Loss balancers: weight the task losses instead of the task gradients.

Every balancer has ``weights(losses) -> Tensor[T]`` (detached, on the losses' device),
``loss(losses) -> scalar`` (what to backpropagate), ``reset()`` and ``state_dict()`` /
``load_state_dict()`` (they are ``torch.nn.Module``\ s), plus its own hooks (``DWA.step`` /
``epoch_end``, ``GradNorm.update``, ``FAMO.update``). They plug into
:func:`fastmtl.backward` with ``balancer=`` (a name or an instance). :class:`CosReg` is a
gradient-orthogonality regulariser with ``penalty`` and ``loss``.
"""

from .base import Balancer, available_balancers, make_balancer
from .cosreg import CosReg
from .dwa import DWA
from .famo import FAMO
from .gradnorm import GradNorm
from .simple import GLS, RLW
from .uw import UW

__all__ = [
    "Balancer",
    "available_balancers",
    "make_balancer",
    "RLW",
    "GLS",
    "DWA",
    "UW",
    "GradNorm",
    "FAMO",
    "CosReg",
]
