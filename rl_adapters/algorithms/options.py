"""One definition per algorithm option: a ``Config`` dataclass field made with :func:`option`.

Each field carries, in its ``dataclasses.field`` metadata, a one-line help text, an optional unit and the
values it may take: a numeric range ``(low, high, low_open, high_open)`` (``None``: unbounded) or a tuple of
allowed strings.  Everything else is derived from that metadata: :func:`check_value` (what
:func:`rl_adapters.algorithms.make_config` runs on every value before a ``Config`` is built), the allowed
values :func:`config_choices` / :func:`config_ranges` and the help of ``bilevel-rl train --help``.

A ``Config``'s ``__post_init__`` keeps only what relates several fields (VACO's ``truncate <= k``, ARQ's
``k <= n_candidates``) or belongs to another vocabulary (``bilevel.check_solver``).

Fields without metadata (a test's ad-hoc config) are checked by type only.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Sequence
from typing import Any

from ..errors import UsageError

__all__ = [
    "AT_LEAST_0",
    "AT_LEAST_1",
    "POSITIVE",
    "Range",
    "check_value",
    "config_choices",
    "config_ranges",
    "learning_rate",
    "like",
    "option",
    "range_text",
]

#: ``(low, high, low_open, high_open)``; ``None`` for an unbounded side.
Range = tuple[float | None, float | None, bool, bool]

AT_LEAST_1: Range = (1, None, False, False)
AT_LEAST_0: Range = (0, None, False, False)
POSITIVE: Range = (0, None, True, False)


def option(
    default: Any,
    help: str,
    *,
    range: Range | None = None,
    choices: Sequence[str] | None = None,
    unit: str | None = None,
    note: str | None = None,
) -> Any:
    """A dataclass field with default ``default`` and the option's one definition in its metadata.

    ``help``: one line, what the option is and means; ``range``: allowed numbers, ``(low, high, low_open,
    high_open)``; ``choices``: allowed strings; ``unit``: what a number counts or measures (``"transitions"``);
    ``note``: added to a refusal (``"a learning rate"``).
    """
    if range is not None and choices is not None:
        raise ValueError("an option has a range or choices, not both")
    if not help or "\n" in help:
        raise ValueError(f"an option's help is one non-empty line, got {help!r}")
    meta = {"help": help, "range": range, "choices": None if choices is None else tuple(choices), "unit": unit,
            "note": note}
    return dataclasses.field(default=default, metadata=meta)


def learning_rate(default: float, help: str) -> Any:
    """A learning rate: > 0, refused as "(a learning rate)"."""
    return option(default, help, range=POSITIVE, note="a learning rate")


def like(config: type, name: str, default: Any = dataclasses.MISSING, **changes: Any) -> Any:
    """Field ``name`` of dataclass ``config`` again (its default unless ``default`` is given, its metadata with
    ``changes``): a subclass's narrower range, other default, or another algorithm's use of the same option."""
    f = config.__dataclass_fields__[name]
    unknown = set(changes) - set(f.metadata)
    if unknown or not f.metadata:
        raise TypeError(f"{config.__name__}.{name}: no option metadata to change {sorted(unknown)}")
    return dataclasses.field(default=f.default if default is dataclasses.MISSING else default,
                             metadata={**f.metadata, **changes})


def config_choices(config: type) -> dict[str, tuple[str, ...]]:
    """Allowed values of each string option of ``config`` (a dataclass), from its metadata."""
    return {f.name: f.metadata["choices"] for f in dataclasses.fields(config) if f.metadata.get("choices")}


def config_ranges(config: type) -> dict[str, Range]:
    """Allowed range of each numeric option of ``config`` that has one, from its metadata."""
    return {f.name: f.metadata["range"] for f in dataclasses.fields(config) if f.metadata.get("range")}


def range_text(rng: Range) -> str:
    """``>= 1``, ``> 0``, ``in [0, 1)``, ..."""
    lo, hi, lo_open, hi_open = rng
    if hi is None:
        return f"{'>' if lo_open else '>='} {lo}"
    if lo is None:
        return f"{'<' if hi_open else '<='} {hi}"
    return f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"


def _in_range(value: float, rng: Range) -> bool:
    lo, hi, lo_open, hi_open = rng
    return (lo is None or (value > lo if lo_open else value >= lo)) and (
        hi is None or (value < hi if hi_open else value <= hi))


def _optional(tp: Any) -> Any:
    """``X`` for ``X | None`` (or ``Optional[X]``), else None."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0]
    return None


def check_value(algo: str, field: dataclasses.Field, tp: Any, value: Any) -> Any:
    """``value`` converted to the field's type, or a :class:`UsageError` naming field, flag, value and fix.

    Checks the type (``tp``, the field's resolved annotation; ``X | None`` also takes None), finiteness of
    floats, and the range or choices in the field's metadata.
    """
    name, default = field.name, field.default
    flag = "--" + name.replace("_", "-")
    base = _optional(tp)
    if base is not None:
        if value is None:
            return value
        tp = base

    def bad(what: str) -> UsageError:
        if base is not None:
            what += " (or None)"
        example = f"{flag} {default}" if not isinstance(default, bool) else (flag if default else f"--no-{flag[2:]}")
        return UsageError(f"{name} ({flag}) = {value!r}: must be {what} for --algo {algo}; e.g. {example} "
                          f"(the default)")

    meta = field.metadata
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
        allowed = meta.get("choices")
        if allowed is not None and value not in allowed:
            raise bad(f"one of {', '.join(allowed)}")
        return value
    else:
        return value  # no generic rule for other types; the Config checks them itself
    rng = meta.get("range")
    if rng is not None and not _in_range(value, rng):
        raise bad(range_text(rng) + (f" ({meta['note']})" if meta.get("note") else ""))
    return value
