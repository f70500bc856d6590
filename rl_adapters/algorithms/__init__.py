"""Offline RL algorithms, one module each, and the registry the trainer and CLI use.

Adding an algorithm: write ``algorithms/<name>.py`` with a subclass of :class:`Algorithm` that has a
``Config`` dataclass and a ``name``, decorate it with ``@register`` (:func:`~rl_adapters.algorithms.base.register`)
and import the module below.  Its ``Config`` fields become ``bilevel-rl train --<field-name>`` flags
automatically; the hooks it may override are declared, as no-ops, on :class:`Algorithm` and :class:`BaseConfig`.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any

import torch

import bilevel

from ..data import DatasetStats
from ..errors import UsageError
from .base import ALGORITHMS, Algorithm, BaseConfig, register

# Each import registers the module's algorithm(s) (``@register``): this order is ALGORITHMS' order
# (bc, td3bc, iql, vaco, aspc, aspc-iql, arq), the order ``--help`` and the grids list them in.
# isort: off
from .bc import BC
from .td3bc import TD3BC
from .iql import IQL
from .vaco import SCHEDULES as _VACO_SCHEDULES
from .vaco import SOLVERS as _VACO_SOLVERS
from .vaco import VACO, WEIGHT_NORMS
from .aspc import ASPC, ASPCIQL
from .aspc import OUTER_TERMS as _ASPC_OUTER_TERMS
from .aspc import SOLVERS as _ASPC_SOLVERS
from .arq import ARQ
from .arq import POLICIES as _ARQ_POLICIES
# isort: on

_ASPC_CHOICES = {"solver": _ASPC_SOLVERS, "outer_terms": tuple(_ASPC_OUTER_TERMS)}
#: Allowed values of each algorithm's string options (checked by :func:`make_config`, listed by
#: ``bilevel-rl train --help``).  An algorithm can add its own as its ``choices`` ClassVar.
CHOICES: dict[str, dict[str, tuple[str, ...]]] = {
    "vaco": {
        "solver": _VACO_SOLVERS,
        "schedule": _VACO_SCHEDULES,
        "weight_norm": WEIGHT_NORMS,
        "mode": bilevel.MODES,
        "linear_solver": bilevel.LINEAR_SOLVERS,
    },
    "aspc": _ASPC_CHOICES,
    "aspc-iql": _ASPC_CHOICES,
    "arq": {"policy": _ARQ_POLICIES, "ode_method": ("euler", "heun", "rk4"), "trace": ("exact", "hutchinson"),
            "sampler_grid": ("quadratic", "uniform")},
}

# Ranges fixed by what a field means, whichever algorithm has it: (low, high, low_open, high_open).
# Checked before any data loads, so that a bad value fails in a second with the field named, not after
# minutes with a NaN loss or an error from deep inside torch.
_AT_LEAST_1 = (1, None, False, False)
_POSITIVE = (0, None, True, False)
_NON_NEGATIVE = (0, None, False, False)
RANGES: dict[str, tuple[float | None, float | None, bool, bool]] = {
    "batch_size": _AT_LEAST_1,
    "hidden_dim": _AT_LEAST_1,
    "scorer_hidden_dim": _AT_LEAST_1,
    "critic_hidden_layers": _AT_LEAST_1,
    "policy_freq": _AT_LEAST_1,
    "update_interval": _AT_LEAST_1,
    "k": _AT_LEAST_1,
    "iterations": _AT_LEAST_1,
    "implicit_steps": _NON_NEGATIVE,
    "truncate": _NON_NEGATIVE,
    "discount": (0, 1, False, False),
    "tau": (0, 1, True, False),
    "expectile": (0, 1, True, True),
    "ema_decay": (0, 1, False, True),
    "value_fraction": (0, 1, False, True),
    "top_fraction": (0, 1, True, False),
    "outer_lr_final_fraction": (0, 1, True, False),
    "policy_noise": _NON_NEGATIVE,
    "noise_clip": _NON_NEGATIVE,
    "weight_decay": _NON_NEGATIVE,
    "damping": _NON_NEGATIVE,
    "sigma_start": _NON_NEGATIVE,
    "alpha": _NON_NEGATIVE,
    "beta": _NON_NEGATIVE,
    "max_weight": _POSITIVE,
    "adam_eps": _POSITIVE,
    "scorer_eps": _POSITIVE,
}
# Where one algorithm needs a narrower range: ASPC's scales are softplus(rho), so strictly positive.
ALGO_RANGES: dict[str, dict[str, tuple[float | None, float | None, bool, bool]]] = {
    "aspc": {"alpha": _POSITIVE},
    "aspc-iql": {"beta": _POSITIVE},
}


def field_choices(name: str) -> dict[str, tuple[str, ...]]:
    """Allowed values of algorithm ``name``'s string options (e.g. ``{"solver": ("one_step", ...)}``)."""
    return CHOICES.get(name, {}) | dict(ALGORITHMS[name].choices)


