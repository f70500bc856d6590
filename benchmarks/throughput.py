"""Updates/s of our offline-RL algorithms beside plain CORL-style loops of the same algorithms (issue #17).

    python -m benchmarks.throughput                                  # bc,td3bc,iql,vaco,aspc; hopper medium; 1 thread
    python -m benchmarks.throughput --algos bc,td3bc,iql --repeats 3 --write
    python -m benchmarks.throughput --dataset synthetic --seconds 1  # no dataset needed

For every algorithm two variants run in this one process, interleaved (repeat r runs ours then plain, repeat
r + 1 plain then ours, ...), each for ``--seconds`` of updates after a short warm-up; the table gives the
median updates/s of each and the ratio of the medians (the per-repeat ratios show the spread). A loaded
machine moves both variants alike, so the ratio is the number to read.

* **ours**: ``rl_adapters.algorithms.make_algorithm(name, ...)`` fed ``data.sample(batch, generator)``,
  exactly what ``bilevel-rl train`` runs per update (diagnostics included).
* **plain**: the same algorithm written the way CORL writes it (plain ``nn.Sequential`` networks, default
  ``torch.optim.Adam``, one optimizer per network, CORL's update order, its ``soft_update``, its replay
  buffer sampled with ``np.random.randint``, the ``.item()`` logging of its ``train``). BC, TD3+BC and IQL
  follow CORL's ``any_percent_bc.py``, ``td3_bc.py`` and ``iql.py`` (IQL with its deterministic policy, which
  is the policy ours has). CORL has no VACO or ASPC; their plain loops are the simplest honest equivalents,
  written here: for VACO one-step, the weighted-BC inner loss of a meta-scorer, one differentiable Adam
  step of the actor (``torch.autograd.grad(create_graph=True)`` and a hand-written Adam), the outer loss
  ``-min Q'(s, pi_phi'(s + sigma eps))`` (+ the weight KL) back-propagated into the scorer, frozen value
  networks (the bi-level phase); for ASPC, TD3+BC with the 3-hidden-layer LayerNorm critic (ASPC's
  initialisation), a hand-written functional Adam for the actor and, every 10th actor update, a
  differentiable one-step update whose outer loss trains the scale ``alpha = softplus(rho)``.

``--write`` replaces the "throughput" section of docs/benchmarks.md. Besides the single-seed rows:
:func:`seeds_rows` (N seeds of ours in one process, ``SeedStack``: seed-updates/s for N = 1, 4, 16),
:func:`batched_plain_rows` (N TD3+BC seeds batched by hand in plain torch, :class:`PlainTD3BCBatched`, against
the same loop with one seed: what batching alone buys) and :func:`compiled_rows` (``torch.compile``'d updates).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import json
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ALGOS = ("bc", "td3bc", "iql", "vaco", "aspc")
#: Our algorithm's hyper-parameters per benchmark name (defaults otherwise). VACO: the one-step solver, and
#: no value phase, so every measured update is a bi-level one.
OURS_HPARAMS: dict[str, dict[str, Any]] = {
    "bc": {},
    "td3bc": {},
    "iql": {},
    "vaco": {"solver": "one_step", "value_fraction": 0.0},
    "aspc": {},
}
ALGO_LABELS = {"bc": "BC", "td3bc": "TD3+BC", "iql": "IQL", "vaco": "VACO one-step", "aspc": "ASPC"}
PLAIN_LABELS = {
    "bc": "CORL any_percent_bc",
    "td3bc": "CORL td3_bc",
    "iql": "CORL iql (deterministic policy)",
    "vaco": "plain VACO one-step (written here)",
    "aspc": "plain ASPC: TD3+BC, LN critic, functional Adam (written here)",
}
SYNTHETIC = "synthetic"
HIDDEN = 256


# ============================================================================================ data
def synthetic_dataset(n: int = 100_000, obs_dim: int = 11, act_dim: int = 3, episode_len: int = 500,
                      seed: int = 0, device: str = "cpu") -> Any:
    """A random :class:`OfflineData` (hopper-sized by default), for running without a dataset."""
    from rl_adapters.data import OfflineData

    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, obs_dim, generator=g)
    next_obs = torch.randn(n, obs_dim, generator=g)
    actions = torch.rand(n, act_dim, generator=g) * 2 - 1
    rewards = torch.randn(n, generator=g)
    ep = torch.arange(n) // episode_len
    dones = ((torch.arange(n) % episode_len) == episode_len - 1).float()
    n_ep = int(ep.max()) + 1
    ep_returns = torch.zeros(n_ep).index_add_(0, ep, rewards)
    return OfflineData(
        name=SYNTHETIC, observations=obs, actions=actions, rewards=rewards, next_observations=next_obs,
        dones=dones, truncations=torch.zeros(n), episode_ids=ep, returns=ep_returns[ep], episode_returns=ep_returns,
        action_low=-np.ones(act_dim, np.float32), action_high=np.ones(act_dim, np.float32),
    ).to(device)


def load_data(name: str, device: str) -> Any:
    if name == SYNTHETIC:
        return synthetic_dataset(device=device)
    from rl_adapters.data import load_dataset

    return load_dataset(name, device=device)


class CORLReplayBuffer:
    """CORL's ``ReplayBuffer`` after ``load_d4rl_dataset``: states normalised once at load, rewards and dones
    ``(N, 1)``; ``sample`` draws indices with ``np.random.randint`` and gathers each field."""

    def __init__(self, data: Any, seed: int) -> None:
        self._states = data.normalize(data.observations).clone()
        self._actions = data.actions.clone()
        self._rewards = data.rewards.reshape(-1, 1).clone()
        self._next_states = data.normalize(data.next_observations).clone()
        self._dones = data.dones.reshape(-1, 1).clone()
        self._size = self._pointer = len(data)
        self._rng = np.random.RandomState(seed)
        self.device = data.device

    def sample(self, batch_size: int) -> list[torch.Tensor]:
        indices = self._rng.randint(0, min(self._size, self._pointer), size=batch_size)
        states = self._states[indices]
        actions = self._actions[indices]
        rewards = self._rewards[indices]
        next_states = self._next_states[indices]
        dones = self._dones[indices]
        return [states, actions, rewards, next_states, dones]


# ============================================================================================ plain loops
def corl_soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    for target_param, source_param in zip(target.parameters(), source.parameters()):
        target_param.data.copy_((1 - tau) * target_param.data + tau * source_param.data)


class CORLActor(nn.Module):
    """CORL TD3+BC / BC ``Actor``: ``max_action * tanh(MLP(s))``."""

    def __init__(self, state_dim: int, action_dim: int, max_action: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(state_dim, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
            nn.Linear(HIDDEN, action_dim), nn.Tanh(),
        )
        self.max_action = max_action

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.max_action * self.net(state)


class CORLCritic(nn.Module):
    """CORL TD3+BC ``Critic``: ``MLP([s, a]) -> (B, 1)``; ``layers=3, layer_norm=True`` is ASPC's robust critic."""

    def __init__(self, state_dim: int, action_dim: int, layers: int = 2, layer_norm: bool = False) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        d = state_dim + action_dim
        for _ in range(layers):
            mods += [nn.Linear(d, HIDDEN), nn.ReLU()] + ([nn.LayerNorm(HIDDEN)] if layer_norm else [])
            d = HIDDEN
        mods.append(nn.Linear(d, 1))
        self.net = nn.Sequential(*mods)

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        sa = torch.cat([state, action], 1)
        return self.net(sa)


