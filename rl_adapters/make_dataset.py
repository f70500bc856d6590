"""Generate Minari datasets: a D4RL-style suite from online TD3, or tiny scripted ones for tests.

Suite (``make_suite``), for any gymnasium MuJoCo (Box/Box) env id:

1. train a behaviour policy online with TD3 (Fujimoto et al. 2018; exploration noise 0.1,
   ``start_steps`` uniform-random warm-up), evaluating and snapshotting the actor periodically;
2. ``expert`` = best snapshot, ``medium`` = first snapshot whose deterministic return reaches
   ``medium_fraction`` (0.4) of the way from random to expert; both rolled out with Gaussian
   action noise 0.1; ``medium-replay`` = every episode the learner saw until the medium snapshot;
   ``random`` = uniform random actions;
3. reference scores: ``ref_min_score`` = mean return of the random policy, ``ref_max_score`` =
   deterministic return of the expert snapshot, stored in every dataset's metadata (``env=`` is
   passed to ``minari.create_dataset_from_buffers``, without which minari drops them).

Tiny datasets (``make_tiny_dataset``) roll given behaviour policies (default: a good PD controller
and a bad random one on ``InvertedPendulum-v5``) for a few short episodes, with no training.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .networks import DeterministicActor, TwinCritic, soft_update

__all__ = [
    "OnlineTD3",
    "make_suite",
    "make_tiny_dataset",
    "pendulum_pd_policy",
    "random_policy",
    "rollout_episodes",
    "write_dataset",
]

Policy = Callable[[np.ndarray, np.random.Generator], np.ndarray]


@contextlib.contextmanager
def _minari_root(root: str | os.PathLike | None) -> Iterator[None]:
    """Point minari at ``root`` for the duration (minari reads ``MINARI_DATASETS_PATH`` on every call)."""
    if root is None:
        yield
        return
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


@dataclass
class Episode:
    observations: np.ndarray  # (T+1, obs_dim)
    actions: np.ndarray  # (T, act_dim)
    rewards: np.ndarray
    terminations: np.ndarray
    truncations: np.ndarray
    seed: int | None = None

    @property
    def ret(self) -> float:
        return float(self.rewards.sum())


def random_policy(space: Any) -> Policy:
    """Uniform random actions in ``space`` (a Box)."""
    low, high = np.asarray(space.low, np.float32), np.asarray(space.high, np.float32)
    return lambda obs, rng: rng.uniform(low, high).astype(np.float32)


def pendulum_pd_policy(obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A PD controller that balances ``InvertedPendulum-v5`` (obs = cart x, pole angle, their rates)."""
    a = 2.0 * obs[0] + 10.0 * obs[1] + 1.0 * obs[2] + 2.0 * obs[3]
    return np.clip(np.array([a], np.float32), -3.0, 3.0)


def rollout_episodes(
    env: Any,
    policy: Policy,
    episodes: int | None = None,
    steps: int | None = None,
    seed: int = 0,
    noise: float = 0.0,
) -> list[Episode]:
    """Roll ``policy`` (raw obs, numpy Generator) -> action until ``episodes`` episodes or ``steps`` transitions.

    Gaussian noise ``N(0, (noise * h)^2)`` (``h`` the action half-range) is added and the action clipped.
    With ``steps`` the last episode is cut (marked truncated) so the total is exact.
    """
    if episodes is None and steps is None:
        raise ValueError("give episodes or steps")
    rng = np.random.default_rng(seed)
    low, high = env.action_space.low, env.action_space.high
    half = (high - low) / 2
    out: list[Episode] = []
    total = 0
    while (episodes is None or len(out) < episodes) and (steps is None or total < steps):
        ep_seed = seed + len(out)
        obs, _ = env.reset(seed=ep_seed)
        o, a, r, te, tr = [np.asarray(obs, np.float32)], [], [], [], []
        done = False
        while not done:
            act = np.asarray(policy(np.asarray(obs), rng), np.float32)
            if noise > 0:
                act = act + rng.normal(0.0, noise, size=act.shape).astype(np.float32) * half
            act = np.clip(act, low, high).astype(np.float32)
            obs, rew, term, trunc, _ = env.step(act)
            total += 1
            if steps is not None and total >= steps and not term:
                trunc = True
            o.append(np.asarray(obs, np.float32))
            a.append(act)
            r.append(float(rew))
            te.append(bool(term))
            tr.append(bool(trunc))
            done = term or trunc
        out.append(Episode(np.stack(o), np.stack(a), np.asarray(r), np.asarray(te), np.asarray(tr), ep_seed))
    return out


