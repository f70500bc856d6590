"""ASPC: adaptive scaling of policy constraints (paper 004), on TD3+BC and on IQL.

**ASPC** (``--algo aspc``) is TD3+BC with the robust critic (3 hidden layers, LayerNorm after each
ReLU) whose constraint scale ``alpha = softplus(rho)`` (initially 2.5) is learned by bi-level
optimisation.  With ``sg`` the stop-gradient:

* inner, every actor update: one *differentiable* Adam step (lr 3e-4) on

  ``J_in(phi; alpha) = -(alpha / sg(mean|Q1(s, pi_phi(s))|)) mean Q1(s, pi_phi(s)) + mse(pi_phi(s), a)``

  gives ``phi'``, which becomes the actor (``mse`` = ``F.mse_loss``, the mean over batch *and* action
  dimensions, as in TD3+BC's and the ASPC authors' code);
* outer, every ``update_interval`` actor updates, with ``q' = Q1(s, pi_phi'(s))``:

  - ``eq1 = -sg(alpha) mean q' / sg(mean|q'|) + mse(pi_phi'(s), a)`` (alpha enters only through phi');
  - ``m_t = (1 - d) mean q' + d m_{t-1}`` (``d = 0.995``, ``m_{t-1}`` a constant), ``eq2 = (m_t - m_{t-1})^2``;
    ``m_0 = 0`` as in the authors' code (``ema_init="zero"``), or the pre-step ``mean Q1(s, pi_phi(s))`` of
    the first outer batch (``ema_init="first_q"``);
  - ``b_i = mean_j (pi_phi(s_i)_j - a_ij)^2`` before the step (constant), ``b'_i`` after it,
    ``eq3 = sg(eq2) max_i b_i max_i |b_i - b'_i|``;
  - ``rho <- Adam(rho, d(eq1 + eq2 + eq3)/d rho)``, lr ``2e-3 * update_interval / 10`` decayed
    exponentially to 1% of that over a *fixed* horizon of ``outer_lr_horizon = 1e6`` training steps
    (the authors' ``gamma = 0.01^(1/50000)`` per outer update), whatever the length of the run.

  ``outer_terms`` selects the paper's ablation: ``eq1``, ``eq1+eq2``, ``eq1+eq3`` or ``all``
  (``eq1+eq3`` still uses eq2's *value* as eq3's weight, it only drops eq2 from the sum).

**ASPC-IQL** (``--algo aspc-iql``, paper section 5.6 / appendix D.1) makes IQL's temperature
``beta = softplus(rho)`` (initially 3.0) learnable the same way: the inner problem is the AWR step
``J_in(phi; beta) = mean min(exp(beta A(s,a)), 100) ||pi_phi(s) - a||^2`` (Adam, cosine-decayed lr),
the outer terms are the ones above with ``q' = min_i Q_i(s, pi_phi'(s))`` and unit weight on the
normalised Q term in eq1 (beta is not a Q scale); by default ``outer_terms = eq1+eq2``, the two terms
appendix D.1 names.

**Mapping onto ``bilevel``.** ``Problem(inner=actor, outer=ConstraintScale, inner_loss=J_in,
outer_loss=eq1+eq2+eq3)``; everything the losses need beyond (actor view, scale, batch) is either a
live network from the closure (the critic) or a pre-step constant carried in the :class:`ScaleBatch`
(``b_i``, ``m_{t-1}``, IQL's advantage).  On an outer-update actor step the solver's ``step`` takes the
differentiable Adam step, differentiates the outer loss through it (one-step, or the equivalent
``KStepSolver(steps=1)`` in forward or reverse mode) and keeps phi'; on the other actor steps the same
solver's ``inner_update`` takes the identical Adam step without building a graph. Both advance the
solver's optimiser state, so the actor has exactly one set of Adam moments.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import math
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
import torchopt
from torch import nn

import bilevel
from bilevel.functional import InnerView

from ..data import Batch
from .iql import IQL, IQLConfig
from .td3bc import TD3BC, TD3BCConfig

__all__ = [
    "ASPC",
    "ASPCIQL",
    "OUTER_TERMS",
    "SOLVERS",
    "ASPCConfig",
    "ASPCIQLConfig",
    "AdaptiveScale",
    "AdaptiveScaleConfig",
    "ConstraintScale",
    "OuterTerms",
    "ScaleBatch",
    "StopGrad",
    "inverse_softplus",
    "outer_terms",
]

#: ``outer_terms`` option -> (eq2 in the sum, eq3 in the sum); eq1 is always on.
OUTER_TERMS: dict[str, tuple[bool, bool]] = {
    "eq1": (False, False), "eq1+eq2": (True, False), "eq1+eq3": (False, True), "all": (True, True),
}
SOLVERS = ("one_step", "k_step_forward", "k_step_reverse")
EMA_INITS = ("zero", "first_q")
#: Added under Adam's square root: d sqrt(v)/dv is infinite at v = 0 (any weight whose gradient has
#: always been exactly 0, e.g. behind a dead ReLU), which makes the differentiated step 0 * inf = NaN.
#: 1e-16 keeps it finite and moves the update by < 1e-8 relative wherever sqrt(v) > 1e-4.
ADAM_EPS_ROOT = 1e-16


def inverse_softplus(y: float) -> float:
    """``rho`` with ``softplus(rho) = y``: ``log(exp(y) - 1)``, written to stay finite for small and large y."""
    if not y > 0:
        raise ValueError(f"a softplus-parameterised scale must be > 0, got {y}")
    return y + math.log(-math.expm1(-y))


class ConstraintScale(nn.Module):
    """The outer variable: ``scale = softplus(rho)`` (positive, smooth, never stuck at a bound)."""

    def __init__(self, initial: float) -> None:
        super().__init__()
        self.rho = nn.Parameter(torch.tensor(inverse_softplus(float(initial))))

    def forward(self) -> torch.Tensor:
        return F.softplus(self.rho)


class ScaleBatch(NamedTuple):
    """What the inner and outer losses read besides the networks.

    ``b_pre`` (``(B,)``, ``b_i`` before the step) and ``m_prev`` (0-d, ``m_{t-1}``) are constants
    computed before the solver call; they are ``None`` on actor steps without an outer update.
    ``adv`` is IQL's detached advantage (``None`` for TD3+BC).
    """

    obs: torch.Tensor
    actions: torch.Tensor
    adv: torch.Tensor | None = None
    b_pre: torch.Tensor | None = None
    m_prev: torch.Tensor | None = None


class StopGrad(NamedTuple):
    """Values for the stop-gradient factors of the outer loss: eq1's Q weight (``sg(alpha)`` for ASPC),
    ``sg(mean|q'|)`` and ``sg(eq2)``.

    Normally they are the detached live values; fixing them lets a finite-difference check
    differentiate exactly the function autograd differentiates.
    """

    q_weight: torch.Tensor
    q_abs: torch.Tensor
    eq2: torch.Tensor


class OuterTerms(NamedTuple):
    """The outer loss and its parts (see the module docstring); ``bc = mse(pi_phi'(s), a)``."""

    eq1: torch.Tensor
    eq2: torch.Tensor
    eq3: torch.Tensor
    ema: torch.Tensor
    bc: torch.Tensor
    total: torch.Tensor


def outer_terms(pi_new: torch.Tensor, q_new: torch.Tensor, batch: ScaleBatch, q_weight: torch.Tensor,
                ema_decay: float, use_eq2: bool, use_eq3: bool, stop_grad: StopGrad | None = None) -> OuterTerms:
    """ASPC's outer loss at the post-step policy.

    ``pi_new = pi_phi'(s)``, ``q_new = Q(s, pi_new)`` (``(B,)``), ``q_weight`` the (detached) weight
    of the normalised Q term in eq1.  ``total = eq1 [+ eq2] [+ eq3]`` per ``use_eq2`` / ``use_eq3``.
    ``stop_grad`` replaces the three stop-gradient factors by given constants.
    """
    if batch.b_pre is None or batch.m_prev is None:
        raise ValueError("outer_terms needs the pre-step constants b_pre and m_prev in the ScaleBatch")
    q_mean = q_new.mean()
    if stop_grad is None:
        q_abs = q_new.abs().mean().detach()
    else:
        q_weight, q_abs = stop_grad.q_weight, stop_grad.q_abs
    sq_err = (pi_new - batch.actions).pow(2)
    bc = sq_err.mean()  # F.mse_loss(pi_new, actions): batch and action dimensions
    eq1 = -q_weight * q_mean / q_abs + bc
    # The decay as a tensor, not a Python float: torch.func.jvp promotes the tangent of
    # ``python_float * 0-d tensor`` to float64, which would make KStepSolver(mode="forward")'s
    # hypergradient float64 and break its assignment to a float32 rho.grad.
    decay = torch.as_tensor(ema_decay, dtype=q_mean.dtype, device=q_mean.device)
    ema = (1 - decay) * q_mean + decay * batch.m_prev
    eq2 = (ema - batch.m_prev).pow(2)
    eq2_sg = eq2.detach() if stop_grad is None else stop_grad.eq2
    eq3 = eq2_sg * batch.b_pre.max() * (batch.b_pre - sq_err.mean(-1)).abs().max()
    total = eq1
    if use_eq2:
        total = total + eq2
    if use_eq3:
        total = total + eq3
    return OuterTerms(eq1, eq2, eq3, ema, bc, total)


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


class AdaptiveScale(abc.ABC):
    """Mixin: a learnable ``softplus(rho)`` trained through the actor's differentiable Adam step.

    The host class provides ``self.actor``, ``self.config`` (an :class:`AdaptiveScaleConfig`) and
    implements :meth:`inner_loss`, :meth:`outer_q`, :meth:`q_weight`, :meth:`inner_lr`,
    :meth:`initial_scale` and :meth:`actor_updates_total`.  It calls :meth:`build_scale` in ``build``,
    :meth:`build_bilevel` in ``build_optimizers`` and :meth:`adaptive_actor_step` for each actor update.
    """

    scale_name: ClassVar[str] = "scale"
    actor: nn.Module
    config: Any
    modules: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, Any]
    device: torch.device

    # ------------------------------------------------------------------ host hooks
    @abc.abstractmethod
    def inner_loss(self, actor: InnerView, scale: ConstraintScale, batch: ScaleBatch) -> torch.Tensor:
        """``J_in(phi; scale)`` on ``batch``."""

    @abc.abstractmethod
    def outer_q(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """The Q estimate ``(B,)`` the outer loss evaluates the post-step policy with."""

    @abc.abstractmethod
    def q_weight(self, scale: torch.Tensor) -> torch.Tensor:
        """Weight of the normalised Q term in eq1, given the (detached) current scale."""

    @abc.abstractmethod
    def inner_lr(self) -> float | Any:
        """Learning rate (or torchopt schedule of the step count) of the actor's Adam."""

    @abc.abstractmethod
    def initial_scale(self) -> float:
        """Initial value of the scale (alpha for ASPC, beta for ASPC-IQL)."""

    @abc.abstractmethod
    def steps_per_actor_update(self) -> int:
        """Training steps per actor update (sets the outer lr decay per outer update)."""

    # ------------------------------------------------------------------ construction
    def build_scale(self) -> None:
        """Create the outer module (call in ``build``, after the actor exists)."""
        self.config.validate_scale()
        self.scale = ConstraintScale(self.initial_scale())
        self.modules["scale"] = self.scale

    def build_bilevel(self) -> None:
        """Outer Adam + exponential decay, the bi-level problem and its solver (call in ``build_optimizers``)."""
        c = self.config
        self.use_eq2, self.use_eq3 = OUTER_TERMS[c.outer_terms]
        self.rho_opt = torch.optim.Adam(self.scale.parameters(), lr=c.outer_lr * c.update_interval / 10)
        # Outer updates in the fixed horizon: int(1e6 / (2 * 10)) = 50000 for TD3+BC, as the authors'.
        n_outer = max(1, c.outer_lr_horizon // (self.steps_per_actor_update() * c.update_interval))
        self.rho_sched = torch.optim.lr_scheduler.ExponentialLR(
            self.rho_opt, gamma=c.outer_lr_final_fraction ** (1.0 / n_outer))
        self.optimizers["rho"] = self.rho_opt
        self.schedulers["rho"] = self.rho_sched
        self.problem = bilevel.Problem(inner=self.actor, outer=self.scale, inner_loss=self.inner_loss,
                                       outer_loss=self._outer_loss)
        inner_opt = torchopt.adam(lr=self.inner_lr(), eps_root=ADAM_EPS_ROOT)
        # K = 1: every solver differentiates the same single Adam step.
        options = {} if c.solver == "one_step" else {"steps": 1}
        self.solver = bilevel.make_solver(c.solver, self.problem, inner_opt, self.rho_opt, **options)
        self.actor_updates = 0
        self.outer_updates = 0
        self.ema_q: torch.Tensor | None = None
        # Reported every step; the outer terms are 0.0 until the first outer update.
        self.scale_log: dict[str, float] = {
            self.scale_name: float(self.scale().detach()), "ema_q": 0.0, "eq1": 0.0, "delta_q": 0.0, "bc_sup": 0.0,
            "outer_loss": 0.0, "hypergrad_norm": 0.0, "bc_loss": 0.0,
        }

    # ------------------------------------------------------------------ losses
    def outer_objective(self, actor: InnerView | nn.Module, batch: ScaleBatch,
                        stop_grad: StopGrad | None = None, scale: ConstraintScale | None = None) -> OuterTerms:
        """:func:`outer_terms` for the policy ``actor`` (a view at phi', or the live actor) and the scale
        module the solver passes (default: ``self.scale``)."""
        pi = actor(batch.obs)
        q = self.outer_q(batch.obs, pi)
        scale = self.scale if scale is None else scale
        return outer_terms(pi, q, batch, self.q_weight(scale().detach()), self.config.ema_decay,
                           self.use_eq2, self.use_eq3, stop_grad)

    def _outer_loss(self, actor: InnerView, scale: ConstraintScale, batch: ScaleBatch) -> torch.Tensor:
        # ``scale`` reaches this loss only through phi' (eq1 uses sg(scale)).
        return self.outer_objective(actor, batch, scale=scale).total

    # ------------------------------------------------------------------ steps
    def outer_batch(self, obs: torch.Tensor, actions: torch.Tensor, adv: torch.Tensor | None = None) -> ScaleBatch:
        """The batch for an outer update: the pre-step constants ``b_i`` and ``m_{t-1}`` from the current actor."""
        with torch.no_grad():
            pi0 = self.actor(obs)
            b_pre = (pi0 - actions).pow(2).mean(-1)
            if self.ema_q is not None:
                m_prev = self.ema_q
            elif self.config.ema_init == "zero":
                m_prev = torch.zeros((), dtype=obs.dtype, device=obs.device)
            else:
                m_prev = self.outer_q(obs, pi0).mean()
        return ScaleBatch(obs, actions, adv, b_pre, m_prev)

    def plain_actor_step(self, batch: ScaleBatch) -> float:
        """The inner Adam step without a hypergradient (same optimiser state as the solver's steps)."""
        return float(self.solver.inner_update(batch))

    def adaptive_actor_step(self, obs: torch.Tensor, actions: torch.Tensor,
                            adv: torch.Tensor | None = None) -> dict[str, float]:
        """One actor update; every ``update_interval``-th also updates rho. Returns diagnostics."""
        self.actor_updates += 1
        if self.actor_updates % self.config.update_interval != 0:
            actor_loss = self.plain_actor_step(ScaleBatch(obs, actions, adv))
            return {"actor_loss": actor_loss, **self.scale_log}
        batch = self.outer_batch(obs, actions, adv)
        scale_before = self.scale().detach()
        info = self.solver.step(batch)
        self.rho_sched.step()
        self.outer_updates += 1
        with torch.no_grad():
            # phi' is now the actor, so this re-evaluates exactly the outer terms the hypergradient used.
            pi = self.actor(obs)
            terms = outer_terms(pi, self.outer_q(obs, pi), batch, self.q_weight(scale_before),
                                self.config.ema_decay, self.use_eq2, self.use_eq3)
        self.ema_q = terms.ema.detach()
        values = torch.stack([self.scale().detach(), terms.ema, terms.eq1, terms.eq2, terms.eq3, terms.bc]).tolist()
        self.scale_log = dict(zip([self.scale_name, "ema_q", "eq1", "delta_q", "bc_sup", "bc_loss"], values))
        self.scale_log.update(outer_loss=info.outer_loss, hypergrad_norm=info.hypergrad_norm)
        return {"actor_loss": info.inner_loss, **self.scale_log}

    # ------------------------------------------------------------------ checkpoint / plots
    def extra_state(self) -> dict[str, Any]:
        return self.solver.state_dict() | {
            "ema_q": None if self.ema_q is None else self.ema_q.clone(),
            "actor_updates": self.actor_updates,
            "outer_updates": self.outer_updates,
            "scale_log": dict(self.scale_log),
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.solver.load_state_dict(state)
        self.ema_q = None if state["ema_q"] is None else state["ema_q"].to(self.device)
        self.actor_updates = int(state["actor_updates"])
        self.outer_updates = int(state["outer_updates"])
        self.scale_log = dict(state["scale_log"])

    def plot_metrics(self, metrics_path: Path, out_dir: Path) -> None:
        """Write ``<scale>_curve.png``: the scale and the Q EMA over training, from ``metrics.jsonl``."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = [json.loads(ln) for ln in Path(metrics_path).read_text().splitlines() if ln.strip()]
        rows = [r for r in rows if self.scale_name in r]
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
        axes[0].plot([r["step"] for r in rows], [r[self.scale_name] for r in rows])
        axes[0].set_ylabel(self.scale_name)
        axes[0].set_title(f"{self.scale_name} = softplus(rho)")
        axes[1].plot([r["step"] for r in rows], [r["ema_q"] for r in rows])
        axes[1].set_title("EMA of mean Q(s, pi(s)) at outer updates")
        for ax in axes:
            ax.set_xlabel("step")
        fig.tight_layout()
        fig.savefig(Path(out_dir) / f"{self.scale_name}_curve.png", dpi=100)
        plt.close(fig)


class ASPC(AdaptiveScale, TD3BC):
    """TD3+BC + robust critic + learned constraint scale ``alpha`` (see the module docstring)."""

    name = "aspc"
    Config = ASPCConfig
    config: ASPCConfig
    scale_name = "alpha"

    def build(self) -> None:
        super().build()
        self.build_scale()

    def build_optimizers(self) -> None:
        # The actor has no torch optimizer: its Adam is the solver's functional (differentiable) one.
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=self.config.critic_lr)
        self.optimizers = {"critic": self.critic_opt}
        self.schedulers = {}
        self.build_bilevel()

    def inner_loss(self, actor: InnerView, scale: ConstraintScale, batch: ScaleBatch) -> torch.Tensor:
        pi = actor(batch.obs)
        q = self.critic.q1_only(batch.obs, pi)
        return -(scale() / q.abs().mean().detach()) * q.mean() + F.mse_loss(pi, batch.actions)

    def outer_q(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.critic.q1_only(obs, actions)

    def q_weight(self, scale: torch.Tensor) -> torch.Tensor:
        return scale

    def inner_lr(self) -> float:
        return self.config.actor_lr

    def initial_scale(self) -> float:
        return self.config.alpha

    def steps_per_actor_update(self) -> int:
        return self.config.policy_freq

    def actor_update(self, batch: Batch) -> dict[str, float]:
        return self.adaptive_actor_step(batch.obs, batch.actions)


class ASPCIQL(AdaptiveScale, IQL):
    """IQL whose AWR temperature ``beta`` is learned like ASPC's alpha (see the module docstring)."""

    name = "aspc-iql"
    Config = ASPCIQLConfig
    config: ASPCIQLConfig
    scale_name = "beta"

    def build(self) -> None:
        super().build()
        self.build_scale()

    def build_optimizers(self) -> None:
        self.optimizers = self.values.build_optimizers()
        self.schedulers = {}
        self.build_bilevel()

    def inner_loss(self, actor: InnerView, scale: ConstraintScale, batch: ScaleBatch) -> torch.Tensor:
        weight = torch.exp(scale() * batch.adv).clamp(max=self.config.max_weight)
        return (weight * (actor(batch.obs) - batch.actions).pow(2).sum(-1)).mean()

    def outer_q(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.critic.min_q(obs, actions)

    def q_weight(self, scale: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(scale)

    def _cosine_lr(self, count: torch.Tensor | int) -> torch.Tensor | float:
        """IQL's cosine decay ``lr_t = lr_0 (1 + cos(pi t / T)) / 2`` as a torchopt schedule of the step count."""
        t_max = max(1, self.total_steps)
        t = torch.clamp(torch.as_tensor(count, dtype=torch.float64), max=t_max)
        return self.config.actor_lr * 0.5 * (1.0 + torch.cos(math.pi * t / t_max))

    def inner_lr(self) -> Any:
        return self._cosine_lr

    def initial_scale(self) -> float:
        return self.config.beta

    def steps_per_actor_update(self) -> int:
        return 1

    def actor_update(self, batch: Batch, adv: torch.Tensor) -> dict[str, float]:
        info = self.adaptive_actor_step(batch.obs, batch.actions, adv)
        info["actor_lr"] = float(self._cosine_lr(self.actor_updates))
        return info

