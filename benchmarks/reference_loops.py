"""Plain reference loops of the offline-RL algorithms, written CORL's way; benchmarks/throughput.py times them.

Plain ``nn.Sequential`` networks, ``torch.optim.Adam`` per network, CORL's update order, ``soft_update``, replay
buffer (``np.random.randint``) and ``.item()`` logging. BC, TD3+BC and IQL follow CORL's ``any_percent_bc.py``,
``td3_bc.py`` and ``iql.py`` (IQL with its deterministic policy, the policy ours has). CORL has no VACO or ASPC;
their loops are the simplest honest equivalents: VACO one-step = a meta-scorer's weighted-BC inner loss, one
differentiable step of a hand-written Adam (:class:`FunctionalAdam`), the outer loss ``-min Q'(s, pi'(s + sigma
eps))`` (+ the weight KL) into the scorer, frozen value networks; ASPC = TD3+BC with the 3-layer LayerNorm critic,
the functional Adam for the actor and, every 10th actor update, a differentiable one-step update whose outer loss
trains ``alpha = softplus(rho)``. :class:`PlainTD3BCBatched`: N TD3+BC seeds batched by hand.
"""

from __future__ import annotations

import copy
import itertools
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ALGOS = ("bc", "td3bc", "iql", "vaco", "aspc")
HIDDEN = 256


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
        return [x[indices] for x in (self._states, self._actions, self._rewards, self._next_states, self._dones)]


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
    """``n`` TD3+BC seeds batched by hand: each layer's weights ``(members, in, out)``, one ``baddbmm`` per layer
    for every seed (both critics too), one fused Adam over the stacked tensors, no ``vmap``. With ``n`` seeds
    against one it measures what batching alone buys. CORL's update otherwise (order, target smoothing,
    ``policy_freq``, lambda and means per seed; tests/test_throughput_bench.py checks a seed against CORL's)."""

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
        self.m, self.v = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
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


def max_action_of(data: Any) -> float:
    return float(np.max(np.abs(np.concatenate([data.action_low, data.action_high]))))


def make_plain(name: str, data: Any, device: str, total_steps: int) -> Any:
    """The plain loop of algorithm ``name`` for ``data``'s spaces."""
    if name not in ALGOS:
        raise ValueError(f"unknown algorithm {name!r}; choose from {ALGOS}")
    dims = (data.obs_dim, data.act_dim, max_action_of(data), device)
    if name == "iql":
        return PlainIQL(*dims, total_steps)
    return {"bc": PlainBC, "td3bc": PlainTD3BC, "vaco": PlainVACO, "aspc": PlainASPC}[name](*dims)
