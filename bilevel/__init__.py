"""bilevel: hypergradients for PyTorch bi-level problems.

``Problem`` states the two levels; ``OneStepSolver``, ``KStepSolver`` and ``ImplicitSolver`` compute
``d outer_loss / d lambda`` under different approximations of the inner solution and take steps;
``SOBASolver`` and ``F2SASolver`` are single-loop stochastic solvers for minibatch losses.
"""

from .functional import InnerView
from .problem import NonFiniteError, Problem
from .solvers import (
    F2SASolver,
    ImplicitSolver,
    KStepSolver,
    OneStepSolver,
    SOBASolver,
    Solver,
    StepInfo,
    linear,
)

__version__ = "0.1.0"

__all__ = [
    "F2SASolver", "ImplicitSolver", "InnerView", "KStepSolver", "NonFiniteError", "OneStepSolver", "Problem",
    "SOBASolver", "Solver", "StepInfo", "linear",
]
