"""VACO: value-aligned behaviour cloning via bi-level optimisation (Jiang et al., ICLR 2025; SPEC section 3).

Networks: IQL's value networks (twin ``Q_theta``, target ``Q_theta'``, ``V_psi``), a deterministic tanh
policy ``pi_phi`` and a meta-scorer ``w_alpha(s, a, q)``, both 3-layer ReLU MLPs of width 256.

* **Value learning** is IQL's, step for step (:meth:`VACO.value_update`): ``V`` by expectile regression
  (``tau = 0.7``) on ``min_i Q'_i(s, a)``, ``Q`` by MSE to ``c r + gamma (1 - done) V(s')``, Polyak target.
* **Bi-level step** on a batch ``(s, a)`` with ``q = standardise(min_i Q'_i(s, a))`` (detached, per batch):

  .. math::

      J_w(\\phi; \\alpha) = \\tfrac{1}{B} \\sum_b w_\\alpha(s_b, a_b, q_b)\\, \\lVert \\pi_\\phi(s_b) - a_b \\rVert^2
      \\qquad \\text{(inner, one Adam step: } \\phi' = U(\\phi, \\nabla_\\phi J_w))

      J_\\pi(\\alpha) = -\\tfrac{1}{B} \\sum_b \\min_i Q'_i\\big(s_b, \\pi_{\\phi'(\\alpha)}(s_b + \\sigma \\epsilon_b)\\big),
      \\quad \\epsilon_b \\sim N(0, I) \\qquad \\text{(outer, Adam on } \\alpha)

  with ``w = sigmoid(f_alpha)`` (optionally divided by its batch mean), ``sigma`` decreasing linearly
  from ``sigma_start`` to 0 over the bi-level phase, the noise added to the *normalised* state and drawn
  from the algorithm's own generator. ``d J_pi / d alpha`` comes from a :mod:`bilevel` solver:
  ``one_step`` (the paper's Markov assumption ``d phi / d alpha = 0`` before the step, Eq. 8),
  ``k_step`` (exact derivative of K unrolled Adam steps on the batch) or ``implicit`` (IFT at ``phi_K``).
* **Schedules**: ``two_phase`` (Alg. 1: ``value_fraction * total_steps`` value-only steps, then bi-level
  steps with frozen values) and ``joint`` (Alg. 2: value step and bi-level step in every update).

The meta-scorer exists only for training: :meth:`policy` (and therefore ``act``) uses ``pi_phi`` alone.
"""

from __future__ import annotations

from typing import Any

import torch
import torchopt
from torch import nn

import bilevel

from ...data import Batch
from ..base import Algorithm, ValuePhase, adam, register
from ..iql_value import build_iql_networks
from .config import (
    Q_STD_EPS,
    SCHEDULES,
    SCORER_INITS,
    SOLVERS,
    WEIGHT_NORMS,
    WEIGHT_QUANTILES,
    VACOConfig,
)
from .scorer import MetaScorer, VACOBatch, effective_sample_fraction, standardise, weight_kl_to_uniform

__all__ = [
    "SCHEDULES",
    "SCORER_INITS",
    "SOLVERS",
    "VACO",
    "WEIGHT_NORMS",
    "WEIGHT_QUANTILES",
    "MetaScorer",
    "VACOBatch",
    "VACOConfig",
    "effective_sample_fraction",
    "standardise",
    "weight_kl_to_uniform",
]


