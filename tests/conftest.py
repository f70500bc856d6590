"""Shared fixtures: single-threaded torch, tiny Minari datasets built on the fly (no shared data), and
``python -m rl_adapters ...`` processes forked from the test process (no interpreter start, no imports)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

# The gallery's scripts import their sibling examples/gallery.py, as they do when run from examples/: tests
# import them the same way (one place, instead of each test file editing sys.path).
_EXAMPLES = str(Path(__file__).resolve().parent.parent / "examples")
if _EXAMPLES not in sys.path:
    sys.path.insert(0, _EXAMPLES)


# The CI box has few shared cores; one thread also makes CPU results bitwise reproducible.
torch.set_num_threads(1)

TINY_ID = "tiny/pendulum/mixed-v0"


@pytest.fixture
def minari_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty Minari root (``MINARI_DATASETS_PATH``) for this test."""
    root = tmp_path / "minari"
    root.mkdir()
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


@pytest.fixture
def make_tiny_dataset(minari_root: Path) -> Callable[..., Any]:
    """Factory writing a real Minari dataset into this test's root, see ``rl_adapters.datasets.make_tiny_dataset``.

    Default: ``InvertedPendulum-v5`` with a good PD controller (episodes truncated at 40 steps, return 40)
    followed by a bad uniform-random policy (terminates after a few steps); 3 episodes each.
    Pass ``policies={"good": f, "bad": g}`` and ``episodes=`` for other behaviour mixes.
    """
    from rl_adapters.datasets import make_tiny_dataset as _make

    def factory(dataset_id: str = TINY_ID, **kwargs: Any) -> Any:
        return _make(dataset_id, root=minari_root, **kwargs)

    return factory


@pytest.fixture(scope="session")
def _tiny_session_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rl_adapters.datasets import make_tiny_dataset as _make

    root = tmp_path_factory.mktemp("minari_session")
    _make(TINY_ID, root=root, episodes=4)
    return root


@pytest.fixture
def tiny_dataset(_tiny_session_root: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Id of a read-only tiny dataset built once per session (4 good + 4 bad InvertedPendulum episodes)."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(_tiny_session_root))
    return TINY_ID


# ------------------------------------------------------------------ processes forked from the test process
class Forked:
    """``subprocess.Popen`` for ``target()`` in a fork of the test process: a real process (own pid, exit status,
    signals, files, environment and working directory) that skips what a fresh ``python -m rl_adapters`` spends
    seconds on, importing torch and the trainer. ``target`` returns the exit status (or raises ``SystemExit``);
    the child never returns into pytest. Tests that need the interpreter start itself use ``subprocess``."""

    _lock = threading.Lock()  # one fork at a time (the grid's pool threads start cells concurrently)
    _warm = False

    def __init__(self, target: Callable[[], int | None], *, env: dict[str, str] | None = None,
                 cwd: str | os.PathLike | None = None, stdout: Any = None, stderr: Any = None,
                 start_new_session: bool = False) -> None:
        def fd(stream: Any, inherit: int) -> int:
            if stream is None:
                return inherit
            return os.open(os.devnull, os.O_WRONLY) if stream == subprocess.DEVNULL else stream.fileno()

        with self._lock:
            if not Forked._warm:  # import once here what every child would import on its own
                _warm_imports()
                Forked._warm = True
            sys.stdout.flush()
            sys.stderr.flush()
            self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                for sig in (signal.SIGTERM, signal.SIGINT):  # a fresh interpreter's handlers, not the test's
                    signal.signal(sig, signal.SIG_DFL if sig == signal.SIGTERM else signal.default_int_handler)
                if start_new_session:
                    os.setsid()
                if env is not None:
                    os.environ.clear()
                    os.environ.update(env)
                if cwd is not None:
                    os.chdir(cwd)
                out = fd(stdout, 1)
                err = out if stderr == subprocess.STDOUT else fd(stderr, 2)
                os.dup2(out, 1)
                os.dup2(err, 2)
                # fresh text streams on fds 1 and 2: the parent's may be pytest's capture, or locked by a thread
                sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
                sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
                rc = target()
                code = 0 if rc is None else int(rc)
            except SystemExit as e:
                if e.code is None or isinstance(e.code, int):
                    code = e.code or 0
                else:
                    print(e.code, file=sys.stderr)
            except BaseException:  # noqa: BLE001 - reported like an uncaught exception: exit 1
                traceback.print_exc()
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"forked pid {self.pid}", timeout)
            time.sleep(0.005)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _warm_imports() -> None:
    """Import once, before the first fork, what every child would otherwise import on its own."""
    import importlib

    import matplotlib

    matplotlib.use("Agg")  # what the trainer's plots select
    # torch._dynamo: torch.optim imports it when the first optimiser is built (a second and a half)
    for name in ("matplotlib.pyplot", "gymnasium", "minari", "torch._dynamo", "rl_adapters.cli",
                 "rl_adapters.training"):
        importlib.import_module(name)


def _popen_forked(cmd: list[str], **kw: Any) -> Forked:
    """``subprocess.Popen(cmd, **kw)`` for ``cmd = [sys.executable, "-m", module, *argv]`` as a :class:`Forked`
    process that runs ``module``'s ``main(argv)`` (``rl_adapters``: ``rl_adapters.cli``; ``benchmarks.X``)."""
    import importlib

    assert cmd[:2] == [sys.executable, "-m"], cmd
    module, argv = cmd[2], list(cmd[3:])
    main = importlib.import_module("rl_adapters.cli" if module == "rl_adapters" else module).main

    def target() -> int | None:
        sys.argv = [module, *argv]
        return main(argv)

    return Forked(target, **kw)


@pytest.fixture
def forked() -> type[Forked]:
    """:class:`Forked`: ``forked(target, env=..., cwd=..., stdout=...)`` runs ``target()`` in a forked process."""
    return Forked


@pytest.fixture
def popen_forked() -> Callable[..., Forked]:
    """``popen_forked(cmd, **popen_kwargs)`` for ``cmd = [sys.executable, "-m", module, *argv]``: a forked
    process running ``module``'s ``main(argv)``, with Popen's wait / poll / send_signal."""
    return _popen_forked


@pytest.fixture
def forked_cells(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The grid's cells (``benchmarks.grid_cells.run_child``) train in forked processes; returns their commands.

    The command, environment, working directory, log file and exit status are the cell's own; only the
    interpreter start is skipped (the slow tests and tests/test_cli_errors.py run real ``python -m`` processes)."""
    from benchmarks import grid_cells

    commands: list[list[str]] = []

    def run_child(cmd: list[str], **kw: Any) -> int:
        commands.append(list(cmd))
        return _popen_forked(cmd, **kw).wait()

    monkeypatch.setattr(grid_cells, "run_child", run_child)
    return commands


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


__all__ = ["TINY_ID"]
