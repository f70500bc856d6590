"""ASPC's options: the adaptive scale's (shared by ASPC and ASPC-IQL) on top of TD3+BC's or IQL's."""

from __future__ import annotations

import dataclasses

import bilevel

from ..iql import IQLConfig
from ..td3bc import TD3BCConfig
from .losses import OUTER_TERMS

__all__ = ["EMA_INITS", "SOLVERS", "ASPCConfig", "ASPCIQLConfig", "AdaptiveScaleConfig"]

SOLVERS = ("one_step", "k_step_forward", "k_step_reverse")
EMA_INITS = ("zero", "first_q")


@dataclasses.dataclass
class AdaptiveScaleConfig:
    """Options of the adaptive scale (shared by ASPC and ASPC-IQL).

    ``update_interval``: actor updates per outer update; ``outer_lr``: Adam lr of rho at
    ``update_interval = 10`` (scaled by ``update_interval / 10``); ``outer_lr_final_fraction`` and
    ``outer_lr_horizon``: the lr decays exponentially to that fraction over that many *training steps*
    (independent of ``--steps``: a short run sees the early, large learning rates of the reference's 1e6-step
    schedule); ``ema_decay``: d of the Q EMA; ``ema_init``: ``zero`` (the authors' ``m_0 = 0``) or
    ``first_q``; ``outer_terms``: one of ``eq1``, ``eq1+eq2``, ``eq1+eq3``, ``all``; ``solver``:
    ``one_step``, ``k_step_forward`` or ``k_step_reverse`` (the last two with K = 1, same hypergradient).
    """

    update_interval: int = 10
    outer_lr: float = 2e-3
    outer_lr_final_fraction: float = 0.01
    outer_lr_horizon: int = 1_000_000
    ema_decay: float = 0.995
    ema_init: str = "zero"
    outer_terms: str = "all"
    solver: str = "one_step"

    def validate_scale(self) -> None:
        """Refuse options that cannot work, naming the option (called from the configs' ``__post_init__``,
        so ``make_config`` fails before any data loads)."""
        if self.outer_terms not in OUTER_TERMS:
            raise ValueError(f"outer_terms must be one of {sorted(OUTER_TERMS)}, got {self.outer_terms!r}")
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {list(SOLVERS)}, got {self.solver!r}")
        bilevel.check_solver(self.solver, **({} if self.solver == "one_step" else {"steps": 1}))
        if not isinstance(self.update_interval, int) or self.update_interval < 1:
            raise ValueError(f"update_interval must be an int >= 1, got {self.update_interval!r}")
        if not 0.0 < self.outer_lr_final_fraction <= 1.0:
            raise ValueError(f"outer_lr_final_fraction must be in (0, 1], got {self.outer_lr_final_fraction}")
        if not isinstance(self.outer_lr_horizon, int) or self.outer_lr_horizon < 1:
            raise ValueError(f"outer_lr_horizon must be a positive number of training steps (reference: "
                             f"1000000), got {self.outer_lr_horizon!r}")
        if self.ema_init not in EMA_INITS:
            raise ValueError(f"ema_init must be one of {EMA_INITS}, got {self.ema_init!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not self.outer_lr > 0:
            raise ValueError(f"outer_lr must be > 0, got {self.outer_lr}")


@dataclasses.dataclass
class ASPCConfig(TD3BCConfig, AdaptiveScaleConfig):
    """TD3+BC options (``alpha`` is the *initial* scale) + the adaptive-scale options, robust critic on."""

    critic_hidden_layers: int = 3
    critic_layer_norm: bool = True
    critic_init: str = "aspc"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.validate_scale()


@dataclasses.dataclass
class ASPCIQLConfig(IQLConfig, AdaptiveScaleConfig):
    """IQL options (``beta`` is the *initial* temperature) + the adaptive-scale options."""

    outer_terms: str = "eq1+eq2"

    def __post_init__(self) -> None:
        self.validate_scale()
