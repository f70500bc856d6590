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

from .ids import check_dataset_available, resolve_dataset_ids
from .minari_io import combine_on_disk, concatenate, load_dataset
from .types import STD_EPS, Batch, DatasetError, DatasetNotFoundError, DatasetStats, OfflineData

__all__ = [
    "STD_EPS",
    "Batch",
    "DatasetError",
    "DatasetNotFoundError",
    "DatasetStats",
    "OfflineData",
    "check_dataset_available",
    "combine_on_disk",
    "concatenate",
    "load_dataset",
    "resolve_dataset_ids",
]
