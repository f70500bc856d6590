"""Offline RL algorithms, one module each, and the registry the trainer and CLI use.

Adding an algorithm: write ``algorithms/<name>.py`` with a subclass of :class:`Algorithm` that has a
``Config`` dataclass and a ``name``, decorate it with ``@register`` (:func:`~rl_adapters.algorithms.base.register`)
and import the module below.  Its ``Config`` fields, each made with
:func:`~rl_adapters.algorithms.options.option` (help, unit, range or choices), become ``bilevel-rl train
--<field-name>`` flags with that help, and :func:`make_config` checks every value against them; the hooks it
may override are declared, as no-ops, on :class:`Algorithm` and :class:`BaseConfig`.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import torch

from ..data import DatasetStats
from ..errors import UsageError
from .base import ALGORITHMS, Algorithm, BaseConfig, register
from .options import check_value, config_choices, config_ranges

# Each import registers the module's algorithm(s) (``@register``): this order is ALGORITHMS' order
# (bc, td3bc, iql, vaco, aspc, aspc-iql, arq), the order ``--help`` and the grids list them in.
# isort: off
from .bc import BC
from .td3bc import TD3BC
from .iql import IQL
from .vaco import VACO
from .aspc import ASPC, ASPCIQL
from .arq import ARQ
# isort: on


def field_choices(name: str) -> dict[str, tuple[str, ...]]:
    """Allowed values of algorithm ``name``'s string options (e.g. ``{"solver": ("one_step", ...)}``), from the
    metadata of its ``Config`` fields (:mod:`rl_adapters.algorithms.options`)."""
    return config_choices(ALGORITHMS[name].Config)


def field_ranges(name: str) -> dict[str, tuple[float | None, float | None, bool, bool]]:
    """Allowed range ``(low, high, low_open, high_open)`` of algorithm ``name``'s numeric options that have one
    (e.g. ``{"tau": (0, 1, True, False), ...}``), from the metadata of its ``Config`` fields."""
    return config_ranges(ALGORITHMS[name].Config)


def make_config(name: str, **hparams: Any) -> Any:
    """``ALGORITHMS[name].Config(**hparams)`` after checking every value's type and range.

    Raises :class:`~rl_adapters.errors.UsageError` (a ``ValueError``) naming the field, its flag, the
    value and a valid one, for unknown algorithms or keys, wrong types, and values outside the range or
    choices of the field's :func:`~rl_adapters.algorithms.options.option`; then for what the ``Config``'s
    ``__post_init__`` refuses (checks relating several fields).
    """
    if name not in ALGORITHMS:
        raise UsageError(f"unknown algorithm {name!r} (--algo); available: {', '.join(sorted(ALGORITHMS))}")
    cfg_cls = ALGORITHMS[name].Config
    fields = {f.name: f for f in dataclasses.fields(cfg_cls)}
    unknown = sorted(set(hparams) - set(fields))
    if unknown:
        raise UsageError(f"algorithm {name!r} has no hyper-parameter(s) {unknown}; valid: {sorted(fields)}")
    hints = typing.get_type_hints(cfg_cls)
    checked = {k: check_value(name, fields[k], hints.get(k), v) for k, v in hparams.items()}
    try:
        return cfg_cls(**checked)
    except UsageError:
        raise
    except (ValueError, TypeError) as e:  # the Config's own cross-field checks
        raise UsageError(f"--algo {name}: {e}") from e


def make_algorithm(
    name: str,
    obs_dim: int,
    act_dim: int,
    stats: DatasetStats,
    device: str | torch.device = "cpu",
    seed: int = 0,
    total_steps: int = 1_000_000,
    **hparams: Any,
) -> Algorithm:
    """Build algorithm ``name`` with its ``Config`` overridden by ``hparams``."""
    return ALGORITHMS[name](
        obs_dim,
        act_dim,
        stats,
        device=device,
        seed=seed,
        total_steps=total_steps,
        config=make_config(name, **hparams),
    )


__all__ = [
    "ALGORITHMS",
    "ARQ",
    "ASPC",
    "ASPCIQL",
    "BC",
    "IQL",
    "TD3BC",
    "VACO",
    "Algorithm",
    "BaseConfig",
    "field_choices",
    "field_ranges",
    "make_algorithm",
    "make_config",
    "register",
]
