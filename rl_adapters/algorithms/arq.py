"""ARQ: action-restricted Q-learning with an explicit score-based behaviour model (paper 003, SPEC section 3).

(Over the ~350-line budget on purpose: like CORL's single-file algorithms, the phases read top to bottom
here; the behaviour model itself lives in :mod:`rl_adapters.behavior_model`.)

One run has four phases (``--steps`` counts all of them), in the order of the paper's Algorithm 1 ("Train
s_psi ...; Sample N in-support actions ...; while until convergence do Update theta (Eq. 5); while until
convergence do Update phi ... AWR"):

1. **Behaviour model** (updates ``1 .. bm_steps``): denoising score matching of ``s_psi(a | s)`` on the
   batch's ``(s, a)`` (:class:`~rl_adapters.behavior_model.BehaviorModel`: VP-SDE, residual MLP 3 x 256,
   swish, Adam 1e-4, EMA 0.999; batch ``batch_size`` = 512).
2. **Candidates** (once, inside update ``bm_steps + 1``): for every dataset state ``s`` (observations plus
   each episode's final next-observation) ``N = n_candidates`` actions from the EMA model by
   predictor-corrector sampling, each with ``log beta_psi(a | s)`` from the probability-flow ODE; a
   candidate is *valid* if ``log beta_psi >= log_density_threshold`` (the paper's ``beta < e^-5`` dropped).
   A state with no valid candidate keeps its most likely one, so every state has at least one.
   Stored on the device and in ``<run dir>/arq_candidates.pt``, keyed by the behaviour model's weights,
   the states and the settings, so a resumed run loads instead of recomputing.
3. **Q only** (``schedule="sequential"``, the default: updates ``bm_steps + 1 .. bm_steps + q``), each on a
   batch ``(s, a, r, s')``:

   * critic: ``sum_i mean (Q_i(s, a) - y)^2``, ``y = c r + gamma (1 - done) Kth-max_{a' in C(s')} Q'(s', a')``
     with ``Q' = min(Q'_1, Q'_2)`` the target twin critic, ``c`` IQL's reward scale and ``K = k`` (9); if
     ``C(s')`` holds ``n < K`` actions the ``n``-th (the smallest) is used: the most pessimistic value the
     in-support set offers, rather than a value invented outside it;
   * target: Polyak ``Q' <- 0.995 Q' + 0.005 Q``.

   ``q`` is ``q_steps``; unset, half of the updates after the behaviour model (the paper trains Q and the
   policy 1M updates each, Appendix A.2 / A.3).
4. **Policy** (updates ``bm_steps + q + 1 .. steps``), with the critic and its target frozen (the paper's Q
   loop has ended; Q is not updated during policy extraction):

   * advantage from the learned critic ``Q = min(Q_1, Q_2)`` (the paper's ``Q_theta``, Eq. 6),
     ``A(s, a) = Q(s, a) - mean_{a' in C(s)} Q(s, a')`` over the valid candidates ``C(s)`` (the paper's
     ``1 / |supp| sum_{a' in supp} Q_theta(s, a')``, ``supp`` the samples kept by the ``e^-5`` threshold);
   * policy (``policy="explicit"``): AWR, ``min_phi -mean w log pi_phi(a | s)``,
     ``w = min(exp(alpha A), max_weight)`` (alpha 1, 100 as IQL), ``pi_phi = N(c + h tanh(f_phi(s)), diag e^{2 log sigma})``
     with a state-independent ``log sigma`` (clipped to [-5, 2]); evaluation acts with the mean.

``schedule="joint"`` (the earlier behaviour, as IQL): no Q-only phase; every update after the behaviour
model is one critic step and one policy step, the advantage taken with the target critic ``Q'`` before that
update's critic step.  ``policy="implicit"`` trains no actor, so it has no Q-only phase either (``q_steps``
is refused): every update after the behaviour model is a critic step; acting samples ``N`` candidates for
the state and picks one with probability ``softmax(alpha A)`` under the target critic (paper Eq. 6); the
draw comes from a saved generator.

The behaviour-model and Q-only phases leave the policy untouched: :meth:`ARQ.value_phase` declares them, so
the trainer does not evaluate inside them (as VACO's value phase) and the equal-budget grid puts them on top
of the policy steps (benchmarks/grid_cells.py ``policy_budget``).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..behavior_model import GRIDS, ODE_METHODS, TRACES, BehaviorModel, generate_candidates
from ..data import Batch
from ..networks import TwinCritic, mlp, soft_update
from .base import Algorithm, BaseConfig, ValuePhase, adam, register
from .iql import IQLConfig
from .options import AT_LEAST_0, AT_LEAST_1, POSITIVE, learning_rate, like, option

__all__ = ["ARQ", "POLICIES", "SCHEDULES", "ARQConfig", "GaussianActor", "awr_weights", "kth_max"]

POLICIES = ("explicit", "implicit")
SCHEDULES = ("sequential", "joint")
CANDIDATE_FILE = "arq_candidates.pt"
CANDIDATE_PARTIAL = "arq_candidates.partial.pt"  # the finished chunks of a generation not yet complete
PARTIAL_EVERY_S = 60.0  # how often (seconds) a running generation saves its finished chunks
CANDIDATE_INFO = "arq_candidates.json"  # how long the candidates took and the share kept (the grid's records carry it)
LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


@dataclasses.dataclass
class ARQConfig(BaseConfig):
    """ARQ hyper-parameters (paper Appendix A.2, locomotion column of Tables A.1-A.3).

    Sampler/ODE defaults are the paper's step counts (500 predictor steps + 1 corrector step, SNR 0.16; the
    ODE solved accurately, RK4 with 100 steps standing in for scipy's RK45, exact trace) on a time grid
    dense near t = 0 (``sampler_grid="uniform"`` is the paper's); on a CPU use
    ``--sampler-steps 20 --corrector-steps 0 --ode-steps 2 --ode-method heun --trace hutchinson`` (the
    "CPU settings"; docs/algorithms.md measures what they change).
    """

    batch_size: int = like(BaseConfig, "batch_size", 512)
    critic_lr: float = learning_rate(3e-4, "Adam learning rate of the twin critic")
    actor_lr: float = learning_rate(3e-4, "Adam learning rate of the Gaussian actor (--policy explicit)")
    k: int = option(9, "the K of the TD target's K-th largest Q'(s', a') over the valid candidates a' (at most "
                    "--n-candidates)", range=AT_LEAST_1, unit="candidates")
    alpha: float = option(1.0, "inverse temperature of the advantage: actor weights exp(alpha A) (explicit), "
                          "candidate probabilities softmax(alpha A) (implicit)", range=AT_LEAST_0,
                          unit="per unit of advantage")
    max_weight: float = option(100.0, "cap on the actor's advantage weights exp(alpha A)", range=POSITIVE)
    normalize_reward: bool = like(IQLConfig, "normalize_reward", True)
    policy: str = option("explicit", "explicit: an AWR-trained Gaussian actor; implicit: no actor, act by drawing "
                         "one of N candidates with probability softmax(alpha A) (paper Eq. 6)", choices=POLICIES)
    bm_steps: int = option(50_000, "behaviour-model updates at the start of the run (counted in --steps)",
                           range=AT_LEAST_1, unit="updates")
    schedule: str = option("sequential", "sequential: after the behaviour model, --q-steps critic-only updates, then "
                           "policy updates with the critic frozen (the paper's Algorithm 1); joint: one critic and one "
                           "policy step in every update after the behaviour model", choices=SCHEDULES)
    q_steps: int | None = option(None, "critic-only updates between the behaviour model and the policy (--schedule "
                                 "sequential, --policy explicit; counted in --steps); None: half of the updates after "
                                 "the behaviour model (the paper's 1M Q then 1M policy updates)", range=AT_LEAST_1,
                                 unit="updates")
    bm_lr: float = learning_rate(1e-4, "Adam learning rate of the behaviour (score) model")
    bm_hidden_dim: int = option(256, "width of the behaviour model's residual MLP", range=AT_LEAST_1, unit="neurons")
    bm_blocks: int = option(3, "residual blocks of the behaviour model", range=AT_LEAST_1, unit="blocks")
    bm_ema: float = option(0.999, "EMA decay of the behaviour model's weights; the EMA model samples the candidates",
                           range=(0, 1, False, True), unit="per behaviour-model update")
    n_candidates: int = option(30, "behaviour-model actions sampled per dataset state (N)", range=AT_LEAST_1,
                               unit="actions per state")
    log_density_threshold: float = option(-5.0, "a candidate is valid if its behaviour log-density log beta(a | s) "
                                          "is at least this (the paper drops beta < e^-5)", unit="nats")
    sampler_steps: int = option(500, "predictor (reverse-SDE Euler-Maruyama) steps of the candidate sampler",
                                range=AT_LEAST_1, unit="steps")
    corrector_steps: int = option(1, "Langevin corrector steps per predictor step (0: none)", range=AT_LEAST_0,
                                  unit="steps")
    snr: float = option(0.16, "signal-to-noise ratio that sets the Langevin corrector's step size", range=POSITIVE)
    sampler_grid: str = option("quadratic", "the sampler's time grid: quadratic (dense near t = 0) or uniform (the "
                               "paper's)", choices=GRIDS)
    ode_steps: int = option(100, "fixed steps of the probability-flow ODE that gives each candidate's log-density",
                            range=AT_LEAST_1, unit="steps")
    ode_method: str = option("rk4", "integrator of that ODE", choices=ODE_METHODS)
    trace: str = option("exact", "the ODE's divergence: exact (one backward pass per action dimension) or "
                        "hutchinson (a one-sample estimate)", choices=TRACES)
    candidate_chunk: int = option(1024, "dataset states per behaviour-model call while generating candidates "
                                  "(memory against speed; part of what the candidates depend on)", range=AT_LEAST_1,
                                  unit="states")

    def __post_init__(self) -> None:
        # Only what relates fields: each field's own range and choices are in its option() (checked by make_config).
        if not self.k <= self.n_candidates:
            raise ValueError(f"k (--k) = {self.k!r}: must be an integer in [1, n_candidates = {self.n_candidates}] "
                             f"(the K of the K-th max); e.g. --k {min(9, self.n_candidates)}")
        if self.q_steps is not None and not self.has_q_phase:
            why = "--schedule joint" if self.schedule == "joint" else "--policy implicit (no actor to train after it)"
            raise ValueError(f"q_steps (--q-steps) = {self.q_steps!r}: there is no Q-only phase with {why}; drop "
                             f"--q-steps, or use --schedule sequential --policy explicit")

    @property
    def has_q_phase(self) -> bool:
        """Whether the run has a Q-only phase between the behaviour model and the policy."""
        return self.schedule == "sequential" and self.policy == "explicit"

    def phase_steps(self, steps: int) -> tuple[int, int, int]:
        """``(behaviour-model, Q-only, policy)`` updates of a run of ``steps`` updates (the last two: 0 and the
        rest when there is no Q-only phase; ``policy="implicit"``'s "policy" updates are critic updates)."""
        after = steps - self.bm_steps
        if not self.has_q_phase:
            return self.bm_steps, 0, after
        q = after // 2 if self.q_steps is None else self.q_steps
        return self.bm_steps, q, after - q

    def value_only_steps(self, steps: int) -> int:
        """Updates before the first policy update: the behaviour model and the Q-only phase."""
        bm, q, _ = self.phase_steps(steps)
        return bm + q

    def check_steps(self, steps: int) -> None:
        """Refuse a run too short to reach the policy (called with ``--steps`` before data loads): the behaviour
        model, the Q-only phase (``schedule="sequential"``) and at least one policy update must fit."""
        bm, q, rest = self.phase_steps(steps)
        if not self.has_q_phase:
            if rest < 1:
                raise ValueError(
                    f"bm_steps (--bm-steps) = {bm} >= --steps {steps}: the behaviour-model phase would take the "
                    f"whole run; --steps counts behaviour-model and Q/policy updates together, e.g. --steps "
                    f"{bm + 100_000} for 100000 Q/policy updates")
            return
        if self.q_steps is None and (q < 1 or rest < 1):
            raise ValueError(
                f"--steps {steps} with bm_steps (--bm-steps) = {bm} leaves {max(0, steps - bm)} update(s) for the "
                f"Q-only phase (--q-steps, default half of them) and the policy: --schedule sequential needs at "
                f"least one of each; --steps counts all three phases, e.g. --steps {bm + 100_000} for 50000 Q-only "
                f"and 50000 policy updates")
        if rest < 1:
            raise ValueError(
                f"--steps {steps} < bm_steps (--bm-steps) {bm} + q_steps (--q-steps) {q} + 1: --schedule sequential "
                f"leaves no policy update; --steps counts all three phases, e.g. --steps {bm + 2 * q} for {q} policy "
                f"updates (or a smaller --q-steps, or --schedule joint)")


def kth_max(q: torch.Tensor, valid: torch.Tensor, k: int) -> torch.Tensor:
    """Per row, the ``min(k, n_valid)``-th largest of ``q`` among the ``valid`` entries (``(B, N) -> (B,)``).

    Rows need at least one valid entry (ARQ guarantees it).
    """
    masked = q.masked_fill(~valid, float("-inf"))
    top = masked.topk(min(k, q.shape[1]), dim=1).values
    idx = (valid.sum(1).clamp(max=k) - 1).clamp(min=0)
    return top.gather(1, idx.unsqueeze(1)).squeeze(1)


def awr_weights(q: torch.Tensor, q_candidates: torch.Tensor, valid: torch.Tensor, alpha: float,
                max_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(w, A)`` with ``A = q - mean_{valid} q_candidates`` and ``w = min(exp(alpha A), max_weight)``."""
    v = valid.to(q_candidates.dtype)
    baseline = (q_candidates * v).sum(1) / v.sum(1).clamp(min=1.0)
    adv = q - baseline
    return torch.exp(alpha * adv).clamp(max=max_weight), adv


class GaussianActor(nn.Module):
    """``pi(a | s) = N(c + h tanh(f(s)), diag(exp(2 log_sigma)))`` with a state-independent ``log_sigma``
    (IQL's locomotion policy); ``forward`` returns the mean."""

    def __init__(self, obs_dim: int, act_dim: int, action_low: Any, action_high: Any, hidden: tuple[int, ...]) -> None:
        super().__init__()
        self.net = mlp(obs_dim, act_dim, hidden)
        self.log_std = nn.Parameter(torch.zeros(act_dim))
        low = torch.as_tensor(action_low, dtype=torch.float32)
        high = torch.as_tensor(action_high, dtype=torch.float32)
        self.register_buffer("action_center", (high + low) / 2)
        self.register_buffer("action_scale", (high - low) / 2)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.action_center + self.action_scale * torch.tanh(self.net(obs))

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        log_std = self.log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)
        z = (actions - self(obs)) / log_std.exp()
        return (-0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


@register
class ARQ(Algorithm):
    """ARQ; see the module docstring. Needs :meth:`attach_data` (the trainer calls it) before Q-learning."""

    name = "arq"
    Config = ARQConfig
    config: ARQConfig

    # ------------------------------------------------------------------ construction
    def build(self) -> None:
        c = self.config
        self.config.check_steps(self.total_steps)
        self.bm_steps, self.q_steps, _ = c.phase_steps(self.total_steps)
        hidden = (c.hidden_dim, c.hidden_dim)
        low, high = self.stats.action_low, self.stats.action_high
        self.behavior = BehaviorModel(self.obs_dim, self.act_dim, low, high, c.bm_hidden_dim, c.bm_blocks)
        self.critic = TwinCritic(self.obs_dim, self.act_dim, hidden=hidden)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor = GaussianActor(self.obs_dim, self.act_dim, low, high, hidden)
        self.modules = {"behavior": self.behavior, "critic": self.critic, "critic_target": self.critic_target,
                        "actor": self.actor}
        self.reward_scale = self.stats.reward_scale if c.normalize_reward else 1.0
        self._data: Any = None
        self._out: Path | None = None
        self._progress = False
        self.candidates: torch.Tensor | None = None  # (S, N, d) raw actions
        self.candidate_logp: torch.Tensor | None = None  # (S, N)
        self.candidate_valid: torch.Tensor | None = None  # (S, N) bool, >= 1 True per row
        self.next_state: torch.Tensor | None = None  # transition index -> state index of s'
        self._policy_table: torch.Tensor | None = None  # (2, T): w and A per transition, sequential policy phase
        self._carried = 0.0  # candidate seconds an interrupted invocation spent that this one reuses

    def build_optimizers(self) -> None:
        c = self.config
        self.bm_opt = adam(self.behavior.net.parameters(), lr=c.bm_lr)
        self.critic_opt = adam(self.critic.parameters(), lr=c.critic_lr)
        self.actor_opt = adam(self.actor.parameters(), lr=c.actor_lr)
        self.optimizers = {"behavior": self.bm_opt, "critic": self.critic_opt, "actor": self.actor_opt}
        # Acting with the implicit policy draws from its own generator, so evaluation never moves training's.
        self.act_generator = torch.Generator(device=self.device)
        self.act_generator.manual_seed(self.seed + 2)

    # ------------------------------------------------------------------ data and candidates
    def attach_data(self, data: Any, out_dir: str | Path | None = None, progress: bool = False) -> None:
        """Give ARQ the dataset whose states get candidates and the run directory that caches them.

        ``data`` is an :class:`~rl_adapters.data.OfflineData` whose batches carry ``indices``.  States:
        every observation, then the next-observations that are not the following row's observation (each
        episode's last), so ``s'`` of transition ``i`` is state ``i + 1`` or one of those extra states.
        """
        self._data, self._out, self._progress = data, (Path(out_dir) if out_dir is not None else None), progress
        obs, nxt, ep = data.observations, data.next_observations, data.episode_ids
        n = obs.shape[0]
        follows = torch.zeros(n, dtype=torch.bool, device=obs.device)
        if n > 1:
            follows[:-1] = (ep[1:] == ep[:-1]) & (nxt[:-1] == obs[1:]).all(-1)
        extra = (~follows).nonzero().squeeze(1)
        next_state = torch.arange(1, n + 1, device=obs.device)
        next_state[extra] = n + torch.arange(extra.numel(), device=obs.device)
        self.next_state = next_state
        self._state_obs = self.normalize(torch.cat([obs, nxt[extra]]))

    def _cache_key(self) -> dict[str, Any]:
        c = self.config
        h = hashlib.sha256()
        for t in list(self.behavior.ema.state_dict().values()) + [self._state_obs]:
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return {"digest": h.hexdigest(), "seed": self.seed, "n_candidates": c.n_candidates,
                "sampler_steps": c.sampler_steps, "corrector_steps": c.corrector_steps, "snr": c.snr,
                "sampler_grid": c.sampler_grid,
                "ode_steps": c.ode_steps, "ode_method": c.ode_method, "trace": c.trace,
                "candidate_chunk": c.candidate_chunk, "device": self.device.type}

    def ensure_candidates(self) -> None:
        """Load the candidates from the run directory if they match this model and data, else generate them."""
        if self.candidates is not None:
            return
        if self._data is None:
            raise RuntimeError("ARQ needs attach_data(data, out_dir) before its Q-learning phase "
                               "(bilevel-rl train does this); call it with the training data")
        c = self.config
        key = self._cache_key()
        # Candidates are made at the first update after the behaviour model, so a run resumed from a checkpoint
        # at or before that step reuses candidate work its wall time has not counted (see carried_seconds).
        uncounted = self.step <= self.bm_steps
        path = self._out / CANDIDATE_FILE if self._out is not None else None
        if path is not None and path.exists():
            saved = torch.load(path, map_location=self.device, weights_only=True)
            if saved.get("key") == key:
                self.set_candidates(saved["actions"], saved["logp"])
                info = self._out / CANDIDATE_INFO
                if uncounted and info.exists():
                    self._carried = float(json.loads(info.read_text()).get("seconds", 0.0))
                return
        gen = torch.Generator(device=self.device)
        gen.manual_seed(self.seed + 3)
        # A generation stopped part-way (a session's end) left its finished chunks here: continue from them.
        partial = self._out / CANDIDATE_PARTIAL if self._out is not None else None
        resume, earlier = None, 0.0
        if partial is not None and partial.exists():
            saved = torch.load(partial, map_location=self.device, weights_only=True)
            if saved.get("key") == key:
                resume, earlier = saved, float(saved["seconds"])
                self._carried = earlier if uncounted else 0.0
                print(f"ARQ: continuing the candidates from state {int(saved['done']):,} ({partial.name})",
                      file=sys.stderr, flush=True)
        start = last_save = time.perf_counter()

        def save_partial(state: dict[str, Any]) -> None:
            nonlocal last_save
            if partial is None or time.perf_counter() - last_save < PARTIAL_EVERY_S:
                return
            tmp = partial.with_name(partial.name + ".tmp")
            # clone: torch.save writes a slice's whole storage, i.e. every row, done or not
            torch.save({"key": key, "seconds": earlier + time.perf_counter() - start}
                       | {k: (v.cpu().clone() if torch.is_tensor(v) else v) for k, v in state.items()}, tmp)
            tmp.replace(partial)
            last_save = time.perf_counter()

        actions, logp = generate_candidates(
            self.behavior, self._state_obs, c.n_candidates, c.sampler_steps, c.corrector_steps, c.snr, c.ode_steps,
            c.ode_method, c.trace, gen, c.candidate_chunk, self._progress, c.sampler_grid,
            announce=lambda text: print(f"ARQ: {text}", file=sys.stderr, flush=True),
            resume=resume, after_chunk=save_partial,
        )
        seconds = earlier + time.perf_counter() - start
        self.set_candidates(actions, logp)
        self.warn_if_few_valid()
        if path is not None:
            tmp = path.with_name(path.name + ".tmp")
            torch.save({"key": key, "actions": actions.cpu(), "logp": logp.cpu()}, tmp)
            tmp.replace(path)
            valid = self.candidate_valid.float()
            info = {"seconds": seconds, "states": int(actions.shape[0]), "n_candidates": c.n_candidates,
                    "valid_fraction": valid.mean().item(), "logp_mean": logp.mean().item(),
                    "logp_median": logp.median().item(), "threads": torch.get_num_threads()} | key
            (self._out / CANDIDATE_INFO).write_text(json.dumps(info, indent=2))
            partial.unlink(missing_ok=True)
            if self._progress:
                print(f"ARQ: {actions.shape[0]} states x {c.n_candidates} candidates in {seconds:.0f} s, "
                      f"{100 * info['valid_fraction']:.1f}% valid", file=sys.stderr)

    def warn_if_few_valid(self, below: float = 0.5) -> str | None:
        """One line on stderr (also returned) when fewer than ``below`` of the candidates are valid: the behaviour
        model's phase was too short for its samples to reach the data's density, with a longer one to try."""
        c = self.config
        fraction = self.candidate_valid.float().mean().item()
        if fraction >= below:
            return None
        more = max(2 * c.bm_steps, min(50_000, 10 * c.bm_steps))
        text = (f"ARQ: warning: only {100 * fraction:.1f}% of the behaviour model's candidates are valid (log-density "
                f">= {c.log_density_threshold:g}; under {100 * below:.0f}% the advantage baseline averages few "
                f"actions): its {c.bm_steps}-step phase is too short; train it longer, e.g. --bm-steps {more} "
                f"--steps {more + max(1, self.total_steps - c.bm_steps)}")
        print(text, file=sys.stderr, flush=True)
        return text

    def set_candidates(self, actions: torch.Tensor, logp: torch.Tensor) -> None:
        """Use ``actions`` ``(S, N, d)`` with log-likelihoods ``logp`` ``(S, N)`` as the states' candidates."""
        self.candidates = actions.to(self.device)
        self.candidate_logp = logp.to(self.device)
        valid = self.candidate_logp >= self.config.log_density_threshold
        # A state whose every sample falls below the threshold keeps its most likely one.
        best = self.candidate_logp.argmax(1)
        valid[torch.arange(valid.shape[0], device=self.device), best] = True
        self.candidate_valid = valid

    def candidate_q(self, critic: TwinCritic, states: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """``min_i Q_i(s, a')`` for every candidate ``a'`` of each state: ``(B, N)``."""
        cand = self.candidates[states]
        B, N, d = cand.shape
        q = critic.min_q(obs.unsqueeze(1).expand(B, N, obs.shape[-1]).reshape(B * N, -1), cand.reshape(B * N, d))
        return q.reshape(B, N)

    # ------------------------------------------------------------------ update
    def value_phase(self) -> ValuePhase | None:
        """The behaviour model and, with ``schedule="sequential"``, the Q-only phase: the actor is untouched
        there, so the trainer does not evaluate (and ``--value-cache`` may reuse them across runs)."""
        c = self.config
        critic = ("critic", "critic_target") if self.q_steps else ()
        fields = ("batch_size", "bm_steps", "bm_lr", "bm_hidden_dim", "bm_blocks", "bm_ema", "schedule", "policy")
        if self.q_steps:  # what the Q-only phase computes: the candidates and the critic's updates
            fields += ("q_steps", "hidden_dim", "critic_lr", "k", "discount", "tau", "normalize_reward",
                       "n_candidates", "log_density_threshold", "sampler_steps", "corrector_steps", "snr",
                       "sampler_grid", "ode_steps", "ode_method", "trace", "candidate_chunk")
        return ValuePhase(c.bm_steps + self.q_steps, ("behavior", *critic), ("behavior", *critic[:1]), fields)

    def in_behavior_phase(self) -> bool:
        return self.step < self.bm_steps

    def in_q_phase(self) -> bool:
        """True while the next update is a critic-only update (``schedule="sequential"``)."""
        return self.bm_steps <= self.step < self.bm_steps + self.q_steps

    def update(self, batch: Batch) -> dict[str, float]:
        if self.in_behavior_phase():
            self.step += 1
            return self.behavior_update(batch)
        self.ensure_candidates()
        if batch.indices is None:
            raise ValueError("ARQ needs the batch's dataset indices (Batch.indices, set by OfflineData.sample)")
        c = self.config
        if self.in_q_phase():
            self.step += 1
            return self.critic_update(batch) | {"phase": 2.0}
        self.step += 1
        if c.has_q_phase:  # the policy phase: the critic and its target stay as the Q-only phase left them
            weight, adv = self.policy_phase_weights(batch)
            return self.actor_update(batch, weight) | {"adv": adv.mean().item(), "awr_weight": weight.mean().item(),
                                                       "phase": 3.0}
        # joint (or the implicit policy): the advantage uses the target critic before this update's critic
        # step, as IQL's does.
        weight, adv = self.advantage_weights(batch, self.critic_target)
        info = self.critic_update(batch)
        if c.policy == "explicit":
            info |= self.actor_update(batch, weight)
        return info | {"adv": adv.mean().item(), "awr_weight": weight.mean().item(), "phase": 2.0}

    def behavior_update(self, batch: Batch) -> dict[str, float]:
        """One denoising-score-matching step and the EMA update."""
        loss = self.behavior.loss(batch.obs, batch.actions, self.generator)
        self.bm_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.bm_opt.step()
        self.behavior.update_ema(self.config.bm_ema)
        return {"bm_loss": loss.item(), "phase": 1.0}

    @torch.no_grad()
    def advantage_weights(self, batch: Batch, critic: TwinCritic | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(w, A)``: ``A = Q(s, a) - mean_{a' in C(s)} Q(s, a')`` with ``Q = min_i Q_i`` of ``critic``,
        ``w = min(exp(alpha A), max_weight)``.  ``critic``: by default the one the schedule's policy updates use
        (sequential: the learned critic, frozen; joint: the target critic)."""
        c = self.config
        if critic is None:
            critic = self.critic if c.has_q_phase else self.critic_target
        return self._weights(batch.obs, batch.actions, batch.indices, critic)

    def _weights(self, obs: torch.Tensor, actions: torch.Tensor, states: torch.Tensor,
                 critic: TwinCritic) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        q_cand = self.candidate_q(critic, states, obs)
        return awr_weights(critic.min_q(obs, actions), q_cand, self.candidate_valid[states], c.alpha, c.max_weight)

    @torch.no_grad()
    def policy_phase_weights(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`advantage_weights` with the learned critic, looked up per transition.

        The sequential policy phase never changes the critic, so every transition's ``(w, A)`` is fixed for the
        whole phase: computing them once over the dataset (in chunks of ``batch_size``, the same products a batch
        would take) costs one pass over its state-candidate pairs, where recomputing them per batch was nearly all
        of each policy update (CPU, hopper medium, batch 512, 30 candidates: 256 ms per update recomputing them,
        9.6 ms looking them up, 38 s for the table; docs/algorithms.md). ``tests/test_arq.py`` checks the table against
        the per-batch values."""
        if self._policy_table is None:
            obs, _ = self._data.normalized_observations()
            n, chunk = obs.shape[0], self.config.batch_size
            parts = []
            for lo in range(0, n, chunk):
                idx = torch.arange(lo, min(lo + chunk, n), device=obs.device)
                parts.append(torch.stack(self._weights(obs[idx], self._data.actions[idx], idx, self.critic)))
            self._policy_table = torch.cat(parts, 1)
        table = self._policy_table[:, batch.indices]
        return table[0], table[1]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._policy_table = None  # computed from the critic this state replaces
        super().load_state_dict(state)

    @torch.no_grad()
    def td_target(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(y, n_valid)``: ``y = c r + gamma (1 - done) Kth-max_{a' in C(s')} Q'(s', a')`` and ``|C(s')|``."""
        c = self.config
        nxt = self.next_state[batch.indices]
        valid = self.candidate_valid[nxt]
        v_next = kth_max(self.candidate_q(self.critic_target, nxt, batch.next_obs), valid, c.k)
        return batch.rewards * self.reward_scale + c.discount * (1.0 - batch.dones) * v_next, valid.sum(1)

    def critic_update(self, batch: Batch) -> dict[str, float]:
        """One step toward :meth:`td_target`, then the Polyak update."""
        y, n_valid = self.td_target(batch)
        q1, q2 = self.critic(batch.obs, batch.actions)
        loss = F.mse_loss(q1, y) + F.mse_loss(q2, y)
        self.critic_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.critic_opt.step()
        soft_update(self.critic_target, self.critic, self.config.tau)
        return {"critic_loss": loss.item(), "q1": q1.mean().item(), "n_valid_next": n_valid.float().mean().item()}

    def actor_update(self, batch: Batch, weight: torch.Tensor) -> dict[str, float]:
        """One AWR step ``-mean w log pi(a | s)``."""
        logp = self.actor.log_prob(batch.obs, batch.actions)
        loss = -(weight * logp).mean()
        self.actor_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.actor_opt.step()
        return {"actor_loss": loss.item(), "log_std": self.actor.log_std.mean().item()}

    # ------------------------------------------------------------------ acting
    @torch.no_grad()
    def policy(self, obs: torch.Tensor) -> torch.Tensor:
        """Explicit: the Gaussian's mean. Implicit: one of ``N`` fresh behaviour samples, drawn by ``softmax(alpha A)``."""
        if self.config.policy == "explicit":
            return self.actor(obs)
        c = self.config
        B = obs.shape[0]
        s = obs.repeat_interleave(c.n_candidates, dim=0)
        cand = self.behavior.sample(s, c.sampler_steps, c.corrector_steps, c.snr, self.act_generator, c.sampler_grid)
        q = self.critic_target.min_q(s, cand).reshape(B, c.n_candidates)
        logits = c.alpha * (q - q.mean(1, keepdim=True))
        pick = torch.multinomial(torch.softmax(logits, 1), 1, generator=self.act_generator).squeeze(1)
        return cand.reshape(B, c.n_candidates, -1)[torch.arange(B, device=obs.device), pick]

    def carried_seconds(self) -> float:
        return self._carried

    def extra_state(self) -> dict[str, Any]:
        return {"act_generator": self.act_generator.get_state()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "act_generator" in state:
            self.act_generator.set_state(state["act_generator"].cpu())
