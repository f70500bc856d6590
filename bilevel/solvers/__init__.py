"""Hypergradient solvers: one-step, K-step (reverse / forward mode), implicit (CG / Neumann / fixed point),
and the stochastic single-loop SOBA and first-order F2SA."""

from .base import Solver, StepInfo
from .f2sa import F2SASolver
from .implicit import ImplicitSolver
from .k_step import KStepSolver
from .one_step import OneStepSolver
from .soba import SOBASolver

__all__ = ["F2SASolver", "ImplicitSolver", "KStepSolver", "OneStepSolver", "SOBASolver", "Solver", "StepInfo"]
