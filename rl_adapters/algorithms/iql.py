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
from .options import AT_LEAST_0, POSITIVE, learning_rate, option

__all__ = ["IQL", "IQLConfig", "expectile_loss"]


@dataclasses.dataclass
class IQLConfig(BaseConfig):
    actor_lr: float = learning_rate(3e-4, "initial Adam learning rate of the actor, cosine-decayed to 0 over --steps")
    critic_lr: float = learning_rate(3e-4, "Adam learning rate of the twin critic")
    value_lr: float = learning_rate(3e-4, "Adam learning rate of the state-value network V")
    expectile: float = option(0.7, "expectile of V's regression onto min_i Q'_i(s, a): 0.5 is the mean, near 1 the "
                              "max over the data's actions", range=(0, 1, True, True))
    beta: float = option(3.0, "inverse temperature of the actor's advantage weights exp(beta A)", range=AT_LEAST_0,
                         unit="per unit of advantage")
    max_weight: float = option(100.0, "cap on the advantage weights exp(beta A)", range=POSITIVE)
    normalize_reward: bool = option(True, "scale rewards by 1000 / (max - min episode return), IQL's locomotion "
                                    "setting (--no-normalize-reward: raw rewards)")


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
