"""Hypergradient solvers: one-step, K-step (reverse / forward mode), implicit (CG / Neumann / fixed point)."""

from .base import Solver, StepInfo
from .implicit import ImplicitSolver
from .k_step import KStepSolver
from .one_step import OneStepSolver

__all__ = ["ImplicitSolver", "KStepSolver", "OneStepSolver", "Solver", "StepInfo"]
