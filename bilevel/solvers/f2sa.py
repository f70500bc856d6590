"""F2SA: fully first-order stochastic bilevel optimisation (Kwon, Kwon, Wright & Nowak, ICML 2023).

No Hessian-vector products: the hypergradient is replaced by the gradient of a penalised value
function. With penalty mu > 0 (this library writes lambda for the outer variables, so the paper's
lambda is mu here),

.. math::

    \\mathcal{L}_\\mu(\\lambda) = \\min_y \\big[ g(y, \\lambda) + \\mu\\,(f(y, \\lambda) - \\min_z f(z, \\lambda)) \\big],
    \\qquad
    \\nabla \\mathcal{L}_\\mu(\\lambda) = \\partial_\\lambda g(y^*_\\mu, \\lambda)
        + \\mu\\,\\big(\\partial_\\lambda f(y^*_\\mu, \\lambda) - \\partial_\\lambda f(z^*, \\lambda)\\big)

(envelope theorem, with y*_mu the minimiser of ``f + g / mu`` and z* = theta*(lambda) that of f).
For a strongly convex f, ``||grad L_mu - dG/dlambda|| = O(1 / mu)``, so a penalty that grows
over the outer steps drives the bias to zero. Each call takes K first-order steps on both inner
copies and one outer step:

.. math::

    z \\leftarrow U(z, \\nabla_\\theta f(z, \\lambda; B_k)), \\qquad
    y \\leftarrow U'(y, \\nabla_\\theta f(y, \\lambda; B_k) + \\tfrac{1}{\\mu} \\nabla_\\theta g(y, \\lambda; B'_k))
    \\qquad (k < K),

.. math::

    D_\\lambda = \\partial_\\lambda g(y, \\lambda; B') + \\mu\\,\\big(\\partial_\\lambda f(y, \\lambda; B)
        - \\partial_\\lambda f(z, \\lambda; B)\\big), \\qquad \\mu_{t} = \\min(\\mu_0 + t\\,\\delta_\\mu, \\mu_{\\max})

where U and U' are the inner optimiser with separate states. Stepping y on ``f + g / mu`` with the
inner learning rate gamma is the paper's step alpha = gamma / mu on ``g + mu f``, its coupling
``alpha_k mu_k = gamma_k``. Cost per call: 3K + 3 first-order gradients, no second derivatives.
"""

from __future__ import annotations

from typing import Any

import torch
import torchopt

from ..problem import Problem
from .base import Solver, _detach_tree, _Result, _zeros_for_none


