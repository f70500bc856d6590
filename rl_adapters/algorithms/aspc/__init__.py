"""ASPC: adaptive scaling of policy constraints (paper 004), on TD3+BC and on IQL.

**ASPC** (``--algo aspc``) is TD3+BC with the robust critic (3 hidden layers, LayerNorm after each
ReLU) whose constraint scale ``alpha = softplus(rho)`` (initially 2.5) is learned by bi-level
optimisation.  With ``sg`` the stop-gradient:

* inner, every actor update: one *differentiable* Adam step (lr 3e-4) on

  ``J_in(phi; alpha) = -(alpha / sg(mean|Q1(s, pi_phi(s))|)) mean Q1(s, pi_phi(s)) + mse(pi_phi(s), a)``

  gives ``phi'``, which becomes the actor (``mse`` = ``F.mse_loss``, the mean over batch *and* action
  dimensions, as in TD3+BC's and the ASPC authors' code);
* outer, every ``update_interval`` actor updates, with ``q' = Q1(s, pi_phi'(s))``:

  - ``eq1 = -sg(alpha) mean q' / sg(mean|q'|) + mse(pi_phi'(s), a)`` (alpha enters only through phi');
  - ``m_t = (1 - d) mean q' + d m_{t-1}`` (``d = 0.995``, ``m_{t-1}`` a constant), ``eq2 = (m_t - m_{t-1})^2``;
    ``m_0 = 0`` as in the authors' code (``ema_init="zero"``), or the pre-step ``mean Q1(s, pi_phi(s))`` of
    the first outer batch (``ema_init="first_q"``);
  - ``b_i = mean_j (pi_phi(s_i)_j - a_ij)^2`` before the step (constant), ``b'_i`` after it,
    ``eq3 = sg(eq2) max_i b_i max_i |b_i - b'_i|``;
  - ``rho <- Adam(rho, d(eq1 + eq2 + eq3)/d rho)``, lr ``2e-3 * update_interval / 10`` decayed
    exponentially to 1% of that over a *fixed* horizon of ``outer_lr_horizon = 1e6`` training steps
    (the authors' ``gamma = 0.01^(1/50000)`` per outer update), whatever the length of the run.

  ``outer_terms`` selects the paper's ablation: ``eq1``, ``eq1+eq2``, ``eq1+eq3`` or ``all``
  (``eq1+eq3`` still uses eq2's *value* as eq3's weight, it only drops eq2 from the sum).

**ASPC-IQL** (``--algo aspc-iql``, paper section 5.6 / appendix D.1) makes IQL's temperature
``beta = softplus(rho)`` (initially 3.0) learnable the same way: the inner problem is the AWR step
``J_in(phi; beta) = mean min(exp(beta A(s,a)), 100) ||pi_phi(s) - a||^2`` (Adam, cosine-decayed lr),
the outer terms are the ones above with ``q' = min_i Q_i(s, pi_phi'(s))`` and unit weight on the
normalised Q term in eq1 (beta is not a Q scale); by default ``outer_terms = eq1+eq2``, the two terms
appendix D.1 names.

**Mapping onto ``bilevel``.** ``Problem(inner=actor, outer=ConstraintScale, inner_loss=J_in,
outer_loss=eq1+eq2+eq3)``; everything the losses need beyond (actor view, scale, batch) is either a
live network from the closure (the critic) or a pre-step constant carried in the :class:`ScaleBatch`
(``b_i``, ``m_{t-1}``, IQL's advantage).  On an outer-update actor step the solver's ``step`` takes the
differentiable Adam step, differentiates the outer loss through it (one-step, or the equivalent
``KStepSolver(steps=1)`` in forward or reverse mode) and keeps phi'; on the other actor steps the same
solver's ``inner_update`` takes the identical Adam step without building a graph. Both advance the
solver's optimiser state, so the actor has exactly one set of Adam moments.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from bilevel.functional import InnerView

from ...data import Batch
from ..base import adam, register
from ..iql import IQL
from ..td3bc import TD3BC
from .config import EMA_INITS, SOLVERS, AdaptiveScaleConfig, ASPCConfig, ASPCIQLConfig
from .losses import (
    ADAM_EPS_ROOT,
    OUTER_TERMS,
    ConstraintScale,
    OuterTerms,
    ScaleBatch,
    StopGrad,
    inverse_softplus,
    outer_terms,
)
from .scale import AdaptiveScale

__all__ = [
    "ADAM_EPS_ROOT",
    "ASPC",
    "ASPCIQL",
    "EMA_INITS",
    "OUTER_TERMS",
    "SOLVERS",
    "ASPCConfig",
    "ASPCIQLConfig",
    "AdaptiveScale",
    "AdaptiveScaleConfig",
    "ConstraintScale",
    "OuterTerms",
    "ScaleBatch",
    "StopGrad",
    "inverse_softplus",
    "outer_terms",
]


@register
class ASPC(AdaptiveScale, TD3BC):
    """TD3+BC + robust critic + learned constraint scale ``alpha`` (see the module docstring)."""

    name = "aspc"
    stackable = True
    Config = ASPCConfig
    config: ASPCConfig
    scale_name = "alpha"

    def build(self) -> None:
        super().build()
        self.build_scale()

    def build_optimizers(self) -> None:
        # The actor has no torch optimizer: its Adam is the solver's functional (differentiable) one.
        self.critic_opt = adam(self.critic.parameters(), lr=self.config.critic_lr)
        self.optimizers = {"critic": self.critic_opt}
        self.schedulers = {}
        self.build_bilevel()

    def inner_loss(self, actor: InnerView, scale: ConstraintScale, batch: ScaleBatch) -> torch.Tensor:
        pi = actor(batch.obs)
        q = self.critic.q1_only(batch.obs, pi)
        return -(scale() / q.abs().mean().detach()) * q.mean() + F.mse_loss(pi, batch.actions)

    def outer_q(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.critic.q1_only(obs, actions)

    def q_weight(self, scale: torch.Tensor) -> torch.Tensor:
        return scale

    def inner_lr(self) -> float:
        return self.config.actor_lr

    def initial_scale(self) -> float:
        return self.config.alpha

    def steps_per_actor_update(self) -> int:
        return self.config.policy_freq

    def actor_update(self, batch: Batch) -> dict[str, float]:
        return self.adaptive_actor_step(batch.obs, batch.actions)


@register
class ASPCIQL(AdaptiveScale, IQL):
    """IQL whose AWR temperature ``beta`` is learned like ASPC's alpha (see the module docstring)."""

    name = "aspc-iql"
    stackable = True
    Config = ASPCIQLConfig
    config: ASPCIQLConfig
    scale_name = "beta"

    def build(self) -> None:
        super().build()
        self.build_scale()

    def build_optimizers(self) -> None:
        self.optimizers = self.values.build_optimizers()
        self.schedulers = {}
        self.build_bilevel()

    def inner_loss(self, actor: InnerView, scale: ConstraintScale, batch: ScaleBatch) -> torch.Tensor:
        weight = torch.exp(scale() * batch.adv).clamp(max=self.config.max_weight)
        return (weight * (actor(batch.obs) - batch.actions).pow(2).sum(-1)).mean()

    def outer_q(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.critic.min_q(obs, actions)

    def q_weight(self, scale: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(scale)

    def _cosine_lr(self, count: torch.Tensor | int) -> torch.Tensor | float:
        """IQL's cosine decay ``lr_t = lr_0 (1 + cos(pi t / T)) / 2`` as a torchopt schedule of the step count."""
        t_max = max(1, self.total_steps)
        t = torch.clamp(torch.as_tensor(count, dtype=torch.float64), max=t_max)
        return self.config.actor_lr * 0.5 * (1.0 + torch.cos(math.pi * t / t_max))

    def inner_lr(self) -> Any:
        return self._cosine_lr

    def initial_scale(self) -> float:
        return self.config.beta

    def steps_per_actor_update(self) -> int:
        return 1

    def actor_update(self, batch: Batch, adv: torch.Tensor) -> dict[str, float]:
        info = self.adaptive_actor_step(batch.obs, batch.actions, adv)
        info["actor_lr"] = float(self._cosine_lr(self.actor_updates))
        return info
