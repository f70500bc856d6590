"""Evaluation on a real gymnasium env: returns, normalised scores, vectorised == sequential, errors."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from rl_adapters.data import load_dataset
from rl_adapters.datasets import pendulum_pd_policy, rollout_episodes, write_dataset
from rl_adapters.evaluation import MissingReferenceScoresError, evaluate, normalized_score


def _pd(obs):
    return np.stack([pendulum_pd_policy(o, None) for o in np.atleast_2d(obs)])


def test_scripted_policy_scores_in_dataset_env(tiny_dataset):
    data = load_dataset(tiny_dataset)
    assert data.eval_env_spec.max_episode_steps == 40
    res = evaluate(_pd, data, episodes=4, seed=3)
    # The PD controller balances the pole for the whole 40-step time limit.
    np.testing.assert_array_equal(res.returns, [40.0] * 4)
    np.testing.assert_array_equal(res.lengths, [40] * 4)
    expected = 100 * (40.0 - data.ref_min_score) / (data.ref_max_score - data.ref_min_score)
    assert res.normalized_score == pytest.approx(expected) == pytest.approx(100.0)


def test_vectorised_equals_sequential_and_matches_manual_rollout(tiny_dataset):
    data = load_dataset(tiny_dataset)
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 1)).astype(np.float32)
    policy = lambda obs: np.clip(np.atleast_2d(obs) @ w, -3, 3)  # deterministic but falls quickly
    vec = evaluate(policy, data, episodes=5, seed=11)
    seq = evaluate(policy, data, episodes=5, seed=11, vectorized=False)
    np.testing.assert_allclose(vec.returns, seq.returns)
    env = gym.make(data.eval_env_spec)
    manual = rollout_episodes(env, lambda o, r: policy(o)[0], episodes=1, seed=11)
    assert vec.returns[0] == pytest.approx(manual[0].ret)
    assert vec.lengths.min() < 40  # episodes of different lengths were handled


def test_algorithm_object_and_raw_returns_without_reference(minari_root):
    env = gym.make("InvertedPendulum-v5", max_episode_steps=20)
    eps = rollout_episodes(env, lambda o, r: pendulum_pd_policy(o, r), episodes=2)
    write_dataset("tiny/noref/pd-v0", env, eps, None, None, "pd", "no reference scores", root=minari_root)
    data = load_dataset("tiny/noref/pd-v0")
    assert data.ref_min_score is None
    with pytest.raises(MissingReferenceScoresError, match=r"tiny/noref/pd-v0.*ref_min_score.*mujoco"):
        evaluate(_pd, data, episodes=2)
    res = evaluate(_pd, data, episodes=2, normalized=False)
    assert res.normalized_score is None and res.mean_return == 20.0

    from rl_adapters.training import TrainConfig, train

    with pytest.raises(MissingReferenceScoresError):
        train(
            TrainConfig(
                algo="bc", dataset="tiny/noref/pd-v0", steps=5, out=str(minari_root / "r"), progress=False
            )
        )


def test_normalized_score_formula():
    np.testing.assert_allclose(normalized_score([10.0, 30.0], 10.0, 50.0), [0.0, 50.0])
    with pytest.raises(MissingReferenceScoresError):
        normalized_score(1.0, None, 2.0)
