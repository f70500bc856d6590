"""IQL's value learning as one component: IQL, ASPC-IQL and VACO all learn their values with it.

With rewards scaled by ``c`` (``reward_scale``) and ``L_tau(u) = |tau - 1(u < 0)| u^2``:

* value: ``min_psi E[L_tau(min_i Q'_i(s,a) - V(s))]``;
* critic: ``min_theta sum_i E[(Q_i(s,a) - (c r + gamma (1 - done) V(s')))^2]``;
* target critic ``Q'`` Polyak-averaged (``tau``) after every critic step.
"""

from __future__ import annotations

import copy
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from ..data import Batch
from ..networks import DeterministicActor, TwinCritic, ValueNet, soft_update
from .base import adam

__all__ = ["IQLValue", "ValueConfig", "build_iql_networks", "expectile_loss"]


class ValueConfig(Protocol):
    """The config fields the value learning reads (IQL's and VACO's configs both have them)."""

    critic_lr: float
    value_lr: float
    expectile: float
    discount: float
    tau: float


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """``mean |tau - 1(u < 0)| u^2`` for ``u = diff``."""
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return (weight * diff.pow(2)).mean()


class IQLValue:
    """Twin critic ``Q``, its target ``Q'`` and ``V``, with their Adam optimisers and the update above.

    Construction draws the networks' initial weights from the global RNG in a fixed order (critic, then
    value), so hosts that build the same networks before it start from identical values. Call
    :meth:`build_optimizers` after the networks have moved to their device.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...], config: ValueConfig,
                 reward_scale: float) -> None:
        self.config = config
        self.reward_scale = reward_scale
        self.critic = TwinCritic(obs_dim, act_dim, hidden=hidden)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.value = ValueNet(obs_dim, hidden=hidden)

    def modules(self) -> dict[str, torch.nn.Module]:
        """The networks under the checkpoint names every host uses."""
        return {"critic": self.critic, "critic_target": self.critic_target, "value": self.value}

    #: Checkpoint names of the optimizers :meth:`build_optimizers` returns.
    OPTIMIZERS = ("critic", "value")

    def build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Adam on ``Q`` and on ``V``; returned under the checkpoint names every host uses (:data:`OPTIMIZERS`)."""
        self.critic_opt = adam(self.critic.parameters(), lr=self.config.critic_lr)
        self.value_opt = adam(self.value.parameters(), lr=self.config.value_lr)
        return {"critic": self.critic_opt, "value": self.value_opt}

    def update(self, host: Any, batch: Batch) -> tuple[dict[str, Any], torch.Tensor]:
        """Expectile value step, TD critic step and target update, taken through ``host.optimize`` (the
        :class:`~rl_adapters.algorithms.base.Algorithm` that registered these optimizers as ``value`` and
        ``critic``); returns diagnostics and the detached advantage ``min_i Q'_i(s,a) - V(s)`` (V before its
        step), IQL's actor input."""
        out = host.optimize("value", self.value_loss, batch)
        adv = out.pop("advantage")
        out |= host.optimize("critic", self.critic_loss, batch)
        soft_update(self.critic_target, self.critic, self.config.tau)
        return host.metrics(out), adv

    def value_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Expectile regression of ``V(s)`` on the target critic's ``min_i Q'_i(s, a)``."""
        with torch.no_grad():
            target_q = self.critic_target.min_q(batch.obs, batch.actions)
        adv = target_q - self.value(batch.obs)
        loss = expectile_loss(adv, self.config.expectile)
        return loss, {"value_loss": loss, "adv": adv.mean(), "advantage": adv}

    def critic_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One-step TD regression through ``V(s')`` (no max over actions)."""
        c = self.config
        with torch.no_grad():
            y = batch.rewards * self.reward_scale + c.discount * (1.0 - batch.dones) * self.value(batch.next_obs)
        q1, q2 = self.critic(batch.obs, batch.actions)
        loss = F.mse_loss(q1, y) + F.mse_loss(q2, y)
        return loss, {"critic_loss": loss}


def build_iql_networks(algo: Any) -> None:
    """Build IQL's networks on ``algo`` in IQL's order: the deterministic actor, then :class:`IQLValue`.

    Sets ``actor``, ``reward_scale``, ``values`` and, as shortcuts, ``critic`` / ``critic_target`` / ``value``.
    ``algo`` is an :class:`~rl_adapters.algorithms.base.Algorithm` whose config has IQL's fields; every host
    that builds through here (IQL, ASPC-IQL, VACO) draws identical initial weights from one seed.
    """
    c = algo.config
    hidden = (c.hidden_dim, c.hidden_dim)
    algo.actor = DeterministicActor(algo.obs_dim, algo.act_dim, algo.stats.action_low, algo.stats.action_high,
                                    hidden=hidden)
    algo.reward_scale = algo.stats.reward_scale if c.normalize_reward else 1.0
    algo.values = IQLValue(algo.obs_dim, algo.act_dim, hidden, c, algo.reward_scale)
    algo.critic, algo.critic_target, algo.value = algo.values.critic, algo.values.critic_target, algo.values.value
