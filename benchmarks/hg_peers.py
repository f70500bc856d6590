"""Peer implementations of the same hypergradients, and the measurement helpers, for
``benchmarks/hypergradients.py``.

Every peer computes ``d outer_loss / d lambda`` for one problem written once as plain functions
(:class:`FunctionalProblem`), so that ours, ``higher``, ``torchopt`` and Betty all differentiate exactly
the same losses with the same inner optimiser (plain SGD with the same learning rate).
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import logging
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

Batch = tuple[torch.Tensor, torch.Tensor]


# ---------------------------------------------------------------------------------------- problem
@dataclass
class FunctionalProblem:
    """One bi-level problem in the form every library can consume.

    ``inner_loss(logits_fn, params, lam, batch)``: ``logits_fn(x)`` runs the model at ``params``
    (the current inner tensors, in ``model.parameters()`` order) and ``lam`` is the outer tensor.
    ``outer_loss(logits_fn, params, lam, batch)`` likewise. ``hyper`` owns ``lam`` as its only
    parameter (attribute name ``lam``).
    """

    model: nn.Module
    hyper: nn.Module
    inner_loss: Callable[..., torch.Tensor]
    outer_loss: Callable[..., torch.Tensor]
    inner_batch: Batch
    outer_batch: Batch
    lr: float

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.model.named_parameters()]

    def functional_logits(self, params: Sequence[torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
        mapping = dict(zip(self.names, params))
        return lambda x: torch.func.functional_call(self.model, mapping, (x,))

    def f(self, params: Sequence[torch.Tensor], lam: torch.Tensor, batch: Batch | None = None) -> torch.Tensor:
        return self.inner_loss(self.functional_logits(params), params, lam, batch or self.inner_batch)

    def g(self, params: Sequence[torch.Tensor], lam: torch.Tensor, batch: Batch | None = None) -> torch.Tensor:
        return self.outer_loss(self.functional_logits(params), params, lam, batch or self.outer_batch)

    def bilevel_problem(self) -> Any:
        import bilevel

        def f(inner: Any, outer: nn.Module, batch: Batch) -> torch.Tensor:
            return self.inner_loss(inner, list(inner.parameters()), outer.lam, batch)

        def g(inner: Any, outer: nn.Module, batch: Batch) -> torch.Tensor:
            return self.outer_loss(inner, list(inner.parameters()), outer.lam, batch)

        return bilevel.Problem(self.model, self.hyper, f, g)

    def theta0(self) -> tuple[torch.Tensor, ...]:
        return tuple(p.detach() for p in self.model.parameters())


class Hyper(nn.Module):
    """The outer variables: one tensor ``lam``."""

    def __init__(self, lam: torch.Tensor) -> None:
        super().__init__()
        self.lam = nn.Parameter(lam.clone())


# ---------------------------------------------------------------------------------------- ours
def ours(fp: FunctionalProblem, kind: str, k: int, iterations: int = 10, **kw: Any) -> Callable[[], list[torch.Tensor]]:
    """A zero-argument callable returning our hypergradient (``hypergradient`` mutates nothing, so it
    can be called repeatedly from the same theta)."""
    import torchopt

    import bilevel

    problem = fp.bilevel_problem()
    inner_opt = torchopt.sgd(lr=fp.lr)
    outer_opt = torch.optim.SGD(fp.hyper.parameters(), lr=0.0)
    if kind == "one_step":
        s = bilevel.OneStepSolver(problem, inner_opt, outer_opt)
    elif kind in ("reverse", "forward"):
        s = bilevel.KStepSolver(problem, inner_opt, outer_opt, steps=k, mode=kind, **kw)
    elif kind in ("cg", "neumann", "fixed_point"):
        s = bilevel.ImplicitSolver(problem, inner_opt, outer_opt, inner_steps=k, linear_solver=kind,
                                   iterations=iterations, **kw)
    else:
        raise ValueError(kind)
    return lambda: s.hypergradient(fp.inner_batch, fp.outer_batch)


# ---------------------------------------------------------------------------------------- higher
def higher_unroll(fp: FunctionalProblem, k: int) -> Callable[[], list[torch.Tensor]]:
    """K differentiable SGD steps with ``higher.innerloop_ctx`` (its documented meta-learning idiom)."""
    import higher

    opt = torch.optim.SGD(fp.model.parameters(), lr=fp.lr)
    lam = fp.hyper.lam

    def run() -> list[torch.Tensor]:
        with higher.innerloop_ctx(fp.model, opt, copy_initial_weights=True) as (fmodel, diffopt):
            for _ in range(k):
                diffopt.step(fp.inner_loss(fmodel, list(fmodel.fast_params), lam, fp.inner_batch))
            out = fp.outer_loss(fmodel, list(fmodel.fast_params), lam, fp.outer_batch)
            return list(torch.autograd.grad(out, [lam]))

    return run


# ---------------------------------------------------------------------------------------- torchopt
def torchopt_unroll(fp: FunctionalProblem, k: int) -> Callable[[], list[torch.Tensor]]:
    """K steps of the functional torchopt API (``torchopt.sgd`` + ``apply_updates``), reverse mode."""
    import torchopt

    opt = torchopt.sgd(lr=fp.lr)
    lam = fp.hyper.lam

    def run() -> list[torch.Tensor]:
        params = tuple(t.detach().requires_grad_() for t in fp.theta0())
        state = opt.init(params)
        for _ in range(k):
            grads = torch.autograd.grad(fp.f(params, lam), params, create_graph=True)
            updates, state = opt.update(grads, state, inplace=False)
            params = torchopt.apply_updates(params, updates, inplace=False)
        return list(torch.autograd.grad(fp.g(params, lam), [lam]))

    return run


def torchopt_implicit(fp: FunctionalProblem, k: int, solver: str, iterations: int = 10,
                      alpha: float | None = None) -> Callable[[], list[torch.Tensor]]:
    """``torchopt.diff.implicit.custom_root`` around K plain SGD steps; the optimality condition is
    ``grad_theta f = 0``; the linear solve is torchopt's CG (no early stop) or Neumann series."""
    import torchopt

    lam = fp.hyper.lam

    def optimality(solution: tuple[torch.Tensor, ...], lam_: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # Same signature as the solver, with the solution in the first slot; torchopt calls it under
        # functorch.vjp, so the inner gradient must be a torch.func transform.
        return torch.func.grad(lambda p: fp.f(p, lam_))(tuple(solution))

    if solver == "cg":
        solve = torchopt.linear_solve.solve_cg(maxiter=iterations, rtol=0.0, atol=0.0)
    else:
        solve = torchopt.linear_solve.solve_inv(ns=True, maxiter=iterations, alpha=alpha)

    @torchopt.diff.implicit.custom_root(optimality, argnums=1, solve=solve)
    def inner_solve(params0: tuple[torch.Tensor, ...], lam_: torch.Tensor) -> tuple[torch.Tensor, ...]:
        params, lam_ = tuple(a.detach().requires_grad_() for a in params0), lam_.detach()
        with torch.enable_grad():  # custom_root runs the solver inside autograd.Function.forward (no grad)
            for _ in range(k):
                grads = torch.autograd.grad(fp.f(params, lam_), params)
                params = tuple((p - fp.lr * g).detach().requires_grad_() for p, g in zip(params, grads))
        return tuple(p.detach() for p in params)

    def run() -> list[torch.Tensor]:
        params = inner_solve(fp.theta0(), lam)
        return list(torch.autograd.grad(fp.g(params, lam), [lam]))

    return run


# ---------------------------------------------------------------------------------------- betty
def betty_available() -> str | None:
    """``None`` if Betty imports, else the reason it does not."""
    try:
        import betty  # noqa: F401
        from betty.engine import Engine  # noqa: F401
    except Exception as err:  # noqa: BLE001 - any import failure is reported in the table
        return f"{type(err).__name__}: {err}"
    return None


class _RecordingSGD(torch.optim.SGD):
    """Betty rebuilds the outer optimiser from its class; this one keeps the last gradients it saw
    (with lr=0 it leaves lambda unchanged, so repeated calls measure the same hypergradient)."""

    recorded: ClassVar[list[torch.Tensor]] = []

    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        self.recorded = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
                         for g in self.param_groups for p in g["params"]]
        return super().step(closure)


