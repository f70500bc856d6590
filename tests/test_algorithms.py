"""BC, TD3+BC, IQL: loss reduction, acting, determinism, checkpoint state, registry, CUDA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rl_adapters.algorithms import ALGORITHMS, make_algorithm, make_config
from rl_adapters.data import load_dataset

# (algorithm, loss that must fall, required relative drop)
LOSS_CASES = [
    ("bc", "actor_loss", 0.3),
    ("td3bc", "critic_loss", 0.9),
    ("td3bc", "bc_loss", 0.2),
    ("iql", "critic_loss", 0.3),
]


def _train(data, name, steps=300, seed=0, **hp):
    algo = make_algorithm(
        name, data.obs_dim, data.act_dim, data.stats, seed=seed, total_steps=steps, hidden_dim=64, **hp
    )
    gen = data.make_generator(seed)
    hist = [algo.update(data.sample(256, gen)) for _ in range(steps)]
    return algo, hist


@pytest.mark.parametrize("name,key,drop", LOSS_CASES)
def test_loss_decreases(tiny_dataset, name, key, drop):
    data = load_dataset(tiny_dataset)
    _, hist = _train(data, name)
    first = np.mean([h[key] for h in hist[1:21]])
    last = np.mean([h[key] for h in hist[-20:]])
    assert last < (1 - drop) * first, (name, key, first, last)
    assert all(np.isfinite(v) for h in hist for v in h.values())


@pytest.mark.parametrize("name", ["bc", "td3bc", "iql"])
def test_act_raw_obs_in_bounds_and_state_dict_round_trip(tiny_dataset, name):
    data = load_dataset(tiny_dataset)
    algo, _ = _train(data, name, steps=20)
    raw = data.observations[:7].numpy() * 50.0  # far outside the data: tanh must still keep bounds
    a = algo.act(raw)
    assert a.shape == (7, 1) and a.dtype == np.float32
    assert (a >= -3.0).all() and (a <= 3.0).all()
    assert algo.act(raw[0]).shape == (1,)
    # act() normalises internally: equals the actor on normalised obs.
    with torch.no_grad():
        ref = algo.policy(algo.normalize(torch.as_tensor(raw))).numpy()
    np.testing.assert_allclose(a, np.clip(ref, -3, 3), rtol=1e-6)

    clone = make_algorithm(
        name, data.obs_dim, data.act_dim, data.stats, seed=123, total_steps=20, hidden_dim=64
    )
    clone.load_state_dict(algo.state_dict())
    assert clone.step == algo.step == 20
    np.testing.assert_array_equal(clone.act(raw), a)
    # Continuing both from identical state (networks, optimizers, noise RNG) stays identical.
    g1, g2 = data.make_generator(5), data.make_generator(5)
    for _ in range(4):
        algo.update(data.sample(64, g1))
        clone.update(data.sample(64, g2))
    assert torch.equal(algo.parameters_flat(), clone.parameters_flat())


@pytest.mark.parametrize("name", ["bc", "td3bc", "iql"])
def test_same_seed_same_parameters_and_global_rng_untouched(tiny_dataset, name):
    data = load_dataset(tiny_dataset)
    torch.manual_seed(99)
    before = torch.get_rng_state()
    a1, _ = _train(data, name, steps=10, seed=3)
    assert torch.equal(torch.get_rng_state(), before)  # seeding is local to the algorithm
    a2, _ = _train(data, name, steps=10, seed=3)
    a3, _ = _train(data, name, steps=10, seed=4)
    assert torch.equal(a1.parameters_flat(), a2.parameters_flat())
    assert not torch.equal(a1.parameters_flat(), a3.parameters_flat())


def test_iql_reward_scale_and_cosine_lr(tiny_dataset):
    data = load_dataset(tiny_dataset)
    algo, hist = _train(data, "iql", steps=50)
    r = data.episode_returns
    assert algo.reward_scale == pytest.approx(1000.0 / float(r.max() - r.min()))
    assert hist[24]["actor_lr"] == pytest.approx(3e-4 * 0.5 * (1 + np.cos(np.pi * 25 / 50)), rel=1e-6)
    assert hist[-1]["actor_lr"] == pytest.approx(0.0, abs=1e-12)
    off, _ = _train(data, "iql", steps=1, normalize_reward=False)
    assert off.reward_scale == 1.0


def test_td3bc_lambda_and_delayed_actor(tiny_dataset):
    data = load_dataset(tiny_dataset)
    algo, hist = _train(data, "td3bc", steps=4)
    assert "actor_loss" not in hist[0] and "actor_loss" in hist[1]  # actor every 2 critic steps
    b = data.sample(256, data.make_generator(0))
    with torch.no_grad():
        q = algo.critic.q1_only(b.obs, algo.actor(b.obs))
    # lambda = alpha / mean |Q1(s, pi(s))| on the actor's batch, before its step
    info = algo.actor_update(b)
    assert info["lambda"] == pytest.approx(algo.config.alpha / q.abs().mean().item(), rel=1e-6)
    assert algo.config.alpha == 2.5


def test_registry_and_config_errors():
    assert set(ALGORITHMS) >= {"bc", "td3bc", "iql"}
    assert make_config("iql", expectile=0.9).expectile == 0.9
    with pytest.raises(ValueError, match=r"no hyper-parameter\(s\) \['alpha'\].*valid"):
        make_config("bc", alpha=1.0)
    with pytest.raises(ValueError, match="unknown algorithm 'sac'"):
        make_config("sac")


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["bc", "td3bc", "iql"])
def test_cuda_data_networks_update(tiny_dataset, name):
    data = load_dataset(tiny_dataset, device="cuda")
    assert data.observations.is_cuda
    algo = make_algorithm(name, data.obs_dim, data.act_dim, data.stats, device="cuda", seed=0, total_steps=10)
    gen = data.make_generator(0)
    b = data.sample(256, gen)
    assert b.obs.is_cuda
    info = algo.update(b)
    assert all(np.isfinite(v) for v in info.values())
    assert all(p.is_cuda for m in algo.modules.values() for p in m.parameters())
    assert algo.act(data.observations[:3].cpu().numpy()).shape == (3, 1)
    cpu = make_algorithm(name, data.obs_dim, data.act_dim, data.stats, device="cpu", seed=0, total_steps=10)
    # Initial weights do not depend on the device.
    fresh = make_algorithm(
        name, data.obs_dim, data.act_dim, data.stats, device="cuda", seed=0, total_steps=10
    )
    assert torch.equal(cpu.parameters_flat(), fresh.parameters_flat())
