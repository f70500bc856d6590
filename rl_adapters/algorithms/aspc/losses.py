"""ASPC's outer variable (``softplus(rho)``), the batch its losses read, and its outer loss (eq1-eq3).

With ``q' = Q(s, pi_phi'(s))`` at the post-step policy and ``sg`` the stop-gradient:
``eq1 = -sg(w) mean q' / sg(mean|q'|) + mse(pi_phi'(s), a)``, ``m_t = (1 - d) mean q' + d m_{t-1}``,
``eq2 = (m_t - m_{t-1})^2``, ``eq3 = sg(eq2) max_i b_i max_i |b_i - b'_i|`` (see the package docstring).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ADAM_EPS_ROOT", "OUTER_TERMS", "ConstraintScale", "OuterTerms", "ScaleBatch", "StopGrad",
           "inverse_softplus", "outer_terms"]

#: ``outer_terms`` option -> (eq2 in the sum, eq3 in the sum); eq1 is always on.
OUTER_TERMS: dict[str, tuple[bool, bool]] = {
    "eq1": (False, False), "eq1+eq2": (True, False), "eq1+eq3": (False, True), "all": (True, True),
}

#: Added under Adam's square root: d sqrt(v)/dv is infinite at v = 0 (any weight whose gradient has
#: always been exactly 0, e.g. behind a dead ReLU), which makes the differentiated step 0 * inf = NaN.
#: 1e-16 keeps it finite and moves the update by < 1e-8 relative wherever sqrt(v) > 1e-4.
ADAM_EPS_ROOT = 1e-16


def inverse_softplus(y: float) -> float:
    """``rho`` with ``softplus(rho) = y``: ``log(exp(y) - 1)``, written to stay finite for small and large y."""
    if not y > 0:
        raise ValueError(f"a softplus-parameterised scale must be > 0, got {y}")
    return y + math.log(-math.expm1(-y))


class ConstraintScale(nn.Module):
    """The outer variable: ``scale = softplus(rho)`` (positive, smooth, never stuck at a bound)."""

    def __init__(self, initial: float) -> None:
        super().__init__()
        self.rho = nn.Parameter(torch.tensor(inverse_softplus(float(initial))))

    def forward(self) -> torch.Tensor:
        return F.softplus(self.rho)


class ScaleBatch(NamedTuple):
    """What the inner and outer losses read besides the networks.

    ``b_pre`` (``(B,)``, ``b_i`` before the step) and ``m_prev`` (0-d, ``m_{t-1}``) are constants
    computed before the solver call; they are ``None`` on actor steps without an outer update.
    ``adv`` is IQL's detached advantage (``None`` for TD3+BC).
    """

    obs: torch.Tensor
    actions: torch.Tensor
    adv: torch.Tensor | None = None
    b_pre: torch.Tensor | None = None
    m_prev: torch.Tensor | None = None


class StopGrad(NamedTuple):
    """Values for the stop-gradient factors of the outer loss: eq1's Q weight (``sg(alpha)`` for ASPC),
    ``sg(mean|q'|)`` and ``sg(eq2)``.

    Normally they are the detached live values; fixing them lets a finite-difference check
    differentiate exactly the function autograd differentiates.
    """

    q_weight: torch.Tensor
    q_abs: torch.Tensor
    eq2: torch.Tensor


class OuterTerms(NamedTuple):
    """The outer loss and its parts (see the module docstring); ``bc = mse(pi_phi'(s), a)``."""

    eq1: torch.Tensor
    eq2: torch.Tensor
    eq3: torch.Tensor
    ema: torch.Tensor
    bc: torch.Tensor
    total: torch.Tensor


def outer_terms(pi_new: torch.Tensor, q_new: torch.Tensor, batch: ScaleBatch, q_weight: torch.Tensor,
                ema_decay: float, use_eq2: bool, use_eq3: bool, stop_grad: StopGrad | None = None) -> OuterTerms:
    """ASPC's outer loss at the post-step policy.

    ``pi_new = pi_phi'(s)``, ``q_new = Q(s, pi_new)`` (``(B,)``), ``q_weight`` the (detached) weight
    of the normalised Q term in eq1.  ``total = eq1 [+ eq2] [+ eq3]`` per ``use_eq2`` / ``use_eq3``.
    ``stop_grad`` replaces the three stop-gradient factors by given constants.
    """
    if batch.b_pre is None or batch.m_prev is None:
        raise ValueError("outer_terms needs the pre-step constants b_pre and m_prev in the ScaleBatch")
    q_mean = q_new.mean()
    if stop_grad is None:
        q_abs = q_new.abs().mean().detach()
    else:
        q_weight, q_abs = stop_grad.q_weight, stop_grad.q_abs
    sq_err = (pi_new - batch.actions).pow(2)
    bc = sq_err.mean()  # F.mse_loss(pi_new, actions): batch and action dimensions
    eq1 = -q_weight * q_mean / q_abs + bc
    # The decay as a tensor, not a Python float: torch.func.jvp promotes the tangent of
    # ``python_float * 0-d tensor`` to float64, which would make KStepSolver(mode="forward")'s
    # hypergradient float64 and break its assignment to a float32 rho.grad.
    decay = torch.as_tensor(ema_decay, dtype=q_mean.dtype, device=q_mean.device)
    ema = (1 - decay) * q_mean + decay * batch.m_prev
    eq2 = (ema - batch.m_prev).pow(2)
    eq2_sg = eq2.detach() if stop_grad is None else stop_grad.eq2
    eq3 = eq2_sg * batch.b_pre.max() * (batch.b_pre - sq_err.mean(-1)).abs().max()
    total = eq1
    if use_eq2:
        total = total + eq2
    if use_eq3:
        total = total + eq3
    return OuterTerms(eq1, eq2, eq3, ema, bc, total)
