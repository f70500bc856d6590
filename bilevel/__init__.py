"""bilevel: hypergradients for PyTorch bi-level problems.

``Problem`` states the two levels; ``OneStepSolver``, ``KStepSolver`` and ``ImplicitSolver`` compute
``d outer_loss / d lambda`` under different approximations of the inner solution and take steps;
``SOBASolver`` and ``F2SASolver`` are single-loop stochastic solvers for minibatch losses.
``make_solver(name, problem, inner_optimizer, outer_optimizer, **options)`` builds any of them by name
(the vocabulary command lines and configs use); ``check_solver`` validates a choice without a problem.
"""

from .factory import LINEAR_SOLVERS, MODES, check_solver, make_solver, solver_names
from .functional import InnerView, StoredParameterError
from .problem import NonFiniteError, Problem
from .profiling import SavedBytes
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
    "LINEAR_SOLVERS", "MODES", "F2SASolver", "ImplicitSolver", "InnerView", "KStepSolver", "NonFiniteError",
    "OneStepSolver", "Problem", "SOBASolver", "SavedBytes", "Solver", "StepInfo", "StoredParameterError", "check_solver",
    "linear", "make_solver", "solver_names",
]