def _range_text(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    if hi is None:
        return f"{'>' if lo_open else '>='} {lo}"
    return f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"


def _check_field(algo: str, field: str, tp: Any, value: Any, default: Any) -> Any:
    """``value`` converted to the field's type, or a :class:`UsageError` naming field, flag, value and fix."""
    flag = "--" + field.replace("_", "-")

    def bad(what: str) -> UsageError:
        example = f"{flag} {default}" if not isinstance(default, bool) else (flag if default else f"--no-{flag[2:]}")
        return UsageError(f"{field} ({flag}) = {value!r}: must be {what} for --algo {algo}; e.g. {example} "
                          f"(the default)")

    if tp is bool:
        if not isinstance(value, bool):
            raise bad(f"True or False ({flag} / --no-{flag[2:]})")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        value = float(value)
        if not math.isfinite(value):
            raise bad("a finite number")
    elif tp is str:
        if not isinstance(value, str):
            raise bad("a string")
        allowed = field_choices(algo).get(field)
        if allowed is not None and value not in allowed:
            raise bad(f"one of {', '.join(allowed)}")
        return value
    else:
        return value  # no generic rule for other types; the Config checks them itself
    rng = (0, None, True, False) if field.endswith("_lr") else ALGO_RANGES.get(algo, {}).get(field, RANGES.get(field))
    if rng is not None:
        lo, hi, lo_open, hi_open = rng
        ok = (lo is None or (value > lo if lo_open else value >= lo)) and (
            hi is None or (value < hi if hi_open else value <= hi)
        )
        if not ok:
            raise bad(_range_text(lo, hi, lo_open, hi_open) + (" (a learning rate)" if field.endswith("_lr") else ""))
    return value


def make_config(name: str, **hparams: Any) -> Any:
    """``ALGORITHMS[name].Config(**hparams)`` after checking every value's type and range.

    Raises :class:`~rl_adapters.errors.UsageError` (a ``ValueError``) naming the field, its flag, the
    value and a valid one, for unknown algorithms or keys, wrong types, values out of range and
    string options outside :func:`field_choices`.
    """
    if name not in ALGORITHMS:
        raise UsageError(f"unknown algorithm {name!r} (--algo); available: {', '.join(sorted(ALGORITHMS))}")
    cfg_cls = ALGORITHMS[name].Config
    fields = {f.name: f for f in dataclasses.fields(cfg_cls)}
    unknown = sorted(set(hparams) - set(fields))
    if unknown:
        raise UsageError(f"algorithm {name!r} has no hyper-parameter(s) {unknown}; valid: {sorted(fields)}")
    hints = typing.get_type_hints(cfg_cls)
    checked = {
        k: _check_field(name, k, hints.get(k), v, fields[k].default) for k, v in hparams.items()
    }
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
    "CHOICES",
    "IQL",
    "RANGES",
    "TD3BC",
    "VACO",
    "Algorithm",
    "BaseConfig",
    "field_choices",
    "make_algorithm",
    "make_config",
    "register",
]
