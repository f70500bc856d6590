"""VACO's options and the words they are spelled in; the solver options are :mod:`bilevel`'s vocabulary."""

from __future__ import annotations

import dataclasses
from typing import Any

import bilevel

from ..base import BaseConfig

__all__ = ["Q_STD_EPS", "SCHEDULES", "SCORER_INITS", "SOLVERS", "WEIGHT_NORMS", "WEIGHT_QUANTILES", "VACOConfig"]

SOLVERS = ("one_step", "k_step", "implicit")
SCHEDULES = ("two_phase", "joint")
WEIGHT_NORMS = ("none", "batch_mean")
SCORER_INITS = ("torch", "zero")
# Quantiles of the per-batch weights reported in the metrics.
WEIGHT_QUANTILES = (0.1, 0.5, 0.9)
Q_STD_EPS = 1e-6


@dataclasses.dataclass
class VACOConfig(BaseConfig):
    """VACO hyper-parameters (paper Table 7 where it gives them).

    Value learning (IQL): ``critic_lr``, ``value_lr``, ``expectile``, ``normalize_reward``.
    Policy / meta-scorer: ``actor_lr`` (inner Adam), ``scorer_lr`` (outer Adam), ``adam_eps`` and
    ``weight_decay`` (both optimisers, Table 7 "Common"), ``scorer_eps`` (the scorer's own Adam eps; None: ``adam_eps``), ``scorer_hidden_dim``, ``weight_norm``
    (``"none"``: ``w = sigmoid``; ``"batch_mean"``: ``w = sigmoid / mean_batch(sigmoid)``),
    ``outer_q_norm`` (divide ``J_pi`` by ``mean |Q'(s, a)|`` of the batch, detached), ``sigma_start``,
    ``weight_kl`` (coefficient of the sharpening guard ``KL(w / sum w || uniform)`` added to the outer
    loss; see docs/vaco.md "Weight collapse"), ``scorer_init`` (``torch``: PyTorch's default; ``zero``: the
    scorer's output layer starts at 0, so every initial weight is equal and any ranking is learned).
    Schedule: ``schedule`` (``two_phase`` | ``joint``), ``value_fraction`` (share of the run spent on
    value learning in ``two_phase``).
    Solver: ``solver`` (``one_step`` | ``k_step`` | ``implicit``); ``k``, ``truncate`` (0: none) and
    ``mode`` (``reverse`` | ``forward``) for ``k_step``; ``implicit_steps``, ``linear_solver``,
    ``iterations`` and ``damping`` for ``implicit``.
    """

    critic_lr: float = 3e-4
    value_lr: float = 3e-4
    expectile: float = 0.7
    normalize_reward: bool = True
    actor_lr: float = 3e-4
    scorer_lr: float = 3e-5
    adam_eps: float = 1e-5
    # The scorer's Adam eps (None: adam_eps). Adam moves a parameter by lr * g / (rms(g) + eps); the one-step
    # hypergradient's RMS is ~1e-7 on the medium-expert sets, so with the paper's 1e-5 the scorer moved by under
    # 1% of lr a step (hypergrad_rms_over_eps 0.007). 1e-12 makes its step independent of that scale
    # (docs/vaco.md "Does the scorer learn?").
    scorer_eps: float | None = 1e-12
    weight_decay: float = 1e-6
    scorer_hidden_dim: int = 256
    # The guarded weights (docs/vaco.md "Weight collapse"): batch-mean normalisation removes the common-scale
    # direction along which sigmoid weights collapse, the KL term bounds sharpening, equal initial weights make
    # any ranking a learned one.
    weight_norm: str = "batch_mean"
    outer_q_norm: bool = True  # measured default, see docs/vaco.md "Option comparison"
    sigma_start: float = 1.0
    weight_kl: float = 0.001
    scorer_init: str = "zero"
    schedule: str = "two_phase"
    value_fraction: float = 0.5
    solver: str = "one_step"
    k: int = 5
    truncate: int = 0
    mode: str = "reverse"
    implicit_steps: int = 1
    linear_solver: str = "cg"
    iterations: int = 5
    damping: float = 0.1

    def __post_init__(self) -> None:
        # Checked here so that ``make_config`` rejects bad values before any data is loaded.
        for name, value, allowed in (
            ("solver", self.solver, SOLVERS),
            ("schedule", self.schedule, SCHEDULES),
            ("weight_norm", self.weight_norm, WEIGHT_NORMS),
            ("scorer_init", self.scorer_init, SCORER_INITS),
            ("mode", self.mode, bilevel.MODES),
            ("linear_solver", self.linear_solver, bilevel.LINEAR_SOLVERS),
        ):
            if value not in allowed:
                raise ValueError(f"VACO {name} must be one of {allowed}, got {value!r}")
        if not 0.0 <= self.value_fraction < 1.0:
            raise ValueError(
                f"VACO value_fraction must be in [0, 1) (share of steps spent on value learning in "
                f"the two_phase schedule), got {self.value_fraction}"
            )
        if self.k < 1 or not 0 <= self.truncate <= self.k:
            raise ValueError(
                f"VACO needs k >= 1 and 0 <= truncate <= k, got k={self.k}, truncate={self.truncate}"
            )
        # Every solver's options, whichever is chosen: a bad --mode fails even with --solver one_step.
        for name in SOLVERS:
            bilevel.check_solver(name, **self.solver_options(name))
        if self.sigma_start < 0:
            raise ValueError(f"VACO sigma_start must be >= 0, got {self.sigma_start}")
        if not self.weight_kl >= 0:
            raise ValueError(f"VACO weight_kl must be >= 0 (the sharpening guard's coefficient), got {self.weight_kl}")
        if self.scorer_eps is not None and not self.scorer_eps > 0:
            raise ValueError(f"VACO scorer_eps must be > 0 (or None: adam_eps), got {self.scorer_eps}")
        for name in ("actor_lr", "scorer_lr", "critic_lr", "value_lr", "adam_eps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"VACO {name} must be > 0, got {getattr(self, name)}")

    def solver_options(self, name: str | None = None) -> dict[str, Any]:
        """The :func:`bilevel.make_solver` options of solver ``name`` (default: the chosen one) from this config."""
        name = self.solver if name is None else name
        if name == "k_step":
            return {"steps": self.k, "truncate": self.truncate or None, "mode": self.mode}
        if name == "implicit":
            return {"inner_steps": self.implicit_steps, "linear_solver": self.linear_solver,
                    "iterations": self.iterations, "damping": self.damping}
        return {}
