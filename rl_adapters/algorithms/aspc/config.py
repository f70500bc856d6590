"""ASPC's options: the adaptive scale's (shared by ASPC and ASPC-IQL) on top of TD3+BC's or IQL's."""

from __future__ import annotations

import dataclasses

import bilevel

from ..iql import IQLConfig
from ..options import AT_LEAST_1, POSITIVE, learning_rate, like, option
from ..td3bc import TD3BCConfig
from .losses import OUTER_TERMS

__all__ = ["EMA_INITS", "SOLVERS", "ASPCConfig", "ASPCIQLConfig", "AdaptiveScaleConfig"]

SOLVERS = ("one_step", "k_step_forward", "k_step_reverse")
EMA_INITS = ("zero", "first_q")


@dataclasses.dataclass
class AdaptiveScaleConfig:
    """Options of the adaptive scale (shared by ASPC and ASPC-IQL); each field's ``option`` says what it is.

    The outer lr decays over a fixed horizon of *training steps*, independent of ``--steps``: a short run sees
    the early, large learning rates of the reference's 1e6-step schedule.
    """

    update_interval: int = option(10, "actor updates per outer (scale) update", range=AT_LEAST_1, unit="actor updates")
    outer_lr: float = learning_rate(2e-3, "Adam learning rate of rho (scale = softplus(rho)) at --update-interval "
                                    "10; scaled by update_interval / 10")
    outer_lr_final_fraction: float = option(0.01, "the outer lr decays exponentially to this fraction of its start "
                                            "over --outer-lr-horizon", range=(0, 1, True, False),
                                            unit="fraction of the initial outer lr")
    outer_lr_horizon: int = option(1_000_000, "training steps over which the outer lr decays to "
                                   "--outer-lr-final-fraction, whatever --steps (the reference's schedule)",
                                   range=AT_LEAST_1, unit="training steps")
    ema_decay: float = option(0.995, "decay d of the EMA of the mean Q in eq2, m_t = (1 - d) mean q' + d m_{t-1}",
                              range=(0, 1, False, True), unit="per outer update")
    ema_init: str = option("zero", "start of that EMA: zero (the authors' m_0 = 0) or first_q (the first outer "
                           "batch's pre-step mean Q)", choices=EMA_INITS)
    outer_terms: str = option("all", "terms summed in the outer loss (the paper's ablation): eq1, eq1+eq2, eq1+eq3 "
                              "or all", choices=tuple(OUTER_TERMS))
    solver: str = option("one_step", "hypergradient through the one inner Adam step: one_step, k_step_forward or "
                         "k_step_reverse (K = 1: the same hypergradient)", choices=SOLVERS)

    def solver_options(self) -> dict[str, int]:
        """The :func:`bilevel.make_solver` options of ``solver``: K = 1 for the K-step solvers."""
        return {} if self.solver == "one_step" else {"steps": 1}

    def validate_scale(self) -> None:
        """Refuse a solver that cannot differentiate one step (called from the configs' ``__post_init__``, so
        ``make_config`` fails before any data loads); each field's range and choices are in its ``option``."""
        bilevel.check_solver(self.solver, **self.solver_options())


@dataclasses.dataclass
class ASPCConfig(TD3BCConfig, AdaptiveScaleConfig):
    """TD3+BC options (``alpha`` is the *initial* scale) + the adaptive-scale options, robust critic on."""

    alpha: float = like(TD3BCConfig, "alpha", help="initial constraint scale alpha = softplus(rho), then learned: "
                        "weight of the Q term in the actor loss -(alpha / mean|Q1|) mean Q1 + mse(pi(s), a)",
                        range=POSITIVE)
    critic_hidden_layers: int = like(TD3BCConfig, "critic_hidden_layers", 3)
    critic_layer_norm: bool = like(TD3BCConfig, "critic_layer_norm", True)
    critic_init: str = like(TD3BCConfig, "critic_init", "aspc")

    def __post_init__(self) -> None:
        self.validate_scale()


@dataclasses.dataclass
class ASPCIQLConfig(IQLConfig, AdaptiveScaleConfig):
    """IQL options (``beta`` is the *initial* temperature) + the adaptive-scale options."""

    beta: float = like(IQLConfig, "beta", help="initial inverse temperature beta = softplus(rho) of the actor's "
                       "advantage weights exp(beta A), then learned", range=POSITIVE)
    outer_terms: str = like(AdaptiveScaleConfig, "outer_terms", "eq1+eq2")

    def __post_init__(self) -> None:
        self.validate_scale()
