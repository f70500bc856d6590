"""Implicit Q-Learning (Kostrikov et al., 2021) with a deterministic tanh actor.

With rewards scaled by ``c = 1000 / (max_e R_e - min_e R_e)`` (MuJoCo-style dense rewards):

* value: ``min_psi E[L_tau(min_i Q'_i(s,a) - V(s))]``, ``L_tau(u) = |tau - 1(u < 0)| u^2``, ``tau = 0.7``;
* critic: ``min_theta sum_i E[(Q_i(s,a) - (c r + gamma (1 - done) V(s')))^2]``
  (both in :class:`~rl_adapters.algorithms.iql_value.IQLValue`, which VACO shares);
* actor (advantage-weighted regression): ``min_phi E[w ||pi(s) - a||^2]``,
  ``w = min(exp(beta (Q'(s,a) - V(s))), 100)``, ``beta = 3``; the actor lr follows a cosine decay
  over ``total_steps``;
* target critic Polyak-averaged every step.
"""

from __future__ import annotations

import dataclasses

import torch

from ..data import Batch
from .base import Algorithm, BaseConfig, adam, register
from .iql_value import build_iql_networks, expectile_loss

__all__ = ["IQL", "IQLConfig", "expectile_loss"]


@dataclasses.dataclass
class IQLConfig(BaseConfig):
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    value_lr: float = 3e-4
    expectile: float = 0.7
    beta: float = 3.0
    max_weight: float = 100.0
    normalize_reward: bool = True


@register
class IQL(Algorithm):
    name = "iql"
    stackable = True
    Config = IQLConfig
    config: IQLConfig

    def build(self) -> None:
        build_iql_networks(self)
        self.modules = {"actor": self.actor, **self.values.modules()}

    def build_optimizers(self) -> None:
        c = self.config
        self.actor_opt = adam(self.actor.parameters(), lr=c.actor_lr)
        self.actor_sched = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.actor_opt, T_max=max(1, self.total_steps)
        )
        self.optimizers = {"actor": self.actor_opt, **self.values.build_optimizers()}
        self.schedulers = {"actor": self.actor_sched}

    def update(self, batch: Batch) -> dict[str, float]:
        self.step += 1
        info, adv = self.value_critic_update(batch)
        # Advantage from before the value step, as in the paper.
        info.update(self.actor_update(batch, adv))
        return info

    def value_critic_update(self, batch: Batch) -> tuple[dict[str, float], torch.Tensor]:
        """The value learning step (:meth:`IQLValue.update`): diagnostics and the detached advantage."""
        return self.values.update(self, batch)

    def actor_update(self, batch: Batch, adv: torch.Tensor) -> dict[str, float]:
        """One advantage-weighted regression step (subclasses replace it)."""
        out = self.optimize("actor", self.actor_loss, batch, adv)
        self.actor_sched.step()
        return self.metrics(out) | {"actor_lr": self.actor_sched.get_last_lr()[0]}

    def actor_loss(self, batch: Batch, adv: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``mean min(exp(beta A), w_max) ||pi(s) - a||^2``."""
        c = self.config
        weight = torch.exp(c.beta * adv).clamp(max=c.max_weight)
        bc = (self.actor(batch.obs) - batch.actions).pow(2).sum(-1)
        loss = (weight * bc).mean()
        return loss, {"actor_loss": loss, "bc_loss": bc.mean()}
