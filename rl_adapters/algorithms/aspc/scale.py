"""The adaptive-scale mixin: a learnable ``softplus(rho)`` trained through the actor's differentiable
Adam step, whatever the host algorithm (TD3+BC for ASPC, IQL for ASPC-IQL)."""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, ClassVar

import torch
import torchopt
from torch import nn

import bilevel
from bilevel.functional import InnerView

from ..base import adam
from .losses import ADAM_EPS_ROOT, OUTER_TERMS, ConstraintScale, OuterTerms, ScaleBatch, StopGrad, outer_terms
from .plots import plot_scale_curve

__all__ = ["AdaptiveScale"]


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
    seed_stack: Any  # Algorithm's: the SeedStack training this instance, or None

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
        self.rho_opt = adam(self.scale.parameters(), lr=c.outer_lr * c.update_interval / 10)
        # Outer updates in the fixed horizon: int(1e6 / (2 * 10)) = 50000 for TD3+BC, as the authors'.
        n_outer = max(1, c.outer_lr_horizon // (self.steps_per_actor_update() * c.update_interval))
        self.rho_sched = torch.optim.lr_scheduler.ExponentialLR(
            self.rho_opt, gamma=c.outer_lr_final_fraction ** (1.0 / n_outer))
        self.optimizers["rho"] = self.rho_opt
        self.schedulers["rho"] = self.rho_sched
        self.problem = bilevel.Problem(inner=self.actor, outer=self.scale, inner_loss=self._inner_loss,
                                       outer_loss=self._outer_loss)
        inner_opt = torchopt.adam(lr=self.inner_lr(), eps_root=ADAM_EPS_ROOT)
        # K = 1: every solver differentiates the same single Adam step.
        self.solver = bilevel.make_solver(c.solver, self.problem, inner_opt, self.rho_opt, **c.solver_options())
        self.actor_updates = 0
        self.outer_updates = 0
        self.ema_q: torch.Tensor | None = None
        # Reported every step; the outer terms are 0.0 until the first outer update.
        initial = self.scale().detach()
        self.scale_log: dict[str, Any] = {
            self.scale_name: initial.item() if initial.dim() == 0 else initial.clone(), "ema_q": 0.0, "eq1": 0.0, "delta_q": 0.0, "bc_sup": 0.0,
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
        if self._seeds() is not None:
            return self._for_each_seed(self._outer_one, batch, actor=actor, scale=scale).sum()
        return self.outer_objective(actor, batch, scale=scale).total

    def _inner_loss(self, actor: InnerView, scale: ConstraintScale, batch: ScaleBatch) -> torch.Tensor:
        if self._seeds() is not None:
            losses = self._for_each_seed(self._inner_one, batch, actor=actor, scale=scale)
            self._seed_inner_losses = losses.detach()
            return losses.sum()
        return self.inner_loss(actor, scale, batch)

    # ------------------------------------------------------------------ many seeds in one process
    # Under a SeedStack (rl_adapters.training.seed_stack) every network holds N seeds' parameters; the solver
    # steps them all at once on the *sum* of the per-seed losses, whose derivative with respect to seed k's
    # actor and rho is seed k's own (the seeds share nothing and Adam is elementwise). Each per-seed loss runs
    # the single-seed code below through vmap, with the solver's differentiable actor view swapped in.
    def _seeds(self) -> Any:
        stack = self.seed_stack
        return stack if stack is not None and not stack.inside else None

    def _for_each_seed(self, fn: Any, *inputs: Any, actor: Any = None, scale: Any = None) -> Any:
        overrides = {}
        if actor is not None:
            overrides |= {f"actor.{n}": t for n, t in actor.named_parameters()}
        if scale is not None:
            overrides |= {f"scale.{n}": t for n, t in scale.named_parameters()}
        return self.seed_stack.per_seed(fn, inputs, overrides=overrides)

    def _inner_one(self, batch: ScaleBatch) -> torch.Tensor:
        return self.inner_loss(self.actor, self.scale, batch)

    def _outer_one(self, batch: ScaleBatch) -> torch.Tensor:
        return self.outer_objective(self.actor, batch).total

    # ------------------------------------------------------------------ steps
    def _pre_step(self, obs: torch.Tensor, actions: torch.Tensor, m_prev: torch.Tensor | None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            pi0 = self.actor(obs)
            b_pre = (pi0 - actions).pow(2).mean(-1)
            if m_prev is None:
                m_prev = (torch.zeros((), dtype=obs.dtype, device=obs.device) if self.config.ema_init == "zero"
                          else self.outer_q(obs, pi0).mean())
        return b_pre, m_prev

    def outer_batch(self, obs: torch.Tensor, actions: torch.Tensor, adv: torch.Tensor | None = None) -> ScaleBatch:
        """The batch for an outer update: the pre-step constants ``b_i`` and ``m_{t-1}`` from the current actor."""
        if self._seeds() is not None:
            b_pre, m_prev = self._for_each_seed(self._pre_step, obs, actions, self.ema_q)
        else:
            b_pre, m_prev = self._pre_step(obs, actions, self.ema_q)
        return ScaleBatch(obs, actions, adv, b_pre, m_prev)

    def _post_terms(self, obs: torch.Tensor, batch: ScaleBatch, scale_before: torch.Tensor) -> OuterTerms:
        with torch.no_grad():
            pi = self.actor(obs)
            return outer_terms(pi, self.outer_q(obs, pi), batch, self.q_weight(scale_before),
                               self.config.ema_decay, self.use_eq2, self.use_eq3)

    def plain_actor_step(self, batch: ScaleBatch) -> Any:
        """The inner Adam step without a hypergradient (same optimiser state as the solver's steps)."""
        loss = self.solver.inner_update(batch)
        return self._seed_inner_losses if self._seeds() is not None else float(loss)

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
        # phi' is now the actor, so this re-evaluates exactly the outer terms the hypergradient used.
        stacked = self._seeds() is not None
        terms = (self._for_each_seed(self._post_terms, obs, batch, scale_before) if stacked
                 else self._post_terms(obs, batch, scale_before))
        self.ema_q = terms.ema.detach()
        names = [self.scale_name, "ema_q", "eq1", "delta_q", "bc_sup", "bc_loss"]
        values = torch.stack([self.scale().detach(), terms.ema, terms.eq1, terms.eq2, terms.eq3, terms.bc])
        if stacked:  # one entry per seed; seed k's hypergradient is rho.grad[k] (the solver left it there)
            self.scale_log = {n: v.clone() for n, v in zip(names, values)}
            self.scale_log.update(outer_loss=terms.total.detach(), hypergrad_norm=self.scale.rho.grad.abs().clone())
            return {"actor_loss": self._seed_inner_losses, **self.scale_log}
        self.scale_log = dict(zip(names, values.tolist()))
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
        self.scale_log = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v
                          for k, v in state["scale_log"].items()}

    def plot_metrics(self, metrics_path: Path, out_dir: Path) -> None:
        """Write ``<scale>_curve.png``: the scale and the Q EMA over training, from ``metrics.jsonl``."""
        plot_scale_curve(metrics_path, out_dir, self.scale_name)
