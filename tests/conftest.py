"""Shared fixtures: single-threaded torch and tiny Minari datasets built on the fly (no shared data)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


__all__ = ["TINY_ID"]
