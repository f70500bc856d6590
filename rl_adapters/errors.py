"""Errors that ``bilevel-rl`` reports as one line (no traceback unless ``--debug``).

Exit codes of ``bilevel-rl train``: 2 for a :class:`UsageError` (a flag or config field has a value that
cannot work), 1 for a :class:`CheckpointError` or an unusable dataset (a file is bad), 3 when training
diverges (:class:`rl_adapters.training.NonFiniteLossError`), 130 / 143 when SIGINT / SIGTERM stopped it
(:class:`rl_adapters.training.StopOnSignals`).  ``make-dataset`` and ``analyze-weights`` use 2 and 1 the same way.
"""

from __future__ import annotations

__all__ = ["CheckpointError", "UsageError"]


class UsageError(ValueError):
    """A flag or config field has a value that cannot work; the message names it, the value and the fix.

    A ``ValueError`` so that callers of the Python API that caught ``ValueError`` keep working.
    """


class CheckpointError(RuntimeError):
    """A checkpoint (or a run directory's ``config.json``) cannot be read, or holds something unsafe."""
