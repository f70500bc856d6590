"""N independent seeds of one algorithm trained in one process, with per-seed parameters stacked.

A :class:`SeedStack` holds

* ``members[k]``: an ordinary single-seed algorithm built with seed ``seeds[k]``, so its initial weights
  are exactly those of a single run with that seed.  Evaluation and checkpoints go through the members
  (:meth:`SeedStack.sync_members` copies seed ``k``'s slice of the stack into ``members[k]``), which is why a
  seed of a multi-seed run writes the same files, and the same checkpoint format, as a single run;
* ``algo``: one more instance of the algorithm whose every parameter and buffer is replaced by the stack
  (leading dimension ``N``) of the members' and whose optimizers are rebuilt over the stacked parameters.
  Adam acts elementwise, so one Adam on a stack *is* N independent Adams (same step counts and schedules).

An update of ``algo`` runs the algorithm's own ``update``: each loss it hands to
:meth:`~rl_adapters.algorithms.base.Algorithm.optimize` is evaluated for every seed at once with
``torch.func.vmap`` over ``torch.func.functional_call`` (seed ``k`` sees only its own slice), and the step
is taken on the sum of the per-seed losses, whose gradient with respect to seed ``k``'s slice is seed
``k``'s own gradient.  Noise comes from each member's generator, batches from per-seed samplers.

What is and is not bit-identical to N single runs: initial weights, batch indices, noise draws,
evaluation seeds and the optimizer arithmetic are the same; the matrix products are not (a batched
``bmm`` sums in a different order than ``mm``), so parameters agree to float rounding after one update and
then drift apart the way two runs on different hardware do.  Seed ``k`` is statistically the same
experiment as a single run with seed ``k``.  Works for algorithms with ``stackable = True`` (BC, TD3+BC,
TD3+BC-rc, IQL, ASPC, ASPC-IQL: ASPC's ``bilevel`` solver steps the stacked actor and constraint scales on
the sum of the per-seed losses, see :mod:`rl_adapters.algorithms.aspc.scale`); not for VACO or ARQ.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..algorithms import Algorithm, make_algorithm
from ..data import DatasetStats
from ..errors import UsageError

__all__ = ["SeedStack", "stackable_algorithms"]


def stackable_algorithms() -> list[str]:
    """Names of the registered algorithms a :class:`SeedStack` can train."""
    from ..algorithms import ALGORITHMS

    return sorted(name for name, cls in ALGORITHMS.items() if cls.stackable)


class _Call(nn.Module):
    """All of an algorithm's networks under one root, so that ``functional_call`` swaps all of them."""

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        super().__init__()
        self.nets = nn.ModuleDict(modules)

    def forward(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)


