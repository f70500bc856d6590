"""A D4RL-style suite of Minari datasets (random, medium, medium-replay, expert) from online TD3.

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

import os
import time
from typing import Any

import numpy as np
import torch

from ..evaluation import known_mujoco_warnings_silenced
from ..networks import DeterministicActor
from .online_td3 import OnlineTD3, policy_from_actor
from .rollout import Episode, random_policy, rollout_episodes, write_dataset

__all__ = ["make_suite"]


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
    with known_mujoco_warnings_silenced():
        env = gym.make(env_id)
        eval_env = gym.make(env_id)
    low, high = env.action_space.low.astype(np.float32), env.action_space.high.astype(np.float32)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    agent = OnlineTD3(obs_dim, act_dim, low, high, seed=seed, buffer_size=max(train_steps, 1))
    rng = np.random.default_rng(seed)
    half = (high - low) / 2

    def eval_actor(actor: torch.nn.Module, n: int, base_seed: int) -> float:
        eps = rollout_episodes(eval_env, policy_from_actor(actor), episodes=n, seed=base_seed)
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
                env, policy_from_actor(medium_actor), steps=dataset_steps, seed=seed + 2, noise=noise
            ),
            f"TD3 checkpoint at {medium_step} steps, Gaussian action noise {noise}",
        ),
        "medium-replay": (replay or learner_eps[:1], f"TD3 learner episodes up to step {medium_step}"),
        "expert": (
            rollout_episodes(
                env, policy_from_actor(expert_actor), steps=dataset_steps, seed=seed + 3, noise=noise
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
            description=f"{kind} data for {env_id} generated by rl_adapters.datasets",
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