class PlainBC:
    """CORL ``any_percent_bc.BC.train``."""

    def __init__(self, state_dim: int, action_dim: int, max_action: float, device: str) -> None:
        self.actor = CORLActor(state_dim, action_dim, max_action).to(device)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=3e-4)
        self.total_it = 0

    def train(self, batch: list[torch.Tensor]) -> dict[str, float]:
        log_dict = {}
        self.total_it += 1
        state, action, _, _, _ = batch
        pi = self.actor(state)
        actor_loss = F.mse_loss(pi, action)
        log_dict["actor_loss"] = actor_loss.item()
        self.actor_optimizer.zero_grad()
        actor_loss.backward()
        self.actor_optimizer.step()
        return log_dict


class PlainTD3BC:
    """CORL ``td3_bc.TD3_BC.train`` (``critic_layers``/``layer_norm`` for ASPC's critic)."""

    def __init__(self, state_dim: int, action_dim: int, max_action: float, device: str, critic_layers: int = 2,
                 layer_norm: bool = False) -> None:
        self.actor = CORLActor(state_dim, action_dim, max_action).to(device)
        self.actor_target = copy.deepcopy(self.actor)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=3e-4)
        self.critic_1 = CORLCritic(state_dim, action_dim, critic_layers, layer_norm).to(device)
        self.critic_1_target = copy.deepcopy(self.critic_1)
        self.critic_1_optimizer = torch.optim.Adam(self.critic_1.parameters(), lr=3e-4)
        self.critic_2 = CORLCritic(state_dim, action_dim, critic_layers, layer_norm).to(device)
        self.critic_2_target = copy.deepcopy(self.critic_2)
        self.critic_2_optimizer = torch.optim.Adam(self.critic_2.parameters(), lr=3e-4)
        self.max_action = max_action
        self.discount, self.tau = 0.99, 0.005
        self.policy_noise, self.noise_clip = 0.2 * max_action, 0.5 * max_action
        self.policy_freq, self.alpha = 2, 2.5
        self.total_it = 0

    def critic_step(self, state, action, reward, next_state, done, log_dict) -> None:
        not_done = 1 - done
        with torch.no_grad():
            noise = (torch.randn_like(action) * self.policy_noise).clamp(-self.noise_clip, self.noise_clip)
            next_action = (self.actor_target(next_state) + noise).clamp(-self.max_action, self.max_action)
            target_q1 = self.critic_1_target(next_state, next_action)
            target_q2 = self.critic_2_target(next_state, next_action)
            target_q = torch.min(target_q1, target_q2)
            target_q = reward + not_done * self.discount * target_q
        current_q1 = self.critic_1(state, action)
        current_q2 = self.critic_2(state, action)
        critic_loss = F.mse_loss(current_q1, target_q) + F.mse_loss(current_q2, target_q)
        log_dict["critic_loss"] = critic_loss.item()
        self.critic_1_optimizer.zero_grad()
        self.critic_2_optimizer.zero_grad()
        critic_loss.backward()
        self.critic_1_optimizer.step()
        self.critic_2_optimizer.step()

    def actor_step(self, state, action, log_dict) -> None:
        pi = self.actor(state)
        q = self.critic_1(state, pi)
        lmbda = self.alpha / q.abs().mean().detach()
        actor_loss = -lmbda * q.mean() + F.mse_loss(pi, action)
        log_dict["actor_loss"] = actor_loss.item()
        self.actor_optimizer.zero_grad()
        actor_loss.backward()
        self.actor_optimizer.step()

    def train(self, batch: list[torch.Tensor]) -> dict[str, float]:
        log_dict: dict[str, float] = {}
        self.total_it += 1
        state, action, reward, next_state, done = batch
        self.critic_step(state, action, reward, next_state, done, log_dict)
        if self.total_it % self.policy_freq == 0:
            self.actor_step(state, action, log_dict)
            corl_soft_update(self.critic_1_target, self.critic_1, self.tau)
            corl_soft_update(self.critic_2_target, self.critic_2, self.tau)
            corl_soft_update(self.actor_target, self.actor, self.tau)
        return log_dict


