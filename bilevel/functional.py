"""Binding an ``nn.Module`` to explicit parameter tensors.

Bi-level solvers need to evaluate the inner model at parameters that are *not* its stored leaves:
theta_1 = U(theta_0, grad f) is a non-leaf tensor that carries a graph back to the outer variables.
:class:`InnerView` is what a user's loss receives as ``inner``. Every way a loss can reach the
parameters goes through the bound tensors, never the module's stored leaves:

* ``inner(x)`` and ``inner.forward(x)`` run the module with the bound tensors in its slots (:func:`bind_tensors`);
* ``inner.parameters()`` / ``inner.named_parameters()`` yield the bound tensors (for regularisers);
* ``inner.weight`` (attribute access) is the bound tensor; ``inner.fc1`` / ``inner[0]`` /
  ``for layer in inner.layers`` give views of the submodules bound to the same tensors, so
  ``inner.fc1.weight`` and ``inner.fc1(x)`` are current too, at any depth;
* the module's own methods and properties (``inner.encode(x)``, ``inner.some_property``) run with the
  bound tensors swapped in.

Reading a stored leaf instead would give a hypergradient that is silently wrong (the leaf carries no
graph to lambda and holds theta_0, not theta_1), so the few ``nn.Module`` methods that can only
expose stored tensors (``state_dict``) raise a ``TypeError`` naming the alternative.

Binding is done by :func:`bind_tensors`, which writes the bound tensors into every parameter / buffer slot
that holds the stored tensor (tied weights and modules registered twice included) and puts exactly the
original objects back afterwards (``torch.func.functional_call`` in torch 2.13 leaves graph tensors in a
module that registers a submodule twice). A view passes ``isinstance`` checks for the wrapped module's
class (``isinstance(inner.fc1, nn.Linear)``), and hook-based ``torch.nn.utils.weight_norm`` weights are
recomputed from the bound tensors. While a solver evaluates a loss, :class:`StoredGuard` puts stand-ins
into the real module's slots, so a loss that reads the module it closes over (``model(x)`` instead of
``inner(x)``) raises :class:`StoredParameterError` instead of silently using theta_0.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn.utils.weight_norm import WeightNorm

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


class StoredParameterError(RuntimeError):
    """A loss read the inner module's own (stored) parameters instead of the ``inner`` view it was given."""


def stored_parameter_message(where: str, names: Sequence[str]) -> str:
    """The one message for a loss that reads the real inner module instead of its ``inner`` argument."""
    listed = ", ".join(f"'{n}'" for n in names)
    return (
        f"{where} reads the inner module itself instead of the `inner` it was given: it used the module's stored "
        f"parameter(s) {listed} (e.g. `model(x)` or `model.weight` on the module the loss closes over, or a "
        "tensor taken from it before the solver ran). Those hold theta before the inner steps and carry no "
        "graph through them, so the hypergradient would be silently wrong. Inside the loss use its first "
        "argument: `inner(x)`, `inner.weight`, `inner.parameters()` (for a constant copy of the starting "
        "parameters, take `solver.theta()` before calling the solver)"
    )


def _slot(module: nn.Module, target: str, kind: str | None = None) -> Any:
    """What the parameter (``kind="_parameters"``), buffer (``"_buffers"``) or either slot ``target`` (a dotted
    name) holds now: the stored tensor, or whatever a binding or a :class:`StoredGuard` put there (which
    ``nn.Module.get_parameter`` would refuse as "not an nn.Parameter")."""
    prefix, _, leaf = target.rpartition(".")
    owner = module.get_submodule(prefix) if prefix else module
    for k in (kind,) if kind else ("_parameters", "_buffers"):
        slots = getattr(owner, k)
        if leaf in slots:
            return slots[leaf]
    what = {"_parameters": "parameter", "_buffers": "buffer"}.get(kind or "", "parameter or buffer")
    raise AttributeError(f"{type(owner).__name__} has no {what} `{leaf}`")