def _owner(root: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, leaf = name.rpartition(".")
    return (root.get_submodule(path) if path else root), leaf


class SeedStack:
    """See the module docstring.  Build with :meth:`build`; train with :meth:`update`."""

    def __init__(self, members: Sequence[Algorithm], template: Algorithm) -> None:
        cls = type(template)
        if not cls.stackable:
            raise UsageError(f"--seeds: {cls.name} cannot train several seeds in one process (its update is not "
                             f"written through Algorithm.optimize); it works for {', '.join(stackable_algorithms())}. "
                             f"Run one process per seed instead")
        if any(type(m) is not cls for m in members):
            raise ValueError("SeedStack members must all be the same algorithm")
        self.members = list(members)
        self.n = len(self.members)
        self.algo = template
        with torch.no_grad():
            for key, module in template.modules.items():
                for name, p in list(module.named_parameters()):
                    stacked = torch.stack([dict(m.modules[key].named_parameters())[name] for m in self.members])
                    owner, leaf = _owner(module, name)
                    setattr(owner, leaf, nn.Parameter(stacked.clone(), requires_grad=p.requires_grad))
                for name, _ in list(module.named_buffers()):
                    stacked = torch.stack([dict(m.modules[key].named_buffers())[name] for m in self.members])
                    owner, leaf = _owner(module, name)
                    setattr(owner, leaf, stacked.clone())
        template.build_optimizers()  # over the stacked parameters
        template.seed_stack = self
        self._tree = _Call(template.modules)
        self._vmapped: dict[Any, Any] = {}
        # The stacked tensors are updated in place (optimizer steps, load_state_dict), so the maps stay valid.
        self._params = dict(self._tree.named_parameters())
        self._buffers = dict(self._tree.named_buffers())
        self.inside = False
        self.restack()  # optimizer states and carried attributes from the members

    @classmethod
    def build(
        cls,
        name: str,
        seeds: Sequence[int],
        obs_dim: int,
        act_dim: int,
        stats: DatasetStats,
        device: str | torch.device = "cpu",
        total_steps: int = 1_000_000,
        **hparams: Any,
    ) -> SeedStack:
        """Members ``make_algorithm(name, ..., seed=s)`` for ``s`` in ``seeds``, stacked."""
        if len(seeds) < 1 or len(set(seeds)) != len(seeds):
            raise UsageError(f"--seeds {','.join(map(str, seeds))}: give distinct seeds, e.g. --seeds 0,1,2,3")
        members = [make_algorithm(name, obs_dim, act_dim, stats, device=device, seed=s, total_steps=total_steps,
                                  **hparams) for s in seeds]
        template = make_algorithm(name, obs_dim, act_dim, stats, device=device, seed=seeds[0],
                                  total_steps=total_steps, **hparams)
        return cls(members, template)

    # ------------------------------------------------------------------ what Algorithm calls back
    def per_seed(self, fn: Callable[..., Any], inputs: tuple[Any, ...], compiled: bool = False,
                 overrides: dict[str, torch.Tensor] | None = None) -> Any:
        """``fn(*inputs)`` for every seed at once: parameters, buffers and tensor inputs sliced along dim 0
        (``None`` fields of an input tuple pass through).  ``overrides`` replaces stacked parameters by other
        tensors of the same shape, named as in ``algo.modules`` (``"actor.net.0.weight"``): a ``bilevel``
        solver's differentiable view of the actor, whose steps carry a graph to the outer variable."""
        dims = (0, 0, tuple(_in_dims(x) for x in inputs))  # which inputs are None differs between calls
        key = (getattr(fn, "__func__", fn), compiled, repr(dims))
        if key not in self._vmapped:

            def one_seed(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], args: tuple[Any, ...]) -> Any:
                return torch.func.functional_call(self._tree, (p, b), (fn, *args))

            batched = torch.func.vmap(one_seed, in_dims=dims, randomness="error")
            self._vmapped[key] = torch.compile(batched) if compiled else batched
        params = self._params
        if overrides:
            params = params | {f"nets.{name}": t for name, t in overrides.items()}
        self.inside = True  # the algorithm's own losses, called inside, take their single-seed branch
        try:
            return self._vmapped[key](params, self._buffers, inputs)
        finally:
            self.inside = False

    def normal(self, like: torch.Tensor) -> torch.Tensor:
        """Seed ``k``'s slice from member ``k``'s generator, as a single run with that seed draws it."""
        return torch.stack([torch.randn(like.shape[1:], device=like.device, generator=m.generator)
                            for m in self.members])

    # ------------------------------------------------------------------ training
    def update(self, batch: Any) -> list[dict[str, float]]:
        """One update of every seed on ``batch`` (fields with a leading seed dimension); per-seed diagnostics."""
        info = self.algo.update(batch)
        columns = {k: (v.tolist() if isinstance(v, torch.Tensor) else [float(v)] * self.n) for k, v in info.items()}
        return [{k: float(col[i]) for k, col in columns.items()} for i in range(self.n)]

    # ------------------------------------------------------------------ members <-> stack
    def member_state(self, k: int) -> dict[str, Any]:
        """Seed ``k``'s single-seed ``state_dict`` (what a single run with that seed would checkpoint)."""
        state = self.algo.state_dict()
        state["modules"] = {key: {n: t[k].clone() for n, t in sd.items()} for key, sd in state["modules"].items()}
        state["optimizers"] = {key: self._slice_optimizer(sd, k) for key, sd in state["optimizers"].items()}
        state["attrs"] = _slice_attrs(state["attrs"], k)
        state["extra"] = _slice_like(state["extra"], self.members[k].extra_state(), k)
        state["generator"] = self.members[k].generator.get_state()
        return state

    def sync_members(self) -> None:
        """Copy every seed's slice into its member (before evaluating or checkpointing them)."""
        for k, m in enumerate(self.members):
            m.load_state_dict(self.member_state(k))

    def restack(self) -> None:
        """Rebuild the stack from the members (after loading their checkpoints)."""
        states = [m.state_dict() for m in self.members]
        state = self.algo.state_dict()
        state["step"] = states[0]["step"]
        state["modules"] = {key: {n: torch.stack([s["modules"][key][n] for s in states]) for n in sd}
                            for key, sd in state["modules"].items()}
        state["optimizers"] = {key: self._stack_optimizer([s["optimizers"][key] for s in states])
                               for key in state["optimizers"]}
        state["schedulers"] = states[0]["schedulers"]
        state["attrs"] = _stack_attrs([s["attrs"] for s in states])
        state["extra"] = _stack_like([s["extra"] for s in states], state["extra"])
        self.algo.load_state_dict(state)

    @staticmethod
    def _slice_optimizer(sd: dict[str, Any], k: int) -> dict[str, Any]:
        # Per-parameter state (Adam's moments) has the stacked parameter's shape; the step count is shared
        # by all seeds (told apart by name: a scalar parameter's moments are 0-d too).
        state = {i: {n: (t[k].clone() if isinstance(t, torch.Tensor) and n != "step" else t) for n, t in st.items()}
                 for i, st in sd["state"].items()}
        return {"state": state, "param_groups": sd["param_groups"]}

    @staticmethod
    def _stack_optimizer(sds: list[dict[str, Any]]) -> dict[str, Any]:
        state = {}
        for i, st in sds[0]["state"].items():
            state[i] = {n: (torch.stack([sd["state"][i][n] for sd in sds])
                            if isinstance(t, torch.Tensor) and n != "step" else t) for n, t in st.items()}
        return {"state": state, "param_groups": sds[0]["param_groups"]}