class F2SASolver(Solver):
    """F2SA (Kwon et al., ICML 2023): a fully first-order stochastic hypergradient with a growing penalty.

    Two copies of the inner variables: z (the inner solution estimate; it is ``problem.inner``'s
    parameters, as for every solver) and y (solver state, minimising ``f + g / mu``). Per call
    t = 0, 1, ..., with ``B_k`` the inner and ``B'_k`` the outer batches:

    .. math::

        z \\leftarrow U(z, \\nabla_\\theta f(z, \\lambda; B_k)), \\quad
        y \\leftarrow U'(y, \\nabla_\\theta f(y, \\lambda; B_k) + \\nabla_\\theta g(y, \\lambda; B'_k) / \\mu_t)
        \\quad (k = 0..K-1),

    .. math::

        D_\\lambda = \\partial_\\lambda g(y, \\lambda; B'_{K-1})
            + \\mu_t\\,(\\partial_\\lambda f(y, \\lambda; B_{K-1}) - \\partial_\\lambda f(z, \\lambda; B_{K-1})),
        \\qquad \\mu_t = \\min(\\mu_0 + t\\,\\delta_\\mu, \\mu_{\\max})

    and one outer-optimiser step on D_lambda (the returned hypergradient). U, U' are the inner
    optimiser with separate states; y starts at the inner parameters on the first call. (y's step takes
    grad g at y, as in the paper's algorithm; benchopt's F2SA code evaluates it at z.)

    **A fresh solver's hypergradient is not yet an estimate.** y starts at z, so the first calls return
    about ``d_lambda g`` plus mu times the difference of ``d_lambda f`` between two points only K steps
    apart: missing the implicit term, often with the wrong sign, and correct only once z and y have
    converged over many ``step`` calls. For an estimate at once, call :meth:`warm_up` first: it runs the
    inner iterations on z and y (no outer step, mu unchanged) until both are near their minimisers, so
    the next ``hypergradient`` is the penalised value function's gradient (O(1 / mu) from the true one).

    What it estimates: with y = y*_mu (the minimiser of f + g / mu) and z = z* (of f), E[D_lambda] is
    the gradient of the penalised value function L_mu (module docstring), which differs from the true
    hypergradient by O(1 / mu) for a strongly convex f (tests check both on a quadratic problem in
    closed form). Unlike :class:`SOBASolver` it needs no Hessian-vector products: use it when second
    derivatives are unavailable or too expensive.

    Step sizes and schedule (the paper: alpha_k ~ k^{-5/7}, gamma_k ~ k^{-4/7}, mu_k = gamma_k / alpha_k
    ~ k^{1/7}; benchopt's F2SA: mu_0 = 1 plus a constant increment per outer step). Rules:

    * ``inner_optimizer = torchopt.sgd(lr=gamma)`` with gamma <= 1 / L_f, as for SGD on f; y uses the
      same lr on ``f + g / mu``, which is stable for any mu >= 1 when gamma <= 1 / (L_f + L_g);
    * ``penalty`` mu_0 = 1 and ``penalty_growth`` delta_mu (defaults 1.0 and 0.01: mu = 21 after 2000
      calls), ``max_penalty`` to cap it;
    * outer lr: D_lambda's variance grows like mu^2 (it is mu times a difference of two noisy
      gradients), so scale the outer lr down as mu grows (e.g. ``torch.optim.lr_scheduler.LambdaLR``
      with ``lambda t: 1 / solver.penalty_at(t)``) or keep it small.

    Measured (``benchmarks/stochastic.py``): on the benchopt quadratic with minibatches of 64, inner lr
    0.1, K = 10, the default schedule and outer SGD lr 0.01 reduce ||grad h||^2 about 3e3x in 2000 calls
    (SOBA: about 5e4x, at a tenth of the time per call).

    Args:
        problem, inner_optimizer, outer_optimizer: see :meth:`Solver.__init__`.
        inner_steps: K >= 1 steps on z and y per call.
        penalty: mu_0 > 0.
        penalty_growth: delta_mu >= 0 added to mu after every ``step``.
        max_penalty: cap on mu (``None``: no cap).

    Batches: ``inner_batch`` one batch reused K times or a ``list`` of K batches; ``outer_batch`` likewise
    (``None``: the inner batches). Fresh minibatches per call and per inner step are what the analysis
    assumes.

    State: y, its optimiser state and the number of steps taken (which sets mu) are in
    :meth:`state_dict`; ``step`` advances them, ``hypergradient`` mutates nothing. ``extras`` reports
    ``penalty`` and ``gap`` = f(y) - f(z) on the last batch (>= 0 up to noise; ~ 1 / mu^2 at the optimum).
    """

    def __init__(
        self,
        problem: Problem,
        inner_optimizer: torchopt.base.GradientTransformation,
        outer_optimizer: torch.optim.Optimizer,
        inner_steps: int = 10,
        penalty: float = 1.0,
        penalty_growth: float = 0.01,
        max_penalty: float | None = None,
    ) -> None:
        """See the class docstring for the update equations and the schedule."""
        super().__init__(problem, inner_optimizer, outer_optimizer)
        self.check_options(inner_steps=inner_steps, penalty=penalty, penalty_growth=penalty_growth,
                           max_penalty=max_penalty)
        self.inner_steps = inner_steps
        self.penalty = float(penalty)
        self.penalty_growth = float(penalty_growth)
        self.max_penalty = None if max_penalty is None else float(max_penalty)
        self.steps_taken = 0
        self.y: tuple[torch.Tensor, ...] | None = None
        self.y_state: Any = None

    @staticmethod
    def check_options(inner_steps: int = 10, penalty: float = 1.0, penalty_growth: float = 0.01,
                      max_penalty: float | None = None) -> None:
        """Raise ``ValueError`` for options no problem can use (the constructor's and
        :func:`bilevel.make_solver`'s one check)."""
        if not isinstance(inner_steps, int) or inner_steps < 1:
            raise ValueError(f"F2SASolver inner_steps must be an int >= 1, got {inner_steps!r}")
        if not (isinstance(penalty, (int, float)) and penalty > 0):
            raise ValueError(f"F2SASolver penalty (mu_0) must be a number > 0, got {penalty!r}")
        if not (isinstance(penalty_growth, (int, float)) and penalty_growth >= 0):
            raise ValueError(f"F2SASolver penalty_growth must be a number >= 0, got {penalty_growth!r}")
        if max_penalty is not None and not (isinstance(max_penalty, (int, float)) and max_penalty >= penalty):
            raise ValueError(f"F2SASolver max_penalty must be None or a number >= penalty={penalty}, "
                             f"got {max_penalty!r}")

    def penalty_at(self, t: int) -> float:
        """mu_t = min(mu_0 + t * delta_mu, mu_max), the penalty used by the (t+1)-th ``step``."""
        mu = self.penalty + t * self.penalty_growth
        return mu if self.max_penalty is None else min(mu, self.max_penalty)

    def warm_up(self, inner_batch: Any, outer_batch: Any = None, steps: int = 100) -> dict[str, float]:
        """``steps`` rounds of the inner iterations of :meth:`step` (K steps each on z and on y, with
        ``inner_batch`` / ``outer_batch`` as :meth:`step` takes them) at the current lambda and mu: z (the
        inner parameters) and y move, lambda, the outer optimiser and the step counter (which sets mu) do not.

        A fresh solver has y = z, so its ``hypergradient`` misses the implicit term (often with the wrong
        sign) until many ``step`` calls have separated them; after ``warm_up`` with enough steps (about
        ``1 / (lr * mu_f)`` inner steps in all, mu_f the smallest curvature of f) ``hypergradient`` is the
        gradient of the penalised value function, within O(1 / mu) of the implicit hypergradient.
        Returns ``{"gap": f(y) - f(z)}`` after the last round (>= 0 up to noise)."""
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"F2SASolver.warm_up steps must be an int >= 1, got {steps!r}")
        gap = float("nan")
        for _ in range(steps):
            res = self._run(inner_batch, outer_batch, copy_buffers=False)
            self._write_theta(res.theta)
            self.inner_state = _detach_tree(res.state)
            self.y, self.y_state = res.carry  # not _commit: mu's step counter stays
            gap = res.extras["gap"]
        return {"gap": gap}

    def _grads(self, loss: torch.Tensor, theta: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        return _zeros_for_none(torch.autograd.grad(loss, theta, allow_unused=True), theta)

    def _uses_inner_hessian(self) -> bool:
        return False  # first-order only

    def _solve(self, inner_batch: Any, outer_batch: Any, buffers: dict[str, torch.Tensor]) -> _Result:
        k = self.inner_steps
        batches = self._as_batches(inner_batch, k, "F2SASolver")
        outer_batches = batches if outer_batch is None else self._as_batches(outer_batch, k, "F2SASolver")
        mu = self.penalty_at(self.steps_taken)
        z, z_state = self.theta(), self.inner_state
        y = z if self.y is None else self.y
        y_state = self.inner_optimizer.init(y) if self.y_state is None else self.y_state
        losses: list[torch.Tensor] = []
        for b, ob in zip(batches, outer_batches):
            z_in = tuple(t.detach().requires_grad_() for t in z)
            fz = self.inner_value(z_in, b, buffers)
            z, z_state = self._plain_update(z_in, self._grads(fz, z_in), z_state)
            losses.append(fz.detach())
            y_in = tuple(t.detach().requires_grad_() for t in y)
            fy = self.inner_value(y_in, b, buffers)
            gy = self.outer_value(y_in, ob, buffers)
            y, y_state = self._plain_update(y_in, self._grads(fy + gy / mu, y_in), y_state)

        lam = self._outer_params
        b, ob = batches[-1], outer_batches[-1]
        z_in, y_in = tuple(t.detach().requires_grad_() for t in z), tuple(t.detach().requires_grad_() for t in y)
        fz, fy, gy = self.inner_value(z_in, b, buffers), self.inner_value(y_in, b, buffers), \
            self.outer_value(y_in, ob, buffers)
        # d/dlambda [g(y) + mu (f(y) - f(z))] with y, z held fixed: one backward for all three terms.
        grads = self._lambda_grad(gy + mu * (fy - fz), lam, "inner_loss or outer_loss")
        if all(gr is None for gr in grads):
            self.outer_grad(gy)  # raises the "outer_loss does not depend on the outer parameters" error
        hypergrad = _zeros_for_none(grads, lam)
        extras = {"penalty": mu, "gap": float((fy - fz).detach())}
        carry = (tuple(t.detach() for t in y), _detach_tree(y_state))
        return _Result(hypergrad, tuple(t.detach() for t in z), z_state, losses, gy.detach(), extras, carry=carry)

    def _commit(self, carry: Any) -> None:
        self.y, self.y_state = carry
        self.steps_taken += 1

    def _extra_state(self) -> dict[str, Any]:
        y_leaves = None if self.y_state is None else [
            t.detach().clone() if isinstance(t, torch.Tensor) else t for t in torchopt.pytree.tree_leaves(self.y_state)]
        return {"y": None if self.y is None else [t.clone() for t in self.y], "y_state": y_leaves,
                "steps_taken": self.steps_taken}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        if "steps_taken" not in state:
            raise ValueError("F2SASolver.load_state_dict needs the 'y', 'y_state' and 'steps_taken' saved by "
                             "F2SASolver.state_dict()")
        self.y = self._vector(state["y"], "y")
        self.steps_taken = int(state["steps_taken"])
        if state["y_state"] is None or self.y is None:
            self.y_state = None
            return
        treedef = torchopt.pytree.tree_structure(self.inner_optimizer.init(self.y))
        like = self.y[0]
        leaves = [t.to(like.device).clone() if isinstance(t, torch.Tensor) else t for t in state["y_state"]]
        self.y_state = torchopt.pytree.tree_unflatten(treedef, leaves)
