"""Implicit Q-Learning (Kostrikov et al., 2021) with a deterministic tanh actor.

With rewards scaled by ``c = 1000 / (max_e R_e - min_e R_e)`` (MuJoCo-style dense rewards):

* value: ``min_psi E[L_tau(min_i Q'_i(s,a) - V(s))]``, ``L_tau(u) = |tau - 1(u < 0)| u^2``, ``tau = 0.7``;
* critic: ``min_theta sum_i E[(Q_i(s,a) - (c r + gamma (1 - done) V(s')))^2]``;
* actor (advantage-weighted regression): ``min_phi E[w ||pi(s) - a||^2]``,
  ``w = min(exp(beta (Q'(s,a) - V(s))), 100)``, ``beta = 3``; the actor lr follows a cosine decay
  over ``total_steps``;
* target critic Polyak-averaged every step.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
import torch.nn.functional as F

from ..data import Batch
from ..networks import DeterministicActor, TwinCritic, ValueNet, soft_update
from .base import Algorithm, BaseConfig


@dataclasses.dataclass
class IQLConfig(BaseConfig):
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    value_lr: float = 3e-4
    expectile: float = 0.7
    beta: float = 3.0
    max_weight: float = 100.0
    normalize_reward: bool = True


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """``mean |tau - 1(u < 0)| u^2`` for ``u = diff``."""
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return (weight * diff.pow(2)).mean()


class IQL(Algorithm):
    name = "iql"
    Config = IQLConfig
    config: IQLConfig

    def build(self) -> None:
        c = self.config
        hidden = (c.hidden_dim, c.hidden_dim)
        self.actor = DeterministicActor(
            self.obs_dim, self.act_dim, self.stats.action_low, self.stats.action_high, hidden=hidden
        )
        self.critic = TwinCritic(self.obs_dim, self.act_dim, hidden=hidden)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.value = ValueNet(self.obs_dim, hidden=hidden)
        self.modules = {
            "actor": self.actor,
            "critic": self.critic,
            "critic_target": self.critic_target,
            "value": self.value,
        }
        self.reward_scale = self.stats.reward_scale if c.normalize_reward else 1.0

    def build_optimizers(self) -> None:
        c = self.config
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=c.actor_lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=c.critic_lr)
        self.value_opt = torch.optim.Adam(self.value.parameters(), lr=c.value_lr)
        self.actor_sched = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.actor_opt, T_max=max(1, self.total_steps)
        )
        self.optimizers = {"actor": self.actor_opt, "critic": self.critic_opt, "value": self.value_opt}
        self.schedulers = {"actor": self.actor_sched}

    def update(self, batch: Batch) -> dict[str, float]:
        self.step += 1
        info, adv = self.value_critic_update(batch)
        # Advantage from before the value step, as in the paper.
        info.update(self.actor_update(batch, adv))
        return info

    def value_critic_update(self, batch: Batch) -> tuple[dict[str, float], torch.Tensor]:
        """Expectile value step, TD critic step and target update; returns diagnostics and the detached
        advantage ``min_i Q'_i(s,a) - V(s)`` (V before its step) for the actor."""
        c = self.config
        rewards = batch.rewards * self.reward_scale
        # --- value: expectile of the target critic's min-Q
        with torch.no_grad():
            target_q = self.critic_target.min_q(batch.obs, batch.actions)
        v = self.value(batch.obs)
        adv = target_q - v
        value_loss = expectile_loss(adv, c.expectile)
        self.value_opt.zero_grad(set_to_none=True)
        value_loss.backward()
        self.value_opt.step()
        # --- critic: one-step TD target through V(s') (no max over actions)
        with torch.no_grad():
            y = rewards + c.discount * (1.0 - batch.dones) * self.value(batch.next_obs)
        q1, q2 = self.critic(batch.obs, batch.actions)
        critic_loss = F.mse_loss(q1, y) + F.mse_loss(q2, y)
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_opt.step()
        soft_update(self.critic_target, self.critic, c.tau)
        info = {"value_loss": value_loss.item(), "critic_loss": critic_loss.item(), "adv": adv.mean().item()}
        return info, adv.detach()

    def actor_update(self, batch: Batch, adv: torch.Tensor) -> dict[str, float]:
        """One advantage-weighted regression step (subclasses replace it)."""
        c = self.config
        weight = torch.exp(c.beta * adv).clamp(max=c.max_weight)
        bc = (self.actor(batch.obs) - batch.actions).pow(2).sum(-1)
        actor_loss = (weight * bc).mean()
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_opt.step()
        self.actor_sched.step()
        return {
            "actor_loss": actor_loss.item(),
            "bc_loss": bc.mean().item(),
            "actor_lr": self.actor_sched.get_last_lr()[0],
        }
