"""Offline RL algorithms, one module each, and the registry the trainer and CLI use.

Adding an algorithm: write ``algorithms/<name>.py`` with a subclass of :class:`Algorithm` that has a
``Config`` dataclass, then add it to :data:`ALGORITHMS` (or call :func:`register`).  Its ``Config``
fields become ``bilevel-rl train --<field-name>`` flags automatically.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..data import DatasetStats
from .aspc import ASPC, ASPCIQL
from .base import Algorithm, BaseConfig
from .bc import BC
from .iql import IQL
from .td3bc import TD3BC
from .vaco import VACO

ALGORITHMS: dict[str, type[Algorithm]] = {"bc": BC, "td3bc": TD3BC, "iql": IQL, "vaco": VACO, "aspc": ASPC,
                                          "aspc-iql": ASPCIQL}


def register(cls: type[Algorithm]) -> type[Algorithm]:
    """Add ``cls`` to :data:`ALGORITHMS` under ``cls.name`` (usable as a class decorator)."""
    ALGORITHMS[cls.name] = cls
    return cls


def make_config(name: str, **hparams: Any) -> Any:
    """``ALGORITHMS[name].Config(**hparams)``; unknown keys raise a ``ValueError`` listing the valid ones."""
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; available: {sorted(ALGORITHMS)}")
    cfg_cls = ALGORITHMS[name].Config
    valid = {f.name for f in dataclasses.fields(cfg_cls)}
    unknown = sorted(set(hparams) - valid)
    if unknown:
        raise ValueError(f"algorithm {name!r} has no hyper-parameter(s) {unknown}; valid: {sorted(valid)}")
    return cfg_cls(**hparams)


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
    "ASPC",
    "ASPCIQL",
    "BC",
    "IQL",
    "TD3BC",
    "VACO",
    "Algorithm",
    "BaseConfig",
    "make_algorithm",
    "make_config",
    "register",
]