def _weight_norm_hooks(module: nn.Module) -> list[WeightNorm]:
    """The hook-based ``torch.nn.utils.weight_norm`` hooks registered on ``module`` itself."""
    hooks = module._forward_pre_hooks
    return [h for h in hooks.values() if isinstance(h, WeightNorm)] if hooks else []


class Layout(NamedTuple):
    """A module tree's slots at one moment (:func:`module_layout`)."""

    #: dotted name -> the tensor in that parameter / buffer slot.
    by_name: dict[str, torch.Tensor]
    #: every (slot dict, key, tensor in it) once, however often its module is registered.
    slots: list[tuple[dict[str, Any], str, Any]]
    #: the hook-based weight-norm hooks, with their modules.
    norms: list[tuple[nn.Module, WeightNorm]]
    #: each module's ``_parameters`` dict once, in ``module.modules()`` order.
    param_dicts: list[dict[str, Any]]


def module_layout(module: nn.Module) -> Layout:
    """The module tree's slots in one walk. A submodule registered twice (``m.b = m.a``) contributes its slots
    once, under each name. A solver takes it once per call and binds every view of that call with it
    (:func:`bind_tensors`), instead of walking the module tree at every loss evaluation."""
    by_name: dict[str, torch.Tensor] = {}
    slots: list[tuple[dict[str, Any], str, Any]] = []
    norms: list[tuple[nn.Module, WeightNorm]] = []
    param_dicts: list[dict[str, Any]] = []
    seen: set[int] = set()
    for prefix, m in module.named_modules(remove_duplicate=False):
        pre = f"{prefix}." if prefix else ""
        first = id(m) not in seen
        seen.add(id(m))
        for d in (m._parameters, m._buffers):
            for k, v in d.items():
                if v is None:
                    continue
                by_name[pre + k] = v
                if first:
                    slots.append((d, k, v))
        if first:
            norms.extend((m, h) for h in _weight_norm_hooks(m))
            param_dicts.append(m._parameters)
    return Layout(by_name, slots, norms, param_dicts)


@contextlib.contextmanager
def bind_tensors(module: nn.Module, values: Mapping[str, torch.Tensor],
                 layout: Layout | None = None) -> Iterator[None]:
    """Run the body with ``values`` (dotted name -> tensor) in ``module``'s parameter / buffer slots.

    Every slot that holds the tensor now at a given name gets the new value, so tied weights (the same
    ``nn.Parameter`` registered twice) and submodules registered twice stay tied. On exit exactly the objects
    that were there are put back, and attributes that hook-based ``torch.nn.utils.weight_norm`` recomputes
    (``weight`` from ``weight_g`` / ``weight_v``) are recomputed from the bound tensors on entry and restored
    on exit (the module keeps no tensor of the solver's graph). Names the module does not have are ignored.
    ``layout``: a :func:`module_layout` of ``module`` taken earlier, while its tree had the same modules and
    slots (a solver takes one per call); by default the tree is walked now.
    """
    by_name, slots, norms, _ = module_layout(module) if layout is None else layout
    # Slots are matched by the tensor they held when the layout was taken: a solver's stand-ins
    # (StoredGuard) may sit in them now.
    target = {id(by_name[n]): t for n, t in values.items() if n in by_name}
    saved: list[tuple[dict[str, Any], str, Any]] = []
    attrs: list[tuple[nn.Module, str, Any]] = []
    hooks: list[tuple[nn.Module, Any]] = []
    try:
        for d, k, v0 in slots:
            t = target.get(id(v0))
            if t is not None:
                saved.append((d, k, d[k]))
                d[k] = t
        for m, hook in norms:
            if not hooks or hooks[-1][0] is not m:
                # The hook would recompute the weight with torch._weight_norm, whose second derivative is
                # wrong in torch (its autograd Hessian is not symmetric) and which has no forward-mode rule:
                # hold it off and set the weight once, from the same formula written in plain ops.
                hooks.append((m, m._forward_pre_hooks))
                m.__dict__["_forward_pre_hooks"] = type(m._forward_pre_hooks)(
                    (i, h) for i, h in m._forward_pre_hooks.items() if not isinstance(h, WeightNorm))
            attrs.append((m, hook.name, m.__dict__.get(hook.name, _MISSING)))
            m.__dict__[hook.name] = _weight_norm_weight(m, hook)
        yield
    finally:
        for m, name, v in reversed(attrs):
            if v is _MISSING:
                m.__dict__.pop(name, None)
            else:
                m.__dict__[name] = v
        for m, h in reversed(hooks):
            m.__dict__["_forward_pre_hooks"] = h
        for d, k, v in reversed(saved):
            d[k] = v