def write_dataset(
    dataset_id: str,
    env: Any,
    episodes: list[Episode],
    ref_min_score: float | None,
    ref_max_score: float | None,
    algorithm_name: str,
    description: str,
    root: str | os.PathLike | None = None,
    overwrite: bool = True,
) -> Any:
    """Write ``episodes`` as Minari dataset ``dataset_id`` (via ``create_dataset_from_buffers``)."""
    import minari
    from minari.data_collector import EpisodeBuffer

    with _minari_root(root):
        if dataset_id in minari.list_local_datasets():
            if not overwrite:
                raise FileExistsError(f"dataset {dataset_id!r} already exists; pass overwrite=True")
            minari.delete_dataset(dataset_id)
        buffers = [
            EpisodeBuffer(
                id=i,
                seed=ep.seed,
                observations=ep.observations,
                actions=ep.actions,
                rewards=list(ep.rewards),
                terminations=list(ep.terminations),
                truncations=list(ep.truncations),
            )
            for i, ep in enumerate(episodes)
        ]
        return minari.create_dataset_from_buffers(
            dataset_id,
            buffers,
            env=env,
            eval_env=env.spec,
            algorithm_name=algorithm_name,
            author="bilevel rl_adapters",
            author_email="rl_adapters@localhost",
            code_permalink="local",
            ref_min_score=None if ref_min_score is None else float(ref_min_score),
            ref_max_score=None if ref_max_score is None else float(ref_max_score),
            description=description,
        )


def make_tiny_dataset(
    dataset_id: str = "tiny/pendulum/mixed-v0",
    env_id: str = "InvertedPendulum-v5",
    policies: Mapping[str, Policy] | None = None,
    episodes: int | Mapping[str, int] = 3,
    max_episode_steps: int = 40,
    root: str | os.PathLike | None = None,
    seed: int = 0,
    noise: float = 0.0,
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
) -> Any:
    """Write a small real Minari dataset from scripted behaviour policies (no training); seconds to build.

    Episodes are stored policy by policy in the order of ``policies`` (so with the default
    ``{"good": PD controller, "bad": uniform random}`` the first ``episodes`` episodes are good).
    The env is made with ``max_episode_steps`` so good episodes end by truncation and bad ones by
    termination.  Reference scores default to the lowest and highest per-policy mean return.
    Returns the ``MinariDataset``; ``root`` selects the Minari root (else ``MINARI_DATASETS_PATH``).
    """
    import gymnasium as gym

    env = gym.make(env_id, max_episode_steps=max_episode_steps)
    if policies is None:
        policies = {"good": pendulum_pd_policy} if env_id.startswith("InvertedPendulum") else {}
        policies = {**policies, "bad": random_policy(env.action_space)}
    counts = {k: (episodes[k] if isinstance(episodes, Mapping) else int(episodes)) for k in policies}
    all_eps: list[Episode] = []
    means: dict[str, float] = {}
    for i, (name, pol) in enumerate(policies.items()):
        eps = rollout_episodes(env, pol, episodes=counts[name], seed=seed + 1000 * i, noise=noise)
        means[name] = float(np.mean([e.ret for e in eps]))
        all_eps += eps
    lo = min(means.values()) if ref_min_score is None else ref_min_score
    hi = max(means.values()) if ref_max_score is None else ref_max_score
    if hi == lo:
        hi = lo + 1.0  # one behaviour policy: keep the normalised score defined
    ds = write_dataset(
        dataset_id,
        env,
        all_eps,
        lo,
        hi,
        algorithm_name="scripted: " + ", ".join(policies),
        description=f"tiny test dataset, episodes per policy {counts}, mean returns {means}",
        root=root,
    )
    env.close()
    return ds


# ---------------------------------------------------------------------- online TD3 for the suite
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
        with torch.no_grad():
            noise = (torch.randn_like(a) * 0.2 * self.half).clamp(-0.5 * self.half, 0.5 * self.half)
            a2 = torch.max(torch.min(self.actor_t(o2) + noise, self.high), self.low)
            y = r + gamma * (1 - d) * self.critic_t.min_q(o2, a2)
        q1, q2 = self.critic(o, a)
        loss = F.mse_loss(q1, y) + F.mse_loss(q2, y)
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


