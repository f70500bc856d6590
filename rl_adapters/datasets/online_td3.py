"""Online TD3 (Fujimoto et al. 2018) for collecting behaviour data: the suite's behaviour policy.

The critic step is TD3+BC's own (:func:`~rl_adapters.algorithms.td3bc.clipped_double_q_loss`, target
policy smoothing 0.2 / 0.5 of the action half-range); the actor maximises ``Q1(s, pi(s))`` with no BC
term, every 2 critic steps.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from ..algorithms.td3bc import clipped_double_q_loss
from ..networks import DeterministicActor, TwinCritic, soft_update
from .rollout import Policy

__all__ = ["OnlineTD3", "policy_from_actor"]


class OnlineTD3:
    """Plain TD3 for collecting behaviour data (not an offline algorithm): twin critics, target
    policy smoothing (0.2 / 0.5 of the action half-range), delayed actor updates every 2 steps."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        low: np.ndarray,
        high: np.ndarray,
        seed: int = 0,
        hidden: int = 256,
        lr: float = 3e-4,
        buffer_size: int = 1_000_000,
        device: str = "cpu",
    ) -> None:
        torch.manual_seed(seed)
        self.device = torch.device(device)
        self.actor = DeterministicActor(obs_dim, act_dim, low, high, (hidden, hidden)).to(self.device)
        self.critic = TwinCritic(obs_dim, act_dim, (hidden, hidden)).to(self.device)
        self.actor_t = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic_t = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=lr)
        self.half = torch.as_tensor((high - low) / 2, dtype=torch.float32, device=self.device)
        self.low = torch.as_tensor(low, dtype=torch.float32, device=self.device)
        self.high = torch.as_tensor(high, dtype=torch.float32, device=self.device)
        n = buffer_size
        self.buf = {
            "o": np.zeros((n, obs_dim), np.float32),
            "a": np.zeros((n, act_dim), np.float32),
            "r": np.zeros(n, np.float32),
            "o2": np.zeros((n, obs_dim), np.float32),
            "d": np.zeros(n, np.float32),
        }
        self.size = self.ptr = self.updates = 0
        self.rng = np.random.default_rng(seed)

    def add(self, o: np.ndarray, a: np.ndarray, r: float, o2: np.ndarray, terminated: bool) -> None:
        b, i = self.buf, self.ptr
        b["o"][i], b["a"][i], b["r"][i], b["o2"][i], b["d"][i] = o, a, r, o2, float(terminated)
        self.ptr = (self.ptr + 1) % len(b["r"])
        self.size = min(self.size + 1, len(b["r"]))

    @torch.no_grad()
    def act(self, obs: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        x = torch.as_tensor(np.asarray(obs, np.float32), device=self.device)[None]
        return self.actor(x)[0].cpu().numpy()

    def train_step(self, batch_size: int = 256, gamma: float = 0.99, tau: float = 0.005) -> None:
        idx = self.rng.integers(0, self.size, batch_size)
        o, a, r, o2, d = (
            torch.as_tensor(self.buf[k][idx], device=self.device) for k in ("o", "a", "r", "o2", "d")
        )
        loss, _ = clipped_double_q_loss(self.critic, self.critic_t, self.actor_t, o, a, r, o2, d,
                                        torch.randn_like(a) * 0.2 * self.half, 0.5 * self.half, self.low,
                                        self.high, gamma)
        self.critic_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.critic_opt.step()
        self.updates += 1
        if self.updates % 2 == 0:
            actor_loss = -self.critic.q1_only(o, self.actor(o)).mean()
            self.actor_opt.zero_grad(set_to_none=True)
            actor_loss.backward()
            self.actor_opt.step()
            soft_update(self.critic_t, self.critic, tau)
            soft_update(self.actor_t, self.actor, tau)


def policy_from_actor(actor: torch.nn.Module) -> Policy:
    @torch.no_grad()
    def pol(obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return actor(torch.as_tensor(np.asarray(obs, np.float32))[None])[0].numpy()

    return pol
