"""Minari datasets as one device-resident set of transition tensors.

A dataset of E episodes with T_e steps each becomes N = sum_e T_e transitions
``(s_t, a_t, r_t, s_{t+1}, done_t)`` where ``done_t = terminated_t``: a *truncated* episode (time
limit) was cut short by the data collector, not by the MDP, so bootstrapping from ``s_{t+1}`` is still
correct there.  Every transition also carries its episode id and the undiscounted return of its
episode ``R_e = sum_t r_t``.

Statistics (section 4 of SPEC.md):

* state normalisation ``s_hat = (s - mu) / (sigma + 1e-3)`` with ``mu, sigma`` the per-dimension mean
  and standard deviation over the N transition states ``s_t``;
* IQL reward scale ``c = 1000 / (max_e R_e - min_e R_e)``.

Loading reads each episode once into pre-allocated numpy arrays and hands them to torch without a
copy on CPU, so peak memory is about twice the arrays' own size (observations are stored twice:
``s_t`` and ``s_{t+1}``, which keeps sampling a single gather).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch

__all__ = [
    "Batch",
    "DatasetError",
    "DatasetNotFoundError",
    "DatasetStats",
    "OfflineData",
    "check_dataset_available",
    "concatenate",
    "load_dataset",
    "resolve_dataset_ids",
]

STD_EPS = 1e-3


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

    Raw (unnormalised) observations are stored; :meth:`sample` normalises the gathered rows, which
    costs ``O(B * obs_dim)`` per batch instead of a second full copy of the data.
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

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Batch:
        """Uniform sample with replacement: one ``randint`` and one gather per field."""
        idx = torch.randint(0, len(self), (batch_size,), device=self.device, generator=generator)
        return self.batch_at(idx)

    def batch_at(self, idx: torch.Tensor) -> Batch:
        return Batch(
            obs=self.normalize(self.observations[idx]),
            actions=self.actions[idx],
            rewards=self.rewards[idx],
            next_obs=self.normalize(self.next_observations[idx]),
            dones=self.dones[idx],
            episode_ids=self.episode_ids[idx],
            returns=self.returns[idx],
            indices=idx,
        )

    def to(self, device: str | torch.device) -> OfflineData:
        device = torch.device(device)
        moved = {
            k: getattr(self, k).to(device)
            for k in (
                "observations",
                "actions",
                "rewards",
                "next_observations",
                "dones",
                "truncations",
                "episode_ids",
                "returns",
                "episode_returns",
            )
        }
        return OfflineData(
            name=self.name,
            action_low=self.action_low,
            action_high=self.action_high,
            env_spec=self.env_spec,
            eval_env_spec=self.eval_env_spec,
            ref_min_score=self.ref_min_score,
            ref_max_score=self.ref_max_score,
            source_ids=list(self.source_ids),
            load_time_s=self.load_time_s,
            **moved,
        )

    def summary(self) -> str:
        return (
            f"{self.name}: {len(self)} transitions, {self.num_episodes} episodes, obs_dim={self.obs_dim}, "
            f"act_dim={self.act_dim}, return min/mean/max={self.episode_returns.min():.1f}/"
            f"{self.episode_returns.mean():.1f}/{self.episode_returns.max():.1f}, "
            f"{self.nbytes / 2**20:.1f} MiB on {self.device}, loaded in {self.load_time_s:.2f}s"
        )


# ---------------------------------------------------------------------- id resolution
_MIX_RE = re.compile(r"^(?P<prefix>.*/)?(?P<a>[a-z]+)-(?P<b>[a-z]+)(?P<version>-v\d+)?$")
# Names that are single datasets although they contain a dash.
_SINGLE_NAMES = {"medium-replay", "full-replay"}


def resolve_dataset_ids(spec: str) -> list[str]:
    """Turn a dataset spec into the Minari ids it concatenates.

    ``"a+b"`` concatenates ``a`` and ``b``.  ``<ns>/<env>/medium-expert[-vN]`` (D4RL's mix) resolves
    to ``<ns>/<env>/medium-vN + <ns>/<env>/expert-vN`` (``-v0`` when no version is given) unless a
    dataset with exactly that id exists locally.
    """
    parts = [p.strip() for p in spec.split("+") if p.strip()]
    if not parts:
        raise DatasetError(
            f"dataset spec {spec!r} is empty; pass a Minari id such as 'suite/hopper/medium-v0'"
        )
    out: list[str] = []
    for part in parts:
        m = _MIX_RE.match(part)
        name = part.rsplit("/", 1)[-1]
        base = re.sub(r"-v\d+$", "", name)
        if (
            m
            and base not in _SINGLE_NAMES
            and m.group("a") in {"medium", "random"}
            and not _exists_locally(part)
        ):
            prefix, version = m.group("prefix") or "", m.group("version") or "-v0"
            out += [f"{prefix}{m.group('a')}{version}", f"{prefix}{m.group('b')}{version}"]
        else:
            out.append(part)
    return out


def _exists_locally(dataset_id: str) -> bool:
    from minari.storage.datasets_root_dir import get_dataset_path

    try:
        return (get_dataset_path(dataset_id) / "data" / "metadata.json").exists()
    except (OSError, ValueError):  # malformed ids are reported by load_dataset with a better message
        return False


def _unknown_id_error(dataset_id: str, cause: Exception | None = None) -> DatasetNotFoundError:
    import minari

    root = os.environ.get("MINARI_DATASETS_PATH")
    where = f"MINARI_DATASETS_PATH={root}" if root else "~/.minari/datasets (MINARI_DATASETS_PATH is not set)"
    try:
        local = sorted(minari.list_local_datasets().keys())
    except (OSError, ValueError, KeyError):  # a broken root must not hide the original error
        local = []
    shown = ", ".join(local[:8]) + (f" and {len(local) - 8} more" if len(local) > 8 else "") if local else "none"
    return DatasetNotFoundError(
        f"--dataset {dataset_id}: not found under {where} (local datasets: {shown}); set "
        f"MINARI_DATASETS_PATH to the absolute path of the folder holding it, download an official one "
        f"with `minari download {dataset_id}`, or build a suite with "
        f"`bilevel-rl make-dataset --env Hopper-v5 --namespace suite/hopper`"
        + (f" ({type(cause).__name__})" if cause is not None and not isinstance(cause, FileNotFoundError) else "")
    )


def check_dataset_available(spec: str) -> None:
    """Raise :class:`DatasetNotFoundError` (one line) unless every id of ``spec`` exists locally.

    The same test ``minari.load_dataset`` makes, without opening anything: cheap enough to run before a
    run creates its output directory.
    """
    from minari.storage.datasets_root_dir import get_dataset_path

    for dataset_id in resolve_dataset_ids(spec):
        try:
            found = (get_dataset_path(dataset_id) / "data").exists()
        except (OSError, ValueError):
            found = False
        if not found:
            raise _unknown_id_error(dataset_id)


# ---------------------------------------------------------------------- loading
def _check_box(ds_name: str, what: str, space: Any) -> None:
    from gymnasium.spaces import Box

    if not isinstance(space, Box):
        raise DatasetError(
            f"dataset {ds_name!r}: {what} is {type(space).__name__}, but rl_adapters needs a flat Box "
            f"(continuous vectors). Flatten it (gymnasium.wrappers.FlattenObservation) when generating the data."
        )
    if len(space.shape) != 1:
        raise DatasetError(
            f"dataset {ds_name!r}: {what} has shape {space.shape}; only 1-D Box spaces are supported"
        )


def _check_finite(ds_name: str, field_name: str, arr: np.ndarray, episode_of: np.ndarray) -> None:
    finite = np.isfinite(arr)
    if finite.all():
        return
    bad = np.argwhere(~finite)[0]
    row = int(bad[0])
    raise DatasetError(
        f"dataset {ds_name!r}: field {field_name!r} has a non-finite value {arr[tuple(bad)]} at transition {row} "
        f"(episode {int(episode_of[row])}, index {tuple(int(b) for b in bad)}); clean or regenerate the dataset."
    )


def _load_one(dataset: Any) -> dict[str, Any]:
    """Read a single ``MinariDataset`` into numpy arrays, validating every field."""
    t0 = time.perf_counter()
    name = dataset.spec.dataset_id
    _check_box(name, "observation_space", dataset.observation_space)
    _check_box(name, "action_space", dataset.action_space)
    n_total = int(dataset.total_steps)
    episode_indices = np.asarray(dataset.episode_indices)
    if n_total == 0 or len(episode_indices) == 0:
        raise DatasetError(
            f"dataset {name!r} is empty (total_steps={n_total}, "
            f"episodes={len(episode_indices)}); nothing to train on"
        )
    obs_dim = dataset.observation_space.shape[0]
    act_dim = dataset.action_space.shape[0]
    obs = np.empty((n_total, obs_dim), np.float32)
    next_obs = np.empty((n_total, obs_dim), np.float32)
    actions = np.empty((n_total, act_dim), np.float32)
    rewards = np.empty(n_total, np.float32)
    terms = np.empty(n_total, np.bool_)
    truncs = np.empty(n_total, np.bool_)
    ep_ids = np.empty(n_total, np.int64)
    ep_returns = np.empty(len(episode_indices), np.float64)
    pos = 0
    for k, ep in enumerate(dataset.storage.get_episodes(episode_indices)):
        t = len(ep["actions"])
        lengths = {
            "observations": len(ep["observations"]),
            "actions": t,
            "rewards": len(ep["rewards"]),
            "terminations": len(ep["terminations"]),
            "truncations": len(ep["truncations"]),
        }
        if lengths["observations"] != t + 1 or any(
            v != t for key, v in lengths.items() if key != "observations"
        ):
            raise DatasetError(
                f"dataset {name!r}, episode {ep['id']}: inconsistent lengths {lengths}; an episode of T steps "
                f"needs T+1 observations and T actions/rewards/terminations/truncations."
            )
        if pos + t > n_total:
            raise DatasetError(
                f"dataset {name!r}: episodes hold more steps than metadata total_steps={n_total} "
                f"(field 'total_steps' is stale); regenerate the metadata"
            )
        o = np.asarray(ep["observations"], dtype=np.float32).reshape(t + 1, -1)
        if o.shape[1] != obs_dim:
            raise DatasetError(
                f"dataset {name!r}, episode {ep['id']}: field 'observations' has width {o.shape[1]}, "
                f"observation_space says {obs_dim}"
            )
        obs[pos : pos + t] = o[:-1]
        next_obs[pos : pos + t] = o[1:]
        actions[pos : pos + t] = np.asarray(ep["actions"], dtype=np.float32).reshape(t, act_dim)
        r = np.asarray(ep["rewards"], dtype=np.float64)
        rewards[pos : pos + t] = r
        terms[pos : pos + t] = np.asarray(ep["terminations"], dtype=np.bool_)
        truncs[pos : pos + t] = np.asarray(ep["truncations"], dtype=np.bool_)
        ep_ids[pos : pos + t] = k
        ep_returns[k] = r.sum()  # float64 sum: exact enough to compare with env returns
        pos += t
    if pos != n_total:
        raise DatasetError(
            f"dataset {name!r}: episodes hold {pos} steps but metadata total_steps={n_total}; "
            f"field 'total_steps' is inconsistent with the stored episodes"
        )
    for field_name, arr in (
        ("observations", obs),
        ("next_observations", next_obs),
        ("actions", actions),
        ("rewards", rewards),
    ):
        _check_finite(name, field_name, arr, ep_ids)
    meta = dataset.storage.metadata
    eval_spec = meta.get("eval_env_spec")
    if isinstance(eval_spec, str):
        from gymnasium.envs.registration import EnvSpec

        eval_spec = EnvSpec.from_json(eval_spec)
    space = dataset.action_space
    return {
        "name": name,
        "obs": obs,
        "next_obs": next_obs,
        "actions": actions,
        "rewards": rewards,
        "terms": terms,
        "truncs": truncs,
        "ep_ids": ep_ids,
        "ep_returns": ep_returns,
        "action_low": np.asarray(space.low, np.float32),
        "action_high": np.asarray(space.high, np.float32),
        "env_spec": dataset.env_spec,
        "eval_env_spec": eval_spec or dataset.env_spec,
        "ref_min_score": meta.get("ref_min_score"),
        "ref_max_score": meta.get("ref_max_score"),
        "time": time.perf_counter() - t0,
    }


def _open(dataset_id: str) -> Any:
    import minari

    try:
        return minari.load_dataset(dataset_id)
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise _unknown_id_error(dataset_id, e) from None


def _to_tensor(a: np.ndarray, device: torch.device) -> torch.Tensor:
    # from_numpy shares memory; .to() copies only when the device differs.
    return torch.from_numpy(a).to(device)


def _build(parts: list[dict[str, Any]], device: torch.device, name: str) -> OfflineData:
    first = parts[0]
    for p in parts[1:]:
        for key in ("obs", "actions"):
            if p[key].shape[1] != first[key].shape[1]:
                raise DatasetError(
                    f"cannot concatenate {first['name']!r} and {p['name']!r}: field "
                    f"{'observations' if key == 'obs' else 'actions'} widths differ "
                    f"({first[key].shape[1]} vs {p[key].shape[1]})"
                )
        if not (
            np.allclose(p["action_low"], first["action_low"])
            and np.allclose(p["action_high"], first["action_high"])
        ):
            raise DatasetError(
                f"cannot concatenate {first['name']!r} and {p['name']!r}: action bounds differ"
            )

    def cat(key: str) -> np.ndarray:
        # With one part this is the array itself: no copy.
        return parts[0][key] if len(parts) == 1 else np.concatenate([p[key] for p in parts])

    offsets = np.cumsum([0] + [len(p["ep_returns"]) for p in parts[:-1]])
    ep_ids = (
        cat("ep_ids")
        if len(parts) == 1
        else np.concatenate([p["ep_ids"] + off for p, off in zip(parts, offsets)])
    )
    ep_returns = cat("ep_returns")
    refs = {(p["ref_min_score"], p["ref_max_score"]) for p in parts}
    ref_min, ref_max = first["ref_min_score"], first["ref_max_score"]
    if len(refs) > 1:
        # Mixing datasets of one env: they share reference scores; if not, refuse to guess.
        ref_min = ref_max = None
    return OfflineData(
        name=name,
        observations=_to_tensor(cat("obs"), device),
        actions=_to_tensor(cat("actions"), device),
        rewards=_to_tensor(cat("rewards"), device),
        next_observations=_to_tensor(cat("next_obs"), device),
        dones=_to_tensor(cat("terms").astype(np.float32), device),
        truncations=_to_tensor(cat("truncs"), device),
        episode_ids=_to_tensor(ep_ids, device),
        returns=_to_tensor(ep_returns[ep_ids].astype(np.float32), device),
        episode_returns=_to_tensor(ep_returns, device),
        action_low=first["action_low"],
        action_high=first["action_high"],
        env_spec=first["env_spec"],
        eval_env_spec=first["eval_env_spec"],
        ref_min_score=ref_min,
        ref_max_score=ref_max,
        source_ids=[p["name"] for p in parts],
        load_time_s=sum(p["time"] for p in parts),
    )


def load_dataset(
    dataset: str | Any | Sequence[str | Any],
    device: str | torch.device = "cpu",
) -> OfflineData:
    """Load Minari dataset(s) into an :class:`OfflineData` on ``device``.

    ``dataset`` is a Minari id (``"suite/hopper/medium-v0"``, ``"mujoco/hopper/medium-v0"``), a spec
    concatenating several (``"a+b"``, ``".../medium-expert"``), a ``MinariDataset``, or a list of any of these.
    Episodes of several datasets are concatenated in memory (ids renumbered), so read-only roots work.
    Raises :class:`DatasetError` naming the dataset and field for unknown ids, empty datasets,
    non-Box spaces, inconsistent episode lengths and non-finite values.
    """
    device = torch.device(device)
    t0 = time.perf_counter()
    items: list[Any] = []
    if isinstance(dataset, str):
        items = list(resolve_dataset_ids(dataset))
        name = dataset
    elif isinstance(dataset, Sequence):
        if len(dataset) == 0:
            raise DatasetError("empty list of datasets to load")
        for d in dataset:
            items += resolve_dataset_ids(d) if isinstance(d, str) else [d]
        name = "+".join(d if isinstance(d, str) else d.spec.dataset_id for d in dataset)
    else:
        items = [dataset]
        name = getattr(getattr(dataset, "spec", None), "dataset_id", None)
        if name is None:
            raise TypeError(
                f"expected a Minari dataset id, MinariDataset or list of them, got {type(dataset).__name__}"
            )
    parts = [_load_one(_open(it) if isinstance(it, str) else it) for it in items]
    data = _build(parts, device, name)
    data.load_time_s = time.perf_counter() - t0
    return data


def concatenate(datasets: Iterable[OfflineData], name: str | None = None) -> OfflineData:
    """Concatenate already-loaded datasets (same env) in memory; episode ids are renumbered."""
    ds = list(datasets)
    if not ds:
        raise DatasetError("concatenate() needs at least one dataset")
    device = ds[0].device
    parts = []
    for d in ds:
        parts.append(
            {
                "name": d.name,
                "obs": d.observations.cpu().numpy(),
                "next_obs": d.next_observations.cpu().numpy(),
                "actions": d.actions.cpu().numpy(),
                "rewards": d.rewards.cpu().numpy(),
                "terms": d.dones.cpu().numpy().astype(bool),
                "truncs": d.truncations.cpu().numpy(),
                "ep_ids": d.episode_ids.cpu().numpy(),
                "ep_returns": d.episode_returns.cpu().numpy(),
                "action_low": d.action_low,
                "action_high": d.action_high,
                "env_spec": d.env_spec,
                "eval_env_spec": d.eval_env_spec,
                "ref_min_score": d.ref_min_score,
                "ref_max_score": d.ref_max_score,
                "time": d.load_time_s,
            }
        )
    return _build(parts, device, name or "+".join(d.name for d in ds))


def combine_on_disk(dataset_ids: Sequence[str], new_dataset_id: str) -> Any:
    """Write ``minari.combine_datasets`` of ``dataset_ids`` as ``new_dataset_id`` into the (writable)
    Minari root; returns the new ``MinariDataset``.  Use :func:`load_dataset` with ``"a+b"`` instead when
    the root is read-only."""
    import minari

    return minari.combine_datasets([_open(i) for i in dataset_ids], new_dataset_id)