class _Repeat:
    """An endless 'data loader' yielding the same batch (Betty draws a batch per step)."""

    def __init__(self, batch: Batch) -> None:
        self.batch = batch

    def __iter__(self) -> Any:
        return itertools.repeat(self.batch)


def betty_hypergrad(fp: FunctionalProblem, k: int, kind: str, iterations: int = 10,
                    device: str = "cpu") -> Callable[[], list[torch.Tensor]]:
    """Betty's ``ImplicitProblem`` pair: the inner problem takes ``unroll_steps=k`` SGD steps (it
    really moves theta, so the model is reset before each call), then the outer problem's step
    computes the hypergradient with ``type`` = darts / cg / neumann as in Betty's docs."""
    from betty.configs import Config, EngineConfig
    from betty.engine import Engine
    from betty.problems import ImplicitProblem

    start = [p.detach().clone() for p in fp.model.parameters()]

    class Inner(ImplicitProblem):
        def training_step(self, batch: Batch) -> torch.Tensor:
            return fp.inner_loss(self.module, list(self.module.parameters()), self.outer.module.lam, batch)

    class Outer(ImplicitProblem):
        def training_step(self, batch: Batch) -> torch.Tensor:
            inner = self.inner.module
            return fp.outer_loss(inner, list(inner.parameters()), self.module.lam, batch)

    inner_cfg = Config(type=kind, unroll_steps=k, cg_iterations=iterations, neumann_iterations=iterations,
                       neumann_alpha=fp.lr)
    outer_cfg = Config(retain_graph=True)
    logging.disable(logging.INFO)  # Betty logs its problem graph at INFO on every Engine
    try:
        inner = Inner(name="inner", module=fp.model, optimizer=torch.optim.SGD(fp.model.parameters(), lr=fp.lr),
                      train_data_loader=_Repeat(fp.inner_batch), config=inner_cfg)
        outer = Outer(name="outer", module=fp.hyper, optimizer=_RecordingSGD(fp.hyper.parameters(), lr=0.0),
                      train_data_loader=_Repeat(fp.outer_batch), config=outer_cfg)
        engine = Engine(config=EngineConfig(train_iters=k, strategy="gpu" if device.startswith("cuda") else "cpu"),
                        problems=[outer, inner], dependencies={"l2u": {inner: [outer]}, "u2l": {outer: [inner]}})
    finally:
        logging.disable(logging.NOTSET)

    def run() -> list[torch.Tensor]:
        with torch.no_grad():
            for p, s in zip(fp.model.parameters(), start):
                p.copy_(s)
        for _ in range(k):
            engine.global_step += 1
            engine.train_step()
        return list(outer.optimizer.recorded)

    return run


