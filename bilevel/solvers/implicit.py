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
from .options import LINEAR_SOLVERS


class ImplicitSolver(Solver):
    """Implicit-function-theorem hypergradient after ``inner_steps`` ordinary inner steps.

    Per call, with ``B_k`` the inner batches and ``B'`` the outer batch:

    .. math::

        \\theta_{k+1} = U(\\theta_k, \\nabla_\\theta f(\\theta_k, \\lambda; B_k)) \\;(k < K), \\qquad
        (\\nabla^2_{\\theta} f(\\theta_K, \\lambda; B_{K-1}) + \\delta I)\\, v = \\nabla_\\theta g(\\theta_K, \\lambda; B'),

    .. math::

        \\frac{dG}{d\\lambda} \\approx \\partial_\\lambda g(\\theta_K, \\lambda; B')
            - \\partial^2_{\\lambda\\theta} f(\\theta_K, \\lambda; B_{K-1})\\, v

    with the linear system solved matrix-free by ``iterations`` Hessian-vector products. Exact when
    theta_K is a stationary point of f, the system is solved exactly and delta = 0; the error is
    O(||grad_theta f(theta_K)|| + residual) otherwise. ``step`` keeps theta_K and moves lambda.

    **Warm start (AmIGO-style stochastic option).** ``warm_start=True`` with ``"cg"`` or
    ``"fixed_point"`` starts the linear solver from the ``v`` of the previous ``step`` (Arbel & Mairal,
    ICLR 2022, "Amortized implicit differentiation"): with minibatches and a few inner and linear-solver
    iterations per call (e.g. ``inner_steps=10, iterations=10``), theta and v both track their targets
    across outer steps instead of being re-solved from scratch each call, and the per-call Hessian
    noise averages out over calls rather than being inverted afresh. Unlike AmIGO, which draws a fresh
    minibatch for every linear-solver iteration, the iterations of one call share the last inner
    batch's Hessian; with few iterations per call and warm starts the difference averages out. The
    stored ``v`` is updated only by ``step`` (``hypergradient`` mutates nothing) and is part of
    :meth:`state_dict`.

    Args:
        problem, inner_optimizer, outer_optimizer: see :meth:`Solver.__init__`.
        inner_steps: K >= 0 plain (non-differentiated) inner steps before the hypergradient.
        linear_solver: ``"cg"``, ``"neumann"`` or ``"fixed_point"`` (Richardson iteration).
        iterations: Hessian-vector products spent on the linear solve.
        damping: delta >= 0 added to the Hessian's diagonal (regularises indefinite / singular Hessians,
            e.g. a minibatch Hessian of rank below dim(theta)).
        step_size: Neumann / fixed-point step; ``None`` estimates ``1 / lambda_max`` by
            ``power_iterations`` power iterations each call (must be < 2 / lambda_max to converge).
        power_iterations: products spent on that estimate.
        warm_start: start CG / fixed-point iteration from the previous ``step``'s solution (not for
            ``"neumann"``, a series that always starts from b).
        tol: relative-residual tolerance at which CG stops early.
        residual: for Neumann / fixed point, measure ``||Hv - b|| / ||b||`` (one extra Hessian-vector
            product) and report it in ``StepInfo.extras["residual"]``; CG reports its recursive
            residual at no cost either way.
        negative_curvature: CG on a Hessian that is not positive definite along a search direction:
            ``"stop"`` freezes the iterate there (safe; the residual in ``StepInfo.extras`` shows how far
            it got), ``"continue"`` runs textbook CG through it (what torchopt and Betty do).

    Batches: ``inner_batch`` is one batch reused K times or a ``list`` of K batches (one batch, for the
    Hessian, when K = 0); the Hessian and mixed derivative use the last one. ``outer_batch=None``
    reuses the last inner batch for g.

    Example::

        s = bilevel.ImplicitSolver(problem, torchopt.sgd(lr=0.1), torch.optim.SGD(hyper.parameters(), 0.01),
                                   inner_steps=10, linear_solver="cg", iterations=10, warm_start=True)
        info = s.step(inner_batches, outer_batch)   # info.extras["residual"]: the linear solve's
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
        self.check_options(inner_steps=inner_steps, linear_solver=linear_solver, iterations=iterations,
                           damping=damping, step_size=step_size, warm_start=warm_start,
                           negative_curvature=negative_curvature)
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

    @staticmethod
    def check_options(inner_steps: int = 1, linear_solver: str = "cg", iterations: int = 20, damping: float = 0.0,
                      step_size: float | None = None, power_iterations: int = 10, warm_start: bool = False,
                      tol: float = 1e-12, residual: bool = True, negative_curvature: str = "stop") -> None:
        """Raise ``ValueError`` for options no problem can use (the constructor's and
        :func:`bilevel.make_solver`'s one check)."""
        if not isinstance(inner_steps, int) or inner_steps < 0:
            raise ValueError(f"ImplicitSolver inner_steps must be an int >= 0, got {inner_steps!r}")
        if linear_solver not in LINEAR_SOLVERS:
            raise ValueError(f"ImplicitSolver linear_solver must be 'cg', 'neumann' or 'fixed_point', "
                             f"got {linear_solver!r}")
        if not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"ImplicitSolver iterations must be an int >= 1, got {iterations!r}")
        if damping < 0:
            raise ValueError(f"ImplicitSolver damping must be >= 0, got {damping}")
        if step_size is not None and step_size <= 0:
            raise ValueError(f"ImplicitSolver step_size must be > 0 or None (estimate it), got {step_size}")
        if warm_start and linear_solver == "neumann":
            raise ValueError("ImplicitSolver warm_start=True needs linear_solver='cg' or 'fixed_point': a Neumann "
                             "series always starts from b and cannot reuse the previous solution")
        if negative_curvature not in ("stop", "continue"):
            raise ValueError(f"ImplicitSolver negative_curvature must be 'stop' or 'continue', "
                             f"got {negative_curvature!r}")

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
        dg = self._lambda_grad(g, list(theta_star) + lam, "outer_loss")
        dg_theta = tuple(_zeros_for_none(dg[: len(theta_star)], theta_star))
        dg_lam = list(dg[len(theta_star):])

        extras: dict[str, float] = {}
        init = self._previous_solution if self.warm_start else None
        if self.linear_solver == "cg":
            sol = linear.conjugate_gradient(hvp, dg_theta, self.iterations, self.tol,
                                            stop_on_negative_curvature=self.negative_curvature == "stop", init=init)
        else:
            alpha = self.step_size
            if alpha is None:
                lam_max = linear.power_iteration(hvp, dg_theta, self.power_iterations)
                alpha = 1.0 / lam_max if lam_max > 0 else 1.0
                extras["lambda_max"] = lam_max
            if self.linear_solver == "neumann":
                sol = linear.neumann(hvp, dg_theta, self.iterations, alpha, self.residual)
            else:
                sol = linear.fixed_point(hvp, dg_theta, self.iterations, alpha, init, self.residual)
        v = tuple(x.detach() for x in sol.solution)
        extras.update(residual=sol.residual, iterations=float(sol.iterations))
        if sol.step_size is not None:
            extras["step_size"] = sol.step_size

        if df_live:
            mixed = self._lambda_grad(df_live, lam, "inner_loss", grad_outputs=[v[i] for i in live])
        else:
            mixed = [None] * len(lam)
        if all(d is None for d in dg_lam) and all(m is None for m in mixed):
            self.outer_grad(g)  # raises the "outer_loss does not depend on the outer parameters" error
        hypergrad = [
            (torch.zeros_like(p) if d is None else d) - (torch.zeros_like(p) if m is None else m)
            for p, d, m in zip(lam, dg_lam, mixed)
        ]
        return _Result(hypergrad, tuple(t.detach() for t in theta), state, losses + [f.detach()], g.detach(), extras,
                       carry=v if self.warm_start else None)

    def _commit(self, carry: Any) -> None:
        if carry is not None:
            self._previous_solution = carry

    def _extra_state(self) -> dict[str, Any]:
        prev = self._previous_solution
        return {"linear_solution": None if prev is None else [t.clone() for t in prev]}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self._previous_solution = self._vector(state.get("linear_solution"), "linear_solution")
