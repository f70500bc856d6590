"""SOBA: single-loop stochastic bilevel optimisation (Dagréou, Ablin, Vaiter & Moreau, NeurIPS 2022).

The implicit hypergradient needs v = H^{-1} grad_theta g at theta*(lambda). Instead of solving for
theta* and v from scratch each outer step (an inner loop and a linear solve, both on minibatches
whose Hessian may be singular), SOBA keeps theta and v as state and moves theta, v and lambda one
stochastic step each per call, all three directions evaluated at the same point:

.. math::

    D_\\theta = \\nabla_\\theta f(\\theta, \\lambda; B), \\qquad
    D_v = \\nabla^2_{\\theta} f(\\theta, \\lambda; B)\\, v + \\delta v - \\nabla_\\theta g(\\theta, \\lambda; B'),

.. math::

    D_\\lambda = \\partial_\\lambda g(\\theta, \\lambda; B') - \\partial^2_{\\lambda\\theta} f(\\theta, \\lambda; B)\\, v,

    \\theta \\leftarrow U(\\theta, D_\\theta), \\qquad v \\leftarrow v - \\rho_v D_v, \\qquad
    \\lambda \\leftarrow \\text{outer\\_optimizer}(\\lambda, D_\\lambda).

``D_v`` is the gradient of the quadratic ``1/2 v^T H v - v^T grad_theta g`` whose minimiser is the
implicit ``v``, so v does SGD on the linear system while theta does SGD on f. Each of the three
directions is linear in the sampled Hessian, cross-derivative and gradients, so given (theta, v,
lambda) they are unbiased for their full-batch values; at (theta*, v*) their expectations are 0, 0
and the true hypergradient. (The paper writes v for -H^{-1} grad g; the sign here matches
:class:`ImplicitSolver`.) Cost per call: one inner gradient with ``create_graph``, one backward for
the Hessian-vector and cross products together, one outer gradient: about 4 inner gradients.
"""

from __future__ import annotations

from typing import Any

import torch
import torchopt

from ..problem import Problem
from . import linear
from .base import Solver, _Result, _zeros_for_none