# ---------------------------------------------------------------------------------------- measuring
def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_call(fn: Callable[[], Any], device: str, warmup: int, repeats: int, budget_s: float) -> dict[str, float]:
    """Median and min wall time of ``fn`` after ``warmup`` calls; fewer repeats if one call is slow
    (so the whole grid fits a fixed time budget)."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        fn()
    sync(device)
    first = (time.perf_counter() - t0) / max(warmup, 1)
    reps = max(1, min(repeats, int(budget_s / max(first, 1e-6))))
    times = []
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    times.sort()
    return {"median_s": times[len(times) // 2], "min_s": times[0], "repeats": reps}


def time_interleaved(fns: list[Callable[[], Any]], device: str, warmup: int, rounds: int,
                     budget_s: float) -> list[dict[str, float]]:
    """Time several callables side by side: after ``warmup`` calls each, ``rounds`` rounds that call every
    ``fn`` once in turn, so a change in the machine's load hits all of them alike; each round starts one callable
    later than the last (the first call of a round runs with the caches the previous round's last call left). Per callable: median and min
    wall time, and the median thread CPU time (``time.thread_time``, what another process on a shared CPU
    disturbs least). Fewer rounds when one round would not fit ``budget_s`` times ``rounds``."""
    t0 = time.perf_counter()
    for fn in fns:
        for _ in range(warmup):
            fn()
    sync(device)
    per_round = (time.perf_counter() - t0) / max(warmup, 1)
    rounds = max(3, min(rounds, int(budget_s * len(fns) / max(per_round, 1e-6))))
    wall: list[list[float]] = [[] for _ in fns]
    cpu: list[list[float]] = [[] for _ in fns]
    for r in range(rounds):
        for j in range(len(fns)):
            i = (r + j) % len(fns)
            fn = fns[i]
            sync(device)
            t, c = time.perf_counter(), time.thread_time()
            fn()
            sync(device)
            wall[i].append(time.perf_counter() - t)
            cpu[i].append(time.thread_time() - c)
    out = []
    for w, c in zip(wall, cpu):
        w.sort()
        c.sort()
        out.append({"median_s": w[len(w) // 2], "min_s": w[0], "cpu_median_s": c[len(c) // 2], "repeats": rounds})
    return out


class LiveBytes(TorchDispatchMode):
    """CPU proxy for ``torch.cuda.max_memory_allocated``: the peak total size of tensor storages that
    torch ops create while the mode is active and that are still alive (saved activations, unrolled
    iterates, temporaries of the backward pass). Storages that existed before (parameters, data)
    are not counted, matching "peak extra memory of one hypergradient call". It slows the call, so
    it is used in a separate run from the timing."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[Any, list[int]] = {}  # storage key -> [bytes, number of live tensors using it]
        self.cur = 0
        self.peak = 0

    def _release(self, key: Any) -> None:
        entry = self.live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.cur -= entry[0]
            del self.live[key]

    @staticmethod
    def _key(t: torch.Tensor) -> tuple[Any, int]:
        try:
            st = t.untyped_storage()
            return st.data_ptr(), st.nbytes()
        except RuntimeError:
            # functorch wrappers (inside torch.func.jvp / grad) have no real storage: count the
            # tensor by identity and size instead.
            return ("id", id(t)), t.numel() * t.element_size()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs = {self._key(t)[0] for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor) and t.layout == torch.strided}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.layout != torch.strided:
                continue
            key, size = self._key(t)
            if size == 0:
                continue
            if key in self.live:
                # A view / detach / in-place result of a storage we count: it keeps the storage
                # alive too, so the storage is freed only when its last such tensor dies.
                self.live[key][1] += 1
            elif key in inputs:
                continue  # aliases a storage that existed before the call (a parameter, the data)
            else:
                self.live[key] = [size, 1]
                self.cur += size
                self.peak = max(self.peak, self.cur)
            # With PyObject preservation the Python tensor lives as long as its TensorImpl (e.g.
            # while autograd holds it as a saved tensor), so the finalizer marks the real release.
            weakref.finalize(t, self._release, key)
        return out


def peak_memory(fn: Callable[[], Any], device: str) -> dict[str, Any]:
    """Peak extra bytes allocated by one call: CUDA allocator statistics on GPU, :class:`LiveBytes`
    on CPU."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        del out
        return {"peak_bytes": int(peak), "memory_method": "torch.cuda.max_memory_allocated - allocated before"}
    meter = LiveBytes()
    with meter:
        out = fn()
    del out
    return {"peak_bytes": int(meter.peak), "memory_method": "live bytes of tensors created during the call "
                                                            "(TorchDispatchMode)"}


@contextlib.contextmanager
def quiet_warnings() -> Any:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