def _weight_norm_weight(module: nn.Module, hook: WeightNorm) -> torch.Tensor:
    """``g * v / ||v||`` (norm over every dim but ``hook.dim``), what ``hook.compute_weight`` returns, in plain
    differentiable ops (``torch._weight_norm`` has a wrong second derivative and no forward-mode rule)."""
    g = getattr(module, hook.name + "_g")
    v = getattr(module, hook.name + "_v")
    return v * (g / torch.norm_except_dim(v, 2, hook.dim))


class _StoredParameter(torch.Tensor):
    """Stands in for a trainable inner parameter in its module slot while a solver evaluates a loss.

    Reading its metadata (shape, dtype, device, ...) is allowed (``next(model.parameters()).device``); any
    computation with it raises :class:`StoredParameterError`: the loss read the real module, whose stored
    tensor holds theta_0 and has no graph through the inner steps, instead of the ``inner`` view.
    """

    _bilevel_name: str
    _bilevel_where: list[str]

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = getattr(func, "__name__", "")
        if name == "__get__":
            name = getattr(getattr(func, "__self__", None), "__name__", "")
        if name in _METADATA:
            return super().__torch_function__(func, types, args, kwargs or {})
        stored = [a for a in _leaves((args, kwargs)) if isinstance(a, _StoredParameter)]
        where = stored[0]._bilevel_where[0] if stored else "a loss"
        raise StoredParameterError(stored_parameter_message(where, sorted({a._bilevel_name for a in stored})))


# Tensor attributes and methods that read metadata only (allowed on a stand-in), and display.
_METADATA = frozenset({
    "shape", "dtype", "device", "ndim", "requires_grad", "is_cuda", "is_cpu", "is_meta", "layout", "is_sparse",
    "is_leaf", "is_quantized", "names", "size", "dim", "ndimension", "numel", "nelement", "element_size",
    "is_floating_point", "is_complex", "get_device", "__len__", "__repr__", "__str__", "__format__",
    "requires_grad_", "data_ptr", "__hash__",
})


def _leaves(tree: Any) -> list[Any]:
    """All leaves of nested tuples, lists and dicts."""
    out: list[Any] = []
    stack = [tree]
    while stack:
        x = stack.pop()
        if isinstance(x, (list, tuple)):
            stack.extend(x)
        elif isinstance(x, dict):
            stack.extend(x.values())
        else:
            out.append(x)
    return out


