"""Binding an ``nn.Module`` to explicit parameter tensors.

Bi-level solvers need to evaluate the inner model at parameters that are *not* its stored leaves:
theta_1 = U(theta_0, grad f) is a non-leaf tensor that carries a graph back to the outer variables.
:class:`InnerView` is what a user's loss receives as ``inner``: calling it runs the module through
:func:`torch.func.functional_call` with those tensors, and ``parameters()`` yields them, so
regularisers such as ``sum(p.pow(2).sum() for p in inner.parameters())`` see the current values.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

Params = tuple[torch.Tensor, ...]


def trainable_named_parameters(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The parameters that are optimisation variables: those with ``requires_grad``."""
    return [(n, p) for n, p in module.named_parameters() if p.requires_grad]


class InnerView:
    """A callable view of ``module`` bound to the parameter tensors ``params``.

    ``names[i]`` is the dotted name of ``params[i]`` in ``module``. Parameters of the module not in
    ``names`` (frozen ones) and its buffers are used as stored (buffers may be passed explicitly, so
    that a solver can hand the model copies it is allowed to mutate).
    """

    def __init__(
        self,
        module: nn.Module,
        names: Sequence[str],
        params: Sequence[torch.Tensor],
        buffers: dict[str, torch.Tensor] | None = None,
    ) -> None:
        if len(names) != len(params):
            raise ValueError(f"InnerView got {len(names)} names but {len(params)} parameter tensors")
        self.module = module
        self._names = tuple(names)
        self._params = tuple(params)
        self._buffers = buffers

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        mapping: dict[str, torch.Tensor] = dict(zip(self._names, self._params))
        if self._buffers is not None:
            mapping.update(self._buffers)
        return torch.func.functional_call(self.module, mapping, args, kwargs, strict=False)

    def parameters(self) -> Iterator[torch.Tensor]:
        """The current (possibly non-leaf) parameter tensors, in ``module.parameters()`` order."""
        return iter(self._params)

    def named_parameters(self) -> Iterator[tuple[str, torch.Tensor]]:
        return iter(zip(self._names, self._params))

    def __getattr__(self, name: str) -> Any:
        # Lets a loss read plain attributes (e.g. ``inner.training``) of the wrapped module.
        return getattr(self.module, name)

    def __repr__(self) -> str:
        return f"InnerView({type(self.module).__name__}, {len(self._params)} bound tensors)"


def module_params(module: nn.Module, names: Sequence[str]) -> Params:
    """The current values of ``module``'s parameters ``names``, detached from any graph."""
    lookup = dict(module.named_parameters())
    return tuple(lookup[n].detach() for n in names)


def write_params(module: nn.Module, names: Sequence[str], values: Sequence[torch.Tensor]) -> None:
    """Copy ``values`` into ``module``'s parameter storage in place (optimisers holding them stay valid)."""
    lookup = dict(module.named_parameters())
    with torch.no_grad():
        for n, v in zip(names, values):
            lookup[n].copy_(v)
