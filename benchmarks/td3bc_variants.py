"""What single-seed TD3+BC updates/s each throughput change buys (issue #17), measured interleaved in one process.

    python -m benchmarks.td3bc_variants --repeats 5 --seconds 2

Variants (all on the same data, batch 256, 1 thread by default), round-robin with a rotating start:

* ``plain``: the CORL-style loop of :mod:`benchmarks.throughput`.
* ``before``: our TD3+BC with the former critic (two ``nn.Sequential`` s) and the former sampling (normalise
  the gathered rows on every batch, advanced indexing) -- what ``make_algorithm("td3bc")`` ran before.
* ``ours``: our TD3+BC as it is now (fused twin critic, cached normalisation).
* ``fused_adam``: ``ours`` with ``torch.optim.Adam(fused=True)`` for actor and critic.
* ``actor_grad``: ``ours`` whose actor step takes ``torch.autograd.grad(actor_loss, actor parameters)``
  (no weight gradients computed for the critic in the actor step).
* ``both``: ``fused_adam`` + ``actor_grad``.

The variants are subclasses defined here; the algorithm modules are untouched.
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.throughput import load_data, plain_step, updates_per_second
from rl_adapters.algorithms.td3bc import TD3BC
from rl_adapters.data import Batch
from rl_adapters.networks import mlp


class FormerTwinCritic(nn.Module):
    """The TwinCritic before the fused ensemble: two independent ``mlp`` s."""

    def __init__(self, obs_dim: int, act_dim: int, hidden=(256, 256), layer_norm: bool = False) -> None:
        super().__init__()
        self.q1 = mlp(obs_dim + act_dim, 1, hidden, layer_norm)
        self.q2 = mlp(obs_dim + act_dim, 1, hidden, layer_norm)

    def forward(self, obs, action):
        x = torch.cat([obs, action], dim=-1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)

    def q1_only(self, obs, action):
        return self.q1(torch.cat([obs, action], dim=-1)).squeeze(-1)

    def min_q(self, obs, action):
        q1, q2 = self(obs, action)
        return torch.minimum(q1, q2)


def former_sample(data, batch_size: int, generator: torch.Generator) -> Batch:
    """``OfflineData.sample`` before the cache: normalise the gathered rows, advanced indexing."""
    idx = torch.randint(0, len(data), (batch_size,), device=data.device, generator=generator)
    return Batch(obs=data.normalize(data.observations[idx]), actions=data.actions[idx], rewards=data.rewards[idx],
                 next_obs=data.normalize(data.next_observations[idx]), dones=data.dones[idx],
                 episode_ids=data.episode_ids[idx], returns=data.returns[idx], indices=idx)


class Former(TD3BC):
    def build(self) -> None:
        super().build()
        import copy

        c = self.config
        self.critic = FormerTwinCritic(self.obs_dim, self.act_dim, (c.hidden_dim,) * c.critic_hidden_layers)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.modules.update(critic=self.critic, critic_target=self.critic_target)


class FusedAdam(TD3BC):
    def build_optimizers(self) -> None:
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=self.config.actor_lr, fused=True)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=self.config.critic_lr, fused=True)
        self.optimizers = {"actor": self.actor_opt, "critic": self.critic_opt}


class ActorGrad(TD3BC):
    def actor_update(self, batch: Batch) -> dict[str, float]:
        pi = self.actor(batch.obs)
        q = self.critic.q1_only(batch.obs, pi)
        lmbda = self.config.alpha / q.abs().mean().detach()
        bc_loss = F.mse_loss(pi, batch.actions)
        actor_loss = -lmbda * q.mean() + bc_loss
        params = list(self.actor.parameters())
        grads = torch.autograd.grad(actor_loss, params)
        for p, g in zip(params, grads):
            p.grad = g
        self.actor_opt.step()
        return {"actor_loss": actor_loss.item(), "bc_loss": bc_loss.item(), "lambda": lmbda.item()}


class Both(FusedAdam, ActorGrad):
    pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dataset", default="suite/hopper/medium-v0")
    p.add_argument("--variants", default="plain,before,ours,fused_adam,actor_grad,both")
    p.add_argument("--clock", default="wall", choices=("wall", "cpu"), help="updates per wall or per CPU second")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_data(args.dataset, "cpu")
    classes = {"before": Former, "ours": TD3BC, "fused_adam": FusedAdam, "actor_grad": ActorGrad, "both": Both}
    steps = {}
    for name in args.variants.split(","):
        if name == "plain":
            steps[name] = plain_step("td3bc", data, "cpu", 256, 0, 10**7)
            continue
        algo = classes[name](data.obs_dim, data.act_dim, data.stats, seed=0, total_steps=10**7)
        gen = data.make_generator(0)
        sample = (lambda g=gen: former_sample(data, 256, g)) if name == "before" else (lambda g=gen: data.sample(256, g))
        steps[name] = lambda a=algo, s=sample: a.update(s())
    for step in steps.values():
        for _ in range(30):
            step()
    names = list(steps)
    res: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.repeats):
        for n in names[r % len(names):] + names[: r % len(names)]:
            res[n].append(updates_per_second(steps[n], args.seconds, "cpu")[args.clock == "cpu"])
        print(" ".join(f"{n} {res[n][-1]:.1f}" for n in names), flush=True)
    base = statistics.median(res["plain"]) if "plain" in res else None
    ref = statistics.median(res["ours"]) if "ours" in res else None
    def paired(n: str, m: str) -> float:
        """Median over repeats of the ratio within a repeat (adjacent windows: steadier under load)."""
        return statistics.median(a / b for a, b in zip(res[n], res[m])) if m in res else float("nan")

    print("| variant | updates/s (median) | / plain (medians) | / ours (medians) | / plain (median paired) "
          "| / ours (median paired) |")
    print("|---|---:|---:|---:|---:|---:|")
    for n in names:
        m = statistics.median(res[n])
        print(f"| {n} | {m:.1f} | {m / base if base else float('nan'):.3f} | {m / ref if ref else float('nan'):.3f} "
              f"| {paired(n, 'plain'):.3f} | {paired(n, 'ours'):.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