class StoredGuard:
    """Puts :class:`_StoredParameter` stand-ins into ``module``'s trainable parameter slots for the duration of
    a loss evaluation (``with guard("outer_loss"): ...``), and the original parameters back afterwards.

    Views bound by :func:`bind_tensors` replace the stand-ins with the bound tensors while they run, so
    ``inner(x)`` works and a loss that reads the module it closes over raises. Stand-ins are made once per
    parameter object (they alias its storage and cost no memory)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.where = ["a loss"]
        self._pending = "a loss"
        self._saved: list[tuple[list[tuple[dict[str, Any], str, Any]], str]] = []
        self._stand_ins: dict[int, tuple[torch.Tensor, _StoredParameter]] = {}
        # The modules' parameter dicts from ``prepare`` until ``release`` (a solver call): one walk per call.
        self._dicts: list[dict[str, Any]] | None = None

    def _stand_in(self, p: torch.Tensor, names: dict[int, str]) -> _StoredParameter:
        hit = self._stand_ins.get(id(p))
        if hit is not None and hit[0] is p:
            return hit[1]
        with torch.no_grad():  # an alias of p's storage, with p's requires_grad, and no graph
            s = p.as_subclass(_StoredParameter)
        s._bilevel_name = names.get(id(p), "?")
        s._bilevel_where = self.where
        self._stand_ins[id(p)] = (p, s)
        return s

    def prepare(self, param_dicts: list[dict[str, Any]] | None = None) -> None:
        """Make missing stand-ins now (outside any ``torch.func`` transform the losses may later run under), and
        keep the module tree's parameter dicts (``param_dicts``, a :class:`Layout`'s, or walked now) until
        :meth:`release`."""
        names: dict[int, str] | None = None
        self._dicts = [m._parameters for m in self.module.modules()] if param_dicts is None else param_dicts
        for d in self._dicts:
            for v in d.values():
                if isinstance(v, nn.Parameter) and v.requires_grad:
                    hit = self._stand_ins.get(id(v))
                    if hit is None or hit[0] is not v:
                        if names is None:
                            names = {id(p): n for n, p in self.module.named_parameters()}
                        self._stand_in(v, names)

    def release(self) -> None:
        """Forget the parameter dicts ``prepare`` kept (the tree may change between solver calls)."""
        self._dicts = None

    def __call__(self, where: str) -> StoredGuard:
        """``with guard("outer_loss"):`` puts the stand-ins in for the body (``where`` names the loss)."""
        self._pending = where
        return self

    def __enter__(self) -> None:
        saved: list[tuple[dict[str, Any], str, Any]] = []
        self._saved.append((saved, self.where[0]))
        self.where[0] = self._pending
        stand_ins = self._stand_ins
        dicts = self._dicts if self._dicts is not None else [m._parameters for m in self.module.modules()]
        try:
            for d in dicts:
                for k, v in d.items():
                    if not (isinstance(v, nn.Parameter) and v.requires_grad):
                        continue  # frozen (a constant), or already a stand-in / bound tensor
                    hit = stand_ins.get(id(v))
                    if hit is None or hit[0] is not v:
                        self.prepare()
                        hit = stand_ins[id(v)]
                    saved.append((d, k, v))
                    d[k] = hit[1]
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc: object) -> None:
        saved, previous = self._saved.pop()
        for d, k, v in reversed(saved):
            d[k] = v
        self.where[0] = previous


def parameter_slots(*modules: nn.Module, param_dicts: list[dict[str, Any]] | None = None
                    ) -> list[tuple[dict[str, Any], str, Any]]:
    """``(slot dict, key, object)`` for every parameter slot of the given modules (and of ``param_dicts``, a
    :class:`Layout`'s): a snapshot that :func:`restore_slots` checks and restores."""
    dicts = [m._parameters for module in modules for m in module.modules()] + (param_dicts or [])
    return [(d, k, v) for d in dicts for k, v in d.items()]


def restore_slots(snapshot: list[tuple[dict[str, Any], str, Any]], **modules: nn.Module) -> list[str]:
    """Put back every object of a :func:`parameter_slots` snapshot that is no longer in its slot; return the
    dotted names of those slots, prefixed by the keyword each module is given under in ``modules`` (empty when
    the modules hold exactly what they held)."""
    changed = [(d, k) for d, k, v in snapshot if d.get(k, _MISSING) is not v]
    if not changed:
        return []
    for d, k, v in snapshot:
        d[k] = v
    where = {id(m._parameters): f"{label}.{prefix}." if prefix else f"{label}."
             for label, module in modules.items() for prefix, m in module.named_modules()}
    return [where.get(id(d), "?.") + k for d, k in changed]


class InnerView:
    """A view of ``module`` bound to the parameter tensors ``params``.

    Args:
        module: the inner ``nn.Module``.
        names: dotted names (as in ``module.named_parameters()``) of the tensors in ``params``.
        params: the current values of those parameters (possibly non-leaf tensors carrying a graph).
        buffers: optional ``{dotted name: tensor}`` to use instead of the stored buffers (so that a
            solver can hand the model copies it is allowed to mutate).
        layout: optional :func:`module_layout` of ``module`` (see :func:`bind_tensors`).

    Parameters of ``module`` not in ``names`` (frozen ones) and buffers not in ``buffers`` are used as
    stored. See the module docstring for what attribute access, indexing and method calls return.
    """

    def __init__(
        self,
        module: nn.Module,
        names: Sequence[str],
        params: Sequence[torch.Tensor],
        buffers: dict[str, torch.Tensor] | None = None,
        layout: Layout | None = None,
    ) -> None:
        if len(names) != len(params):
            raise ValueError(f"InnerView got {len(names)} names but {len(params)} parameter tensors")
        # Attribute names are prefixed so that they cannot shadow a user's submodule or parameter
        # (``inner.module`` must reach a child called ``module``).
        self._iv_module = module
        self._iv_names = tuple(names)
        self._iv_params = tuple(params)
        self._iv_buffers = buffers
        self._iv_layout = layout
        self._iv_ids: dict[int, torch.Tensor] | None = None
        self._iv_local: dict[str, torch.Tensor] | None = None

    # ------------------------------------------------------------------ calling
    def _iv_mapping(self) -> dict[str, torch.Tensor]:
        mapping: dict[str, torch.Tensor] = dict(zip(self._iv_names, self._iv_params))
        if self._iv_buffers is not None:
            mapping.update(self._iv_buffers)
        return mapping

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with bind_tensors(self._iv_module, self._iv_mapping(), self._iv_layout):
            return self._iv_module(*args, **kwargs)

    def _iv_run(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` with the module's parameters (and buffers) swapped for the bound tensors; the result
        is bound too (a returned submodule becomes a view)."""
        with bind_tensors(self._iv_module, self._iv_mapping(), self._iv_layout):
            out = fn()
        return self._iv_bind(out)

    # ------------------------------------------------------------------ binding
    def _iv_id_map(self) -> dict[int, torch.Tensor]:
        """``id(stored tensor) -> bound tensor`` for every bound parameter and buffer; lets any module
        reachable from this one (a child, an indexed or sliced ``Sequential``) be bound by identity."""
        if self._iv_ids is None:
            ids = {id(_slot(self._iv_module, n)): t for n, t in zip(self._iv_names, self._iv_params)}
            for n, b in (self._iv_buffers or {}).items():
                ids[id(_slot(self._iv_module, n))] = b
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
        if any(h.name == name for h in _weight_norm_hooks(module)):
            # Hook-based weight_norm keeps ``weight`` as a plain attribute computed at the last forward:
            # recompute it from the bound ``weight_g`` / ``weight_v``.
            return self._iv_run(lambda: getattr(module, name))
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

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # type: ignore[override]
        """The wrapped module's class, so that ``isinstance(view, nn.Linear)`` (a loss that picks layers by
        type, ``for m in inner.modules(): if isinstance(m, nn.Linear): ...``) sees the view as the module it
        stands for. ``type(view)`` is still ``InnerView`` and ``isinstance(view, InnerView)`` still holds."""
        module = self.__dict__.get("_iv_module")
        return InnerView if module is None else type(module)

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
        return self._iv_bind(_slot(self._iv_module, target, "_parameters"))

    def get_buffer(self, target: str) -> torch.Tensor:
        return self._iv_bind(_slot(self._iv_module, target, "_buffers"))

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