class SOBASolver(Solver):
    """SOBA (Dagréou et al., NeurIPS 2022): one stochastic step each on theta, v and lambda per call.

    Per call, with ``B`` the inner batch and ``B'`` the outer batch, all at the current (theta, v, lambda):

    .. math::

        D_\\theta = \\nabla_\\theta f(\\theta, \\lambda; B), \\quad
        D_v = \\nabla^2_\\theta f(\\theta, \\lambda; B) v + \\delta v - \\nabla_\\theta g(\\theta, \\lambda; B'), \\quad
        D_\\lambda = \\partial_\\lambda g(\\theta, \\lambda; B') - \\partial^2_{\\lambda\\theta} f(\\theta, \\lambda; B) v

    then ``theta <- U(theta, D_theta)`` (the inner optimiser), ``v <- v - v_lr * D_v`` and one
    outer-optimiser step on ``D_lambda`` (the returned hypergradient). v starts at 0.

    **A fresh solver's hypergradient is not yet an estimate.** With v = 0, ``hypergradient()`` returns only
    the direct term ``d_lambda g`` (0 when lambda reaches g only through theta, e.g. data weights or a
    regulariser), and v approaches ``H^{-1} grad_theta g`` only over many ``step`` calls (about
    ``1 / (v_lr * mu_f)`` of them, mu_f the smallest curvature of f). For an estimate at once, call
    :meth:`warm_up` first: it solves for v by conjugate gradients at the current theta (optionally after
    some inner steps that bring theta near theta*), so that the next ``hypergradient`` is the implicit one
    (equal to it on a quadratic; tests check it).

    Unbiasedness: given (theta, v, lambda) each direction is linear in the sampled derivatives, so
    E[D_lambda] = d_lambda g - (d2 f / d lambda d theta) v for the full-batch losses; at theta = theta*
    and v = v* = H^{-1} grad_theta g this is the true hypergradient (tests check it exactly by averaging
    over every minibatch of a quadratic problem).

    Step sizes (the paper's analysis: theta and v on the same step rho, lambda on gamma = rho / r with a
    constant ratio r; rates O(1/sqrt(T)) with constant steps ~ 1/sqrt(T)). Rules that work:

    * ``inner_optimizer = torchopt.sgd(lr=rho)`` with rho <= 1 / L_f (L_f the largest curvature of f,
      the smoothness constant), as for plain SGD on f;
    * ``v_lr`` the same rho (the default, ``None``, uses ``v_lr = 1 / L_hat`` with L_hat the largest
      eigenvalue of the first call's minibatch Hessian, estimated by ``power_iterations`` power
      iterations; pass a number to skip that estimate). v's update is SGD on a quadratic with
      curvature H, so v_lr must stay below 2 / lambda_max of the minibatch Hessians;
    * outer SGD with lr = rho / r, r ~ 1..10 (the outer variable must move slower than theta and v
      track it). Decreasing steps (a torchopt schedule for the inner lr, a ``torch.optim.lr_scheduler``
      outer) remove the O(step) noise floor.

    Measured (``benchmarks/stochastic.py``, docs/benchmarks.md): on the benchopt quadratic (L_f = 1,
    minibatches of 64) rho = v_lr = 0.1 and outer SGD lr 0.01 reduce ||grad h||^2 about 5e4x in 2000
    calls, with no tuning beyond these rules.

    Args:
        problem, inner_optimizer, outer_optimizer: see :meth:`Solver.__init__`.
        v_lr: rho_v > 0, or ``None`` for the 1 / L_hat rule above.
        damping: delta >= 0 added to the Hessian in D_v (regularises a singular expected Hessian; biases v).
        power_iterations: products spent once on L_hat when ``v_lr=None``.

    Batches: ``step(inner_batch, outer_batch=None)`` takes one inner batch B (used for D_theta, the
    Hessian-vector and cross products) and one outer batch B' (``None``: B' = B). Draw fresh,
    independent minibatches each call; SOBA's guarantees are in expectation over them.

    State: v (and v_lr once estimated) is part of :meth:`state_dict` / :meth:`load_state_dict`, with the
    inner optimiser state; ``step`` updates it, ``hypergradient`` returns D_lambda at the current state
    and mutates nothing. ``solver.v`` reads it.

    Example::

        s = bilevel.SOBASolver(problem, torchopt.sgd(lr=0.1), torch.optim.SGD(hyper.parameters(), 0.01))
        for inner_batch, outer_batch in loader:
            info = s.step(inner_batch, outer_batch)   # info.extras: v_norm, v_residual, v_lr
    """

    def __init__(
        self,
        problem: Problem,
        inner_optimizer: torchopt.base.GradientTransformation,
        outer_optimizer: torch.optim.Optimizer,
        v_lr: float | None = None,
        damping: float = 0.0,
        power_iterations: int = 20,
    ) -> None:
        """See the class docstring for the update equations and the step-size rules."""
        super().__init__(problem, inner_optimizer, outer_optimizer)
        self.check_options(v_lr=v_lr, damping=damping, power_iterations=power_iterations)
        self.v_lr = None if v_lr is None else float(v_lr)
        self.damping = float(damping)
        self.power_iterations = power_iterations
        self.v: tuple[torch.Tensor, ...] = tuple(torch.zeros_like(t) for t in self.theta())

    @staticmethod
    def check_options(v_lr: float | None = None, damping: float = 0.0, power_iterations: int = 20) -> None:
        """Raise ``ValueError`` for options no problem can use (the constructor's and
        :func:`bilevel.make_solver`'s one check)."""
        if v_lr is not None and (not isinstance(v_lr, (int, float)) or not v_lr > 0):
            raise ValueError(f"SOBASolver v_lr must be a number > 0 (e.g. the inner lr), or None to use 1 / L_hat "
                             f"from a power iteration on the first minibatch Hessian; got {v_lr!r}")
        if not damping >= 0:
            raise ValueError(f"SOBASolver damping must be >= 0, got {damping}")
        if not isinstance(power_iterations, int) or power_iterations < 1:
            raise ValueError(f"SOBASolver power_iterations must be an int >= 1, got {power_iterations!r}")

    def warm_up(self, inner_batch: Any, outer_batch: Any = None, inner_steps: int = 0, iterations: int = 100,
                tol: float = 1e-10) -> dict[str, float]:
        """Bring the solver's state to where its hypergradient is an estimate: ``inner_steps`` plain inner steps
        on ``inner_batch`` (as :meth:`inner_update`; 0: theta stays), then v solved from
        ``(H + damping I) v = grad_theta g`` by conjugate gradients (``iterations`` Hessian-vector products at
        most, stopping at relative residual ``tol``), H on ``inner_batch`` and ``grad_theta g`` on
        ``outer_batch`` (``None``: ``inner_batch``) at the current theta. lambda and the outer optimiser are
        not touched.

        A fresh solver starts from v = 0, so its ``hypergradient`` is only the direct term ``d_lambda g``
        until many ``step`` calls have moved v. After ``warm_up`` (with theta at the inner solution, and
        full-batch or large batches) ``hypergradient`` equals the implicit-function hypergradient
        ``d_lambda g - (d2 f / d lambda d theta) H^{-1} grad_theta g``; the ``step`` calls that follow keep
        v tracking it.

        Returns ``{"v_residual": ||(H + damping I) v - grad_theta g|| / ||grad_theta g||, "v_iterations": ...,
        "v_norm": ...}``.
        """
        if isinstance(inner_batch, list):
            [inner_batch] = self._as_batches(inner_batch, 1, "SOBASolver")
        outer_batch = inner_batch if outer_batch is None else outer_batch
        if not isinstance(inner_steps, int) or inner_steps < 0:
            raise ValueError(f"SOBASolver.warm_up inner_steps must be an int >= 0, got {inner_steps!r}")
        if not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"SOBASolver.warm_up iterations must be an int >= 1, got {iterations!r}")
        for _ in range(inner_steps):
            self.inner_update(inner_batch)
        with self._slots_kept():
            buffers = self._buffers(copy=True)
            theta = tuple(t.detach().requires_grad_() for t in self.theta())
            f = self.inner_value(theta, inner_batch, buffers)
            df = _zeros_for_none(torch.autograd.grad(f, theta, create_graph=True, allow_unused=True), theta)
            live = [i for i, d in enumerate(df) if d.requires_grad]

            hvp = _damped_hvp(df, theta, live, self.damping, detach=True)

            g = self.outer_value(theta, outer_batch, buffers)
            b = tuple(t.detach() for t in _zeros_for_none(
                torch.autograd.grad(g, theta, allow_unused=True), theta))
            sol = linear.conjugate_gradient(hvp, b, iterations, tol=tol)
        self.v = tuple(t.detach().clone() for t in sol.solution)
        return {"v_residual": linear.relative_residual(hvp, self.v, b), "v_iterations": float(sol.iterations),
                "v_norm": float(linear.norm(self.v))}

    def _solve(self, inner_batch: Any, outer_batch: Any, buffers: dict[str, torch.Tensor]) -> _Result:
        if isinstance(inner_batch, list):
            [inner_batch] = self._as_batches(inner_batch, 1, "SOBASolver")
        outer_batch = inner_batch if outer_batch is None else outer_batch
        lam = self._outer_params
        theta = tuple(t.detach().requires_grad_() for t in self.theta())
        v = self.v

        f = self.inner_value(theta, inner_batch, buffers)
        df = _zeros_for_none(torch.autograd.grad(f, theta, create_graph=True, allow_unused=True), theta)
        live = [i for i, d in enumerate(df) if d.requires_grad]
        extras: dict[str, float] = {}
        v_lr = self.v_lr
        if v_lr is None:
            # One-off rule: 1 / L_hat on the first minibatch; afterwards fixed (and saved) so that the
            # iteration is plain SGD with a constant step.
            hvp = _damped_hvp(df, theta, live, self.damping)

            l_hat = linear.power_iteration(hvp, theta, self.power_iterations)
            v_lr = 1.0 / l_hat if l_hat > 0 else 1.0
        extras["v_lr"] = v_lr

        # H v and (d2 f / d lambda d theta) v in one backward through grad_theta f.
        if live:
            prods = self._lambda_grad([df[i] for i in live], [theta[i] for i in live] + lam, "inner_loss",
                                     grad_outputs=[v[i] for i in live])
        else:
            prods = [None] * (len(live) + len(lam))
        hv = [torch.zeros_like(t) for t in theta]
        for i, h in zip(live, prods[:len(live)]):
            if h is not None:
                hv[i] = h
        cross = prods[len(live):]

        g = self.outer_value(theta, outer_batch, buffers)
        dg = self._lambda_grad(g, list(theta) + lam, "outer_loss")
        dg_theta = _zeros_for_none(dg[:len(theta)], theta)
        dg_lam = list(dg[len(theta):])
        if all(d is None for d in dg_lam) and all(c is None for c in cross):
            self.outer_grad(g)  # raises the "outer_loss does not depend on the outer parameters" error

        d_v = tuple(h + self.damping * x - b for h, x, b in zip(hv, v, dg_theta))
        hypergrad = [(torch.zeros_like(p) if d is None else d) - (torch.zeros_like(p) if c is None else c)
                     for p, d, c in zip(lam, dg_lam, cross)]
        new_theta, new_state = self._plain_update(theta, df, self.inner_state)
        new_v = tuple((x - v_lr * d).detach() for x, d in zip(v, d_v))
        # One host read for the three norms (a sync per read on a GPU).
        v_norm, dv_norm, b_norm = torch.stack([linear.norm(v), linear.norm(d_v), linear.norm(dg_theta)]).tolist()
        extras["v_norm"] = v_norm
        extras["v_residual"] = dv_norm / b_norm if b_norm > 0 else dv_norm
        return _Result(hypergrad, new_theta, new_state, [f.detach()], g.detach(), extras, carry=(new_v, v_lr))

    def _commit(self, carry: Any) -> None:
        self.v, self.v_lr = carry

    def _extra_state(self) -> dict[str, Any]:
        return {"v": [t.clone() for t in self.v], "v_lr": self.v_lr}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        if "v" not in state:
            raise ValueError("SOBASolver.load_state_dict needs the 'v' saved by SOBASolver.state_dict()")
        v = self._vector(state["v"], "v")
        assert v is not None
        self.v = v
        self.v_lr = state.get("v_lr", self.v_lr)


def _damped_hvp(df: tuple[torch.Tensor, ...], theta: tuple[torch.Tensor, ...], live: list[int], damping: float,
                detach: bool = False) -> Any:
    """``u -> (H + damping I) u`` with ``H u`` by a backward through ``df = grad_theta f`` (kept alive), only
    for the entries of ``theta`` that ``df`` depends on (``live``); ``detach``: products without a graph."""

    def hvp(u: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        out = [torch.zeros_like(t) for t in theta]
        if live:
            prods = torch.autograd.grad([df[i] for i in live], [theta[i] for i in live],
                                        grad_outputs=[u[i] for i in live], retain_graph=True, allow_unused=True)
            for i, h in zip(live, prods):
                if h is not None:
                    out[i] = h.detach() if detach else h
        return tuple(o + damping * x for o, x in zip(out, u))

    return hvp
