"""rl_adapters.data: loading round trip, statistics, sampling, mixes and every bad-input error."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from rl_adapters.data import DatasetError, concatenate, load_dataset, resolve_dataset_ids


def _h5(root, dataset_id):
    return root / dataset_id / "data" / "main_data.hdf5"


def test_round_trip_shapes_dones_returns_and_stats(make_tiny_dataset):
    ds = make_tiny_dataset(episodes=3)
    eps = list(ds.iterate_episodes())
    data = load_dataset(ds.spec.dataset_id)

    n = sum(len(e.actions) for e in eps)
    assert len(data) == n == ds.total_steps
    assert data.observations.shape == (n, 4) and data.next_observations.shape == (n, 4)
    assert data.actions.shape == (n, 1) and data.rewards.shape == (n,) and data.dones.dtype == torch.float32
    assert data.num_episodes == 6

    # Good PD episodes end by truncation at 40 steps: not terminal. Random ones terminate: terminal.
    good, bad = eps[:3], eps[3:]
    assert all(len(e.actions) == 40 and e.truncations[-1] and not e.terminations.any() for e in good)
    assert all(e.terminations[-1] for e in bad)
    assert data.dones.sum().item() == 3.0
    assert data.truncations.sum().item() == 3
    assert not (data.dones.bool() & data.truncations).any()

    pos = 0
    for k, e in enumerate(eps):
        t = len(e.actions)
        np.testing.assert_array_equal(
            data.observations[pos : pos + t].numpy(), e.observations[:-1].astype(np.float32)
        )
        np.testing.assert_array_equal(
            data.next_observations[pos : pos + t].numpy(), e.observations[1:].astype(np.float32)
        )
        np.testing.assert_array_equal(data.dones[pos : pos + t].numpy(), e.terminations.astype(np.float32))
        assert (data.episode_ids[pos : pos + t] == k).all()
        assert data.returns[pos : pos + t].allclose(torch.tensor(float(e.rewards.sum())))
        pos += t
    assert data.episode_returns[:3].tolist() == [40.0, 40.0, 40.0]

    obs = np.concatenate([e.observations[:-1] for e in eps]).astype(np.float64)
    np.testing.assert_allclose(data.obs_mean.numpy(), obs.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(data.obs_std.numpy(), obs.std(0) + 1e-3, rtol=1e-5)
    rets = [float(e.rewards.sum()) for e in eps]
    assert data.reward_scale == pytest.approx(1000.0 / (max(rets) - min(rets)))
    assert data.ref_min_score == pytest.approx(min(np.mean(rets[:3]), np.mean(rets[3:])))
    assert data.ref_max_score == pytest.approx(40.0)


def test_sampling_normalises_and_is_reproducible(tiny_dataset):
    data = load_dataset(tiny_dataset)
    b1 = data.sample(512, data.make_generator(7))
    b2 = data.sample(512, data.make_generator(7))
    b3 = data.sample(512, data.make_generator(8))
    assert torch.equal(b1.obs, b2.obs) and not torch.equal(b1.obs, b3.obs)
    assert b1.obs.shape == (512, 4) and b1.actions.shape == (512, 1) and b1.episode_ids.shape == (512,)
    # Gathered rows are normalised versions of the stored ones.
    whole = data.normalize(data.observations)
    assert whole.mean(0).abs().max() < 1e-4
    assert (whole.std(0, unbiased=False) - data.obs_std.sub(1e-3).div(data.obs_std)).abs().max() < 1e-4
    idx = torch.arange(5)
    assert torch.allclose(
        data.batch_at(idx).next_obs * data.obs_std + data.obs_mean, data.next_observations[:5], atol=1e-5
    )


def test_medium_expert_mix_and_concatenation(make_tiny_dataset):
    m = make_tiny_dataset("tiny/pend/medium-v0", episodes=2, seed=1)
    e = make_tiny_dataset("tiny/pend/expert-v0", episodes=3, seed=2)
    assert resolve_dataset_ids("tiny/pend/medium-expert") == ["tiny/pend/medium-v0", "tiny/pend/expert-v0"]
    assert resolve_dataset_ids("tiny/pend/medium-replay-v0") == ["tiny/pend/medium-replay-v0"]
    mix = load_dataset("tiny/pend/medium-expert")
    plus = load_dataset("tiny/pend/medium-v0+tiny/pend/expert-v0")
    assert len(mix) == len(plus) == m.total_steps + e.total_steps
    assert mix.num_episodes == 4 + 6 and mix.episode_ids.max().item() == 9
    assert torch.equal(mix.observations, plus.observations)
    cat = concatenate([load_dataset("tiny/pend/medium-v0"), load_dataset("tiny/pend/expert-v0")])
    assert torch.equal(cat.episode_ids, mix.episode_ids) and torch.equal(cat.returns, mix.returns)
    from_objects = load_dataset([m, e])
    assert torch.equal(from_objects.actions, mix.actions)


def test_unknown_id_lists_local_datasets_and_fix(tiny_dataset):
    with pytest.raises(DatasetError) as err:
        load_dataset("tiny/pendulum/nothing-v0")
    msg = str(err.value)
    assert "tiny/pendulum/nothing-v0" in msg and tiny_dataset in msg
    assert "minari download" in msg and "make-dataset" in msg and "MINARI_DATASETS_PATH" in msg


@pytest.mark.parametrize("field", ["rewards", "observations", "actions"])
def test_non_finite_value_names_field_and_index(make_tiny_dataset, minari_root, field):
    make_tiny_dataset(episodes=2)
    with h5py.File(_h5(minari_root, "tiny/pendulum/mixed-v0"), "r+") as f:
        arr = f[f"episode_1/{field}"]
        vals = arr[...]
        vals.reshape(len(vals), -1)[3, 0] = np.inf if field == "actions" else np.nan
        arr[...] = vals
    with pytest.raises(
        DatasetError, match=rf"'tiny/pendulum/mixed-v0'.*field '{field}'.*transition 43.*episode 1"
    ):
        load_dataset("tiny/pendulum/mixed-v0")


def test_inconsistent_lengths(make_tiny_dataset, minari_root):
    make_tiny_dataset(episodes=2)
    with h5py.File(_h5(minari_root, "tiny/pendulum/mixed-v0"), "r+") as f:
        r = f["episode_2/rewards"][...]
        del f["episode_2/rewards"]
        f["episode_2/rewards"] = r[:-1]
    with pytest.raises(DatasetError, match=r"episode 2: inconsistent lengths.*'rewards'"):
        load_dataset("tiny/pendulum/mixed-v0")


def test_empty_dataset(minari_root):
    import gymnasium as gym

    from rl_adapters.datasets import write_dataset

    env = gym.make("InvertedPendulum-v5")
    write_dataset("tiny/empty/none-v0", env, [], 0.0, 1.0, "none", "empty", root=minari_root)
    with pytest.raises(DatasetError, match=r"'tiny/empty/none-v0' is empty"):
        load_dataset("tiny/empty/none-v0")


def test_non_box_space(minari_root):
    import gymnasium as gym
    import minari
    from minari.data_collector import EpisodeBuffer

    env = gym.make("CartPole-v1")
    obs, _ = env.reset(seed=0)
    o, a, r, te, tr = [obs], [], [], [], []
    for _ in range(5):
        obs, rew, term, trunc, _ = env.step(0)
        o.append(obs)
        a.append(0)
        r.append(rew)
        te.append(term)
        tr.append(trunc)
    buf = EpisodeBuffer(
        id=0, observations=np.stack(o), actions=np.asarray(a), rewards=r, terminations=te, truncations=tr
    )
    minari.create_dataset_from_buffers("tiny/cartpole/discrete-v0", [buf], env=env, eval_env=env.spec,
                                       algorithm_name="always 0", author="tests", author_email="tests@localhost",
                                       code_permalink="local", description="a discrete-action dataset")
    with pytest.raises(DatasetError, match=r"'tiny/cartpole/discrete-v0': action_space is Discrete.*Box"):
        load_dataset("tiny/cartpole/discrete-v0")


def test_load_time_and_memory_scale(make_tiny_dataset):
    make_tiny_dataset(episodes=2)
    data = load_dataset("tiny/pendulum/mixed-v0")
    # observations twice + actions + rewards + dones + truncations + ids + returns, nothing else retained
    per_row = 4 * 4 * 2 + 4 + 4 + 4 + 1 + 8 + 4
    assert data.nbytes == per_row * len(data)
    assert data.load_time_s > 0


def _reference_batch(data, idx):
    """What sampling computed before the normalised arrays were cached: normalise the gathered rows."""
    return (data.normalize(data.observations[idx]), data.actions[idx], data.rewards[idx],
            data.normalize(data.next_observations[idx]), data.dones[idx], data.episode_ids[idx], data.returns[idx])


def test_cached_normalisation_gives_bit_identical_batches(tiny_dataset):
    data = load_dataset(tiny_dataset)
    g = data.make_generator(3)
    b = data.sample(300, g)
    idx = torch.randint(0, len(data), (300,), generator=data.make_generator(3))
    assert torch.equal(b.indices, idx)
    for got, want in zip(b, _reference_batch(data, idx)):
        assert got.dtype == want.dtype and torch.equal(got, want)
    assert b._fields == ("obs", "actions", "rewards", "next_obs", "dones", "episode_ids", "returns", "indices")
    # The cache follows in-place changes and replacements of the data or of the statistics.
    data.observations.mul_(2.0)
    data.obs_std = data.obs_std * 3.0
    b2 = data.batch_at(idx)
    for got, want in zip(b2, _reference_batch(data, idx)):
        assert torch.equal(got, want)


def test_sample_many_is_sample_per_generator(tiny_dataset):
    data = load_dataset(tiny_dataset)
    seeds = [0, 5, 11, 5]
    many = data.sample_many(64, [data.make_generator(s) for s in seeds])
    assert many.obs.shape == (4, 64, data.obs_dim) and many.actions.shape == (4, 64, data.act_dim)
    assert many.rewards.shape == many.dones.shape == many.indices.shape == (4, 64)
    for k, s in enumerate(seeds):
        one = data.sample(64, data.make_generator(s))
        for name, a, b in zip(one._fields, many, one):
            assert torch.equal(a[k], b), name
    # Generators advance exactly as sample() advances them.
    gens = [data.make_generator(s) for s in seeds]
    data.sample_many(64, gens)
    again = data.sample_many(32, gens)
    ref = [data.make_generator(s) for s in seeds]
    for k, g in enumerate(ref):
        data.sample(64, g)
        assert torch.equal(again.obs[k], data.sample(32, g).obs)
    with pytest.raises(ValueError):
        data.sample_many(8, [])
