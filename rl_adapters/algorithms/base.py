"""What every offline RL algorithm in this package shares: construction, acting, checkpoint state, the
hooks the trainer calls, and the registry.

A subclass defines a ``Config`` dataclass (its fields, each an :func:`~rl_adapters.algorithms.options.option`
with its help and allowed values, become ``--flags`` of ``bilevel-rl train``), builds its networks and optimizers in ``build()`` and implements ``update(batch)``.  It registers
what must survive a checkpoint in ``self.modules`` / ``self.optimizers`` / ``self.schedulers``, overrides
the hooks it needs (:meth:`Algorithm.value_phase`, :meth:`~Algorithm.training_data`,
:meth:`~Algorithm.attach_data`, :meth:`~Algorithm.plot_metrics`, :meth:`BaseConfig.check_steps`,
:meth:`BaseConfig.value_only_steps`; each is a
no-op here, and the trainer calls every one of them) and enters :data:`ALGORITHMS` with :func:`register`
(``@register`` on the class, in its own module).
"""

from __future__ import annotations

import abc
import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..data import Batch, DatasetStats, OfflineData
from .optim import adam
from .options import AT_LEAST_1, option

__all__ = ["ALGORITHMS", "Algorithm", "BaseConfig", "ValuePhase", "adam", "register"]


@dataclasses.dataclass(frozen=True)
class ValuePhase:
    """A first phase of training that only the value networks take part in (VACO's two-phase schedule; ARQ's
    behaviour model and Q-only phase): its length, what it trains, and the config fields it reads; :mod:`rl_adapters.training.value_cache` reuses it
    across runs that differ only after it."""

    steps: int
    modules: tuple[str, ...]  # keys of ``Algorithm.modules`` the phase trains
    optimizers: tuple[str, ...]  # keys of ``Algorithm.optimizers`` the phase steps
    fields: tuple[str, ...]  # config fields that change what the phase computes


@dataclasses.dataclass
class BaseConfig:
    """Hyper-parameters common to all algorithms (SPEC section 3).

    Every field of an algorithm's ``Config`` is made with :func:`~rl_adapters.algorithms.options.option` (or
    :func:`~rl_adapters.algorithms.options.like`): its help, unit and allowed values are defined there, once.
    """

    hidden_dim: int = option(256, "width of each hidden layer of the actor, critic and value networks",
                             range=AT_LEAST_1, unit="neurons")
    batch_size: int = option(256, "transitions sampled from the dataset for each gradient update", range=AT_LEAST_1,
                             unit="transitions")
    discount: float = option(0.99, "discount factor gamma of the TD targets (unused by BC)", range=(0, 1, False, False),
                             unit="per environment step")
    tau: float = option(0.005, "Polyak rate of the target networks, target <- (1 - tau) target + tau online (unused "
                        "by BC)", range=(0, 1, True, False), unit="per target update")

    def check_steps(self, steps: int) -> None:
        """Refuse (``ValueError``) options that cannot work in a run of ``steps`` updates; the trainer calls it
        with ``--steps`` before any data loads (ARQ: the behaviour-model and Q-only phases must end before the
        run does).  Default: every option fits any length."""

    def value_only_steps(self, steps: int) -> int:
        """Updates of a run of ``steps`` that leave the policy untouched, before its first policy update (ARQ:
        the behaviour model and the Q-only phase; VACO: its two-phase value-only updates); the default
        ``--eval-every`` spreads its evaluations over the rest.  Must equal ``Algorithm.value_phase().steps`` (0
        when that is None).  Default: 0."""
        return 0


