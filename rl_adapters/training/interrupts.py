"""Stopping a run cleanly on SIGINT (Ctrl-C) or SIGTERM (``kill``, a scheduler's preemption notice).

:class:`StopOnSignals` is what ``bilevel-rl train`` wraps :func:`~rl_adapters.training.train` in: a signal that
arrives while the update loop runs asks the loop to stop after the current update; the loop checkpoints that
step (the checkpoint :func:`train` would write at that step with ``max_steps_this_session``, so ``--resume``
still reaches bitwise the parameters of an uninterrupted run) and ``train`` returns with status
``"interrupted"``.  A signal outside the loop (loading the data, the final evaluation) or a second signal raises
:class:`Interrupted` at once: there is no finished update to save, or the user asked twice.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["Interrupted", "StopOnSignals"]


class Interrupted(KeyboardInterrupt):
    """A SIGINT/SIGTERM that stopped a run where no update could be saved; ``signum`` is the signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopOnSignals:
    """Context manager turning SIGINT and SIGTERM into a request to stop (:attr:`requested`) while
    :meth:`armed`, and into :class:`Interrupted` otherwise.  The previous handlers are restored on exit.
    Outside the main thread (where Python cannot install signal handlers) it changes nothing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        #: The first signal received (None: none yet).
        self.signum: int | None = None
        self._armed = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._armed and self.signum is None:
            self.signum = signum  # the loop stops after the current update
            return
        if self.signum is None:
            self.signum = signum
        raise Interrupted(signum)

    @property
    def requested(self) -> bool:
        """Whether a signal asked the run to stop."""
        return self.signum is not None

    @contextmanager
    def armed(self) -> Iterator[None]:
        """The update loop: a first signal only sets :attr:`requested` (the loop checks it after each update)."""
        self._armed = True
        try:
            yield
        finally:
            self._armed = False
