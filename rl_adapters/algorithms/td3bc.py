"""TD3+BC (Fujimoto & Gu, 2021): TD3 whose actor loss adds a behaviour-cloning term.

Critic: ``min_theta sum_i (Q_i(s,a) - y)^2`` with
``y = r + gamma (1 - done) min_i Q'_i(s', clip(pi'(s') + eps, low, high))``,
``eps = clip(N(0, (0.2 h)^2), -0.5 h, 0.5 h)`` where ``h`` is the action half-range (max action).
Actor (every ``policy_freq`` critic steps): ``min_phi -lambda mean Q1(s, pi(s)) + mse(pi(s), a)``
with ``lambda = alpha / mean|Q1(s, pi(s))|`` (detached), ``alpha = 2.5``; targets are Polyak-averaged
at the same time. ``mse`` is ``F.mse_loss``, the mean over the batch *and* the action dimensions, as in
the authors' code and CORL: a sum over action dimensions would make alpha act like ``alpha / act_dim``.
``critic_hidden_layers=3, critic_layer_norm=True`` gives the "robust critic" of ASPC (paper 004, section 4.3);
``critic_init="aspc"`` adds its authors' initialisation (constant 0.1 hidden biases, output layer near 0).
"""

from __future__ import annotations

import copy
import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from ..data import Batch
from ..networks import CRITIC_INITS, DeterministicActor, TwinCritic, soft_update
from .base import Algorithm, BaseConfig, adam, register
from .options import AT_LEAST_0, AT_LEAST_1, learning_rate, option


def clipped_double_q_loss(
    critic: TwinCritic, critic_target: TwinCritic, actor_target: nn.Module, obs: torch.Tensor,
    actions: torch.Tensor, rewards: torch.Tensor, next_obs: torch.Tensor, dones: torch.Tensor,
    noise: torch.Tensor, noise_clip: torch.Tensor, low: torch.Tensor, high: torch.Tensor, discount: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """TD3's critic loss (offline here, online in :mod:`rl_adapters.datasets`), with target policy smoothing:

    ``a' = clip(pi'(s') + clip(noise, -c, c), low, high)``, ``y = r + gamma (1 - d) min_i Q'_i(s', a')``,
    ``L = mse(Q_1(s, a), y) + mse(Q_2(s, a), y)``, with ``noise = sigma xi``, ``xi ~ N(0, I)`` drawn by the caller
    (from its own generator). Returns ``(L, Q_1(s, a))``.
    """
    with torch.no_grad():
        noise = noise.clamp(-noise_clip, noise_clip)
        next_action = torch.max(torch.min(actor_target(next_obs) + noise, high), low)
        target_q = critic_target.min_q(next_obs, next_action)
        y = rewards + discount * (1.0 - dones) * target_q
    q1, q2 = critic(obs, actions)
    return F.mse_loss(q1, y) + F.mse_loss(q2, y), q1


@dataclasses.dataclass
class TD3BCConfig(BaseConfig):
    actor_lr: float = learning_rate(3e-4, "Adam learning rate of the actor")
    critic_lr: float = learning_rate(3e-4, "Adam learning rate of the twin critic")
    alpha: float = option(2.5, "weight of the Q term in the actor loss -(alpha / mean|Q1|) mean Q1 + mse(pi(s), a)",
                          range=AT_LEAST_0)
    policy_noise: float = option(0.2, "std of the target-policy smoothing noise added to pi'(s')", range=AT_LEAST_0,
                                 unit="action half-ranges")
    noise_clip: float = option(0.5, "the smoothing noise is clipped to [-noise_clip, noise_clip]", range=AT_LEAST_0,
                               unit="action half-ranges")
    policy_freq: int = option(2, "critic updates per actor and target-network update (TD3's delay)",
                              range=AT_LEAST_1, unit="critic updates")
    critic_hidden_layers: int = option(2, "hidden layers of each critic network (3 with --critic-layer-norm: "
                                       "ASPC's robust critic)", range=AT_LEAST_1, unit="layers")
    critic_layer_norm: bool = option(False, "LayerNorm after each hidden ReLU of the critic (ASPC's robust critic)")
    critic_init: str = option("torch", "critic initialisation: torch (PyTorch's default) or aspc (the ASPC authors': "
                              "constant 0.1 hidden biases, output layer near 0)", choices=CRITIC_INITS)


@register
class TD3BC(Algorithm):
    name = "td3bc"
    stackable = True
    Config = TD3BCConfig
    config: TD3BCConfig
    # Steps without an actor update report the last actor update's losses.
    checkpoint_attrs = ("_last_actor",)

    def build(self) -> None:
        c = self.config
        hidden = (c.hidden_dim, c.hidden_dim)
        self.actor = DeterministicActor(
            self.obs_dim, self.act_dim, self.stats.action_low, self.stats.action_high, hidden=hidden
        )
        self.critic = TwinCritic(
            self.obs_dim,
            self.act_dim,
            hidden=(c.hidden_dim,) * c.critic_hidden_layers,
            layer_norm=c.critic_layer_norm,
            init=c.critic_init,
        )
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.modules = {
            "actor": self.actor,
            "critic": self.critic,
            "actor_target": self.actor_target,
            "critic_target": self.critic_target,
        }

    def build_optimizers(self) -> None:
        self.actor_opt = adam(self.actor.parameters(), lr=self.config.actor_lr)
        self.critic_opt = adam(self.critic.parameters(), lr=self.config.critic_lr)
        self.optimizers = {"actor": self.actor_opt, "critic": self.critic_opt}

    def update(self, batch: Batch) -> dict[str, float]:
        c = self.config
        self.step += 1
        info = self.critic_update(batch)
        # --- delayed actor and target updates
        if self.step % c.policy_freq == 0:
            self._last_actor = self.actor_update(batch)
            soft_update(self.critic_target, self.critic, c.tau)
            soft_update(self.actor_target, self.actor, c.tau)
        info.update(getattr(self, "_last_actor", {}))
        return info

    def critic_update(self, batch: Batch) -> dict[str, float]:
        """One clipped double-Q step on the twin critic (subclasses reuse it)."""
        return self.metrics(self.optimize("critic", self.critic_loss, batch, self.normal(batch.actions)))

    def critic_loss(self, batch: Batch, xi: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """:func:`clipped_double_q_loss` with target-policy noise ``sigma h xi``, ``xi ~ N(0, I)``."""
        c = self.config
        center, half_range = self.actor.action_center, self.actor.action_scale
        loss, q1 = clipped_double_q_loss(
            self.critic, self.critic_target, self.actor_target, batch.obs, batch.actions, batch.rewards,
            batch.next_obs, batch.dones, xi * c.policy_noise * half_range, c.noise_clip * half_range,
            center - half_range, center + half_range, c.discount)
        return loss, {"critic_loss": loss, "q1": q1.mean()}

    def actor_update(self, batch: Batch) -> dict[str, float]:
        """One step on :meth:`actor_loss` (subclasses replace it)."""
        return self.metrics(self.optimize("actor", self.actor_loss, batch))

    def actor_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``-lambda mean Q1(s, pi(s)) + mse(pi(s), a)``, ``lambda = alpha / sg(mean |Q1(s, pi(s))|)``."""
        pi = self.actor(batch.obs)
        q = self.critic.q1_only(batch.obs, pi)
        lmbda = self.config.alpha / q.abs().mean().detach()
        bc_loss = F.mse_loss(pi, batch.actions)
        actor_loss = -lmbda * q.mean() + bc_loss
        return actor_loss, {"actor_loss": actor_loss, "bc_loss": bc_loss, "lambda": lmbda}
