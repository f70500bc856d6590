"""Mixed-mode K-step unroll (``KStepSolver(mode="mixed")``): forward-over-reverse Hessian-vector products in
the backward sweep (Kemaev et al. 2025, "Scalable meta-learning via mixed-mode differentiation").

Reverse mode differentiates the unroll by backpropagating through the graph of every step's gradient
computation (reverse-over-reverse): it keeps K graphs of ``grad_theta f`` alive. Mixed mode keeps only the
iterates. The forward unroll runs without a graph and stores ``theta_k`` and the optimiser state ``s_k``
(detached); the backward sweep then visits ``k = K-1, ..., 0`` and, from ``(theta_k, s_k)`` alone,

1. recomputes the inner gradient ``g_k = grad_theta f(theta_k, lambda; B_k)`` (plain, no graph kept);
2. backpropagates the adjoints ``(a_theta, a_s)`` of ``(theta_{k+1}, s_{k+1})`` through the optimiser's
   elementwise update ``U(theta_k, g_k, s_k; lambda)``, giving the direct terms and ``v = (dU/dg)^T a``;
3. gets ``(d/dtheta, d/dlambda) of <grad_theta f(theta_k, lambda), v>`` from one forward-over-reverse pass:
   theta_k carries the tangent v (``torch.autograd.forward_ad``) through ``f`` and through the backward
   pass of ``f`` (no ``create_graph``), so the tangent of ``grad_(theta, lambda) f`` is ``(H_tt v, H_lt v)``
   by the symmetry of second derivatives.

So at most one step's graph of ``f`` (no graph of its gradient) is alive at any time, and the stored
state is the K iterates (and optimiser states): O(K |theta|) numbers instead of K double-backward graphs.
The result is the derivative of the same unrolled map as reverse mode (identical up to round-off). The
iterates are saved with ``ctx.save_for_backward`` (so ``torch.autograd.graph.saved_tensors_hooks`` sees
them); per step the global RNG state and the buffer values are kept, so a loss with dropout or noise and
modules with running statistics are replayed exactly as in the forward unroll.

Routes to lambda other than ``outer.<attr>`` (an outer tensor captured in a loss, an inner optimiser built
with ``lr=hyper.lr``) are differentiated too: lambda enters the recomputations as the outer module's real
parameters, exactly as in reverse mode.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
import torchopt

from .checkpointing import StepFn, _restored_rng, _rng_state

__all__ = ["mixed_unroll"]

#: ``inner_value(theta, batch, buffers) -> f`` (0-d tensor).
ValueFn = Callable[[Sequence[torch.Tensor], Any, dict[str, torch.Tensor]], torch.Tensor]


def _forward_ad_error(err: RuntimeError) -> RuntimeError:
    return RuntimeError(
        "KStepSolver(mode='mixed') pushes a tangent through the inner loss and its backward pass with "
        f"torch.autograd.forward_ad, and an operation in the inner loss does not support it ({err}). "
        "Use hvp='reverse' (the same products by a double backward through one step's gradient), or "
        "mode='reverse', or give the custom autograd.Function a jvp")


class _MixedUnroll(torch.autograd.Function):
    """``(theta_{k+T}, s_{k+T}) = U^T(theta_k, s_k; lambda)``, differentiated in mixed mode.

    Inputs after the static arguments: theta (n_theta tensors), the tensor leaves of the optimiser state,
    then ``lam`` (the tensors to differentiate with respect to, read live by the losses and the optimiser).
    """

    @staticmethod
    def forward(ctx: Any, step: StepFn, value: ValueFn, optimizer: torchopt.base.GradientTransformation,
                batches: list[Any], buffers: dict[str, torch.Tensor], layout: tuple[int, Any, list[Any], str],
                losses: list[torch.Tensor], *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n_theta, spec, leaves, ctx.hvp = layout
        layout = layout[:3]
        n_state = sum(isinstance(x, torch.Tensor) for x in leaves)
        theta = tuple(tensors[:n_theta])
        state_t = list(tensors[n_theta:n_theta + n_state])
        ctx.lam = tensors[n_theta + n_state:]  # read live in backward, as the losses read them
        ctx.value, ctx.optimizer, ctx.batches, ctx.layout = value, optimizer, batches, layout
        ctx.n_state = n_state
        rngs, bufs, saved = [], [], []
        with torch.enable_grad():
            state = _unflatten(spec, leaves, state_t)
            for batch in batches:
                rngs.append(_rng_state(theta))
                bufs.append({n: b.clone() for n, b in buffers.items()})
                saved.extend(theta)
                saved.extend(state_t)
                theta, state, loss = step(theta, state, batch, buffers, False)
                state_t = [t for t in torchopt.pytree.tree_leaves(state) if isinstance(t, torch.Tensor)]
                losses.append(loss)
        ctx.rngs, ctx.bufs = rngs, bufs
        ctx.save_for_backward(*saved)
        ctx.mark_non_differentiable(*[t for t in state_t if not t.is_floating_point()])
        return (*theta, *state_t)

    @staticmethod
    def backward(ctx: Any, *grad_out: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        n_theta, spec, leaves = ctx.layout
        n_state, lam = ctx.n_state, list(ctx.lam)
        saved = ctx.saved_tensors
        width = n_theta + n_state
        a_theta = list(grad_out[:n_theta])
        a_state = list(grad_out[n_theta:])
        a_lam: list[torch.Tensor | None] = [None] * len(lam)
        with torch.enable_grad():
            for k in reversed(range(len(ctx.batches))):
                theta = saved[k * width:k * width + n_theta]
                state_t = saved[k * width + n_theta:(k + 1) * width]
                batch, rng, bufs = ctx.batches[k], ctx.rngs[k], ctx.bufs[k]
                # 1. the inner gradient at theta_k (as in the forward unroll: same RNG, same buffers); with
                # hvp="reverse" its graph is kept for this step's Hessian-vector product
                with _restored_rng(rng):
                    th = tuple(t.detach().requires_grad_() for t in theta)
                    loss = ctx.value(th, batch, {n: b.clone() for n, b in bufs.items()})
                    live = torch.autograd.grad(loss, th, allow_unused=True, create_graph=ctx.hvp == "reverse")
                    del loss
                grads = [torch.zeros_like(t) if gr is None else gr.detach() for gr, t in zip(live, theta)]
                # 2. backpropagate (a_theta, a_s) through the optimiser's update U(theta_k, g_k, s_k; lambda)
                d_theta, v, d_state, d_lam = _update_vjp(ctx.optimizer, spec, leaves, theta, grads, state_t, lam,
                                                         a_theta, a_state)
                # 3. (H_tt v, H_lt v): forward-over-reverse (tangent v on theta_k through f and its backward),
                # or a double backward through this one step's gradient
                if any(x is not None for x in v):
                    if ctx.hvp == "forward":
                        h_theta, h_lam = _hvp(ctx.value, theta, v, lam, batch, rng, bufs)
                    else:
                        h_theta, h_lam = _hvp_reverse(th, live, v, lam)
                    d_theta = [_add(a, b) for a, b in zip(d_theta, h_theta)]
                    d_lam = [_add(a, b) for a, b in zip(d_lam, h_lam)]
                del live, th
                a_lam = [_add(a, b) for a, b in zip(a_lam, d_lam)]
                a_theta, a_state = d_theta, d_state
        theta_in = [a if need else None for a, need in zip(a_theta, ctx.needs_input_grad[7:7 + n_theta])]
        state_in = [a if need else None for a, need in zip(a_state, ctx.needs_input_grad[7 + n_theta:7 + width])]
        return (None,) * 7 + (*theta_in, *state_in, *a_lam)


def _add(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    if a is None:
        return b
    return a if b is None else a + b


def _unflatten(spec: Any, leaves: list[Any], tensors: Sequence[torch.Tensor]) -> Any:
    """The optimiser state from its treedef, its non-tensor leaves (kept as they were) and its tensor leaves."""
    it = iter(tensors)
    return torchopt.pytree.tree_unflatten(spec, [next(it) if isinstance(x, torch.Tensor) else x for x in leaves])


def _update_vjp(
    optimizer: torchopt.base.GradientTransformation, spec: Any, leaves: list[Any], theta: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor], state_t: Sequence[torch.Tensor], lam: list[torch.Tensor],
    a_theta: Sequence[torch.Tensor | None], a_state: Sequence[torch.Tensor | None],
) -> tuple[list[torch.Tensor | None], list[torch.Tensor | None], list[torch.Tensor | None], list[torch.Tensor | None]]:
    """VJP of ``(theta', s') = U(theta, g, s; lambda)`` with ``(a_theta, a_s)``, with respect to theta, g, the
    floating-point state leaves and lambda (an optimiser built with ``lr=hyper.lr`` reads lambda)."""
    th = [t.detach().requires_grad_() for t in theta]
    gr = [g.detach().requires_grad_() for g in grads]
    st = [t.detach().requires_grad_() if t.is_floating_point() else t for t in state_t]
    updates, new_state = optimizer.update(tuple(gr), _unflatten(spec, leaves, st), params=tuple(th), inplace=False)
    new_theta = torchopt.apply_updates(tuple(th), updates, inplace=False)
    new_t = [t for t in torchopt.pytree.tree_leaves(new_state) if isinstance(t, torch.Tensor)]
    pairs = [(o, a) for o, a in zip(list(new_theta) + new_t, list(a_theta) + list(a_state))
             if a is not None and o.requires_grad]
    float_st = [t for t in st if t.is_floating_point()]
    inputs = th + gr + float_st + lam
    if not pairs:
        return [None] * len(th), [None] * len(gr), [None] * len(st), [None] * len(lam)
    out = list(torch.autograd.grad([o for o, _ in pairs], inputs, [a for _, a in pairs], allow_unused=True))
    d_theta, v = out[:len(th)], out[len(th):len(th) + len(gr)]
    rest = out[len(th) + len(gr):]
    d_state = [rest.pop(0) if t.is_floating_point() else None for t in st]
    return d_theta, v, d_state, rest


def _hvp(
    value: ValueFn, theta: Sequence[torch.Tensor], v: Sequence[torch.Tensor | None], lam: list[torch.Tensor],
    batch: Any, rng: Any, bufs: dict[str, torch.Tensor],
) -> tuple[list[torch.Tensor | None], list[torch.Tensor | None]]:
    """``(H_tt v, H_lt v)`` of ``f(theta, lambda; batch)``: the tangent of ``grad_(theta, lambda) f`` when theta
    carries the tangent v. Forward-over-reverse: the backward pass runs without ``create_graph`` and the
    forward-mode tangents ride through its operations, so no graph of the gradient is built."""
    try:
        with fwAD.dual_level(), _restored_rng(rng):
            th = tuple(fwAD.make_dual(t.detach(), torch.zeros_like(t) if d is None else d.detach()).requires_grad_()
                       for t, d in zip(theta, v))
            loss = value(th, batch, {n: b.clone() for n, b in bufs.items()})
            # A dense zero tangent on the seed: with none, autograd gives the backward pass's tangents as
            # efficient zero tensors, whose elementwise ops torch runs through slow Python decompositions.
            seed = fwAD.make_dual(torch.ones_like(fwAD.unpack_dual(loss).primal), torch.zeros_like(loss))
            grads = torch.autograd.grad(loss, list(th) + lam, seed, allow_unused=True)
            del loss, seed
            tangents = [None if g is None else fwAD.unpack_dual(g).tangent for g in grads]
    except RuntimeError as err:
        if "forward AD" in str(err) or "forward-mode" in str(err) or "jvp" in str(err):
            raise _forward_ad_error(err) from err
        raise
    tangents = [None if t is None else t.detach() for t in tangents]
    return tangents[:len(theta)], tangents[len(theta):]


def _hvp_reverse(
    theta: Sequence[torch.Tensor], grads: Sequence[torch.Tensor | None], v: Sequence[torch.Tensor | None],
    lam: list[torch.Tensor],
) -> tuple[list[torch.Tensor | None], list[torch.Tensor | None]]:
    """``(H_tt v, H_lt v)`` by a double backward through one step's gradient graph (``grads`` were taken with
    ``create_graph=True`` at ``theta``); the graph is freed afterwards."""
    pairs = [(g, d) for g, d in zip(grads, v) if g is not None and d is not None and g.requires_grad]
    if not pairs:
        return [None] * len(theta), [None] * len(lam)
    out = torch.autograd.grad([g for g, _ in pairs], list(theta) + lam, [d for _, d in pairs], allow_unused=True)
    out = [None if o is None else o.detach() for o in out]
    return out[:len(theta)], out[len(theta):]


def mixed_unroll(
    step: StepFn, value: ValueFn, optimizer: torchopt.base.GradientTransformation, lam: Sequence[torch.Tensor],
    theta: tuple[torch.Tensor, ...], state: Any, batches: list[Any], buffers: dict[str, torch.Tensor],
    losses: list[torch.Tensor], hvp: str = "forward",
) -> tuple[tuple[torch.Tensor, ...], Any]:
    """Run ``len(batches)`` inner steps from ``(theta, state)`` and return ``(theta_K, s_K)`` attached to a
    mixed-mode backward (see the module docstring); the inner losses are appended to ``losses``.

    ``step(theta, state, batch, buffers, False)`` is one plain inner step, ``value(theta, batch, buffers)`` the
    inner loss; ``lam`` are the tensors the backward differentiates with respect to (the outer parameters,
    and whatever else a caller wants checked, e.g. the inner module's stored parameters)."""
    leaves, spec = torchopt.pytree.tree_flatten(state)
    tensors = [x for x in leaves if isinstance(x, torch.Tensor)]
    layout = (len(theta), spec, leaves)
    out = _MixedUnroll.apply(step, value, optimizer, batches, buffers, (*layout, hvp), losses,
                             *(t.detach() for t in theta), *(t.detach() for t in tensors), *lam)
    theta_out = tuple(out[:len(theta)])
    return theta_out, _unflatten(spec, leaves, out[len(theta):])
