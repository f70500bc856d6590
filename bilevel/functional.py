"""Binding an ``nn.Module`` to explicit parameter tensors.

Bi-level solvers need to evaluate the inner model at parameters that are *not* its stored leaves:
theta_1 = U(theta_0, grad f) is a non-leaf tensor that carries a graph back to the outer variables.
:class:`InnerView` is what a user's loss receives as ``inner``. Every way a loss can reach the
parameters goes through the bound tensors, never the module's stored leaves:

* ``inner(x)`` and ``inner.forward(x)`` run the module through :func:`torch.func.functional_call`;
* ``inner.parameters()`` / ``inner.named_parameters()`` yield the bound tensors (for regularisers);
* ``inner.weight`` (attribute access) is the bound tensor; ``inner.fc1`` / ``inner[0]`` /
  ``for layer in inner.layers`` give views of the submodules bound to the same tensors, so
  ``inner.fc1.weight`` and ``inner.fc1(x)`` are current too, at any depth;
* the module's own methods and properties (``inner.encode(x)``, ``inner.some_property``) run with the
  bound tensors swapped in.

Reading a stored leaf instead would give a hypergradient that is silently wrong (the leaf carries no
graph to lambda and holds theta_0, not theta_1), so the few ``nn.Module`` methods that can only
expose stored tensors (``state_dict``) raise a ``TypeError`` naming the alternative.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

Params = tuple[torch.Tensor, ...]

_MISSING = object()
# nn.Module methods that would hand out stored leaves; the message names what to use instead.
_REFUSED = {
    "state_dict": "inner.named_parameters() (the current tensors) or the solver's problem.inner.state_dict() "
                  "outside the loss",
    "parameters_to_vector": "torch.cat([p.flatten() for p in inner.parameters()])",
}


def trainable_named_parameters(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The parameters that are optimisation variables: those with ``requires_grad``."""
    return [(n, p) for n, p in module.named_parameters() if p.requires_grad]


class _Call(nn.Module):
    """Holds ``target`` as a child so :func:`torch.func.functional_call` can swap its tensors for the
    duration of ``fn`` (a method or property of ``target`` that reads ``self.<param>`` directly)."""

    def __init__(self, target: nn.Module, fn: Callable[[], Any]) -> None:
        super().__init__()
        self.target = target
        self._fn = fn

    def forward(self) -> Any:
        return self._fn()


