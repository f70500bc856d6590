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

from .base import Solver, _Result, resolve_outer_batch


class OneStepSolver(Solver):
    """Hypergradient through one differentiable inner-optimiser step.

    Example::

        s = bilevel.OneStepSolver(problem, inner_optimizer=torchopt.sgd(lr=0.1),
                                  outer_optimizer=torch.optim.Adam(hyper.parameters(), 1e-3))
        info = s.step(batch)          # theta <- theta_1, lambda <- Adam step on dG/dlambda
    """

    def _solve(self, inner_batch: Any, outer_batch: Any, buffers: dict[str, torch.Tensor]) -> _Result:
        if isinstance(inner_batch, list):
            [inner_batch] = self._as_batches(inner_batch, 1, "OneStepSolver")
        theta1, state1, f0 = self.inner_step(self.theta(), self.inner_state, inner_batch, buffers, True)
        g1 = self.outer_value(theta1, resolve_outer_batch([inner_batch], outer_batch), buffers)
        hypergrad = self.outer_grad(g1)
        return _Result(hypergrad, tuple(t.detach() for t in theta1), state1, [f0], g1.detach())