class PlainTD3BCBatched:
    """``n`` independent TD3+BC seeds written batched by hand: every layer's weights ``(members, in, out)``, one
    ``baddbmm`` per layer for all seeds (and both critics of every seed), one fused Adam over the stacked
    tensors, no framework (no ``vmap``, no ``functional_call``). Its seed-updates/s with ``n`` seeds against the
    same loop with one seed is what batching seeds buys on this device when nothing else is in the way.
    CORL's update otherwise (order, target smoothing, ``policy_freq``, lambda per seed, ``F.mse_loss`` means
    per seed; ``tests/test_throughput_bench.py`` checks a seed against :class:`PlainTD3BC`)."""

    def __init__(self, n: int, state_dim: int, action_dim: int, max_action: float, device: str) -> None:
        self.n, self.max_action = n, max_action
        self.actor = self._mlp(n, [state_dim, HIDDEN, HIDDEN, action_dim], device)
        self.critic = self._mlp(2 * n, [state_dim + action_dim, HIDDEN, HIDDEN, 1], device)  # seed-major: (n, 2)
        self.actor_target = [t.detach().clone() for t in self.actor]
        self.critic_target = [t.detach().clone() for t in self.critic]
        self.actor_optimizer = torch.optim.Adam(self.actor, lr=3e-4, fused=True)
        self.critic_optimizer = torch.optim.Adam(self.critic, lr=3e-4, fused=True)
        self.discount, self.tau = 0.99, 0.005
        self.policy_noise, self.noise_clip = 0.2 * max_action, 0.5 * max_action
        self.policy_freq, self.alpha = 2, 2.5
        self.total_it = 0

    @staticmethod
    def _mlp(members: int, dims: list[int], device: str) -> list[torch.Tensor]:
        params = []
        for d_in, d_out in itertools.pairwise(dims):
            bound = 1 / math.sqrt(d_in)  # nn.Linear's law
            params.append(nn.Parameter(torch.empty(members, d_in, d_out, device=device).uniform_(-bound, bound)))
            params.append(nn.Parameter(torch.empty(members, 1, d_out, device=device).uniform_(-bound, bound)))
        return params

    @staticmethod
    def _forward(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(members, B, in)`` -> ``(members, B, out)``; a 1-wide head as multiply-and-sum (faster on CPU)."""
        last = len(params) // 2 - 1
        for i in range(0, len(params), 2):
            w, b = params[i], params[i + 1]
            if i // 2 == last and w.shape[-1] == 1:
                x = (x * w.transpose(-1, -2)).sum(-1, keepdim=True) + b
            else:
                x = torch.baddbmm(b, x, w)
            if i // 2 < last:
                x = torch.relu(x)
        return x

    def _q(self, params: list[torch.Tensor], state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        sa = torch.cat([state, action], -1)  # (n, B, in)
        sa = sa.unsqueeze(1).expand(self.n, 2, *sa.shape[1:]).reshape(2 * self.n, *sa.shape[1:])
        return self._forward(params, sa).reshape(self.n, 2, -1)  # (n, 2, B)

    def train(self, batch: list[torch.Tensor]) -> dict[str, float]:
        log_dict: dict[str, float] = {}
        self.total_it += 1
        state, action, reward, next_state, done = batch  # (n, B, .)
        reward, done = reward.squeeze(-1), done.squeeze(-1)
        with torch.no_grad():
            noise = (torch.randn_like(action) * self.policy_noise).clamp(-self.noise_clip, self.noise_clip)
            next_action = (self.max_action * torch.tanh(self._forward(self.actor_target, next_state)) + noise).clamp(
                -self.max_action, self.max_action)
            target_q = self._q(self.critic_target, next_state, next_action).min(1).values  # (n, B)
            target_q = reward + (1 - done) * self.discount * target_q
        q = self._q(self.critic, state, action)
        critic_loss = ((q - target_q.unsqueeze(1)) ** 2).mean(-1).sum()  # sum over seeds of mse(Q1) + mse(Q2)
        log_dict["critic_loss"] = critic_loss.item()
        for p, g in zip(self.critic, torch.autograd.grad(critic_loss, self.critic)):
            p.grad = g
        self.critic_optimizer.step()
        if self.total_it % self.policy_freq == 0:
            pi = self.max_action * torch.tanh(self._forward(self.actor, state))
            q1_params = [t.view(self.n, 2, *t.shape[1:])[:, 0] for t in self.critic]
            q1 = self._forward(q1_params, torch.cat([state, pi], -1)).squeeze(-1)  # (n, B)
            lmbda = self.alpha / q1.abs().mean(-1, keepdim=True).detach()
            actor_loss = (-(lmbda * q1).mean(-1) + ((pi - action) ** 2).mean((-1, -2))).sum()
            log_dict["actor_loss"] = actor_loss.item()
            for p, g in zip(self.actor, torch.autograd.grad(actor_loss, self.actor)):
                p.grad = g
            self.actor_optimizer.step()
            with torch.no_grad():
                for tp, sp in zip(self.critic_target + self.actor_target, self.critic + self.actor):
                    tp.lerp_(sp, self.tau)
        return log_dict


class Squeeze(nn.Module):
    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.squeeze(dim=self.dim)


def corl_mlp(dims: list[int], output_activation_fn: type[nn.Module] | None = None,
             squeeze_output: bool = False) -> nn.Sequential:
    """CORL iql.py ``MLP``."""
    layers: list[nn.Module] = []
    for i in range(len(dims) - 2):
        layers += [nn.Linear(dims[i], dims[i + 1]), nn.ReLU()]
    layers.append(nn.Linear(dims[-2], dims[-1]))
    if output_activation_fn is not None:
        layers.append(output_activation_fn())
    if squeeze_output:
        layers.append(Squeeze(-1))
    return nn.Sequential(*layers)


class CORLTwinQ(nn.Module):
    def __init__(self, state_dim: int, action_dim: int) -> None:
        super().__init__()
        dims = [state_dim + action_dim, HIDDEN, HIDDEN, 1]
        self.q1 = corl_mlp(dims, squeeze_output=True)
        self.q2 = corl_mlp(dims, squeeze_output=True)

    def both(self, state: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sa = torch.cat([state, action], 1)
        return self.q1(sa), self.q2(sa)

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return torch.min(*self.both(state, action))


def asymmetric_l2_loss(u: torch.Tensor, tau: float) -> torch.Tensor:
    return torch.mean(torch.abs(tau - (u < 0).float()) * u**2)


class PlainIQL:
    """CORL ``iql.ImplicitQLearning.train`` with its ``DeterministicPolicy``."""

    def __init__(self, state_dim: int, action_dim: int, max_action: float, device: str, total_steps: int) -> None:
        self.qf = CORLTwinQ(state_dim, action_dim).to(device)
        self.q_target = copy.deepcopy(self.qf).requires_grad_(False).to(device)
        self.vf = corl_mlp([state_dim, HIDDEN, HIDDEN, 1], squeeze_output=True).to(device)
        self.actor = corl_mlp([state_dim, HIDDEN, HIDDEN, action_dim], output_activation_fn=nn.Tanh).to(device)
        self.v_optimizer = torch.optim.Adam(self.vf.parameters(), lr=3e-4)
        self.q_optimizer = torch.optim.Adam(self.qf.parameters(), lr=3e-4)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=3e-4)
        self.actor_lr_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(self.actor_optimizer, total_steps)
        self.iql_tau, self.beta, self.discount, self.tau = 0.7, 3.0, 0.99, 0.005
        self.total_it = 0

    def _update_v(self, observations, actions, log_dict) -> torch.Tensor:
        with torch.no_grad():
            target_q = self.q_target(observations, actions)
        v = self.vf(observations)
        adv = target_q - v
        v_loss = asymmetric_l2_loss(adv, self.iql_tau)
        log_dict["value_loss"] = v_loss.item()
        self.v_optimizer.zero_grad()
        v_loss.backward()
        self.v_optimizer.step()
        return adv

    def _update_q(self, next_v, observations, actions, rewards, terminals, log_dict) -> None:
        targets = rewards + (1.0 - terminals.float()) * self.discount * next_v.detach()
        qs = self.qf.both(observations, actions)
        q_loss = sum(F.mse_loss(q, targets) for q in qs) / len(qs)
        log_dict["q_loss"] = q_loss.item()
        self.q_optimizer.zero_grad()
        q_loss.backward()
        self.q_optimizer.step()
        corl_soft_update(self.q_target, self.qf, self.tau)

    def _update_policy(self, adv, observations, actions, log_dict) -> None:
        exp_adv = torch.exp(self.beta * adv.detach()).clamp(max=100.0)
        policy_out = self.actor(observations)
        bc_losses = torch.sum((policy_out - actions) ** 2, dim=1)
        policy_loss = torch.mean(exp_adv * bc_losses)
        log_dict["actor_loss"] = policy_loss.item()
        self.actor_optimizer.zero_grad()
        policy_loss.backward()
        self.actor_optimizer.step()
        self.actor_lr_schedule.step()

    def train(self, batch: list[torch.Tensor]) -> dict[str, float]:
        self.total_it += 1
        observations, actions, rewards, next_observations, dones = batch
        log_dict: dict[str, float] = {}
        with torch.no_grad():
            next_v = self.vf(next_observations)
        adv = self._update_v(observations, actions, log_dict)
        rewards = rewards.squeeze(dim=-1)
        dones = dones.squeeze(dim=-1)
        self._update_q(next_v, observations, actions, rewards, dones, log_dict)
        self._update_policy(adv, observations, actions, log_dict)
        return log_dict


class FunctionalAdam:
    """Adam on a list of tensors, with the update written out so it can also be taken differentiably
    (``differentiable_step``: the new parameters as functions of the gradients, graph kept)."""

    def __init__(self, params: list[torch.Tensor], lr: float, eps: float = 1e-8, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999)) -> None:
        self.lr, self.eps, self.wd, (self.b1, self.b2) = lr, eps, weight_decay, betas
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.t = 0

    def differentiable_step(self, params: list[torch.Tensor], grads: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        t = self.t + 1
        c1, c2 = 1 - self.b1**t, 1 - self.b2**t
        new, self._pending = [], []
        for p, g, m, v in zip(params, grads, self.m, self.v):
            if self.wd:
                g = g + self.wd * p
            m2 = self.b1 * m + (1 - self.b1) * g
            v2 = self.b2 * v + (1 - self.b2) * g * g
            # 1e-16 under the root keeps the derivative finite where a gradient entry is exactly 0.
            new.append(p - self.lr * (m2 / c1) / ((v2 / c2 + 1e-16).sqrt() + self.eps))
            self._pending.append((m2.detach(), v2.detach()))
        return new

    @torch.no_grad()
    def commit(self, params: list[torch.Tensor], new: list[torch.Tensor]) -> None:
        """Make a :meth:`differentiable_step` the real one."""
        self.t += 1
        for p, n, (m2, v2), m, v in zip(params, new, self._pending, self.m, self.v):
            p.copy_(n)
            m.copy_(m2)
            v.copy_(v2)

    @torch.no_grad()
    def step(self, params: list[torch.Tensor], grads: tuple[torch.Tensor, ...]) -> None:
        self.t += 1
        c1, c2 = 1 - self.b1**self.t, 1 - self.b2**self.t
        for p, g, m, v in zip(params, grads, self.m, self.v):
            if self.wd:
                g = g.add(p, alpha=self.wd)
            m.lerp_(g, 1 - self.b1)
            v.mul_(self.b2).addcmul_(g, g, value=1 - self.b2)
            p.addcdiv_(m, (v / c2).sqrt_().add_(self.eps), value=-self.lr / c1)


def _aspc_init_(critic: CORLCritic) -> None:
    linears = [m for m in critic.net if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for lin in linears[:-1]:
            lin.weight.uniform_(-1 / math.sqrt(lin.in_features), 1 / math.sqrt(lin.in_features))
            lin.bias.fill_(0.1)
        linears[-1].weight.uniform_(-3e-3, 3e-3)
        linears[-1].bias.uniform_(-3e-3, 3e-3)


class PlainASPC(PlainTD3BC):
    """TD3+BC with the robust critic; actor by a functional Adam; every ``update_interval``-th actor update a
    differentiable one-step update whose outer loss trains ``rho`` (``alpha = softplus(rho)``)."""

    def __init__(self, state_dim: int, action_dim: int, max_action: float, device: str) -> None:
        super().__init__(state_dim, action_dim, max_action, device, critic_layers=3, layer_norm=True)
        for c in (self.critic_1, self.critic_2):
            _aspc_init_(c)
        self.critic_1_target = copy.deepcopy(self.critic_1)
        self.critic_2_target = copy.deepcopy(self.critic_2)
        self.actor_params = list(self.actor.parameters())
        self.names = [n for n, _ in self.actor.named_parameters()]
        self.adam = FunctionalAdam(self.actor_params, lr=3e-4)
        self.rho = torch.tensor(math.log(math.expm1(2.5)), device=device, requires_grad=True)
        self.rho_optimizer = torch.optim.Adam([self.rho], lr=2e-3)
        self.update_interval, self.actor_updates = 10, 0

    def inner_loss(self, params: dict[str, torch.Tensor] | None, state, action) -> tuple[torch.Tensor, torch.Tensor]:
        pi = self.actor(state) if params is None else torch.func.functional_call(self.actor, params, (state,))
        q = self.critic_1(state, pi)
        return q, pi

    def actor_step(self, state, action, log_dict) -> None:
        self.actor_updates += 1
        alpha = F.softplus(self.rho)
        outer_step = self.actor_updates % self.update_interval == 0
        q, pi = self.inner_loss(None, state, action)
        actor_loss = -(alpha if outer_step else alpha.detach()) / q.abs().mean().detach() * q.mean() \
            + F.mse_loss(pi, action)
        log_dict["actor_loss"] = actor_loss.item()
        grads = torch.autograd.grad(actor_loss, self.actor_params, create_graph=outer_step)
        if not outer_step:
            self.adam.step(self.actor_params, grads)
            return
        new = self.adam.differentiable_step(self.actor_params, grads)
        q2, pi2 = self.inner_loss(dict(zip(self.names, new)), state, action)
        outer = -(q2 / q2.abs().mean().detach()).mean() + F.mse_loss(pi2, action)
        self.rho_optimizer.zero_grad()
        outer.backward(inputs=[self.rho])
        self.rho_optimizer.step()
        self.adam.commit(self.actor_params, new)
        log_dict["outer_loss"] = outer.item()


class PlainVACO:
    """VACO's bi-level phase, one-step solver: meta-scorer ``w = sigmoid(f([s, a, q]))`` (batch-mean normalised)
    weights a BC loss; one differentiable Adam step of the actor; outer ``-min Q'(s, pi'(s + sigma eps))`` (+
    ``0.001 KL(w || uniform)``) trains the scorer; then the step is taken. Value networks frozen."""

    def __init__(self, state_dim: int, action_dim: int, max_action: float, device: str) -> None:
        self.actor = CORLActor(state_dim, action_dim, max_action).to(device)
        self.q_target = CORLTwinQ(state_dim, action_dim).to(device).requires_grad_(False)
        self.scorer = corl_mlp([state_dim + action_dim + 1, HIDDEN, HIDDEN, 1], squeeze_output=True).to(device)
        self.scorer_optimizer = torch.optim.Adam(self.scorer.parameters(), lr=3e-5, eps=1e-5, weight_decay=1e-6)
        self.actor_params = list(self.actor.parameters())
        self.names = [n for n, _ in self.actor.named_parameters()]
        self.adam = FunctionalAdam(self.actor_params, lr=3e-4, eps=1e-5, weight_decay=1e-6)
        self.sigma = 1.0

    def train(self, batch: list[torch.Tensor]) -> dict[str, float]:
        state, action, _, _, _ = batch
        with torch.no_grad():
            q = self.q_target(state, action)
            q_in = (q - q.mean()) / (q.std() + 1e-6)
            noisy = state + self.sigma * torch.randn_like(state)
        w = torch.sigmoid(self.scorer(torch.cat([state, action, q_in.unsqueeze(-1)], 1)))
        w = w / w.mean()
        inner = (w * ((self.actor(state) - action) ** 2).sum(-1)).mean()
        grads = torch.autograd.grad(inner, self.actor_params, create_graph=True)
        new = self.adam.differentiable_step(self.actor_params, grads)
        pi = torch.func.functional_call(self.actor, dict(zip(self.names, new)), (noisy,))
        p = w / w.sum()
        outer = -self.q_target(state, pi).mean() / q.abs().mean() + 1e-3 * (p * torch.log(len(p) * p)).sum()
        self.scorer_optimizer.zero_grad()
        outer.backward(inputs=list(self.scorer.parameters()))
        self.scorer_optimizer.step()
        self.adam.commit(self.actor_params, new)
        return {"inner_loss": inner.item(), "outer_loss": outer.item()}


def make_plain(name: str, data: Any, device: str, total_steps: int) -> Any:
    obs_dim, act_dim = data.obs_dim, data.act_dim
    max_action = float(np.max(np.abs(np.concatenate([data.action_low, data.action_high]))))
    if name == "bc":
        return PlainBC(obs_dim, act_dim, max_action, device)
    if name == "td3bc":
        return PlainTD3BC(obs_dim, act_dim, max_action, device)
    if name == "iql":
        return PlainIQL(obs_dim, act_dim, max_action, device, total_steps)
    if name == "vaco":
        return PlainVACO(obs_dim, act_dim, max_action, device)
    if name == "aspc":
        return PlainASPC(obs_dim, act_dim, max_action, device)
    raise ValueError(f"unknown algorithm {name!r}; choose from {ALGOS}")


# ============================================================================================ measuring
Step = Callable[[], Any]


def ours_step(name: str, data: Any, device: str, batch_size: int, seed: int, total_steps: int,
              compiled: bool = False) -> Step:
    from rl_adapters.algorithms import make_algorithm

    algo = make_algorithm(name, data.obs_dim, data.act_dim, data.stats, device=device, seed=seed,
                          total_steps=total_steps, **OURS_HPARAMS[name])
    if compiled:
        algo.compile_losses()
    gen = data.make_generator(seed)
    return lambda: algo.update(data.sample(batch_size, gen))


def plain_step(name: str, data: Any, device: str, batch_size: int, seed: int, total_steps: int) -> Step:
    torch.manual_seed(seed)
    trainer = make_plain(name, data, device, total_steps)
    buffer = CORLReplayBuffer(data, seed)

    def step() -> Any:
        batch = buffer.sample(batch_size)
        batch = [b.to(device) for b in batch]
        return trainer.train(batch)

    return step


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def updates_per_second(step: Step, seconds: float, device: str) -> tuple[float, float]:
    """``(updates per wall second, updates per CPU second of this process)`` over ``seconds`` of wall time.

    On a machine shared with other work the CPU-time rate is the steadier of the two (it does not count the
    time the scheduler gives to others); the wall rate is what a user waits for.
    """
    _sync(device)
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while True:
        step()
        n += 1
        if n % 8 == 0:
            _sync(device)
            dt = time.perf_counter() - t0
            if dt >= seconds:
                return n / dt, n / max(time.process_time() - c0, 1e-9)


@dataclass
class Row:
    algo: str
    variant: str
    ours: list[float]
    plain: list[float]
    peer: str
    note: str = ""
    ours_cpu: list[float] = field(default_factory=list)
    plain_cpu: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ours_median(self) -> float:
        return statistics.median(self.ours)

    @property
    def plain_median(self) -> float:
        return statistics.median(self.plain) if self.plain else float("nan")

    @property
    def ratio(self) -> float:
        return self.ours_median / self.plain_median

    @property
    def paired(self) -> list[float]:
        return [o / p for o, p in zip(self.ours, self.plain)]

    @property
    def cpu_ratio(self) -> float:
        """Ratio of the median updates per CPU second (nan when not measured)."""
        if not self.ours_cpu or not self.plain_cpu:
            return float("nan")
        return statistics.median(self.ours_cpu) / statistics.median(self.plain_cpu)


def measure_pair(name: str, data: Any, args: argparse.Namespace) -> Row:
    """``args.repeats`` interleaved measurements of ours and plain for algorithm ``name``."""
    total = 10_000_000  # schedules (IQL's cosine lr, ASPC's outer lr) stay in their early phase
    steps = {
        "ours": ours_step(name, data, args.device, args.batch_size, args.seed, total),
        "plain": plain_step(name, data, args.device, args.batch_size, args.seed, total),
    }
    for step in steps.values():  # warm-up: allocator, lazy inits, first ASPC outer steps
        for _ in range(args.warmup):
            step()
    res: dict[str, list[float]] = {"ours": [], "plain": []}
    cpu: dict[str, list[float]] = {"ours": [], "plain": []}
    for r in range(args.repeats):
        order = ("ours", "plain") if r % 2 == 0 else ("plain", "ours")
        for variant in order:
            wall, per_cpu = updates_per_second(steps[variant], args.seconds, args.device)
            res[variant].append(wall)
            cpu[variant].append(per_cpu)
        print(f"  {name} repeat {r + 1}/{args.repeats}: ours {res['ours'][-1]:.1f}/s, plain {res['plain'][-1]:.1f}/s "
              f"(per CPU s: {cpu['ours'][-1]:.1f}, {cpu['plain'][-1]:.1f})", flush=True)
    return Row(ALGO_LABELS[name], "single seed", res["ours"], res["plain"], PLAIN_LABELS[name],
               ours_cpu=cpu["ours"], plain_cpu=cpu["plain"])


# ----------------------------------------------------------------------------- many seeds, compiled updates
STACKABLE = ("bc", "td3bc", "iql", "aspc")


def stacked_step(name: str, data: Any, device: str, batch_size: int, seeds: list[int], total_steps: int,
                 compiled: bool = False) -> Step:
    """N seeds of ours in one process (:class:`~rl_adapters.training.seed_stack.SeedStack`), one stacked update."""
    from rl_adapters.training.seed_stack import SeedStack

    stack = SeedStack.build(name, seeds, data.obs_dim, data.act_dim, data.stats, device=device,
                            total_steps=total_steps, **OURS_HPARAMS[name])
    if compiled:
        stack.algo.compile_losses()
    gens = [data.make_generator(s) for s in seeds]
    return lambda: stack.update(data.sample_many(batch_size, gens))


def _interleaved(name: str, steps: dict[str, Step], args: argparse.Namespace, scale: dict[str, float]
                 ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    res: dict[str, list[float]] = {k: [] for k in steps}
    cpu: dict[str, list[float]] = {k: [] for k in steps}
    keys = list(steps)
    for r in range(args.repeats):
        for k in (keys if r % 2 == 0 else keys[::-1]):
            wall, per_cpu = updates_per_second(steps[k], args.seconds, args.device)
            res[k].append(wall * scale[k])
            cpu[k].append(per_cpu * scale[k])
        print(f"  {name} repeat {r + 1}/{args.repeats}: " + ", ".join(f"{k} {res[k][-1]:.1f}/s" for k in keys),
              flush=True)
    return res, cpu


def seeds_rows(data: Any, args: argparse.Namespace) -> list[Row]:
    """Seed-updates/s (N x stacked updates/s) of N seeds trained in one process, beside our single-seed
    process (one seed, ``make_algorithm(...).update``), for N in ``--seeds-n``."""
    rows = []
    total = 10_000_000
    for name in [a for a in args.algos.split(",") if a in STACKABLE]:
        for n in args.seeds_n:
            steps = {"stack": stacked_step(name, data, args.device, args.batch_size, list(range(n)), total),
                     "single": ours_step(name, data, args.device, args.batch_size, args.seed, total)}
            res, cpu = _interleaved(f"{name} x{n}", steps, args, {"stack": float(n), "single": 1.0})
            rows.append(Row(ALGO_LABELS[name], f"{n} seed{'s' if n > 1 else ''} in one process", res["stack"],
                            res["single"], "ours, one seed per process", note="seed-updates/s",
                            ours_cpu=cpu["stack"], plain_cpu=cpu["single"]))
    return rows

def batched_plain_step(data: Any, device: str, batch_size: int, n: int, seed: int) -> Step:
    """:class:`PlainTD3BCBatched` of ``n`` seeds, sampling ``(n, batch)`` indices from one buffer."""
    torch.manual_seed(seed)
    max_action = float(np.max(np.abs(np.concatenate([data.action_low, data.action_high]))))
    trainer = PlainTD3BCBatched(n, data.obs_dim, data.act_dim, max_action, device)
    buffer = CORLReplayBuffer(data, seed)

    def step() -> Any:
        batch = buffer.sample(n * batch_size)
        return trainer.train([b.reshape(n, batch_size, -1).to(device) for b in batch])

    return step


def batched_plain_rows(data: Any, args: argparse.Namespace) -> list[Row]:
    """Seed-updates/s of :class:`PlainTD3BCBatched` with N seeds beside the same loop with one seed (same code,
    same fused Adam): what batching seeds alone buys on this device, with no framework cost on either side."""
    rows = []
    if "td3bc" not in args.algos.split(","):
        return rows
    for n in [k for k in args.seeds_n if k > 1]:
        steps = {"batched": batched_plain_step(data, args.device, args.batch_size, n, args.seed),
                 "single": batched_plain_step(data, args.device, args.batch_size, 1, args.seed)}
        res, cpu = _interleaved(f"td3bc hand-batched x{n}", steps, args, {"batched": float(n), "single": 1.0})
        rows.append(Row(ALGO_LABELS["td3bc"], f"{n} seeds hand-batched (plain, no framework)", res["batched"],
                        res["single"], "the same loop with one seed", note="seed-updates/s; what batching alone buys",
                        ours_cpu=cpu["batched"], plain_cpu=cpu["single"]))
    return rows


def compiled_rows(data: Any, args: argparse.Namespace) -> list[Row]:
    """Ours with ``--compile`` (the losses through ``torch.compile``) beside ours eager, for ``--compile-algos``;
    the compilation time (first updates) is in the note."""
    rows = []
    total = 10_000_000
    for name in args.compile_algos:
        compiled = ours_step(name, data, args.device, args.batch_size, args.seed, total, compiled=True)
        t0 = time.perf_counter()
        for _ in range(3):  # every loss of an update (TD3+BC's actor loss runs every 2nd update) compiles here
            compiled()
        t_compile = time.perf_counter() - t0
        steps = {"compiled": compiled, "eager": ours_step(name, data, args.device, args.batch_size, args.seed, total)}
        res, cpu = _interleaved(f"{name} compiled", steps, args, {"compiled": 1.0, "eager": 1.0})
        rows.append(Row(ALGO_LABELS[name], "--compile", res["compiled"], res["eager"], "ours, eager",
                        note=f"compilation {t_compile:.0f} s", ours_cpu=cpu["compiled"], plain_cpu=cpu["eager"]))
    return rows


def matmul_share(name: str, data: Any, args: argparse.Namespace, updates: int = 60) -> float:
    """Share of one single-seed update's CPU time spent in matrix products (``torch.profiler``, self time of
    ``mm`` / ``addmm`` / ``bmm`` / ``baddbmm`` over all operators)."""
    from torch.profiler import ProfilerActivity, profile

    step = ours_step(name, data, args.device, args.batch_size, args.seed, 10_000_000)
    for _ in range(args.warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(updates):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    mat = sum(e.self_cpu_time_total for e in events if e.key in ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"))
    return mat / max(total, 1e-9)


def batched_matmul_cost(n: int = 4, size: int = 256, repeats: int = 200) -> float:
    """CPU time of one ``bmm`` over ``n`` products of ``size x size`` matrices, divided by ``n`` separate
    ``mm`` s of the same shape: 1.0 means batching saves nothing per FLOP."""
    a, b = torch.randn(n, size, size), torch.randn(n, size, size)

    def timed(f: Callable[[], Any]) -> float:
        for _ in range(10):
            f()
        c0 = time.process_time()
        for _ in range(repeats):
            f()
        return time.process_time() - c0

    ratios = []
    for _ in range(3):  # interleaved, median
        batched = timed(lambda: torch.bmm(a, b))
        separate = timed(lambda: [a[i] @ b[i] for i in range(n)])
        ratios.append(batched / separate)
    return statistics.median(ratios)


def ceiling_text(data: Any, args: argparse.Namespace) -> str:
    """Why N seeds in one process cannot pay much on one CPU thread (measured), for the report."""
    if args.device != "cpu":
        return ""
    lines = []
    for name in [a for a in args.algos.split(",") if a in ("bc", "td3bc", "iql")]:
        m = matmul_share(name, data, args)
        lines.append(f"{ALGO_LABELS[name]} {100 * m:.0f}% (so at most {1 / m:.2f}x from removing every other "
                     f"cost, and 1 / (m + (1 - m) / 4) = {1 / (m + (1 - m) / 4):.2f}x for 4 seeds)")
    bmm = batched_matmul_cost()
    return ("**CPU ceiling, measured in the same run.** Share of a single-seed update's CPU time spent in matrix "
            "products (torch.profiler self time): " + "; ".join(lines) + f". One `bmm` over 4 products of 256 x 256 "
            f"matrices costs {bmm:.2f}x the CPU time of 4 separate `mm` s: on one CPU thread a batched product does "
            "the same work at the same speed, so stacking seeds can only amortise the remaining per-operation "
            "overhead, and evaluating the stacked losses through `torch.func.vmap` adds overhead of its own.")


EXTRA_ROWS: tuple[Callable[[Any, argparse.Namespace], list[Row]], ...] = (seeds_rows, batched_plain_rows,
                                                                         compiled_rows)


# ============================================================================================ report
ROOT_NOTES = Path(__file__).resolve().parent / "notes"


def table(rows: list[Row]) -> str:
    lines = [
        (
            "| algorithm | variant | ours, updates/s (median) | plain, updates/s (median) | ours / plain "
            "| per-repeat ratios | ours / plain per CPU second | plain loop |"
        ),
        "|---|---|---:|---:|---:|---|---:|---|",
    ]
    for r in rows:
        paired = ", ".join(f"{x:.2f}" for x in r.paired)
        lines.append(f"| {r.algo} | {r.variant} | {r.ours_median:.1f} | {r.plain_median:.1f} | **{r.ratio:.2f}** | "
                     f"{paired} | {r.cpu_ratio:.2f} | {r.peer}{'; ' + r.note if r.note else ''} |")
    return "\n".join(lines)


def load_line() -> str:
    try:
        la = os.getloadavg()
        return f"load average {la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f} (1/5/15 min) at the start"
    except OSError:
        return "load average unavailable"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--algos", default=",".join(ALGOS), help=f"comma-separated, from {','.join(ALGOS)}")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seconds", type=float, default=2.5, help="measured seconds per variant and repeat")
    p.add_argument("--warmup", type=int, default=30, help="untimed updates per variant before the repeats")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--dataset", default="suite/hopper/medium-v0",
                   help=f"a Minari id under MINARI_DATASETS_PATH, or '{SYNTHETIC}' (random hopper-sized data)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds-n", default="1,4,16",
                   help="seed counts for the 'N seeds in one process' rows ('' to skip them)")
    p.add_argument("--compile-algos", default="td3bc",
                   help="algorithms measured compiled vs eager ('' to skip; compiling takes minutes on a CPU)")
    p.add_argument("--write", action="store_true", help="replace the 'throughput' section of docs/benchmarks.md")
    p.add_argument("--save", type=Path, default=None,
                   help="where the measured rows go (JSON; default results/throughput/<device>.json)")
    p.add_argument("--report-only", action="store_true",
                   help="measure nothing: render the section from --save's JSON (e.g. a run copied from a GPU machine)")
    args = p.parse_args(argv)
    try:
        args.seeds_n = [int(x) for x in args.seeds_n.split(",") if x.strip()]
    except ValueError:
        p.error(f"--seeds-n {args.seeds_n!r}: give comma-separated seed counts, e.g. --seeds-n 1,4,16")
    if any(n < 1 for n in args.seeds_n):
        p.error(f"--seeds-n {args.seeds_n}: seed counts must be >= 1")
    args.compile_algos = [a for a in args.compile_algos.split(",") if a]
    if args.save is None:
        args.save = Path("results") / "throughput" / f"{args.device}.json"
    for a in args.compile_algos:
        if a not in ALGOS:
            p.error(f"--compile-algos: {a!r} is not one of {','.join(ALGOS)}")
    algos = [a for a in args.algos.split(",") if a]
    for a in algos:
        if a not in ALGOS:
            p.error(f"unknown algorithm {a!r}; choose from {','.join(ALGOS)}")
    if args.report_only:
        if not args.save.exists():
            p.error(f"--report-only: {args.save} does not exist; run without --report-only first (or give --save PATH)")
        run = json.loads(args.save.read_text())
    else:
        run = measure(args)
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps(run, indent=1))
        print(f"saved {args.save}")
    rows = [Row(**r) for r in run["rows"]]
    text = table(rows)
    print(text)
    if run["ceiling"]:
        print(run["ceiling"])
    if args.write or args.report_only:
        write_section_from(run, text)
        print(f"wrote the throughput section ({run['device']}) of docs/benchmarks.md")
    return 0


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Every row of the run, with what the report's header needs (JSON-ready)."""
    from benchmarks._report import command_line, git_revision, machine_description

    algos = [a for a in args.algos.split(",") if a]
    torch.set_num_threads(args.threads)
    load_at_start = load_line()
    data = load_data(args.dataset, args.device)
    print(f"{data.name}: {len(data)} transitions, obs_dim {data.obs_dim}, act_dim {data.act_dim}; "
          f"{args.threads} thread(s), {args.device}; {load_at_start}", flush=True)
    rows = [measure_pair(a, data, args) for a in algos]
    for hook in EXTRA_ROWS:
        rows += hook(data, args)
    ceiling = ceiling_text(data, args) if args.seeds_n else ""
    return {
        "command": f"OMP_NUM_THREADS={args.threads} MINARI_DATASETS_PATH=../shared/datasets {command_line()}",
        "git": git_revision(), "machine": machine_description(args.device), "load_start": load_at_start,
        "load_end": load_line(), "dataset": f"{data.name} ({len(data)} transitions)", "device": args.device,
        "batch_size": args.batch_size, "threads": args.threads, "repeats": args.repeats, "seconds": args.seconds,
        "warmup": args.warmup, "rows": [dataclasses.asdict(r) for r in rows], "ceiling": ceiling,
    }


