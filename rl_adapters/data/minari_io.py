"""Reading Minari datasets into :class:`~rl_adapters.data.OfflineData`: validation of every field, the
concatenation of several datasets (in memory, ids renumbered), and writing a combination to disk."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .ids import resolve_dataset_ids, unknown_id_error
from .types import DatasetError, OfflineData

__all__ = ["Part", "combine_on_disk", "concatenate", "load_dataset"]


@dataclass
class Part:
    """One dataset's transitions as numpy arrays, before concatenation and the move to a device.

    ``obs`` / ``next_obs`` ``(N, obs_dim)``, ``actions`` ``(N, act_dim)``, ``rewards``, ``terms``, ``truncs``,
    ``ep_ids`` ``(N,)`` (episode index within this part), ``ep_returns`` ``(E,)``; ``time``: seconds to read.
    """

    name: str
    obs: np.ndarray
    next_obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terms: np.ndarray
    truncs: np.ndarray
    ep_ids: np.ndarray
    ep_returns: np.ndarray
    action_low: np.ndarray
    action_high: np.ndarray
    env_spec: Any
    eval_env_spec: Any
    ref_min_score: float | None
    ref_max_score: float | None
    time: float


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


def _load_one(dataset: Any) -> Part:
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
    for k, ep in enumerate(_episodes(dataset, episode_indices)):
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
    return Part(
        name=name, obs=obs, next_obs=next_obs, actions=actions, rewards=rewards, terms=terms, truncs=truncs,
        ep_ids=ep_ids, ep_returns=ep_returns, action_low=np.asarray(space.low, np.float32),
        action_high=np.asarray(space.high, np.float32), env_spec=dataset.env_spec,
        eval_env_spec=eval_spec or dataset.env_spec, ref_min_score=meta.get("ref_min_score"),
        ref_max_score=meta.get("ref_max_score"), time=time.perf_counter() - t0,
    )


#: What h5py and minari raise on a truncated or garbled file (h5py: OSError on open, KeyError for a damaged
#: object, RuntimeError / ValueError / TypeError for a damaged dataset; minari: an AssertionError on a wrong type).
_READ_ERRORS = (OSError, KeyError, RuntimeError, ValueError, TypeError, AssertionError)


def _rebuild_hint(dataset_id: str, folder: Any) -> str:
    return (f"delete {folder} and build the dataset again (bilevel-rl make-dataset), download it again "
            f"(minari download {dataset_id}), or set MINARI_DATASETS_PATH to a folder holding an intact copy")


def _unreadable(dataset_id: str, path: Any, folder: Any, what: str, e: BaseException) -> DatasetError:
    cause = " ".join(str(e).split()) or "no detail"
    return DatasetError(f"dataset {dataset_id!r}: {path} {what} ({type(e).__name__}: {cause}); "
                        f"{_rebuild_hint(dataset_id, folder)}")


def _episodes(dataset: Any, episode_indices: np.ndarray) -> Iterable[dict[str, Any]]:
    """``dataset.storage.get_episodes`` one by one; a truncated or garbled HDF5 file is a one-line
    :class:`DatasetError` naming the file and the fix."""
    storage = dataset.storage
    path = getattr(storage, "_file_path", None) or storage.data_path
    it = iter(storage.get_episodes(episode_indices))
    while True:
        try:
            ep = next(it)
        except StopIteration:
            return
        except DatasetError:
            raise
        except _READ_ERRORS as e:
            raise _unreadable(dataset.spec.dataset_id, path, storage.data_path.parent,
                              "cannot be read: the file is truncated or corrupted", e) from e
        yield ep


def _broken_dataset(dataset_id: str, e: BaseException) -> DatasetError | None:
    """Why ``minari.load_dataset`` failed on a dataset whose folder exists (a corrupted or missing
    ``metadata.json`` or ``main_data.hdf5``); None when there is no such folder (the id is unknown)."""
    import json

    from minari.storage.datasets_root_dir import get_dataset_path

    try:
        folder = get_dataset_path(dataset_id)
    except (OSError, ValueError):
        return None
    data = folder / "data"
    if not data.is_dir():
        return None
    meta = data / "metadata.json"
    if not meta.is_file():
        return _unreadable(dataset_id, meta, folder, "is missing", e)
    try:
        json.loads(meta.read_text())
    except (OSError, ValueError) as bad:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return _unreadable(dataset_id, meta, folder, "is not readable JSON: the file is truncated or corrupted",
                           bad)
    if isinstance(e, KeyError):
        return _unreadable(dataset_id, meta, folder, f"lacks the field {e}", e)
    hdf5 = data / "main_data.hdf5"
    if not hdf5.is_file():
        return _unreadable(dataset_id, hdf5, folder, "is missing", e)
    return _unreadable(dataset_id, data, folder, "cannot be opened as a Minari dataset", e)


def _open(dataset_id: str) -> Any:
    import minari

    try:
        return minari.load_dataset(dataset_id)
    except FileNotFoundError as e:
        raise unknown_id_error(dataset_id, e) from None
    except (*_READ_ERRORS, ImportError) as e:
        raise (_broken_dataset(dataset_id, e) or unknown_id_error(dataset_id, e)) from None


def _to_tensor(a: np.ndarray, device: torch.device) -> torch.Tensor:
    # from_numpy shares memory; .to() copies only when the device differs.
    return torch.from_numpy(a).to(device)


def _build(parts: list[Part], device: torch.device, name: str) -> OfflineData:
    first = parts[0]
    for p in parts[1:]:
        for key in ("obs", "actions"):
            if getattr(p, key).shape[1] != getattr(first, key).shape[1]:
                raise DatasetError(
                    f"cannot concatenate {first.name!r} and {p.name!r}: field "
                    f"{'observations' if key == 'obs' else 'actions'} widths differ "
                    f"({getattr(first, key).shape[1]} vs {getattr(p, key).shape[1]})"
                )
        if not (
            np.allclose(p.action_low, first.action_low)
            and np.allclose(p.action_high, first.action_high)
        ):
            raise DatasetError(
                f"cannot concatenate {first.name!r} and {p.name!r}: action bounds differ"
            )

    def cat(key: str) -> np.ndarray:
        # With one part this is the array itself: no copy.
        return getattr(parts[0], key) if len(parts) == 1 else np.concatenate([getattr(p, key) for p in parts])

    offsets = np.cumsum([0] + [len(p.ep_returns) for p in parts[:-1]])
    ep_ids = (
        cat("ep_ids")
        if len(parts) == 1
        else np.concatenate([p.ep_ids + off for p, off in zip(parts, offsets)])
    )
    ep_returns = cat("ep_returns")
    refs = {(p.ref_min_score, p.ref_max_score) for p in parts}
    ref_min, ref_max = first.ref_min_score, first.ref_max_score
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
        action_low=first.action_low,
        action_high=first.action_high,
        env_spec=first.env_spec,
        eval_env_spec=first.eval_env_spec,
        ref_min_score=ref_min,
        ref_max_score=ref_max,
        source_ids=[p.name for p in parts],
        load_time_s=sum(p.time for p in parts),
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
        parts.append(Part(
            name=d.name, obs=d.observations.cpu().numpy(), next_obs=d.next_observations.cpu().numpy(),
            actions=d.actions.cpu().numpy(), rewards=d.rewards.cpu().numpy(),
            terms=d.dones.cpu().numpy().astype(bool), truncs=d.truncations.cpu().numpy(),
            ep_ids=d.episode_ids.cpu().numpy(), ep_returns=d.episode_returns.cpu().numpy(),
            action_low=d.action_low, action_high=d.action_high, env_spec=d.env_spec,
            eval_env_spec=d.eval_env_spec, ref_min_score=d.ref_min_score, ref_max_score=d.ref_max_score,
            time=d.load_time_s,
        ))
    return _build(parts, device, name or "+".join(d.name for d in ds))


def combine_on_disk(dataset_ids: Sequence[str], new_dataset_id: str) -> Any:
    """Write ``minari.combine_datasets`` of ``dataset_ids`` as ``new_dataset_id`` into the (writable)
    Minari root; returns the new ``MinariDataset``.  Use :func:`load_dataset` with ``"a+b"`` instead when
    the root is read-only."""
    import minari

    return minari.combine_datasets([_open(i) for i in dataset_ids], new_dataset_id)
