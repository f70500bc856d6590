"""One-step hypergradient (the Markov / one-step assumption of VACO and ASPC).

.. math::

    \\theta_1(\\lambda) = U(\\theta_0, \\nabla_\\theta f(\\theta_0, \\lambda)), \\qquad
    \\frac{dG}{d\\lambda} = \\partial_\\lambda g(\\theta_1, \\lambda)
        + \\Big(\\frac{\\partial \\theta_1}{\\partial \\lambda}\\Big)^{\\!\\top} \\nabla_\\theta g(\\theta_1, \\lambda)

with ``theta_0`` treated as a constant (d theta_0 / d lambda = 0). Cost: one inner gradient with
``create_graph=True`` plus one backward through it, about 3x an ordinary training step; memory one
step's graph. Biased when theta_0 itself depends on lambda (it does after training), but cheap and,
for slowly moving lambda, usually aligned with the true hypergradient.
"""

from __future__ import annotations

from typing import Any

import torch
import torchopt

from ..problem import Problem
from .base import Solver, _Result, resolve_outer_batch


class OneStepSolver(Solver):
    """Hypergradient through one differentiable inner-optimiser step (the Markov / one-step assumption).

    Per call, with ``B`` the inner batch and ``B'`` the outer batch:

    .. math::

        \\theta_1(\\lambda) = U(\\theta_0, \\nabla_\\theta f(\\theta_0, \\lambda; B), s_0), \\qquad
        \\frac{dG}{d\\lambda} \\approx \\partial_\\lambda g(\\theta_1, \\lambda; B')
            + \\Big(\\frac{\\partial \\theta_1}{\\partial \\lambda}\\Big)^{\\!\\top} \\nabla_\\theta g(\\theta_1, \\lambda; B')

    where ``U`` is the inner optimiser's update (with its state ``s_0``: momentum, Adam moments) and
    theta_0, the current inner parameters, is treated as a constant (d theta_0 / d lambda = 0).

    **Bias.** The true hypergradient differentiates theta*(lambda), which depends on lambda through
    the whole inner trajectory; one step sees only the last step's dependence. The estimate is
    therefore biased whenever theta_0 itself depends on lambda (always, after training). With SGD (lr
    eta) on a quadratic inner loss, d theta_1 / d lambda = -eta d2f/dtheta dlambda where the implicit
    derivative is -H^{-1} d2f/dtheta dlambda: the estimate replaces H^{-1} by eta I, so it is a
    preconditioned (not a scaled) hypergradient, aligned with the true one only loosely when H is
    ill-conditioned. It is exact for ``dG/dlambda`` of the one-step
    objective ``g(theta_1(lambda), lambda)``, which is what VACO and ASPC optimise. Use
    :class:`KStepSolver` or :class:`ImplicitSolver` when the long-horizon derivative matters.

    Cost: one inner gradient with ``create_graph=True`` and one backward through it (~3 inner
    gradients); memory one step's graph.

    Args:
        problem, inner_optimizer, outer_optimizer: see :meth:`Solver.__init__`.

    Batches: ``step(inner_batch, outer_batch=None)`` takes one inner batch B (a ``list`` of exactly one
    batch is accepted too); ``outer_batch=None`` evaluates g on the inner batch (B' = B).
    ``step`` keeps theta_1 as the new inner parameters and takes one outer-optimiser step.

    Example::

        s = bilevel.OneStepSolver(problem, inner_optimizer=torchopt.sgd(lr=0.1),
                                  outer_optimizer=torch.optim.Adam(hyper.parameters(), 1e-3))
        info = s.step(batch)          # theta <- theta_1, lambda <- Adam step on dG/dlambda
    """

    def __init__(
        self,
        problem: Problem,
        inner_optimizer: torchopt.base.GradientTransformation,
        outer_optimizer: torch.optim.Optimizer,
    ) -> None:
        """See the class docstring; the arguments are those of :meth:`Solver.__init__`."""
        super().__init__(problem, inner_optimizer, outer_optimizer)

    def _uses_inner_hessian(self) -> bool:
        return False  # d theta_1 / d lambda needs only the mixed derivative d2 f / d theta d lambda

    def _solve(self, inner_batch: Any, outer_batch: Any, buffers: dict[str, torch.Tensor]) -> _Result:
        if isinstance(inner_batch, list):
            [inner_batch] = self._as_batches(inner_batch, 1, "OneStepSolver")
        theta1, state1, f0 = self.inner_step(self.theta(), self.inner_state, inner_batch, buffers, True)
        g1 = self.outer_value(theta1, resolve_outer_batch([inner_batch], outer_batch), buffers)
        hypergrad = self.outer_grad(g1)
        return _Result(hypergrad, tuple(t.detach() for t in theta1), state1, [f0], g1.detach())
