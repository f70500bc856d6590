"""One vocabulary for choosing a solver: ``make_solver(name, problem, inner_opt, outer_opt, **options)``.

Names: ``one_step``, ``k_step``, ``implicit``, ``soba``, ``f2sa``, and the shorthands ``k_step_forward`` /
``k_step_reverse`` (``k_step`` with ``mode`` fixed). Options are the solver class's keyword arguments
(``steps``, ``truncate``, ``mode`` in :data:`MODES` = reverse / forward / mixed, ``checkpoint``, ``hvp``;
``inner_steps``, ``linear_solver``, ``iterations``, ``damping``, ...). :func:`check_solver` validates a name and its options without a problem, so a command
line or a config can refuse a bad choice before any data loads; :func:`make_solver` runs the same check
and then builds the solver, refusing forward mode above :data:`FORWARD_MODE_MAX` outer scalars.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torchopt

from .problem import Problem
from .solvers import F2SASolver, ImplicitSolver, KStepSolver, OneStepSolver, SOBASolver, Solver
from .solvers.options import FORWARD_MODE_MAX, FORWARD_MODE_WARN, LINEAR_SOLVERS, MODES, check_forward_size

__all__ = ["ALIASES", "FORWARD_MODE_MAX", "FORWARD_MODE_WARN", "LINEAR_SOLVERS", "MODES", "SOLVERS",
           "check_solver", "make_solver", "solver_names"]

#: name -> class; the options are the class's keyword arguments after the three every solver takes.
SOLVERS: dict[str, type[Solver]] = {
    "one_step": OneStepSolver,
    "k_step": KStepSolver,
    "implicit": ImplicitSolver,
    "soba": SOBASolver,
    "f2sa": F2SASolver,
}
#: Shorthand -> (name, options it fixes).
ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "k_step_forward": ("k_step", {"mode": "forward"}),
    "k_step_reverse": ("k_step", {"mode": "reverse"}),
}


def solver_names() -> tuple[str, ...]:
    """Every name :func:`make_solver` accepts."""
    return (*SOLVERS, *ALIASES)


def _resolve(name: str, options: dict[str, Any]) -> tuple[type[Solver], dict[str, Any]]:
    if name in ALIASES:
        base, fixed = ALIASES[name]
        clash = {k: v for k, v in options.items() if k in fixed and v != fixed[k]}
        if clash:
            raise ValueError(f"solver {name!r} fixes {fixed}, got {clash}")
        name, options = base, {**options, **fixed}
    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; one of {', '.join(solver_names())}")
    cls = SOLVERS[name]
    allowed = list(inspect.signature(cls.__init__).parameters)[4:]  # after self, problem and the two optimizers
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"solver {name!r} has no option(s) {unknown}; its options: {allowed}")
    return cls, options


def check_solver(name: str, **options: Any) -> None:
    """Raise ``ValueError`` naming the problem if ``name`` with ``options`` cannot build a solver (unknown
    name or option, value out of range); needs no problem, so it runs before any data loads."""
    cls, options = _resolve(name, options)
    check = getattr(cls, "check_options", None)
    if check is not None:
        check(**options)


def make_solver(
    name: str,
    problem: Problem,
    inner_optimizer: torchopt.base.GradientTransformation,
    outer_optimizer: torch.optim.Optimizer,
    **options: Any,
) -> Solver:
    """The solver ``name`` (see the module docstring) for ``problem``, after :func:`check_solver`.

    ``make_solver("k_step", p, i, o, steps=5, mode="reverse")`` is ``KStepSolver(p, i, o, steps=5,
    mode="reverse")``; ``make_solver("k_step_forward", p, i, o, steps=1)`` is ``KStepSolver(..., steps=1,
    mode="forward")``.

    Raises:
        ValueError: as :func:`check_solver`, or forward mode with more than :data:`FORWARD_MODE_MAX` outer
            scalars (one unroll each: it would never finish).
    """
    check_solver(name, **options)
    cls, options = _resolve(name, options)
    if cls is KStepSolver:
        n_outer = sum(p.numel() for p in problem.outer.parameters() if p.requires_grad)
        check_forward_size(options.get("mode", "reverse"), n_outer, refuse=True)
    return cls(problem, inner_optimizer, outer_optimizer, **options)
