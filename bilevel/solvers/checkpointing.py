"""Checkpointed reverse unroll (``KStepSolver(checkpoint=s)``): segments of s inner steps that store only
their inputs and recompute themselves in the backward pass.

A segment maps ``(theta_k, s_k; lambda) -> (theta_{k+s}, s_{k+s})`` with a given step function
``step(theta, state, batch, buffers, differentiable) -> (theta', state', f)``. Its forward pass runs the
steps without a graph; its backward pass re-runs them with ``create_graph=True`` from the saved inputs, the
same RNG state and the same buffer values, so the gradient is the plain unroll's, bit for bit, for
O(K / s) stored iterates and one extra forward unroll.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torchopt

__all__ = ["StepFn", "checkpointed_segment"]

#: ``step(theta, state, batch, buffers, differentiable) -> (theta', state', f(theta))``.
StepFn = Callable[[tuple[torch.Tensor, ...], Any, Any, dict[str, torch.Tensor], bool],
                  tuple[tuple[torch.Tensor, ...], Any, torch.Tensor]]


class _Segment(torch.autograd.Function):
    """Inner steps ``theta_{k+s}, s_{k+s} = U^s(theta_k, s_k; lambda)`` that save only their inputs.

    Forward runs the steps without a graph; backward re-runs them with ``create_graph=True`` from the
    saved inputs (same RNG state, same buffer values) and backpropagates through the recomputed
    segment to theta_k, the floating-point optimiser state s_k and lambda.
    """

    @staticmethod
    def forward(ctx: Any, step: StepFn, batches: list[Any], buffers: dict[str, torch.Tensor],
                layout: tuple[int, Any, list[bool]], losses: list[torch.Tensor],
                *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n_theta, spec, is_float = layout
        n_state = len(is_float)
        theta_in, state_in = tensors[:n_theta], tensors[n_theta:n_theta + n_state]
        ctx.step, ctx.batches, ctx.layout = step, batches, layout
        ctx.n_lam = len(tensors) - n_theta - n_state
        ctx.buffers = {n: b.clone() for n, b in buffers.items()}  # values at the segment's start
        ctx.rng = _rng_state(tensors)
        # lambda is read live in backward, as the losses read it: the outer module's own parameters
        ctx.lam = tensors[n_theta + n_state:]
        ctx.save_for_backward(*theta_in, *state_in)
        with torch.enable_grad():
            theta, state = tuple(theta_in), torchopt.pytree.tree_unflatten(spec, list(state_in))
            for batch in batches:
                theta, state, loss = step(theta, state, batch, buffers, False)
                losses.append(loss)
        out_state = torchopt.pytree.tree_leaves(state)
        ints = [t for t, f in zip(out_state, is_float) if not f]
        ctx.mark_non_differentiable(*ints)
        return (*theta, *out_state)

    @staticmethod
    def backward(ctx: Any, *grad_out: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        step, batches = ctx.step, ctx.batches
        n_theta, spec, is_float = ctx.layout
        saved = ctx.saved_tensors
        theta_in = tuple(t.detach().requires_grad_() for t in saved[:n_theta])
        state_in = [t.detach().requires_grad_() if f else t for t, f in zip(saved[n_theta:], is_float)]
        lam = ctx.lam
        with torch.enable_grad(), _restored_rng(ctx.rng):
            theta = theta_in
            state = torchopt.pytree.tree_unflatten(spec, state_in)
            buffers = {n: b.clone() for n, b in ctx.buffers.items()}
            for batch in batches:
                theta, state, _ = step(theta, state, batch, buffers, True)
            outs = list(theta) + list(torchopt.pytree.tree_leaves(state))
        pairs = [(o, g) for o, g in zip(outs, grad_out) if g is not None and o.requires_grad]
        inputs = list(theta_in) + [t for t, f in zip(state_in, is_float) if f] + list(lam)
        grads = torch.autograd.grad([o for o, _ in pairs], inputs, [g for _, g in pairs], allow_unused=True) \
            if pairs else [None] * len(inputs)
        grads = list(grads)
        g_theta, rest = grads[:n_theta], grads[n_theta:]
        g_state: list[torch.Tensor | None] = []
        for f in is_float:
            g_state.append(rest.pop(0) if f else None)
        return (None, None, None, None, None, *g_theta, *g_state, *rest)


def _rng_state(tensors: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    cuda = any(t.is_cuda for t in tensors)
    return torch.get_rng_state(), (torch.cuda.get_rng_state_all() if cuda else None)


class _restored_rng:
    """Re-run a segment with the global RNG as it was in its forward pass, then put it back."""

    def __init__(self, state: tuple[torch.Tensor, list[torch.Tensor] | None]) -> None:
        self.state = state

    def __enter__(self) -> None:
        self.saved = (torch.get_rng_state(), torch.cuda.get_rng_state_all() if self.state[1] is not None else None)
        torch.set_rng_state(self.state[0])
        if self.state[1] is not None:
            torch.cuda.set_rng_state_all(self.state[1])

    def __exit__(self, *exc: object) -> None:
        torch.set_rng_state(self.saved[0])
        if self.saved[1] is not None:
            torch.cuda.set_rng_state_all(self.saved[1])


def checkpointed_segment(
    step: StepFn, lam: Sequence[torch.Tensor], theta: tuple[torch.Tensor, ...], state: Any, batches: list[Any],
    buffers: dict[str, torch.Tensor], losses: list[torch.Tensor],
) -> tuple[tuple[torch.Tensor, ...], Any]:
    leaves, spec = torchopt.pytree.tree_flatten(state)
    is_float = [isinstance(t, torch.Tensor) and t.is_floating_point() for t in leaves]
    if not all(isinstance(t, torch.Tensor) for t in leaves):
        raise TypeError("KStepSolver(checkpoint=...) needs an inner optimiser whose state is made of tensors")
    layout = (len(theta), spec, is_float)
    out = _Segment.apply(step, batches, buffers, layout, losses, *theta, *leaves, *lam)
    theta_out = tuple(out[:len(theta)])
    state_out = torchopt.pytree.tree_unflatten(spec, list(out[len(theta):]))
    return theta_out, state_out
