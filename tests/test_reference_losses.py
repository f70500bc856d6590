"""TD3+BC's and ASPC's actor losses against hand computations of the reference formula.

The references (Fujimoto & Gu's TD3+BC code, CORL, the ASPC authors' code) write the BC term as
``F.mse_loss(pi, a)``: the mean over the batch *and* the action dimensions. With 3 action dimensions a
sum over them would triple the BC term, so these checks fail on that convention. The expected values
are computed entry by entry in Python floats, not through the algorithms' own expressions.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bilevel import InnerView
from rl_adapters.algorithms import make_algorithm
from rl_adapters.algorithms.aspc import ScaleBatch
from rl_adapters.data import Batch, DatasetStats

OBS, ACT, B = 4, 3, 16


def _stats() -> DatasetStats:
    return DatasetStats(obs_mean=np.zeros(OBS, np.float32), obs_std=np.ones(OBS, np.float32),
                        action_low=-np.ones(ACT, np.float32), action_high=np.ones(ACT, np.float32))


def _batch(seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(obs=torch.randn(B, OBS, generator=g), actions=torch.rand(B, ACT, generator=g) * 2 - 1,
                 rewards=torch.randn(B, generator=g), next_obs=torch.randn(B, OBS, generator=g),
                 dones=torch.zeros(B))


def _reference_actor_loss(pi: torch.Tensor, q: torch.Tensor, actions: torch.Tensor, alpha: float) -> tuple[float, float]:
    """``-alpha / mean|q| * mean q + (1 / (B A)) sum_ij (pi_ij - a_ij)^2``, written out in floats."""
    pi_l, q_l, a_l = pi.tolist(), q.tolist(), actions.tolist()
    q_abs = sum(abs(v) for v in q_l) / len(q_l)
    q_mean = sum(q_l) / len(q_l)
    bc = sum((pi_l[i][j] - a_l[i][j]) ** 2 for i in range(len(pi_l)) for j in range(len(pi_l[0])))
    bc /= len(pi_l) * len(pi_l[0])
    return -alpha / q_abs * q_mean + bc, bc


def test_td3bc_actor_loss_is_the_reference_formula() -> None:
    algo = make_algorithm("td3bc", OBS, ACT, _stats(), seed=0, total_steps=10, hidden_dim=16)
    batch = _batch()
    with torch.no_grad():
        pi = algo.actor(batch.obs)
        q = algo.critic.q1_only(batch.obs, pi)
    expected, expected_bc = _reference_actor_loss(pi, q, batch.actions, alpha=2.5)
    info = algo.actor_update(batch)
    assert info["bc_loss"] == pytest.approx(expected_bc, rel=1e-5)
    assert info["actor_loss"] == pytest.approx(expected, rel=1e-5)
    # The sum-over-dimensions convention differs by a factor ACT on the BC term: this test can tell.
    assert abs(ACT * expected_bc - expected_bc) > 1e-3


def test_aspc_inner_loss_and_eq1_are_the_reference_formula() -> None:
    algo = make_algorithm("aspc", OBS, ACT, _stats(), seed=0, total_steps=10, hidden_dim=16)
    batch = _batch(1)
    alpha = float(algo.scale().detach())
    assert alpha == pytest.approx(2.5, rel=1e-6)
    sb = ScaleBatch(batch.obs, batch.actions)
    view = InnerView(algo.actor, [n for n, _ in algo.actor.named_parameters()],
                     [p for _, p in algo.actor.named_parameters()], dict(algo.actor.named_buffers()))
    with torch.no_grad():
        got = float(algo.inner_loss(view, algo.scale, sb))
        pi = algo.actor(batch.obs)
        q = algo.critic.q1_only(batch.obs, pi)
    expected, expected_bc = _reference_actor_loss(pi, q, batch.actions, alpha=alpha)
    assert got == pytest.approx(expected, rel=1e-5)
    # eq1 at the current policy (q_weight = alpha): the same formula, alpha reaching it only through phi'.
    ob = algo.outer_batch(batch.obs, batch.actions)
    with torch.no_grad():
        terms = algo.outer_objective(algo.actor, ob)
    assert float(terms.bc) == pytest.approx(expected_bc, rel=1e-5)
    assert float(terms.eq1) == pytest.approx(expected, rel=1e-5)


def test_aspc_first_outer_update_starts_the_q_ema_at_zero_like_the_reference() -> None:
    algo = make_algorithm("aspc", OBS, ACT, _stats(), seed=0, total_steps=10, hidden_dim=16)
    batch = _batch(2)
    assert float(algo.outer_batch(batch.obs, batch.actions).m_prev) == 0.0
    first_q = make_algorithm("aspc", OBS, ACT, _stats(), seed=0, total_steps=10, hidden_dim=16, ema_init="first_q")
    with torch.no_grad():
        q0 = float(first_q.critic.q1_only(batch.obs, first_q.actor(batch.obs)).mean())
    assert float(first_q.outer_batch(batch.obs, batch.actions).m_prev) == pytest.approx(q0, rel=1e-6)


def test_aspc_critic_uses_the_reference_initialisation() -> None:
    algo = make_algorithm("aspc", OBS, ACT, _stats(), seed=0, total_steps=10, hidden_dim=32)
    linears = algo.critic.net.linears  # both members fused: weight (2, in, out), bias (2, out)
    assert len(linears) == 4
    for e in range(2):  # Q1, then Q2
        for lin in linears[:-1]:
            assert torch.all(lin.bias[e] == 0.1)
            assert float(lin.weight[e].detach().abs().max()) <= 1.0 / np.sqrt(lin.in_features)
        last = linears[-1]
        assert float(last.weight[e].detach().abs().max()) <= 3e-3 and float(last.bias[e].detach().abs().max()) <= 3e-3
    plain = make_algorithm("td3bc", OBS, ACT, _stats(), seed=0, total_steps=10, hidden_dim=32)
    assert not torch.all(plain.critic.net.linears[0].bias[0] == 0.1)