def write_section_from(run: dict[str, Any], text: str) -> None:
    from benchmarks._report import write_section

    ceiling, cpu = run["ceiling"], run["device"] == "cpu"
    body = (
        f"## Throughput{'' if cpu else ' on a GPU'} (issue #17)\n\nCommand: `{run['command']}` (git {run['git']})\n\n"
        f"Machine: {run['machine']}; {run['load_end'].replace('at the start', 'at the end')}, "
        f"{run['load_start'].replace('load average ', '')}. Dataset {run['dataset']}, batch "
        f"{run['batch_size']}, {run['device']}, {run['threads']} torch thread(s); {run['repeats']} interleaved repeats "
        f"of {run['seconds']:g} s per variant after {run['warmup']} warm-up updates, all in one process.\n\n"
        f"{text}\n\n" + (f"{ceiling}\n\n" if ceiling else "") +
        "*ours*: `make_algorithm(name).update(data.sample(256, generator))`, diagnostics included. *plain*: the "
        "same algorithm written CORL's way inside `benchmarks/throughput.py` (module docstring: which loop for "
        "which algorithm; VACO one-step and ASPC have no CORL implementation, their plain loops are written "
        "there). Rows \"N seeds in one process\": `SeedStack` of N seeds (`bilevel-rl train --seeds`), "
        "seed-updates/s (N x stacked updates/s) against ours with one seed per process. Rows \"N seeds "
        "hand-batched\": `PlainTD3BCBatched`, N TD3+BC seeds written batched in plain torch (one batched product "
        "per layer for every seed, one fused Adam, no `vmap`), seed-updates/s against the same loop with one seed: "
        "what batching seeds alone buys on this device. Row \"--compile\": ours with `compile_losses()` "
        "against ours eager, compilation time in the note. The ratio is of the medians of updates per wall "
        "second; the next column is the same ratio per CPU second of the process (steadier on a shared machine). "
        "On a loaded machine read the ratios, not the absolute rates. The measured rows are saved in "
        "`results/throughput/<device>.json`; `--report-only` re-renders this section from them.\n"
    )
    # The readings, written by people, kept with every rerun; a GPU run is its own section beside the CPU one.
    notes = ROOT_NOTES / ("throughput.md" if cpu else f"throughput_{run['device']}.md")
    if notes.exists():
        body += "\n" + notes.read_text()
    write_section("throughput" if cpu else f"throughput-{run['device']}", body)


if __name__ == "__main__":
    raise SystemExit(main())