class InnerView:
    """A view of ``module`` bound to the parameter tensors ``params``.

    Args:
        module: the inner ``nn.Module``.
        names: dotted names (as in ``module.named_parameters()``) of the tensors in ``params``.
        params: the current values of those parameters (possibly non-leaf tensors carrying a graph).
        buffers: optional ``{dotted name: tensor}`` to use instead of the stored buffers (so that a
            solver can hand the model copies it is allowed to mutate).

    Parameters of ``module`` not in ``names`` (frozen ones) and buffers not in ``buffers`` are used as
    stored. See the module docstring for what attribute access, indexing and method calls return.
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
        # Attribute names are prefixed so that they cannot shadow a user's submodule or parameter
        # (``inner.module`` must reach a child called ``module``).
        self._iv_module = module
        self._iv_names = tuple(names)
        self._iv_params = tuple(params)
        self._iv_buffers = buffers
        self._iv_ids: dict[int, torch.Tensor] | None = None
        self._iv_local: dict[str, torch.Tensor] | None = None

    # ------------------------------------------------------------------ calling
    def _iv_mapping(self) -> dict[str, torch.Tensor]:
        mapping: dict[str, torch.Tensor] = dict(zip(self._iv_names, self._iv_params))
        if self._iv_buffers is not None:
            mapping.update(self._iv_buffers)
        return mapping

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return torch.func.functional_call(self._iv_module, self._iv_mapping(), args, kwargs, strict=False)

    def _iv_run(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` with the module's parameters (and buffers) swapped for the bound tensors; the result
        is bound too (a returned submodule becomes a view)."""
        mapping = {f"target.{n}": t for n, t in self._iv_mapping().items()}
        out = torch.func.functional_call(_Call(self._iv_module, fn), mapping, (), strict=False)
        return self._iv_bind(out)

    # ------------------------------------------------------------------ binding
    def _iv_id_map(self) -> dict[int, torch.Tensor]:
        """``id(stored tensor) -> bound tensor`` for every bound parameter and buffer; lets any module
        reachable from this one (a child, an indexed or sliced ``Sequential``) be bound by identity."""
        if self._iv_ids is None:
            ids = {id(self._iv_module.get_parameter(n)): t for n, t in zip(self._iv_names, self._iv_params)}
            for n, b in (self._iv_buffers or {}).items():
                ids[id(self._iv_module.get_buffer(n))] = b
            self._iv_ids = ids
        return self._iv_ids

    def _iv_view_of(self, module: nn.Module) -> InnerView:
        ids = self._iv_id_map()
        names, params = [], []
        for n, p in module.named_parameters():
            if id(p) in ids:
                names.append(n)
                params.append(ids[id(p)])
        buffers = None
        if self._iv_buffers is not None:
            buffers = {n: ids[id(b)] for n, b in module.named_buffers() if id(b) in ids}
        view = InnerView(module, names, params, buffers)
        view._iv_ids = ids
        return view

    def _iv_bind(self, obj: Any) -> Any:
        if isinstance(obj, InnerView):
            return obj
        if isinstance(obj, nn.Module):
            return self._iv_view_of(obj)
        if isinstance(obj, torch.Tensor):
            return self._iv_id_map().get(id(obj), obj)
        if type(obj) in (list, tuple):
            return type(obj)(self._iv_bind(x) for x in obj)
        if type(obj) is dict:
            return {k: self._iv_bind(v) for k, v in obj.items()}
        return obj

    def _iv_local_tensors(self) -> dict[str, torch.Tensor]:
        """This module's own (undotted) bound parameters and buffers, for the attribute fast path."""
        if self._iv_local is None:
            local = {n: t for n, t in zip(self._iv_names, self._iv_params) if "." not in n}
            local.update({n: b for n, b in (self._iv_buffers or {}).items() if "." not in n})
            self._iv_local = local
        return self._iv_local

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_iv_"):  # not yet set (e.g. during unpickling): never recurse
            raise AttributeError(name)
        module = self._iv_module
        local = self._iv_local_tensors()
        if name in local:
            return local[name]
        if name in module._modules:
            child = module._modules[name]
            return None if child is None else self._iv_view_of(child)
        if name in _REFUSED:
            raise TypeError(f"inner.{name}() inside a loss would return the module's stored tensors, not the "
                            f"current theta the solver bound (a silently wrong hypergradient); use {_REFUSED[name]}")
        static = inspect.getattr_static(module, name, _MISSING)
        if static is _MISSING or name in module.__dict__:
            # Plain instance attributes (``training``, config values), frozen parameters and stored
            # buffers (constants), or nn.Module's own AttributeError for a missing name.
            return self._iv_bind(getattr(module, name))
        if isinstance(static, (staticmethod, classmethod)):
            return getattr(module, name)
        if inspect.isfunction(static):
            if getattr(nn.Module, name, None) is static:
                # nn.Module's own machinery (train, eval, to, apply, ...): reads no parameter values.
                method = getattr(module, name)
                return lambda *a, **k: self._iv_bind(method(*a, **k))
            # A method of the user's class (or of a torch layer, e.g. ``forward``): it reads
            # ``self.<param>``, so it must run with the bound tensors swapped in.
            return lambda *a, **k: self._iv_run(lambda: getattr(module, name)(*a, **k))
        # A property or other descriptor: evaluate it with the bound tensors swapped in.
        return self._iv_run(lambda: getattr(module, name))

    # ------------------------------------------------------------------ nn.Module-like API
    def parameters(self, recurse: bool = True) -> Iterator[torch.Tensor]:
        """The current (possibly non-leaf) parameter tensors, in ``module.parameters()`` order."""
        return (t for _, t in self.named_parameters(recurse=recurse))

    def named_parameters(self, prefix: str = "", recurse: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
        pre = f"{prefix}." if prefix else ""
        return ((pre + n, t) for n, t in zip(self._iv_names, self._iv_params) if recurse or "." not in n)

    def named_buffers(self, prefix: str = "", recurse: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
        pre = f"{prefix}." if prefix else ""
        bound = self._iv_buffers or {}
        for n, b in self._iv_module.named_buffers(recurse=recurse):
            yield pre + n, bound.get(n, b)

    def buffers(self, recurse: bool = True) -> Iterator[torch.Tensor]:
        return (b for _, b in self.named_buffers(recurse=recurse))

    def named_children(self) -> Iterator[tuple[str, InnerView]]:
        return ((n, self._iv_view_of(m)) for n, m in self._iv_module.named_children())

    def children(self) -> Iterator[InnerView]:
        return (v for _, v in self.named_children())

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, InnerView]]:
        for n, m in self._iv_module.named_modules(prefix=prefix):
            yield n, (self if m is self._iv_module else self._iv_view_of(m))

    def modules(self) -> Iterator[InnerView]:
        return (v for _, v in self.named_modules())

    def get_submodule(self, target: str) -> InnerView:
        return self._iv_view_of(self._iv_module.get_submodule(target))

    def get_parameter(self, target: str) -> torch.Tensor:
        return self._iv_bind(self._iv_module.get_parameter(target))

    def get_buffer(self, target: str) -> torch.Tensor:
        return self._iv_bind(self._iv_module.get_buffer(target))

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._iv_run(lambda: self._iv_module.forward(*args, **kwargs))

    # Containers: ``inner[0]``, ``inner[1:]``, ``for layer in inner``, ``len(inner)``.
    def __getitem__(self, index: Any) -> Any:
        return self._iv_bind(self._iv_module[index])  # type: ignore[index]

    def __iter__(self) -> Iterator[Any]:
        return (self._iv_bind(x) for x in iter(self._iv_module))  # type: ignore[call-overload]

    def __len__(self) -> int:
        return len(self._iv_module)  # type: ignore[arg-type]

    def __dir__(self) -> list[str]:
        return sorted(set(dir(self._iv_module)) | set(object.__dir__(self)))

    def __repr__(self) -> str:
        return f"InnerView({type(self._iv_module).__name__}, {len(self._iv_params)} bound tensors)"

    @property
    def unbound_module(self) -> nn.Module:
        """The wrapped module itself (its stored leaves: not for use inside a loss)."""
        return self._iv_module


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


def escaped_transform(tensor: torch.Tensor) -> bool:
    """True when ``tensor`` was made inside a ``torch.func`` transform (``jvp``, ``vmap``, ``grad``) that has
    since returned, e.g. a value a loss stashed while ``KStepSolver(mode="forward")`` evaluated it: such a
    tensor cannot be read any more and has to be recomputed outside the transform."""
    return bool(torch._C._functorch.is_functorch_wrapped_tensor(tensor))
