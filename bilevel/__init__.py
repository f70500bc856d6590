"""bilevel: hypergradients for PyTorch bi-level problems.

``Problem`` states the two levels; ``OneStepSolver``, ``KStepSolver`` and ``ImplicitSolver`` compute
``d outer_loss / d lambda`` under different approximations of the inner solution and take steps.
"""

from .functional import InnerView
from .problem import NonFiniteError, Problem
from .solvers import ImplicitSolver, KStepSolver, OneStepSolver, Solver, StepInfo, linear

__version__ = "0.1.0"

__all__ = [
    "ImplicitSolver", "InnerView", "KStepSolver", "NonFiniteError", "OneStepSolver", "Problem", "Solver",
    "StepInfo", "linear",
]
