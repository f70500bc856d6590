"""Rolling behaviour policies in an environment and writing the episodes as a Minari dataset; tiny
scripted datasets (a good PD controller and a bad random policy on ``InvertedPendulum-v5``) for tests."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Episode", "Policy", "make_tiny_dataset", "minari_root", "pendulum_pd_policy", "random_policy",
           "rollout_episodes", "write_dataset"]

Policy = Callable[[np.ndarray, np.random.Generator], np.ndarray]


@contextlib.contextmanager
def minari_root(root: str | os.PathLike | None) -> Iterator[None]:
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

    with minari_root(root):
        if dataset_id in minari.list_local_datasets():
            if not overwrite:
                raise FileExistsError(f"dataset {dataset_id!r} already exists; pass overwrite=True")
            with contextlib.redirect_stdout(io.StringIO()):  # minari prints "Dataset ... deleted!"
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