def _policy_from_actor(actor: torch.nn.Module) -> Policy:
    @torch.no_grad()
    def pol(obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return actor(torch.as_tensor(np.asarray(obs, np.float32))[None])[0].numpy()

    return pol


def make_suite(
    env_id: str,
    namespace: str,
    root: str | os.PathLike | None = None,
    train_steps: int = 300_000,
    dataset_steps: int = 100_000,
    random_steps: int | None = None,
    start_steps: int = 10_000,
    eval_every: int = 5_000,
    eval_episodes: int = 5,
    medium_fraction: float = 0.4,
    noise: float = 0.1,
    seed: int = 0,
    version: str = "v0",
    verbose: bool = True,
) -> dict[str, Any]:
    """Train online TD3 on ``env_id`` and write ``<namespace>/{random,medium,medium-replay,expert}-<version>``.

    Returns a summary dict (returns, reference scores, dataset sizes, timings).
    """
    import gymnasium as gym

    t_start = time.perf_counter()
    env = gym.make(env_id)
    eval_env = gym.make(env_id)
    low, high = env.action_space.low.astype(np.float32), env.action_space.high.astype(np.float32)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    agent = OnlineTD3(obs_dim, act_dim, low, high, seed=seed, buffer_size=max(train_steps, 1))
    rng = np.random.default_rng(seed)
    half = (high - low) / 2

    def eval_actor(actor: torch.nn.Module, n: int, base_seed: int) -> float:
        eps = rollout_episodes(eval_env, _policy_from_actor(actor), episodes=n, seed=base_seed)
        return float(np.mean([e.ret for e in eps]))

    learner_eps: list[Episode] = []
    ep_end_step: list[int] = []
    snapshots: list[tuple[int, float, dict[str, torch.Tensor]]] = []
    obs, _ = env.reset(seed=seed)
    cur = {"o": [np.asarray(obs, np.float32)], "a": [], "r": [], "te": [], "tr": []}
    for t in range(1, train_steps + 1):
        if t <= start_steps:
            act = rng.uniform(low, high).astype(np.float32)
        else:
            act = np.clip(agent.act(obs) + rng.normal(0, 0.1, act_dim) * half, low, high).astype(np.float32)
        nobs, rew, term, trunc, _ = env.step(act)
        agent.add(obs, act, rew, nobs, term)
        cur["o"].append(np.asarray(nobs, np.float32))
        cur["a"].append(act)
        cur["r"].append(float(rew))
        cur["te"].append(bool(term))
        cur["tr"].append(bool(trunc))
        obs = nobs
        if term or trunc:
            learner_eps.append(
                Episode(
                    np.stack(cur["o"]),
                    np.stack(cur["a"]),
                    np.asarray(cur["r"]),
                    np.asarray(cur["te"]),
                    np.asarray(cur["tr"]),
                )
            )
            ep_end_step.append(t)
            obs, _ = env.reset()
            cur = {"o": [np.asarray(obs, np.float32)], "a": [], "r": [], "te": [], "tr": []}
        if t > start_steps:
            agent.train_step()
        if t % eval_every == 0:
            score = eval_actor(agent.actor.cpu(), eval_episodes, 10_000 + t)
            agent.actor.to(agent.device)
            snapshots.append(
                (t, score, {k: v.detach().cpu().clone() for k, v in agent.actor.state_dict().items()})
            )
            if verbose:
                print(f"[make-dataset] {env_id} step {t}: deterministic return {score:.1f}", flush=True)
    if not snapshots:
        raise ValueError(f"train_steps={train_steps} < eval_every={eval_every}: no policy snapshot was taken")

    def actor_from(sd: dict[str, torch.Tensor]) -> torch.nn.Module:
        a = DeterministicActor(obs_dim, act_dim, low, high, (256, 256))
        a.load_state_dict(sd)
        return a.eval()

    rand_eps = rollout_episodes(
        env, random_policy(env.action_space), steps=random_steps or dataset_steps // 2, seed=seed + 1
    )
    ref_min = float(np.mean([e.ret for e in rand_eps]))
    best_step, _, best_sd = max(snapshots, key=lambda s: s[1])
    expert_actor = actor_from(best_sd)
    ref_max = eval_actor(expert_actor, 20, 50_000)
    target = ref_min + medium_fraction * (ref_max - ref_min)
    medium_step, medium_score, medium_sd = next((s for s in snapshots if s[1] >= target), snapshots[0])
    medium_actor = actor_from(medium_sd)
    replay: list[Episode] = []
    for ep, end in zip(learner_eps, ep_end_step):
        if end > medium_step or sum(len(e.rewards) for e in replay) + len(ep.rewards) > dataset_steps:
            break
        replay.append(ep)
    sets = {
        "random": (rand_eps, "uniform random actions"),
        "medium": (
            rollout_episodes(
                env, _policy_from_actor(medium_actor), steps=dataset_steps, seed=seed + 2, noise=noise
            ),
            f"TD3 checkpoint at {medium_step} steps, Gaussian action noise {noise}",
        ),
        "medium-replay": (replay or learner_eps[:1], f"TD3 learner episodes up to step {medium_step}"),
        "expert": (
            rollout_episodes(
                env, _policy_from_actor(expert_actor), steps=dataset_steps, seed=seed + 3, noise=noise
            ),
            f"TD3 best checkpoint at {best_step} steps, Gaussian action noise {noise}",
        ),
    }
    summary: dict[str, Any] = {
        "env": env_id,
        "ref_min_score": ref_min,
        "ref_max_score": ref_max,
        "medium_step": medium_step,
        "medium_eval_return": medium_score,
        "expert_step": best_step,
        "datasets": {},
    }
    for kind, (eps, algo_name) in sets.items():
        ds_id = f"{namespace}/{kind}-{version}"
        write_dataset(
            ds_id,
            env,
            eps,
            ref_min,
            ref_max,
            algorithm_name=algo_name,
            description=f"{kind} data for {env_id} generated by rl_adapters.make_dataset",
            root=root,
        )
        rets = [e.ret for e in eps]
        summary["datasets"][ds_id] = {
            "steps": int(sum(len(e.rewards) for e in eps)),
            "episodes": len(eps),
            "mean_return": float(np.mean(rets)),
            "normalized": 100 * (float(np.mean(rets)) - ref_min) / (ref_max - ref_min),
        }
    summary["wall_time_s"] = time.perf_counter() - t_start
    env.close()
    eval_env.close()
    return summary


# ---------------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--env", required=True, help="gymnasium env id with Box spaces, e.g. Hopper-v5")
    p.add_argument("--namespace", required=True, help="dataset namespace, e.g. suite/hopper")
    p.add_argument("--root", default=None, help="Minari root to write into (default $MINARI_DATASETS_PATH)")
    p.add_argument("--train-steps", type=int, default=300_000, help="online TD3 environment steps")
    p.add_argument("--dataset-steps", type=int, default=100_000, help="transitions per medium/expert dataset")
    p.add_argument("--start-steps", type=int, default=10_000, help="uniform-random warm-up steps")
    p.add_argument(
        "--eval-every", type=int, default=5_000, help="snapshot + evaluate the learner every N steps"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--version", default="v0")
    p.add_argument(
        "--tiny",
        action="store_true",
        help="instead write one tiny scripted dataset <namespace>/mixed-<version> (no training)",
    )


def run_from_args(args: argparse.Namespace) -> int:
    if args.tiny:
        ds = make_tiny_dataset(
            f"{args.namespace}/mixed-{args.version}", env_id=args.env, root=args.root, seed=args.seed
        )
        print(
            json.dumps(
                {"dataset": ds.spec.dataset_id, "steps": ds.total_steps, "episodes": ds.total_episodes}
            )
        )
        return 0
    summary = make_suite(
        args.env,
        args.namespace,
        root=args.root,
        train_steps=args.train_steps,
        dataset_steps=args.dataset_steps,
        start_steps=args.start_steps,
        eval_every=args.eval_every,
        seed=args.seed,
        version=args.version,
    )
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    import sys

    parser = argparse.ArgumentParser(prog="python -m rl_adapters.make_dataset")
    add_arguments(parser)
    sys.exit(run_from_args(parser.parse_args()))
