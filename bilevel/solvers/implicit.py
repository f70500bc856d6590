"""Implicit-function-theorem hypergradient.

Treat theta* = theta_K (after K ordinary inner steps) as a stationary point of f, so
grad_theta f(theta*(lambda), lambda) = 0 and, differentiating,

.. math::

    \\frac{dG}{d\\lambda} = \\partial_\\lambda g - (\\partial^2_{\\lambda\\theta} f)\\, v, \\qquad
    (\\nabla^2_{\\theta} f + \\delta I)\\, v = \\nabla_\\theta g

with damping delta. The system is solved matrix-free with Hessian-vector products (double
backward), by conjugate gradients, a truncated Neumann series, or Richardson fixed-point iteration.
Cost: K plain inner steps + iterations Hessian-vector products (+1 for the residual of Neumann /
fixed point, +power_iterations when their step size is estimated), each ~2 inner gradients;
memory one inner graph, independent of K and of ``iterations``. Exact only at a true inner optimum.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torchopt

from ..problem import Problem
from . import linear
from .base import Solver, _Result, _zeros_for_none, resolve_outer_batch


class ImplicitSolver(Solver):
    """Implicit hypergradient after ``inner_steps`` ordinary inner steps.

    Args:
        inner_steps: K >= 0 plain (non-differentiated) inner steps before the hypergradient.
        linear_solver: ``"cg"``, ``"neumann"`` or ``"fixed_point"``.
        iterations: Hessian-vector products spent on the linear solve.
        damping: delta added to the Hessian's diagonal (regularises indefinite / singular Hessians).
        step_size: Neumann / fixed-point step; ``None`` estimates ``1 / lambda_max`` by
            ``power_iterations`` power iterations each call (must be < 2 / lambda_max to converge).
        warm_start: start fixed-point iteration from the previous call's solution.
        tol: relative-residual tolerance at which CG stops early.
        negative_curvature: CG on a Hessian that is not positive definite along a search direction:
            ``"stop"`` freezes the iterate there (safe; the residual in ``StepInfo.extras`` shows how far
            it got), ``"continue"`` runs textbook CG through it (what torchopt and Betty do).
        residual: for Neumann / fixed point, measure ``||Hv - b|| / ||b||`` (one extra Hessian-vector
            product) and report it in ``StepInfo.extras["residual"]``; CG reports its recursive
            residual at no cost either way.
    """

    def __init__(
        self,
        problem: Problem,
        inner_optimizer: torchopt.base.GradientTransformation,
        outer_optimizer: torch.optim.Optimizer,
        inner_steps: int = 1,
        linear_solver: Literal["cg", "neumann", "fixed_point"] = "cg",
        iterations: int = 20,
        damping: float = 0.0,
        step_size: float | None = None,
        power_iterations: int = 10,
        warm_start: bool = False,
        tol: float = 1e-12,
        residual: bool = True,
        negative_curvature: Literal["stop", "continue"] = "stop",
    ) -> None:
        super().__init__(problem, inner_optimizer, outer_optimizer)
        if not isinstance(inner_steps, int) or inner_steps < 0:
            raise ValueError(f"ImplicitSolver inner_steps must be an int >= 0, got {inner_steps!r}")
        if linear_solver not in ("cg", "neumann", "fixed_point"):
            raise ValueError(f"ImplicitSolver linear_solver must be 'cg', 'neumann' or 'fixed_point', "
                             f"got {linear_solver!r}")
        if not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"ImplicitSolver iterations must be an int >= 1, got {iterations!r}")
        if damping < 0:
            raise ValueError(f"ImplicitSolver damping must be >= 0, got {damping}")
        if step_size is not None and step_size <= 0:
            raise ValueError(f"ImplicitSolver step_size must be > 0 or None (estimate it), got {step_size}")
        if negative_curvature not in ("stop", "continue"):
            raise ValueError(f"ImplicitSolver negative_curvature must be 'stop' or 'continue', "
                             f"got {negative_curvature!r}")
        self.negative_curvature = negative_curvature
        self.inner_steps = inner_steps
        self.linear_solver = linear_solver
        self.iterations = iterations
        self.damping = float(damping)
        self.step_size = step_size
        self.power_iterations = power_iterations
        self.warm_start = warm_start
        self.tol = tol
        self.residual = residual
        self._previous_solution: tuple[torch.Tensor, ...] | None = None

    def _solve(self, inner_batch: Any, outer_batch: Any, buffers: dict[str, torch.Tensor]) -> _Result:
        k = self.inner_steps
        if k == 0:
            if isinstance(inner_batch, list) and len(inner_batch) != 1:
                raise ValueError(f"ImplicitSolver with inner_steps=0 takes one batch (for the Hessian), got a list "
                                 f"of {len(inner_batch)}")
            batches = inner_batch if isinstance(inner_batch, list) else [inner_batch]
        else:
            batches = self._as_batches(inner_batch, k, "ImplicitSolver")
        theta, state = self.theta(), self.inner_state
        losses: list[torch.Tensor] = []
        for batch in batches[:k]:
            theta, state, loss = self.inner_step(theta, state, batch, buffers, differentiable=False)
            losses.append(loss)

        hess_batch = batches[-1]
        outer_batch = resolve_outer_batch(batches, outer_batch)
        lam = self._outer_params
        theta_star = tuple(t.detach().requires_grad_() for t in theta)
        f = self.inner_value(theta_star, hess_batch, buffers)
        df = torch.autograd.grad(f, theta_star, create_graph=True, allow_unused=True)
        # Parameters f does not touch have zero Hessian rows; keep only the ones with a graph.
        live = [i for i, d in enumerate(df) if d is not None and d.requires_grad]
        df_live = [df[i] for i in live]
        theta_live = [theta_star[i] for i in live]

        def hvp(v: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            if df_live:
                hv_live = torch.autograd.grad(df_live, theta_live, grad_outputs=[v[i] for i in live],
                                              retain_graph=True, allow_unused=True)
            else:
                hv_live = []
            hv = [torch.zeros_like(t) for t in theta_star]
            for i, h in zip(live, hv_live):
                if h is not None:
                    hv[i] = h
            if self.damping:
                hv = [h + self.damping * x for h, x in zip(hv, v)]
            return tuple(hv)

        g = self.outer_value(theta_star, outer_batch, buffers)
        dg = torch.autograd.grad(g, list(theta_star) + lam, allow_unused=True)
        dg_theta = tuple(_zeros_for_none(dg[: len(theta_star)], theta_star))
        dg_lam = list(dg[len(theta_star):])

        extras: dict[str, float] = {}
        if self.linear_solver == "cg":
            sol = linear.conjugate_gradient(hvp, dg_theta, self.iterations, self.tol,
                                            stop_on_negative_curvature=self.negative_curvature == "stop")
        else:
            alpha = self.step_size
            if alpha is None:
                lam_max = linear.power_iteration(hvp, dg_theta, self.power_iterations)
                alpha = 1.0 / lam_max if lam_max > 0 else 1.0
                extras["lambda_max"] = lam_max
            if self.linear_solver == "neumann":
                sol = linear.neumann(hvp, dg_theta, self.iterations, alpha, self.residual)
            else:
                init = self._previous_solution if self.warm_start else None
                sol = linear.fixed_point(hvp, dg_theta, self.iterations, alpha, init, self.residual)
        v = tuple(x.detach() for x in sol.solution)
        if self.warm_start:
            self._previous_solution = v
        extras.update(residual=sol.residual, iterations=float(sol.iterations))
        if sol.step_size is not None:
            extras["step_size"] = sol.step_size

        if df_live:
            mixed = torch.autograd.grad(df_live, lam, grad_outputs=[v[i] for i in live], allow_unused=True)
        else:
            mixed = [None] * len(lam)
        if all(d is None for d in dg_lam) and all(m is None for m in mixed):
            self.outer_grad(g)  # raises the "outer_loss does not depend on the outer parameters" error
        hypergrad = [
            (torch.zeros_like(p) if d is None else d) - (torch.zeros_like(p) if m is None else m)
            for p, d, m in zip(lam, dg_lam, mixed)
        ]
        return _Result(hypergrad, tuple(t.detach() for t in theta), state, losses + [f.detach()], g.detach(), extras)
