"""What a loaded dataset is: :class:`OfflineData` (device-resident transitions and statistics), the
:class:`Batch` it samples, the :class:`DatasetStats` an algorithm keeps, and the dataset errors."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch

__all__ = ["STD_EPS", "Batch", "DatasetError", "DatasetNotFoundError", "DatasetStats", "OfflineData"]

STD_EPS = 1e-3
# The per-transition tensors of an OfflineData (one row per transition).
_ROW_TENSORS = ("observations", "actions", "rewards", "next_observations", "dones", "truncations", "episode_ids",
                "returns")


class DatasetError(ValueError):
    """A dataset could not be loaded or is unusable; the message names the dataset and field."""


class DatasetNotFoundError(DatasetError):
    """No dataset with that id under the Minari root (a usage error: the id or the root is wrong)."""


class Batch(NamedTuple):
    """A minibatch of device tensors; ``obs``/``next_obs`` are already normalised.

    Shapes: obs, next_obs ``(B, obs_dim)``; actions ``(B, act_dim)``; rewards, dones, returns ``(B,)``;
    episode_ids ``(B,)`` int64; indices ``(B,)`` int64, the rows of the dataset the batch was drawn from
    (ARQ looks up per-state candidates with them).  Rewards are the dataset's raw rewards (algorithms scale them).
    """

    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_obs: torch.Tensor
    dones: torch.Tensor
    episode_ids: torch.Tensor | None = None
    returns: torch.Tensor | None = None
    indices: torch.Tensor | None = None


@dataclass
class DatasetStats:
    """What an algorithm needs to know about its data: normalisation and action bounds.

    ``obs_std`` already includes the ``+1e-3``.  ``reward_scale`` is the IQL factor
    ``1000 / (max R_e - min R_e)`` (1.0 when all episodes have the same return).
    """

    obs_mean: np.ndarray
    obs_std: np.ndarray
    action_low: np.ndarray
    action_high: np.ndarray
    reward_scale: float = 1.0

    @property
    def obs_dim(self) -> int:
        return int(self.obs_mean.shape[0])

    @property
    def act_dim(self) -> int:
        return int(self.action_low.shape[0])

    def to_dict(self) -> dict[str, Any]:
        return {
            "obs_mean": self.obs_mean.tolist(),
            "obs_std": self.obs_std.tolist(),
            "action_low": self.action_low.tolist(),
            "action_high": self.action_high.tolist(),
            "reward_scale": self.reward_scale,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DatasetStats:
        return cls(
            obs_mean=np.asarray(d["obs_mean"], dtype=np.float32),
            obs_std=np.asarray(d["obs_std"], dtype=np.float32),
            action_low=np.asarray(d["action_low"], dtype=np.float32),
            action_high=np.asarray(d["action_high"], dtype=np.float32),
            reward_scale=float(d["reward_scale"]),
        )


@dataclass
class OfflineData:
    """All transitions of one (or several concatenated) Minari datasets, on one device.

    Raw (unnormalised) observations are stored. The first :meth:`sample` also keeps normalised copies of
    ``observations`` and ``next_observations`` (computed once, elementwise exactly as :meth:`normalize`
    computes them, so batches hold the same bits as normalising the gathered rows would); they cost
    ``2 * len * obs_dim`` floats more, and are recomputed if any of those tensors (or the statistics) is
    replaced or modified in place.
    """

    name: str
    observations: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_observations: torch.Tensor
    dones: torch.Tensor
    truncations: torch.Tensor
    episode_ids: torch.Tensor
    returns: torch.Tensor
    episode_returns: torch.Tensor
    action_low: np.ndarray
    action_high: np.ndarray
    env_spec: Any = None
    eval_env_spec: Any = None
    ref_min_score: float | None = None
    ref_max_score: float | None = None
    source_ids: list[str] = field(default_factory=list)
    load_time_s: float = 0.0
    obs_mean: torch.Tensor = field(init=False)
    obs_std: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        # float64 accumulation: a float32 sum over 1M rows loses ~3 significant digits.
        obs64 = self.observations.double()
        self.obs_mean = obs64.mean(0).float()
        self.obs_std = (obs64.std(0, unbiased=False) + STD_EPS).float()
        del obs64
        self._norm_cache: tuple[tuple, torch.Tensor, torch.Tensor] | None = None

    # ------------------------------------------------------------------ properties
    def __len__(self) -> int:
        return int(self.actions.shape[0])

    @property
    def device(self) -> torch.device:
        return self.observations.device

    @property
    def obs_dim(self) -> int:
        return int(self.observations.shape[1])

    @property
    def act_dim(self) -> int:
        return int(self.actions.shape[1])

    @property
    def num_episodes(self) -> int:
        return int(self.episode_returns.shape[0])

    @property
    def reward_scale(self) -> float:
        """IQL scaling ``1000 / (max_e R_e - min_e R_e)``; 1.0 if every episode has the same return."""
        spread = float(self.episode_returns.max() - self.episode_returns.min())
        return 1000.0 / spread if spread > 0 else 1.0

    @property
    def stats(self) -> DatasetStats:
        return DatasetStats(
            obs_mean=self.obs_mean.cpu().numpy(),
            obs_std=self.obs_std.cpu().numpy(),
            action_low=np.asarray(self.action_low, dtype=np.float32),
            action_high=np.asarray(self.action_high, dtype=np.float32),
            reward_scale=self.reward_scale,
        )

    @property
    def nbytes(self) -> int:
        tensors = (
            self.observations,
            self.actions,
            self.rewards,
            self.next_observations,
            self.dones,
            self.truncations,
            self.episode_ids,
            self.returns,
        )
        return sum(t.element_size() * t.numel() for t in tensors)

    # ------------------------------------------------------------------ operations
    def normalize(self, obs: torch.Tensor) -> torch.Tensor:
        """``(s - mu) / (sigma + 1e-3)``."""
        return (obs - self.obs_mean) / self.obs_std

    def make_generator(self, seed: int) -> torch.Generator:
        """A ``torch.Generator`` on this data's device, the only RNG :meth:`sample` uses."""
        g = torch.Generator(device=self.device)
        g.manual_seed(int(seed))
        return g

    def normalized_observations(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(normalize(observations), normalize(next_observations))``, computed once and cached."""
        srcs = (self.observations, self.next_observations, self.obs_mean, self.obs_std)
        key = tuple((id(t), t._version) for t in srcs)
        cache = getattr(self, "_norm_cache", None)
        if cache is None or cache[0] != key:
            cache = (key, self.normalize(self.observations), self.normalize(self.next_observations))
            self._norm_cache = cache
        return cache[1], cache[2]

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Batch:
        """Uniform sample with replacement: one ``randint`` and one gather per field."""
        idx = torch.randint(0, len(self), (batch_size,), device=self.device, generator=generator)
        return self.batch_at(idx)

    def sample_many(self, batch_size: int, generators: Sequence[torch.Generator]) -> Batch:
        """``N = len(generators)`` batches at once: every tensor has a leading ``N`` dimension and slice ``k``
        is exactly ``sample(batch_size, generators[k])`` (the same rows, drawn from generator ``k``).

        For ``N`` seeds trained together in one process (``vmap`` over stacked per-seed parameters).
        """
        if len(generators) == 0:
            raise ValueError("sample_many needs at least one generator")
        idx = torch.stack(
            [torch.randint(0, len(self), (batch_size,), device=self.device, generator=g) for g in generators]
        )
        return self.batch_at(idx)

    def batch_at(self, idx: torch.Tensor) -> Batch:
        """The rows ``idx`` (an integer tensor of any shape; the batch's tensors get its shape in front)."""
        obs_n, next_obs_n = self.normalized_observations()
        if idx.dtype in (torch.int64, torch.int32):
            flat = idx.reshape(-1)

            def take(t: torch.Tensor) -> torch.Tensor:
                # index_select: the same rows as t[idx], ~3x cheaper than advanced indexing on CPU.
                return torch.index_select(t, 0, flat).reshape(*idx.shape, *t.shape[1:])
        else:

            def take(t: torch.Tensor) -> torch.Tensor:
                return t[idx]

        return Batch(
            obs=take(obs_n),
            actions=take(self.actions),
            rewards=take(self.rewards),
            next_obs=take(next_obs_n),
            dones=take(self.dones),
            episode_ids=take(self.episode_ids),
            returns=take(self.returns),
            indices=idx,
        )

    def top_trajectories(self, fraction: float) -> OfflineData:
        """The transitions of the ``ceil(fraction * num_episodes)`` episodes with the highest return (the
        "%BC" selection of Chen et al. 2021, by trajectory; ties broken by episode index).

        Normalisation statistics, episode ids and ``episode_returns`` stay those of the whole dataset, so a
        batch drawn from the subset is normalised exactly as the algorithm (built on the whole data) expects.
        """
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        if fraction == 1.0:
            return self
        n_keep = max(1, math.ceil(fraction * self.num_episodes - 1e-9))
        # Stable sort on -return: equal returns keep episode order, so the selection is deterministic.
        order = torch.sort(-self.episode_returns.double().cpu(), stable=True).indices
        keep_ep = torch.zeros(self.num_episodes, dtype=torch.bool)
        keep_ep[order[:n_keep]] = True
        rows = keep_ep.to(self.episode_ids.device)[self.episode_ids].nonzero().squeeze(1)
        sub = self._derived(f"{self.name}[top {fraction:g} of episodes]", episode_returns=self.episode_returns,
                            **{k: getattr(self, k)[rows] for k in _ROW_TENSORS})
        sub.obs_mean, sub.obs_std = self.obs_mean, self.obs_std
        return sub

    def _derived(self, name: str, **tensors: torch.Tensor) -> OfflineData:
        """A new OfflineData with these tensors and this one's metadata (bounds, env specs, reference scores)."""
        return OfflineData(
            name=name,
            action_low=self.action_low,
            action_high=self.action_high,
            env_spec=self.env_spec,
            eval_env_spec=self.eval_env_spec,
            ref_min_score=self.ref_min_score,
            ref_max_score=self.ref_max_score,
            source_ids=list(self.source_ids),
            load_time_s=self.load_time_s,
            **tensors,
        )

    def to(self, device: str | torch.device) -> OfflineData:
        device = torch.device(device)
        return self._derived(self.name, **{k: getattr(self, k).to(device) for k in (*_ROW_TENSORS, "episode_returns")})

    def summary(self) -> str:
        return (
            f"{self.name}: {len(self)} transitions, {self.num_episodes} episodes, obs_dim={self.obs_dim}, "
            f"act_dim={self.act_dim}, return min/mean/max={self.episode_returns.min():.1f}/"
            f"{self.episode_returns.mean():.1f}/{self.episode_returns.max():.1f}, "
            f"{self.nbytes / 2**20:.1f} MiB on {self.device}, loaded in {self.load_time_s:.2f}s"
        )
