"""K-step unrolled hypergradient, in reverse, forward or mixed mode.

.. math::

    \\theta_{k+1} = U(\\theta_k, \\nabla_\\theta f(\\theta_k, \\lambda; B_k), s_k), \\qquad
    \\frac{dG}{d\\lambda} = \\partial_\\lambda g(\\theta_K, \\lambda) +
        \\Big(\\frac{d \\theta_K}{d \\lambda}\\Big)^{\\!\\top} \\nabla_\\theta g(\\theta_K, \\lambda)

The derivative is the exact derivative of the unrolled map, optimiser state ``s_k`` (momentum, Adam
moments) included. ``truncate=T`` differentiates only the last T steps (theta_{K-T} and s_{K-T} are
constants), which bounds memory and variance at the price of bias.

* ``mode="reverse"`` backpropagates through the stored unroll: memory O(K * |theta|), time ~3K
  inner steps, independent of the number of outer parameters.
* ``mode="forward"`` pushes a tangent d theta_k / d lambda_i through the unroll with forward-mode
  AD (``torch.func.jvp`` over ``torch.func.grad``): memory independent of K, time ~3K inner steps
  *per scalar outer parameter*. Pick it for a handful of hyperparameters and long unrolls
  (:mod:`.forward_mode`).
* ``mode="mixed"`` stores only the iterates theta_k (and optimiser states) in the forward unroll and
  runs the backward sweep step by step with forward-over-reverse Hessian-vector products (Kemaev et al.
  2025): memory O(K * |theta|) numbers but no graph of any gradient kept, time ~4-5K inner steps,
  independent of the number of outer parameters (:mod:`.mixed_mode`).
* ``checkpoint=s`` (reverse mode) stores every s-th iterate and recomputes segments in the backward
  pass (:mod:`.checkpointing`).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torchopt

from ..problem import Problem
from .base import Solver, _detach_tree, _Result, resolve_outer_batch
from .checkpointing import checkpointed_segment
from .forward_mode import Unroll, forward_hypergradient
from .mixed_mode import mixed_unroll
from .options import HVPS, MODES, check_forward_size


class KStepSolver(Solver):
    """Hypergradient of the K-step unrolled inner optimisation.

    Per call, with ``B_k`` the inner batches and ``B'`` the outer batch:

    .. math::

        \\theta_{k+1} = U(\\theta_k, \\nabla_\\theta f(\\theta_k, \\lambda; B_k), s_k) \\;(k < K), \\qquad
        \\frac{dG}{d\\lambda} = \\partial_\\lambda g(\\theta_K, \\lambda; B') +
            \\Big(\\frac{d \\theta_K}{d \\lambda}\\Big)^{\\!\\top} \\nabla_\\theta g(\\theta_K, \\lambda; B')

    the exact derivative of the unrolled map, optimiser state ``s_k`` included, with theta_0 and s_0
    constants. With ``truncate=T`` only the last T steps are differentiated (theta_{K-T}, s_{K-T}
    constants): less memory and variance, more bias. As K grows (and the inner problem is strongly
    convex) the unrolled derivative converges to the implicit one.

    Args:
        problem, inner_optimizer, outer_optimizer: see :meth:`Solver.__init__`.
        steps: K >= 1, inner steps per call.
        truncate: differentiate only the last ``truncate`` steps, an int in [1, K] (``None``: all K).
        mode: ``"reverse"`` (backpropagate through the stored unroll: memory O(K |theta|), time ~3K
            inner gradients, independent of the number of outer parameters) or ``"forward"``
            (forward-mode AD: memory independent of K, time ~3K inner gradients per scalar outer
            parameter; a warning is raised above 64 outer scalars). Tangents enter through ``outer.<attr>``;
            other routes to lambda (a captured outer tensor, ``torchopt.sgd(lr=hyper.lr)``) are added by
            reverse mode through the graph they leave, or raise a ``ValueError`` pointing to ``"reverse"``
            where forward mode falls back to one ``torch.autograd.forward_ad`` pass per direction.
            ``"mixed"``: the same derivative as reverse mode, computed from the stored iterates alone
            (forward unroll without a graph; backward sweep recomputes each step's inner gradient and
            gets the Hessian-vector products it needs by forward-over-reverse AD): at most one step's
            graph of ``f`` alive, no graph of its gradient; every route to lambda is differentiated, as in
            reverse mode. Needs forward-mode AD support for the ops of ``inner_loss``.
        hvp: mixed mode only: ``"forward"`` (default; forward-over-reverse, ``torch.autograd.forward_ad``, the
            mixed-mode method proper) or ``"reverse"`` (a double backward through the one step's gradient graph:
            the same numbers, one step's graph of the gradient alive at a time; faster in eager torch 2.13,
            whose forward-mode AD pays a Python-level cost per op that mixes a dual and a plain tensor, see
            docs/benchmarks.md, "mixed_mode"). ``None``: ``"forward"``.
        checkpoint: reverse mode only; store the unroll every ``checkpoint`` steps and recompute each
            segment in the backward pass (same RNG, same buffers: the result is identical), trading
            one extra forward unroll for O(K / checkpoint) stored iterates. ``None``: store everything.

    Batches: ``inner_batch`` is one batch reused K times or a ``list`` of exactly K batches (a single
    batch that is itself a list must be passed as a tuple); ``outer_batch=None`` evaluates g on the last
    inner batch. ``step`` keeps theta_K and takes one outer-optimiser step.

    Raises:
        ValueError: bad ``steps`` / ``truncate`` / ``mode`` / ``checkpoint``, or a batch list of the wrong
            length; RuntimeError (forward mode) when a loss updates tensors in place.
    """

    def __init__(
        self,
        problem: Problem,
        inner_optimizer: torchopt.base.GradientTransformation,
        outer_optimizer: torch.optim.Optimizer,
        steps: int = 5,
        truncate: int | None = None,
        mode: Literal["reverse", "forward", "mixed"] = "reverse",
        checkpoint: int | None = None,
        hvp: Literal["forward", "reverse"] | None = None,
    ) -> None:
        super().__init__(problem, inner_optimizer, outer_optimizer)
        self.check_options(steps=steps, truncate=truncate, mode=mode, checkpoint=checkpoint, hvp=hvp)
        self.hvp = "forward" if hvp is None else hvp
        self.steps = steps
        self.truncate = steps if truncate is None else truncate
        self.mode = mode
        self.checkpoint = checkpoint
        check_forward_size(mode, sum(p.numel() for p in self._outer_params))

    @staticmethod
    def check_options(steps: int = 5, truncate: int | None = None, mode: str = "reverse",
                      checkpoint: int | None = None, hvp: str | None = None) -> None:
        """Raise ``ValueError`` for options no problem can use (the constructor's and
        :func:`bilevel.make_solver`'s one check)."""
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"KStepSolver steps must be an int >= 1, got {steps!r}")
        if truncate is not None and (not isinstance(truncate, int) or not 1 <= truncate <= steps):
            raise ValueError(f"KStepSolver truncate must be None or an int in [1, steps={steps}], got {truncate!r}")
        if mode not in MODES:
            raise ValueError(f"KStepSolver mode must be one of {', '.join(repr(m) for m in MODES)}, got {mode!r}")
        if checkpoint is not None and (not isinstance(checkpoint, int) or checkpoint < 1):
            raise ValueError(f"KStepSolver checkpoint must be None or a segment length >= 1, got {checkpoint!r}")
        if checkpoint is not None and mode != "reverse":
            raise ValueError("KStepSolver checkpoint applies to mode='reverse' only (forward mode stores no unroll, "
                             "mixed mode stores only the iterates)")
        if hvp is not None and hvp not in HVPS:
            raise ValueError(f"KStepSolver hvp must be None or one of {', '.join(repr(h) for h in HVPS)}, got {hvp!r}")
        if hvp is not None and mode != "mixed":
            raise ValueError("KStepSolver hvp applies to mode='mixed' only (how its backward sweep takes "
                             "Hessian-vector products)")

    def _uses_inner_hessian(self) -> bool:
        return self.truncate > 1  # one differentiated step needs only the mixed derivative

    def _solve(self, inner_batch: Any, outer_batch: Any, buffers: dict[str, torch.Tensor]) -> _Result:
        batches = self._as_batches(inner_batch, self.steps, "KStepSolver")
        outer_batch = resolve_outer_batch(batches, outer_batch)
        theta, state = self.theta(), self.inner_state
        losses: list[torch.Tensor] = []
        frozen = self.steps - self.truncate
        for batch in batches[:frozen]:
            theta, state, loss = self.inner_step(theta, state, batch, buffers, differentiable=False)
            losses.append(loss)
        live = batches[frozen:]
        if self.mode == "mixed":
            # Differentiate with respect to the stored inner parameters too: a loss that read a tensor taken
            # from the real module then gets a gradient there and outer_grad raises StoredParameterError.
            lam = list(self._outer_params) + self._stored_inner()
            theta, state = mixed_unroll(self.inner_step, self.inner_value, self.inner_optimizer, lam, theta, state,
                                        live, buffers, losses, hvp=self.hvp)
            g = self.outer_value(theta, outer_batch, buffers)
            hypergrad = self.outer_grad(g)
            return _Result(hypergrad, tuple(t.detach() for t in theta), _detach_tree(state), losses, g.detach())
        if self.mode == "reverse" and self.checkpoint is not None:
            for start in range(0, len(live), self.checkpoint):
                theta, state = checkpointed_segment(self.inner_step, self._outer_params, theta, state,
                                                    live[start:start + self.checkpoint],
                                                     buffers, losses)
        if self.mode == "reverse":
            if self.checkpoint is None:
                for batch in live:
                    theta, state, loss = self.inner_step(theta, state, batch, buffers, differentiable=True)
                    losses.append(loss)
            g = self.outer_value(theta, outer_batch, buffers)
            hypergrad = self.outer_grad(g)
            return _Result(hypergrad, tuple(t.detach() for t in theta), state, losses, g.detach())
        unroll = Unroll(self.inner_value, self.outer_value, self.inner_optimizer, self.problem.outer,
                        self._outer_params, self._outer_names, self._stored_inner(), self._inner_names, self.aux)
        hypergrad, (theta, state, step_losses, g) = forward_hypergradient(unroll, theta, state, live, outer_batch,
                                                                          buffers)
        return _Result(hypergrad, tuple(t.detach() for t in theta), _detach_tree(state),
                       losses + [x.detach() for x in step_losses], g.detach())