class Algorithm(abc.ABC):
    """Base class; see the module docstring.

    Randomness: network initialisation is seeded from ``seed`` without touching the global torch RNG
    (``torch.random.fork_rng``), and any noise an update needs is drawn from ``self.generator`` (a
    ``torch.Generator`` on the device, saved in :meth:`state_dict`), so an algorithm is reproducible
    and resumable on its own.
    """

    name: ClassVar[str] = "base"
    Config: ClassVar[type] = BaseConfig
    #: Plain attributes (floats, dicts of floats, tensors) carried from one update to the next that are
    #: not modules, optimizers or schedulers, e.g. diagnostics an update reports again when it skips a
    #: step.  :meth:`state_dict` saves them, so a resumed run reports what an uninterrupted one does.
    checkpoint_attrs: ClassVar[tuple[str, ...]] = ()
    #: True when :meth:`update` changes parameters only through :meth:`optimize`, draws noise only through
    #: :meth:`normal` and reports through :meth:`metrics`, with every loss a function of the registered
    #: modules and tensor inputs: then :class:`~rl_adapters.training.seed_stack.SeedStack` can train N seeds
    #: of it in one process.
    stackable: ClassVar[bool] = False

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        stats: DatasetStats,
        device: str | torch.device = "cpu",
        seed: int = 0,
        total_steps: int = 1_000_000,
        config: Any = None,
    ) -> None:
        self.obs_dim, self.act_dim = int(obs_dim), int(act_dim)
        self.stats = stats
        self.device = torch.device(device)
        self.seed = int(seed)
        self.total_steps = int(total_steps)
        self.config = config if config is not None else self.Config()
        self.step = 0
        self.modules: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, Any] = {}
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(self.seed + 1)
        #: Set by :class:`~rl_adapters.training.seed_stack.SeedStack` on the instance holding stacked parameters.
        self.seed_stack: Any = None
        self._compiled: dict[Any, Any] | None = None  # compile_losses() turns it on
        self.obs_mean = torch.as_tensor(stats.obs_mean, dtype=torch.float32, device=self.device)
        self.obs_std = torch.as_tensor(stats.obs_std, dtype=torch.float32, device=self.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            # Built on CPU so the initial weights are identical on every device, then moved.
            self.build()
        for m in self.modules.values():
            m.to(self.device)
        self.build_optimizers()

    # ------------------------------------------------------------------ to override
    @abc.abstractmethod
    def build(self) -> None:
        """Create networks (on CPU) and register them in ``self.modules``."""

    @abc.abstractmethod
    def build_optimizers(self) -> None:
        """Create optimizers/schedulers for the (already moved) networks."""

    @abc.abstractmethod
    def update(self, batch: Batch) -> dict[str, float]:
        """One gradient step on ``batch``; returns scalar diagnostics (losses) as floats."""

    # ------------------------------------------------------------------ hooks the trainer calls (defaults)
    def value_phase(self) -> ValuePhase | None:
        """The value-only first phase of this algorithm's training, if it has one (default: none).  The trainer
        skips evaluations inside it and, with ``--value-cache``, reuses it across runs."""
        return None

    def training_data(self, data: OfflineData) -> OfflineData:
        """The transitions the trainer samples batches from (default: all of ``data``; filtered BC keeps the
        best trajectories).  Evaluation and the algorithm's statistics still use the whole ``data``."""
        return data

    def attach_data(self, data: OfflineData, out_dir: str | Path | None = None, progress: bool = False) -> None:
        """Precompute over the whole dataset before the first update of this session (default: nothing).

        The trainer calls it once the algorithm is built and restored (checkpoint or value cache), with the
        full ``data``, the run's folder (for a cache of what was computed) and whether progress bars are on.
        ARQ generates its behaviour-model candidates here."""

    def plot_metrics(self, metrics_path: Path, out_dir: Path) -> None:
        """Write this algorithm's own figures from ``metrics.jsonl`` into ``out_dir`` (default: none).

        The trainer calls it at the end of a finished run with ``--plot``, after ``learning_curve.png``
        (ASPC: ``<scale>_curve.png``)."""

    def policy(self, obs: torch.Tensor) -> torch.Tensor:
        """Deterministic action for *normalised* observations (default: ``self.modules['actor']``)."""
        return self.modules["actor"](obs)

    # ------------------------------------------------------------------ update building blocks
    def optimize(
        self, optimizer: str, loss_fn: Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]], *inputs: Any
    ) -> dict[str, torch.Tensor]:
        """One step of ``self.optimizers[optimizer]`` on ``loss, out = loss_fn(*inputs)``; returns ``out`` detached.

        The gradient is taken with respect to that optimizer's parameters only (``torch.autograd.grad``): an
        actor step through the critic computes no critic weight gradients, and no ``.grad`` of another
        network is touched.  ``loss_fn`` reads the networks through ``self`` and must draw no random numbers
        (pass noise from :meth:`normal` as an input): under a :class:`SeedStack` it is vmapped over the seeds,
        and the step is taken on ``sum_k loss_k``, whose gradient with respect to seed ``k``'s parameters is
        ``d loss_k / d theta_k`` since the seeds share nothing.
        """
        if self.seed_stack is not None:
            loss, out = self.seed_stack.per_seed(loss_fn, inputs, compiled=self._compiled is not None)
            loss = loss.sum()
        elif self._compiled is not None:
            key = getattr(loss_fn, "__func__", loss_fn)  # one compiled function per loss, not per bound method
            if key not in self._compiled:
                self._compiled[key] = torch.compile(loss_fn)
            loss, out = self._compiled[key](*inputs)
        else:
            loss, out = loss_fn(*inputs)
        params = [p for group in self.optimizers[optimizer].param_groups for p in group["params"]]
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for p, g in zip(params, grads):
            # Gradients through vmap come back with the batch dimension's strides permuted; torch 2.13's fused
            # CPU Adam then updates the wrong elements (silently: tests/test_seed_stack.py catches it).
            p.grad = g if g is None or g.stride() == p.stride() else g.contiguous()
        self.optimizers[optimizer].step()
        return {k: v.detach() for k, v in out.items()}

    def compile_losses(self) -> None:
        """Opt in to ``torch.compile`` of every loss passed to :meth:`optimize` (each compiled on first use;
        forward and backward graphs, the optimizer step stays the fused eager kernel).  Losses an algorithm
        computes outside :meth:`optimize` (a ``bilevel`` solver's inner and outer losses) stay eager."""
        self._compiled = {}

    def normal(self, like: torch.Tensor) -> torch.Tensor:
        """Standard normal noise shaped like ``like``, from this algorithm's generator (one per seed when stacked)."""
        if self.seed_stack is not None:
            return self.seed_stack.normal(like)
        return torch.randn(like.shape, device=self.device, generator=self.generator)

    def metrics(self, out: dict[str, Any]) -> dict[str, Any]:
        """Diagnostics as Python floats (under a :class:`SeedStack`: as they are, one entry per seed)."""
        if self.seed_stack is not None:
            return dict(out)
        return {k: v.item() if isinstance(v, torch.Tensor) else float(v) for k, v in out.items()}

    # ------------------------------------------------------------------ shared
    def normalize(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.obs_mean) / self.obs_std

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        """Action for RAW observation(s) ``(obs_dim,)`` or ``(n, obs_dim)``, within the action bounds."""
        x = torch.as_tensor(np.asarray(obs), dtype=torch.float32, device=self.device)
        single = x.dim() == 1
        a = self.policy(self.normalize(x.reshape(-1, self.obs_dim)))
        a = a.cpu().numpy()
        a = np.clip(a, self.stats.action_low, self.stats.action_high)
        return a[0] if single else a

    def state_dict(self) -> dict[str, Any]:
        return {
            "algo": self.name,
            "step": self.step,
            "config": dataclasses.asdict(self.config),
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "generator": self.generator.get_state(),
            "extra": self.extra_state(),
            "attrs": {a: copy.deepcopy(getattr(self, a)) for a in self.checkpoint_attrs if hasattr(self, a)},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("algo") != self.name:
            raise ValueError(f"checkpoint is for algorithm {state.get('algo')!r}, not {self.name!r}")
        # Optimizer.load_state_dict keeps tensors that are already on the right device/dtype by reference;
        # copying avoids two live algorithms sharing Adam moments when a state is passed in memory.
        state = copy.deepcopy(state)
        self.step = int(state["step"])
        for k, m in self.modules.items():
            m.load_state_dict(state["modules"][k])
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        for k, s in self.schedulers.items():
            s.load_state_dict(state["schedulers"][k])
        self.generator.set_state(
            state["generator"].cpu() if hasattr(state["generator"], "cpu") else state["generator"]
        )
        self.load_extra_state(state.get("extra", {}))
        attrs = state.get("attrs", {})
        for a in self.checkpoint_attrs:
            if a in attrs:
                setattr(self, a, attrs[a])
            elif hasattr(self, a):
                delattr(self, a)  # not set yet when the checkpoint was written

    def carried_seconds(self) -> float:
        """Seconds of work an interrupted earlier invocation did after its last checkpoint that this one reused
        instead of redoing (ARQ's candidates); the trainer adds them to the run's wall time. Override."""
        return 0.0

    def extra_state(self) -> dict[str, Any]:
        """Anything else that must survive a checkpoint (e.g. running averages); override."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def parameters_flat(self) -> torch.Tensor:
        """All network parameters and buffers concatenated (for bitwise comparisons in tests)."""
        return torch.cat(
            [
                t.detach().reshape(-1).float().cpu()
                for m in self.modules.values()
                for t in m.state_dict().values()
            ]
        )


#: Every algorithm by its ``--algo`` name, in the order its module was imported: each algorithm module
#: enters its class with :func:`register`, and :mod:`rl_adapters.algorithms` imports them all.
ALGORITHMS: dict[str, type[Algorithm]] = {}


def register(cls: type[Algorithm]) -> type[Algorithm]:
    """Enter ``cls`` in :data:`ALGORITHMS` under ``cls.name``; a class decorator (``@register``).

    The class must subclass :class:`Algorithm`, set its own ``name`` and have a ``Config`` that subclasses
    :class:`BaseConfig`.  A name is taken once: registering another class under it raises ``ValueError``
    (the same class again, e.g. after ``importlib.reload`` of its module, replaces the entry).
    """
    if not (isinstance(cls, type) and issubclass(cls, Algorithm)):
        raise TypeError(f"register() takes an Algorithm subclass, got {cls!r}")
    if "name" not in vars(cls) or not isinstance(cls.name, str) or not cls.name:
        raise TypeError(f"{cls.__qualname__} must set its own name (its --algo value) to be registered")
    if not (isinstance(cls.Config, type) and issubclass(cls.Config, BaseConfig)):
        raise TypeError(f"{cls.__qualname__}.Config must be a dataclass subclassing BaseConfig")
    taken = ALGORITHMS.get(cls.name)
    if taken is not None and (taken.__module__, taken.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"algorithm name {cls.name!r} is already registered by "
                         f"{taken.__module__}.{taken.__qualname__}")
    ALGORITHMS[cls.name] = cls
    return cls