@register
class VACO(Algorithm):
    """VACO; see the module docstring. ``self.solver`` is the :mod:`bilevel` solver of the policy/meta-scorer pair."""

    name = "vaco"
    Config = VACOConfig
    config: VACOConfig

    # ------------------------------------------------------------------ construction
    def build(self) -> None:
        c = self.config
        build_iql_networks(self)  # IQL's actor and value networks, in IQL's order: the same initial weights
        self.scorer = MetaScorer(self.obs_dim, self.act_dim, c.scorer_hidden_dim, c.weight_norm)
        if c.scorer_init == "zero":
            # A randomly initialised scorer already ranks trajectories (its output is a random function of
            # the state, and medium and expert episodes visit different states): starting from equal weights
            # makes any ranking one the hypergradient learned. The output layer's gradient is not zero
            # (it is the hidden features), so learning starts at once.
            with torch.no_grad():
                self.scorer.net[-1].weight.zero_()
                self.scorer.net[-1].bias.zero_()
        self.modules = {"actor": self.actor, **self.values.modules(), "scorer": self.scorer}
        if c.schedule == "two_phase":
            self.value_steps = round(c.value_fraction * self.total_steps)
        else:
            self.value_steps = 0
        self.bilevel_steps = max(1, self.total_steps - self.value_steps)
        self._scorer_numel = sum(p.numel() for p in self.scorer.parameters())

    @property
    def scorer_eps(self) -> float:
        """The eps of the scorer's Adam (``scorer_eps``, or ``adam_eps`` when that is None)."""
        c = self.config
        return c.adam_eps if c.scorer_eps is None else c.scorer_eps

    def build_optimizers(self) -> None:
        """IQL's value optimisers, plus the bilevel solver owning the policy's (inner) and scorer's (outer) Adam.

        Inner: ``torchopt.adam(weight_decay=1e-6)`` adds ``1e-6 * phi`` to the gradient before the moments,
        which is what ``torch.optim.Adam(weight_decay=1e-6)`` (the paper's "Adam ... weight decay 1e-6",
        PyTorch 1.12) does; ``torchopt.adamw`` would be the decoupled variant the paper does not name.
        """
        c = self.config
        self.scorer_opt = adam(
            self.scorer.parameters(), lr=c.scorer_lr, eps=self.scorer_eps, weight_decay=c.weight_decay
        )
        self.optimizers = {**self.values.build_optimizers(), "scorer": self.scorer_opt}
        self.schedulers = {}
        inner_opt = torchopt.adam(lr=c.actor_lr, eps=c.adam_eps, weight_decay=c.weight_decay)
        self.problem = bilevel.Problem(
            inner=self.actor, outer=self.scorer, inner_loss=self.inner_loss, outer_loss=self.outer_loss, has_aux=True
        )
        try:
            self.solver = bilevel.make_solver(c.solver, self.problem, inner_opt, self.scorer_opt,
                                              **c.solver_options())
        except ValueError as e:  # only the forward-mode size rule can fail here: the config checked the rest
            raise ValueError(f"VACO {e} (the outer module is the meta-scorer: --scorer-hidden-dim sets its "
                             f"size)") from e

    # ------------------------------------------------------------------ the two losses
    def inner_loss(self, inner: bilevel.InnerView, outer: nn.Module,
                   batch: VACOBatch) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """``J_w(phi) = mean_b w_alpha(s_b, a_b, q_b) ||pi_phi(s_b) - a_b||^2``, with ``(raw, w, bc)`` as aux:
        the metrics then cost no second scorer / policy pass, under every solver."""
        raw = outer.raw(batch.obs, batch.actions, batch.q_in)
        w = outer.normalise(raw)
        bc = (inner(batch.obs) - batch.actions).pow(2).sum(-1)
        return (w * bc).mean(), (raw, w, bc)

    def outer_loss(self, inner: bilevel.InnerView, outer: nn.Module,
                   batch: VACOBatch) -> tuple[torch.Tensor, None]:
        """``J_pi = -mean_b min_i Q'_i(s_b, pi_phi'(s_b + sigma eps_b))`` [``/ mean_b |Q'(s_b, a_b)|``]
        [``+ weight_kl * KL(w / sum w || uniform)``].

        The target critic is used: its parameters do not require grad (no graph is built to them), and it
        is the ``Q'`` of IQL's policy extraction.
        """
        q = self.critic_target.min_q(batch.obs, inner(batch.noisy_obs))
        loss = -q.mean()
        if self.config.outer_q_norm:
            loss = loss / batch.q_scale
        if self.config.weight_kl > 0:
            # A direct dependence on alpha: every solver adds its gradient to the hypergradient.
            loss = loss + self.config.weight_kl * weight_kl_to_uniform(outer.raw(batch.obs, batch.actions, batch.q_in))
        return loss, None

    # ------------------------------------------------------------------ pieces of an update
    def value_update(self, batch: Batch) -> dict[str, float]:
        """One IQL value step (expectile V, TD Q, Polyak target): the :class:`IQLValue` IQL itself uses. The
        advantage it also returns is IQL's actor input and is not needed here."""
        info, _ = self.values.update(self, batch)
        return info

    def sigma_at(self, step: int) -> float:
        """Outer-loss state-noise std at update ``step`` (1-based): ``sigma_start`` at the first bi-level
        update, falling linearly to 0 at the last one (``total_steps``)."""
        k = step - self.value_steps  # 1-based index within the bi-level phase
        if self.bilevel_steps <= 1:
            return self.config.sigma_start
        frac = min(max((k - 1) / (self.bilevel_steps - 1), 0.0), 1.0)
        return self.config.sigma_start * (1.0 - frac)

    def make_bilevel_batch(self, batch: Batch, target_q: torch.Tensor, sigma: float) -> VACOBatch:
        """The solver's batch: scorer input ``q``, noisy states (``N(0, sigma^2)`` from ``self.generator``)."""
        noise = torch.randn(
            batch.obs.shape, generator=self.generator, device=batch.obs.device, dtype=batch.obs.dtype
        )
        return VACOBatch(
            obs=batch.obs,
            actions=batch.actions,
            q_in=standardise(target_q),
            noisy_obs=batch.obs + sigma * noise,
            q_scale=target_q.abs().mean().clamp_min(1e-6),
        )

    def value_phase(self) -> ValuePhase | None:
        """Phase 1 of ``two_phase``: IQL's value networks alone; reads only IQL's value fields, the network
        width and the batch size (the actor and the scorer are not touched until phase 2)."""
        if self.value_steps <= 0:
            return None
        return ValuePhase(self.value_steps, tuple(self.values.modules()), self.values.OPTIMIZERS,
                          ("hidden_dim", "batch_size", "discount", "tau", "critic_lr", "value_lr", "expectile",
                           "normalize_reward", "schedule"))

    def in_value_phase(self) -> bool:
        """True while the next update is a value-only update (phase 1 of the two-phase schedule)."""
        return self.step < self.value_steps

    # ------------------------------------------------------------------ update
    def update(self, batch: Batch) -> dict[str, float]:
        """Phase 1 (two_phase, first ``value_steps`` updates): IQL value step only. Otherwise: [value step
        if joint] + one bi-level solver step. Returns losses, ``hypergrad_norm``, weight mean/std/quantiles
        and ``sigma``. Host syncs: the value step's (IQL's), the solver's one, and one for the weight statistics."""
        value_phase = self.in_value_phase()
        self.step += 1
        if value_phase:
            return self.value_update(batch) | {"phase": 1.0}
        losses: dict[str, float] = {}
        if self.config.schedule == "joint":
            losses = self.value_update(batch)
        with torch.no_grad():
            # Scorer input and outer-loss scale from the current target critic (after the joint value step).
            target_q = self.critic_target.min_q(batch.obs, batch.actions)
        sigma = self.sigma_at(self.step)
        vb = self.make_bilevel_batch(batch, target_q, sigma)
        info = self.solver.step(vb)
        raw, w, bc = info.inner_aux
        qs = torch.tensor(WEIGHT_QUANTILES, dtype=w.dtype, device=w.device)
        packed = torch.cat(
            [torch.stack([w.mean(), w.std(unbiased=False), bc.mean(), raw.mean(), effective_sample_fraction(raw)]),
             torch.quantile(w, qs)]
        ).tolist()
        out = {"w_mean": packed[0], "w_std": packed[1], "bc_loss": packed[2], "w_raw_mean": packed[3],
               "w_ess": packed[4]}
        out |= {f"w_q{round(100 * q):02d}": v for q, v in zip(WEIGHT_QUANTILES, packed[5:])}
        # Below ~1 the scorer's Adam divides by its eps rather than the gradient's RMS: it then moves in
        # proportion to the raw hypergradient, so a solver with a larger hypergradient moves it faster.
        out["hypergrad_rms_over_eps"] = info.hypergrad_norm / (self._scorer_numel**0.5 * self.scorer_eps)
        out |= losses | info.as_dict()
        out |= {"sigma": sigma, "phase": 2.0}
        return out

    # ------------------------------------------------------------------ analysis / checkpoint
    @torch.no_grad()
    def score(
        self,
        obs: torch.Tensor,
        actions: torch.Tensor,
        q_mean: float | None = None,
        q_std: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Meta-scorer weights for normalised ``obs`` and ``actions`` and their ``min Q'``.

        The scorer was trained on per-batch standardised ``q``; pass the dataset-wide ``q_mean``/``q_std``
        (the large-batch limit of that standardisation) when scoring a dataset in chunks. Returns
        ``(raw sigmoid weights, min Q')``; ``batch_mean`` normalisation is left to the caller, who knows
        the whole population.
        """
        q = self.critic_target.min_q(obs, actions)
        mean = q.mean() if q_mean is None else torch.as_tensor(q_mean, dtype=q.dtype, device=q.device)
        std = (
            q.std(unbiased=False) if q_std is None else torch.as_tensor(q_std, dtype=q.dtype, device=q.device)
        )
        return self.scorer.raw(obs, actions, (q - mean) / (std + Q_STD_EPS)), q

    def extra_state(self) -> dict[str, Any]:
        """The inner (policy) optimiser state lives in the solver, not in ``self.optimizers``."""
        return self.solver.state_dict() | {"solver": self.config.solver}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "inner_state" not in state:
            raise ValueError(
                "VACO checkpoint has no 'inner_state' (the policy's Adam moments); it was not "
                "written by this VACO implementation"
            )
        if state.get("solver", self.config.solver) != self.config.solver:
            raise ValueError(
                f"checkpoint was trained with solver {state['solver']!r}, this VACO uses "
                f"{self.config.solver!r}"
            )
        self.solver.load_state_dict(state)
