"""Measuring what a solver call keeps for backward, on any device (the CPU stand-in for peak GPU memory).

``with bilevel.SavedBytes() as m: solver.hypergradient(batch)`` counts the tensors autograd saves for backward
(``torch.autograd.graph.saved_tensors_hooks``): ``m.peak`` is the largest total size of distinct storages
saved and still held by a graph (or a ``ctx``) at once, ``m.total`` the sum over every save. It is the quantity
the solvers trade against time (reverse mode keeps K steps' graphs, mixed mode the K iterates, forward mode
none), and it is what docs/benchmarks.md and the example gallery report per outer step.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["SavedBytes"]


class SavedBytes:
    """``with SavedBytes() as m:``; then ``m.peak`` (bytes) and ``m.total`` (bytes, every save counted)."""

    def __init__(self) -> None:
        self.live: dict[tuple[str, int], list[int]] = {}
        self.current = self.peak = self.total = 0

    def _pack(self, t: torch.Tensor) -> Any:
        try:
            storage = t.untyped_storage()
            key, nbytes = (str(t.device), storage.data_ptr()), storage.nbytes()
        except RuntimeError:  # a tensor without a python-visible storage (e.g. a forward-AD dual): by size
            key, nbytes = ("tensor", id(t)), t.nelement() * t.element_size()
        self.total += nbytes
        entry = self.live.get(key)
        if entry is None:
            self.live[key] = [nbytes, 1]
            self.current += nbytes
            self.peak = max(self.peak, self.current)
        else:
            entry[1] += 1
        return _Handle(self, key, t.detach())  # not t itself: a saved output would form a cycle with its node

    def _release(self, key: tuple[str, int]) -> None:
        entry = self.live[key]
        entry[1] -= 1
        if entry[1] == 0:
            del self.live[key]
            self.current -= entry[0]

    def __enter__(self) -> SavedBytes:  # noqa: PYI034
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda h: h.tensor)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)


class _Handle:
    """What the graph holds instead of a saved tensor: the tensor itself, released from the count when the
    graph (or ``ctx``) drops it."""

    __slots__ = ("key", "meter", "tensor")

    def __init__(self, meter: SavedBytes, key: tuple[str, int], tensor: torch.Tensor) -> None:
        self.meter, self.key, self.tensor = meter, key, tensor

    def __del__(self) -> None:
        self.meter._release(self.key)
