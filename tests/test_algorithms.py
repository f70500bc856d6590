"""BC, TD3+BC, IQL: loss reduction, acting, determinism, checkpoint state, registry, CUDA."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from rl_adapters.algorithms import ALGORITHMS, make_algorithm, make_config
from rl_adapters.algorithms.base import register
from rl_adapters.algorithms.bc import BC, BCConfig
from rl_adapters.data import load_dataset
from rl_adapters.errors import UsageError
from rl_adapters.training import TrainConfig, train

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


def test_each_algorithm_module_registers_itself_in_a_fixed_order():
    assert list(ALGORITHMS) == ["bc", "td3bc", "iql", "vaco", "aspc", "aspc-iql", "arq"]
    for name, cls in ALGORITHMS.items():
        assert cls.name == name and "name" in vars(cls)
        assert cls.__module__.startswith("rl_adapters.algorithms.")  # defined, and registered, in its own module


def test_register_refuses_what_is_not_a_named_algorithm():
    before = dict(ALGORITHMS)
    with pytest.raises(TypeError, match="Algorithm subclass"):
        register(dict)

    class Unnamed(BC):  # inherits BC's name: registering it would replace BC
        pass

    with pytest.raises(TypeError, match="must set its own name"):
        register(Unnamed)

    class Taken(BC):
        name = "iql"

    with pytest.raises(ValueError, match="'iql' is already registered by rl_adapters.algorithms.iql.IQL"):
        register(Taken)

    class NoConfig(BC):
        name = "no-config"
        Config = dict

    with pytest.raises(TypeError, match="subclassing BaseConfig"):
        register(NoConfig)
    assert register(BC) is BC  # the same class again (a reloaded module) is fine
    assert ALGORITHMS == before


@dataclasses.dataclass
class _HookConfig(BCConfig):
    hidden_dim: int = 16
    batch_size: int = 32
    min_steps: int = 1

    def check_steps(self, steps: int) -> None:
        if steps < self.min_steps:
            raise ValueError(f"min_steps = {self.min_steps} > --steps {steps}")


def test_the_trainer_calls_every_declared_hook(tiny_dataset, tmp_path):
    """A registered algorithm overriding the hooks declared on Algorithm / BaseConfig gets each one called,
    without the trainer probing for them; an algorithm that overrides none (BC) gets the no-op defaults."""
    calls: list[str] = []

    class Hooked(BC):
        name = "hooked-test"
        Config = _HookConfig

        def training_data(self, data):
            calls.append("training_data")
            return data

        def attach_data(self, data, out_dir=None, progress=False):
            calls.append(f"attach_data {Path(out_dir).name} {progress}")

        def plot_metrics(self, metrics_path, out_dir):
            calls.append(f"plot_metrics {Path(metrics_path).name}")

    register(Hooked)
    try:
        cfg = {"algo": "hooked-test", "dataset": tiny_dataset, "steps": 4, "device": "cpu", "eval_episodes": 0,
               "log_every": 2, "progress": False, "plot": True}
        with pytest.raises(UsageError, match="min_steps = 10 > --steps 4"):
            train(TrainConfig(**cfg, out=str(tmp_path / "short"), hparams={"min_steps": 10}))
        assert calls == [] and not (tmp_path / "short").exists()  # refused before any data loads
        summary = train(TrainConfig(**cfg, out=str(tmp_path / "run")))
    finally:
        del ALGORITHMS["hooked-test"]
    assert summary["status"] == "finished"
    assert calls == ["attach_data run False", "training_data", "plot_metrics metrics.jsonl"]
    assert (tmp_path / "run" / "learning_curve.png").exists()
    data = load_dataset(tiny_dataset)
    bc = make_algorithm("bc", data.obs_dim, data.act_dim, data.stats, total_steps=1)  # the declared defaults
    assert bc.training_data(data) is data and bc.value_phase() is None
    assert bc.attach_data(data, tmp_path) is None and bc.config.check_steps(1) is None
    bc.plot_metrics(tmp_path / "run" / "metrics.jsonl", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no figure of its own


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
