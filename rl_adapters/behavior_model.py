"""A conditional score-based behaviour model ``s_psi(a | s)`` (VP-SDE), its sampler and its likelihood.

(Over the ~350-line budget on purpose: training, sampling and the probability-flow likelihood share the
SDE's coefficients and time grid, and splitting them would scatter one set of formulas over three files.)

This is the explicit behaviour clone of ARQ (paper 003, "Know your boundaries", Appendix A.2), which
follows Song et al. (2021), "Score-based generative modeling through stochastic differential equations".
Actions are modelled in the normalised box ``[-1, 1]^d`` (``a_n = (a - c) / h`` with the action bounds'
centre ``c`` and half-range ``h``); log-likelihoods are returned for raw actions.

VP-SDE on ``t in [0, 1]`` with ``beta(t) = beta_min + t (beta_max - beta_min)`` (0.1 and 20):

.. math::

    dx = -\\tfrac12 \\beta(t) x\\,dt + \\sqrt{\\beta(t)}\\,dw, \\qquad
    x_t \\mid x_0 \\sim N(\\mu_t x_0, \\sigma_t^2 I),\\;
    \\mu_t = e^{-\\frac14 t^2 (\\beta_{max} - \\beta_{min}) - \\frac12 t \\beta_{min}},\\;
    \\sigma_t^2 = 1 - \\mu_t^2.

The network predicts the noise, ``eps_psi(a_t, s, t)``, and the score is ``s_psi = -eps_psi / sigma_t``;
training minimises denoising score matching ``E ||eps_psi(mu_t a + sigma_t z, s, t) - z||^2`` with
``t ~ U(1e-5, 1)``.

* :func:`pc_sample`: reverse-time predictor-corrector sampling on ``[eps, 1]`` (``eps = 1e-3``; a time grid
  dense near ``eps`` by default, the paper's uniform one as an option): per step
  ``corrector_steps`` Langevin steps with step size ``2 (snr ||z|| / ||s||)^2`` (batch-mean norms; SNR 0.16),
  then one Euler-Maruyama step of ``dx = [f - g^2 s] dt + g dw-bar``; the last step returns the mean.
* :func:`ode_log_likelihood`: the probability-flow ODE ``dx/dt = f~(x, t) = -1/2 beta(t) (x - eps_psi / sigma_t)``
  integrated from ``eps`` to 1 with the instantaneous change of variables

  .. math:: \\log p_\\epsilon(x_\\epsilon) = \\log N(x_1; 0, I) + \\int_\\epsilon^1 \\nabla\\cdot \\tilde f(x_t, t)\\,dt,
     \\qquad \\nabla\\cdot\\tilde f = -\\tfrac12\\beta(t)\\big(d - \\operatorname{tr}(\\partial \\epsilon_\\psi / \\partial x) / \\sigma_t\\big),

  the trace exact (``d`` backward passes) or Hutchinson's ``z^T (\\partial \\epsilon_\\psi/\\partial x) z`` with one
  Rademacher ``z`` per sample held fixed along the trajectory; fixed-step Euler, Heun or RK4 on the grid
  ``t_i = eps + (1 - eps) (i / n)^2``, dense near ``eps`` where ``1 / sigma_t`` makes the ODE stiff (on a
  1-D Gaussian with std 0.1, 8 Euler steps: worst error 0.76 nats on this grid, 5.0 on a uniform one,
  whose mean error, 0.17 against 0.65, hides how badly it fails on some points). The paper used scipy's adaptive RK45; RK4 with enough steps is the reference here (no scipy
  dependency).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "GRIDS",
    "ODE_METHODS",
    "TRACES",
    "VPSDE",
    "BehaviorModel",
    "ScoreNet",
    "generate_candidates",
    "ode_log_likelihood",
    "pc_sample",
    "time_grid",
]

ODE_METHODS = ("euler", "heun", "rk4")
GRIDS = ("quadratic", "uniform")
TRACES = ("exact", "hutchinson")
#: Sampling and likelihood start/end at t = eps rather than 0, where sigma_t -> 0 makes the score blow up
#: (the paper's time domain [1e-3, 1]).
SAMPLE_EPS = 1e-3
#: Lower end of the training times (Song et al.'s continuous VP setting).
TRAIN_EPS = 1e-5

#: ``eps_fn(x, s, t) -> eps`` for a batch: ``x`` (B, d) noisy normalised actions, ``s`` (B, obs), ``t`` (B,).
EpsFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class VPSDE:
    """The variance-preserving SDE with a linear ``beta(t)`` (Song et al. 2021, Eq. 11 and Appendix B)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_mean_coeff(self, t: torch.Tensor) -> torch.Tensor:
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def marginal(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu_t, sigma_t)`` of ``x_t | x_0 ~ N(mu_t x_0, sigma_t^2 I)``."""
        log_mu = self.log_mean_coeff(t)
        # 1 - exp(2 log mu) loses everything to rounding at small t; expm1 keeps sigma_t accurate there.
        return torch.exp(log_mu), torch.sqrt(-torch.expm1(2.0 * log_mu))


def _swish(x: torch.Tensor) -> torch.Tensor:
    return F.silu(x)


class ScoreNet(nn.Module):
    """``eps_psi(a_t, s, t)``: a residual MLP of ``blocks`` blocks of width ``hidden`` with swish.

    Input ``[a_t, s, emb(t)]`` with a sinusoidal time embedding (16 frequencies, geometric from 1 to 1000);
    each block is ``h <- h + W_2 swish(W_1 swish(h))`` (a pre-activation residual block); the output layer
    reads ``swish(h)``.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256, blocks: int = 3, t_freqs: int = 16) -> None:
        super().__init__()
        self.act_dim = act_dim
        self.register_buffer("freqs", torch.exp(torch.linspace(0.0, math.log(1000.0), t_freqs)))
        self.inp = nn.Linear(act_dim + obs_dim + 2 * t_freqs, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
            for _ in range(blocks)
        )
        self.out = nn.Linear(hidden, act_dim)

    def forward(self, x: torch.Tensor, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        angles = t.unsqueeze(-1) * self.freqs
        h = self.inp(torch.cat([x, s, torch.sin(angles), torch.cos(angles)], dim=-1))
        for block in self.blocks:
            h = h + block(h)
        return self.out(_swish(h))


def time_grid(steps: int, kind: str = "quadratic") -> list[float]:
    """``steps + 1`` times from ``eps`` to 1: ``eps + (1 - eps) u`` with ``u = i / steps`` (uniform) or ``u^2``."""
    if kind not in GRIDS:
        raise ValueError(f"time grid must be one of {GRIDS}, got {kind!r}")
    p = 2 if kind == "quadratic" else 1
    return [SAMPLE_EPS + (1.0 - SAMPLE_EPS) * (i / steps) ** p for i in range(steps + 1)]


def pc_sample(
    eps_fn: EpsFn,
    sde: VPSDE,
    obs: torch.Tensor,
    act_dim: int,
    steps: int,
    corrector_steps: int = 1,
    snr: float = 0.16,
    generator: torch.Generator | None = None,
    grid: str = "quadratic",
) -> torch.Tensor:
    """One sample ``x_eps`` per row of ``obs`` by predictor-corrector sampling (normalised actions, (B, d)).

    ``steps`` Euler-Maruyama steps down :func:`time_grid` from ``t = 1`` to ``eps``; before each,
    ``corrector_steps`` Langevin steps ``x <- x + delta s + sqrt(2 delta) z`` with
    ``delta = 2 (snr mean_b ||z_b|| / mean_b ||s_b||)^2`` (Song et al.'s batch-mean norms: per-sample norms
    blow up in one or two action dimensions, where ``||s_b||`` can be near 0). The final step returns its
    mean (no noise). Song et al. scale ``delta`` by the DDPM ``alpha_i = 1 - beta_i / N``, within 2% of 1
    for their N = 1000 steps, taken as 1 here (with few steps ``1 - beta dt`` would turn negative).

    The paper (after Song et al.) steps uniformly in t; with few steps the last, large step overshoots on
    a sharp distribution (1-D Gaussian, std 0.1: 30 uniform steps give std 0.008, 50 give 0.06), while the
    quadratic grid, fine near ``eps``, gives 0.11 at 20 steps and 0.104 at 50.
    """
    B, dev = obs.shape[0], obs.device
    x = torch.randn(B, act_dim, device=dev, generator=generator, dtype=obs.dtype)
    ts = time_grid(steps, grid)[::-1]
    for i in range(steps):
        t = torch.full((B,), ts[i], device=dev, dtype=obs.dtype)
        dt = ts[i] - ts[i + 1]
        _, sigma = sde.marginal(t)
        for _ in range(corrector_steps):
            score = -eps_fn(x, obs, t) / sigma.unsqueeze(-1)
            z = torch.randn(x.shape, device=dev, generator=generator, dtype=x.dtype)
            ratio = snr * z.norm(dim=-1).mean() / score.norm(dim=-1).mean().clamp_min(1e-12)
            delta = 2.0 * ratio**2
            x = x + delta * score + torch.sqrt(2.0 * delta) * z
        score = -eps_fn(x, obs, t) / sigma.unsqueeze(-1)
        beta = sde.beta(t).unsqueeze(-1)
        # Reverse-time drift f - g^2 s with f = -beta x / 2, g^2 = beta, stepped backwards in time.
        mean = x + (0.5 * beta * x + beta * score) * dt
        if i == steps - 1:
            return mean
        z = torch.randn(x.shape, device=dev, generator=generator, dtype=x.dtype)
        x = mean + torch.sqrt(beta * dt) * z
    return x  # steps == 0: the prior sample


def _drift_and_divergence(
    eps_fn: EpsFn, sde: VPSDE, x: torch.Tensor, obs: torch.Tensor, t: torch.Tensor, probe: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(f~(x, t), div f~(x, t))`` of the probability-flow ODE; exact trace if ``probe`` is None."""
    d = x.shape[-1]
    _, sigma = sde.marginal(t)
    beta = sde.beta(t)
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        eps = eps_fn(xg, obs, t)
        if probe is None:
            tr = torch.zeros_like(beta)
            for j in range(d):
                (g,) = torch.autograd.grad(eps[:, j].sum(), xg, retain_graph=j < d - 1)
                tr = tr + g[:, j]
        else:
            (g,) = torch.autograd.grad((eps * probe).sum(), xg)
            tr = (g * probe).sum(-1)
    eps = eps.detach()
    drift = -0.5 * beta.unsqueeze(-1) * (x - eps / sigma.unsqueeze(-1))
    div = -0.5 * beta * (d - tr.detach() / sigma)
    return drift, div


def ode_log_likelihood(
    eps_fn: EpsFn,
    sde: VPSDE,
    x: torch.Tensor,
    obs: torch.Tensor,
    steps: int,
    method: str = "rk4",
    trace: str = "exact",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``log p_eps(x | s)`` per row (normalised actions), by the probability-flow ODE; see the module docstring.

    ``steps`` fixed steps of ``method`` (euler: 1 network evaluation per step, heun: 2, rk4: 4; each with a
    backward pass per trace term) on the quadratic grid over ``[eps, 1]``; ``trace="hutchinson"`` draws one
    Rademacher probe per row from ``generator``.
    """
    if method not in ODE_METHODS:
        raise ValueError(f"ode method must be one of {ODE_METHODS}, got {method!r}")
    if trace not in TRACES:
        raise ValueError(f"trace must be one of {TRACES}, got {trace!r}")
    B, d = x.shape
    probe = None
    if trace == "hutchinson":
        probe = torch.randint(0, 2, x.shape, device=x.device, generator=generator).to(x.dtype) * 2 - 1
    grid = time_grid(steps, "quadratic")
    delta = torch.zeros(B, device=x.device, dtype=x.dtype)

    def f(xx: torch.Tensor, tt: float) -> tuple[torch.Tensor, torch.Tensor]:
        return _drift_and_divergence(eps_fn, sde, xx, obs, torch.full((B,), tt, device=x.device, dtype=x.dtype), probe)

    for i in range(steps):
        t, h = grid[i], grid[i + 1] - grid[i]
        k1x, k1d = f(x, t)
        if method == "euler":
            x, delta = x + h * k1x, delta + h * k1d
        elif method == "heun":
            k2x, k2d = f(x + h * k1x, t + h)
            x, delta = x + 0.5 * h * (k1x + k2x), delta + 0.5 * h * (k1d + k2d)
        else:
            k2x, k2d = f(x + 0.5 * h * k1x, t + 0.5 * h)
            k3x, k3d = f(x + 0.5 * h * k2x, t + 0.5 * h)
            k4x, k4d = f(x + h * k3x, t + h)
            x = x + h / 6.0 * (k1x + 2 * k2x + 2 * k3x + k4x)
            delta = delta + h / 6.0 * (k1d + 2 * k2d + 2 * k3d + k4d)
    prior = -0.5 * d * math.log(2 * math.pi) - 0.5 * x.pow(2).sum(-1)
    return prior + delta


class BehaviorModel(nn.Module):
    """``beta_psi(a | s)``: a :class:`ScoreNet`, its EMA copy (used for sampling and likelihoods) and the SDE.

    ``obs`` passed in are the *normalised* states the rest of the package uses; actions are raw.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        action_low: np.ndarray,
        action_high: np.ndarray,
        hidden: int = 256,
        blocks: int = 3,
    ) -> None:
        super().__init__()
        self.act_dim = act_dim
        self.sde = VPSDE()
        self.net = ScoreNet(obs_dim, act_dim, hidden, blocks)
        self.ema = copy.deepcopy(self.net).requires_grad_(False)
        low = torch.as_tensor(np.asarray(action_low, dtype=np.float32))
        high = torch.as_tensor(np.asarray(action_high, dtype=np.float32))
        self.register_buffer("action_center", (high + low) / 2)
        self.register_buffer("action_scale", (high - low) / 2)

    def to_normalized(self, actions: torch.Tensor) -> torch.Tensor:
        return (actions - self.action_center) / self.action_scale

    def to_raw(self, actions: torch.Tensor) -> torch.Tensor:
        return self.action_center + self.action_scale * actions

    def loss(self, obs: torch.Tensor, actions: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Denoising score matching ``mean_b ||eps_psi(mu_t a_b + sigma_t z_b, s_b, t_b) - z_b||^2`` (sum over d)."""
        a = self.to_normalized(actions)
        B = a.shape[0]
        t = TRAIN_EPS + (1.0 - TRAIN_EPS) * torch.rand(B, device=a.device, generator=generator, dtype=a.dtype)
        z = torch.randn(a.shape, device=a.device, generator=generator, dtype=a.dtype)
        mu, sigma = self.sde.marginal(t)
        xt = mu.unsqueeze(-1) * a + sigma.unsqueeze(-1) * z
        return (self.net(xt, obs, t) - z).pow(2).sum(-1).mean()

    @torch.no_grad()
    def update_ema(self, decay: float) -> None:
        """``psi_ema <- decay psi_ema + (1 - decay) psi``."""
        for pe, p in zip(self.ema.parameters(), self.net.parameters()):
            pe.lerp_(p, 1.0 - decay)

    def score(self, actions: torch.Tensor, obs: torch.Tensor, t: torch.Tensor, ema: bool = True) -> torch.Tensor:
        """``s_psi(x_t | s, t) = -eps_psi / sigma_t`` for *normalised* noisy actions ``x_t``."""
        _, sigma = self.sde.marginal(t)
        return -(self.ema if ema else self.net)(actions, obs, t) / sigma.unsqueeze(-1)

    @torch.no_grad()
    def sample(
        self,
        obs: torch.Tensor,
        steps: int,
        corrector_steps: int = 1,
        snr: float = 0.16,
        generator: torch.Generator | None = None,
        grid: str = "quadratic",
    ) -> torch.Tensor:
        """One raw action per row of ``obs`` from the EMA model, clipped to the action bounds."""
        x = pc_sample(self.ema, self.sde, obs, self.act_dim, steps, corrector_steps, snr, generator, grid)
        return self.to_raw(x.clamp(-1.0, 1.0))

    def log_likelihood(
        self,
        obs: torch.Tensor,
        actions: torch.Tensor,
        steps: int,
        method: str = "rk4",
        trace: str = "exact",
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``log beta_psi(a | s)`` for raw actions: the normalised-space ODE likelihood ``- sum log h``."""
        ll = ode_log_likelihood(self.ema, self.sde, self.to_normalized(actions), obs, steps, method, trace, generator)
        return ll - torch.log(self.action_scale).sum()


def _duration(seconds: float) -> str:
    """``45 s``, ``18 min``, ``2.5 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def generate_candidates(
    model: BehaviorModel,
    obs: torch.Tensor,
    n: int,
    sampler_steps: int,
    corrector_steps: int,
    snr: float,
    ode_steps: int,
    ode_method: str,
    trace: str,
    generator: torch.Generator,
    chunk: int = 1024,
    progress: bool = False,
    grid: str = "quadratic",
    announce: Callable[[str], None] | None = None,
    resume: dict[str, Any] | None = None,
    after_chunk: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` behaviour-model actions per state and their log-likelihoods: ``((S, n, d), (S, n))``.

    States are processed ``chunk`` at a time (``chunk * n`` samples per network call); every random draw
    comes from ``generator`` in a fixed order, so the result depends only on the model, the states, the
    settings, the chunk size and the generator's seed.  ``announce``, if given, receives after the first chunk
    (when more follow) one sentence estimating the whole generation's time from that chunk's.

    Resumable: after each chunk ``after_chunk`` (if given) receives the state so far, ``{"done": states done,
    "actions", "logp": their rows, "generator": the generator's state}``; passing such a state back as
    ``resume`` continues from it with the same draws, so an interrupted generation ends bit for bit as an
    uninterrupted one (the generation of a dataset's candidates can outlast a CPU session).
    """
    S = obs.shape[0]
    actions = torch.empty(S, n, model.act_dim, device=obs.device, dtype=obs.dtype)
    logp = torch.empty(S, n, device=obs.device, dtype=obs.dtype)
    first = 0
    if resume is not None:
        first = int(resume["done"])
        actions[:first], logp[:first] = resume["actions"].to(actions), resume["logp"].to(logp)
        generator.set_state(resume["generator"].cpu())
    from tqdm.auto import tqdm

    bar = tqdm(total=S, initial=first, disable=not progress, desc="ARQ candidates", unit="state",
               dynamic_ncols=True, leave=False)
    try:
        start = time.perf_counter()
        for lo in range(first, S, chunk):
            s = obs[lo : lo + chunk].repeat_interleave(n, dim=0)
            a = model.sample(s, sampler_steps, corrector_steps, snr, generator, grid)
            ll = model.log_likelihood(s, a, ode_steps, ode_method, trace, generator)
            m = s.shape[0] // n
            actions[lo : lo + m] = a.reshape(m, n, -1)
            logp[lo : lo + m] = ll.reshape(m, n)
            bar.update(m)
            if lo == first and announce is not None and lo + m < S:
                took = time.perf_counter() - start
                announce(f"generating {n} candidates for {S - lo:,} states: ~{_duration(took * (S - lo) / m)} at "
                         f"this rate (the first {m:,} states took {took:.1f} s)")
            if after_chunk is not None and lo + m < S:
                after_chunk({"done": lo + m, "actions": actions[: lo + m], "logp": logp[: lo + m],
                             "generator": generator.get_state()})
    finally:
        bar.close()
    return actions, logp