def _in_dims(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return 0
    if isinstance(x, tuple):  # NamedTuples (Batch, ScaleBatch) keep their type: vmap matches in_dims by structure
        dims = [_in_dims(v) for v in x]
        return type(x)(*dims) if hasattr(x, "_fields") else tuple(dims)
    return None


def _slice_like(stacked: Any, single: Any, k: int) -> Any:
    """Seed ``k``'s part of a stacked state, shaped like ``single`` (a member's own state of the same kind):
    a tensor with one more dimension than its single counterpart is sliced; a per-seed float becomes seed
    ``k``'s; what all seeds share (step counts) is kept.  Without a counterpart, tensors with a dimension are
    sliced."""
    if isinstance(stacked, dict):
        ref = single if isinstance(single, dict) else {}
        return {key: _slice_like(v, ref.get(key), k) for key, v in stacked.items()}
    if isinstance(stacked, (list, tuple)):
        ref = single if isinstance(single, (list, tuple)) and len(single) == len(stacked) else [None] * len(stacked)
        items = [_slice_like(v, r, k) for v, r in zip(stacked, ref)]
        return type(stacked)(*items) if hasattr(stacked, "_fields") else type(stacked)(items)
    if isinstance(stacked, torch.Tensor):
        if isinstance(single, float) and stacked.dim() == 1:
            return stacked[k].item()
        if isinstance(single, torch.Tensor) and stacked.dim() == single.dim():
            return stacked.clone()
        return stacked[k].clone() if stacked.dim() > 0 else stacked.clone()
    return stacked


def _stack_like(singles: list[Any], stacked: Any) -> Any:
    """The inverse of :func:`_slice_like`: members' states stacked where the stacked state has a seed
    dimension, per-seed floats as a tensor when they differ, shared values once."""
    first = singles[0]
    if isinstance(first, dict):
        ref = stacked if isinstance(stacked, dict) else {}
        return {key: _stack_like([s[key] for s in singles], ref.get(key)) for key in first}
    if isinstance(first, (list, tuple)):
        ref = stacked if isinstance(stacked, (list, tuple)) and len(stacked) == len(first) else [None] * len(first)
        items = [_stack_like([s[i] for s in singles], r) for i, r in enumerate(ref)]
        return type(first)(*items) if hasattr(first, "_fields") else type(first)(items)
    if isinstance(first, torch.Tensor):
        shared = isinstance(stacked, torch.Tensor) and stacked.dim() == first.dim() and first.dim() == 0
        return first.clone() if shared else torch.stack(singles)
    if isinstance(first, float) and any(s != first for s in singles):
        return torch.tensor(singles)
    return first


def _slice_attrs(attrs: dict[str, Any], k: int) -> dict[str, Any]:
    def one(v: Any) -> Any:
        if isinstance(v, dict):
            return {key: one(x) for key, x in v.items()}
        if isinstance(v, torch.Tensor) and v.dim() > 0:
            return v[k].item() if v.dim() == 1 else v[k].clone()
        return v

    return {a: one(v) for a, v in attrs.items()}


def _stack_attrs(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    def many(vs: list[Any]) -> Any:
        if isinstance(vs[0], dict):
            return {key: many([v[key] for v in vs]) for key in vs[0]}
        if isinstance(vs[0], float):
            return torch.tensor(vs)
        if isinstance(vs[0], torch.Tensor):
            return torch.stack(vs)
        return vs[0]

    return {a: many([s[a] for s in per_seed]) for a in per_seed[0]}
