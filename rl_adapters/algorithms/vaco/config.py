"""VACO's options and the words they are spelled in; the solver options are :mod:`bilevel`'s vocabulary."""

from __future__ import annotations

import dataclasses
from typing import Any

import bilevel

from ..base import BaseConfig
from ..iql import IQLConfig
from ..options import AT_LEAST_0, AT_LEAST_1, POSITIVE, learning_rate, like, option

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
    """VACO hyper-parameters (paper Table 7 where it gives them); each field's ``option`` says what it is.

    Value learning (IQL's own options): ``critic_lr``, ``value_lr``, ``expectile``, ``normalize_reward``.
    Policy / meta-scorer: ``actor_lr`` (inner Adam), ``scorer_lr`` (outer Adam), ``adam_eps``, ``scorer_eps``,
    ``weight_decay``, ``scorer_hidden_dim``, ``weight_norm``, ``outer_q_norm``, ``sigma_start``, ``weight_kl``,
    ``scorer_init``. Schedule: ``schedule``, ``value_fraction``. Solver: ``solver``; ``k``, ``truncate`` and
    ``mode`` for ``k_step``; ``implicit_steps``, ``linear_solver``, ``iterations`` and ``damping`` for ``implicit``.
    """

    critic_lr: float = like(IQLConfig, "critic_lr", 3e-4)
    value_lr: float = like(IQLConfig, "value_lr", 3e-4)
    expectile: float = like(IQLConfig, "expectile", 0.7)
    normalize_reward: bool = like(IQLConfig, "normalize_reward", True)
    actor_lr: float = learning_rate(3e-4, "learning rate of the policy's (inner) Adam, the step the scorer's weights "
                                    "act through")
    scorer_lr: float = learning_rate(3e-5, "learning rate of the meta-scorer's (outer) Adam")
    adam_eps: float = option(1e-5, "eps of the policy's Adam, and of the scorer's when --scorer-eps is None (the "
                             "paper's Table 7)", range=POSITIVE)
    # Adam moves a parameter by lr * g / (rms(g) + eps); the one-step hypergradient's RMS is ~1e-7 on the
    # medium-expert sets, so with the paper's 1e-5 the scorer moved by under 1% of lr a step
    # (hypergrad_rms_over_eps 0.007). 1e-12 makes its step independent of that scale (docs/vaco.md "Does the
    # scorer learn?").
    scorer_eps: float | None = option(1e-12, "eps of the meta-scorer's Adam (None: --adam-eps); 1e-12 makes its step "
                                      "independent of the hypergradient's scale", range=POSITIVE)
    weight_decay: float = option(1e-6, "L2 weight decay added to the gradient by both Adams (the paper's Table 7)",
                                 range=AT_LEAST_0)
    scorer_hidden_dim: int = option(256, "width of the meta-scorer's hidden layers", range=AT_LEAST_1,
                                    unit="neurons")
    # The guarded weights (docs/vaco.md "Weight collapse"): batch-mean normalisation removes the common-scale
    # direction along which sigmoid weights collapse, the KL term bounds sharpening, equal initial weights make
    # any ranking a learned one.
    weight_norm: str = option("batch_mean", "sample weights: batch_mean (sigmoid / its batch mean, no common scale "
                              "to collapse along) or none (the paper's plain sigmoid)", choices=WEIGHT_NORMS)
    outer_q_norm: bool = option(True, "divide the outer loss -mean Q' by the batch's mean |Q'(s, a)| (detached), so "
                                "its scale does not follow the rewards'")  # measured default: docs/vaco.md
    sigma_start: float = option(1.0, "std of the Gaussian noise on the normalised states in the outer loss at the "
                                "first bi-level update, falling linearly to 0 at the last", range=AT_LEAST_0,
                                unit="observation stds")
    weight_kl: float = option(0.001, "coefficient of the sharpening guard KL(w / sum w || uniform) added to the outer "
                              "loss (0: off)", range=AT_LEAST_0)
    scorer_init: str = option("zero", "the scorer's output layer at the start: zero (every initial weight equal, any "
                              "ranking is learned) or torch (PyTorch's default)", choices=SCORER_INITS)
    schedule: str = option("two_phase", "two_phase: value-only updates first, then bi-level updates with frozen "
                           "values (Alg. 1); joint: a value and a bi-level step in every update (Alg. 2)",
                           choices=SCHEDULES)
    value_fraction: float = option(0.5, "share of --steps spent on value-only updates in the two_phase schedule",
                                   range=(0, 1, False, True), unit="fraction of --steps")
    solver: str = option("one_step", "hypergradient: one_step (through one differentiable Adam step, the paper's), "
                         "k_step (K unrolled steps) or implicit (implicit function theorem)", choices=SOLVERS)
    k: int = option(5, "k_step: unrolled inner Adam steps K", range=AT_LEAST_1, unit="inner steps")
    truncate: int = option(0, "k_step: differentiate only the last truncate of the K steps (0: all; at most --k)",
                           range=AT_LEAST_0, unit="inner steps")
    mode: str = option("reverse", "k_step: how the unroll is differentiated (bilevel's KStepSolver modes: reverse "
                       "backpropagates through it, forward pushes one tangent per scorer parameter)",
                       choices=bilevel.MODES)
    implicit_steps: int = option(1, "implicit: plain inner Adam steps before each hypergradient", range=AT_LEAST_0,
                                 unit="inner steps")
    linear_solver: str = option("cg", "implicit: solver of the damped inner-Hessian system (H + damping I) v = g",
                                choices=bilevel.LINEAR_SOLVERS)
    iterations: int = option(5, "implicit: Hessian-vector products the linear solver spends", range=AT_LEAST_1,
                             unit="Hessian-vector products")
    damping: float = option(0.1, "implicit: added to the inner Hessian's diagonal (regularises a singular or "
                            "indefinite Hessian)", range=AT_LEAST_0)

    def __post_init__(self) -> None:
        # Only what relates fields: each field's own range and choices are in its option() (checked by make_config).
        if not self.truncate <= self.k:
            raise ValueError(
                f"VACO needs 0 <= truncate <= k, got k={self.k}, truncate={self.truncate}"
            )
        # Every solver's options, whichever is chosen: a bad --mode fails even with --solver one_step.
        for name in SOLVERS:
            bilevel.check_solver(name, **self.solver_options(name))

    def value_only_steps(self, steps: int) -> int:
        """The ``two_phase`` schedule's value-only updates, ``round(value_fraction * steps)`` (0 when ``joint``)."""
        return round(self.value_fraction * steps) if self.schedule == "two_phase" else 0

    def solver_options(self, name: str | None = None) -> dict[str, Any]:
        """The :func:`bilevel.make_solver` options of solver ``name`` (default: the chosen one) from this config."""
        name = self.solver if name is None else name
        if name == "k_step":
            return {"steps": self.k, "truncate": self.truncate or None, "mode": self.mode}
        if name == "implicit":
            return {"inner_steps": self.implicit_steps, "linear_solver": self.linear_solver,
                    "iterations": self.iterations, "damping": self.damping}
        return {}
