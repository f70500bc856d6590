"""benchmarks/vaco_solve.py: its Lanczos extremes against dense eigenvalues, and its implicit system (H x, grad J_pi,
per-transition BC gradients) against a dense float64 Hessian and gradients of independently written losses."""

from __future__ import annotations

import numpy as np
import torch
from torch.func import functional_call

from benchmarks.vaco_solve import lanczos_extremes, linear_system
from bilevel.solvers.linear import conjugate_gradient
from rl_adapters.algorithms import make_algorithm
from rl_adapters.algorithms.vaco.scorer import standardise
from rl_adapters.data import load_dataset

DT = torch.float64


def test_lanczos_extremes_match_dense_eigenvalues() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(30, 30, generator=gen, dtype=DT)
    a = a + a.T  # symmetric, indefinite
    lo, hi = lanczos_extremes(lambda x: a @ x, 30, 30, DT)
    ev = torch.linalg.eigvalsh(a)
    assert abs(lo - float(ev[0])) < 1e-8 and abs(hi - float(ev[-1])) < 1e-8
    assert lo < 0 < hi


def test_linear_system_matches_dense_autograd(tiny_dataset: str) -> None:
    data = load_dataset(tiny_dataset)
    algo = make_algorithm("vaco", data.obs_dim, data.act_dim, data.stats, seed=1, hidden_dim=8,
                          scorer_hidden_dim=8, scorer_init="torch")
    actor, critic, scorer = algo.actor.double(), algo.critic_target.double(), algo.scorer.double()
    b = data.sample(16, data.make_generator(0))
    obs, act = b.obs.double(), b.actions.double()
    system = linear_system(actor, critic, scorer, obs, act)
    names = [k for k, _ in actor.named_parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for _, p in actor.named_parameters()])
    unflat = system["unflat"]
    with torch.no_grad():
        q = critic.min_q(obs, act)
        w = scorer.normalise(scorer.raw(obs, act, standardise(q)))
    assert w.std() > 1e-3  # a random scorer: unequal weights, so the weighting is tested

    def weighted_bc(x: torch.Tensor) -> torch.Tensor:  # batched, no vmap: an independent path
        return (w * (functional_call(actor, unflat(x), (obs,)) - act).pow(2).sum(-1)).mean()

    def j_pi(x: torch.Tensor) -> torch.Tensor:
        return -critic.min_q(obs, functional_call(actor, unflat(x), (obs,))).mean() / q.abs().mean()

    h = torch.autograd.functional.hessian(weighted_bc, flat0)
    x = torch.randn(flat0.numel(), generator=torch.Generator().manual_seed(1), dtype=DT)
    torch.testing.assert_close(system["hvp"](x), h @ x, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(system["g"], torch.autograd.functional.jacobian(j_pi, flat0), rtol=1e-10, atol=1e-12)
    for i in (0, 7):
        def l_i(x: torch.Tensor, i: int = i) -> torch.Tensor:
            return (functional_call(actor, unflat(x), (obs[i:i + 1],)) - act[i:i + 1]).pow(2).sum()
        torch.testing.assert_close(system["j"][i], torch.autograd.functional.jacobian(l_i, flat0),
                                   rtol=1e-10, atol=1e-12)
    assert len(names) == 6 and system["n"] == flat0.numel()
    # The reference solve (CG through negative curvature) reaches the dense solution at a damping that makes
    # H + d I positive definite, and so does the preference J v.
    d = 10.0
    dense = torch.linalg.solve(h + d * torch.eye(h.shape[0], dtype=DT), system["g"])
    res = conjugate_gradient(lambda v: (system["hvp"](v[0]) + d * v[0],), (system["g"],), 300, tol=1e-12,
                             stop_on_negative_curvature=False)
    np.testing.assert_allclose((system["j"] @ res.solution[0]).numpy(), (system["j"] @ dense).numpy(),
                               rtol=1e-8, atol=1e-12)
