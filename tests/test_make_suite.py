"""`make_suite` end to end at toy size: online TD3, four Minari datasets with reference scores, loadable."""

from __future__ import annotations

import numpy as np
import torch

from rl_adapters.data import load_dataset
from rl_adapters.datasets import make_suite


def test_make_suite_writes_four_loadable_datasets_with_reference_scores(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    torch.set_num_threads(1)
    summary = make_suite("InvertedPendulum-v5", "toy/pendulum", root=tmp_path, train_steps=200, dataset_steps=100,
                         start_steps=100, eval_every=100, eval_episodes=2, seed=0, verbose=False)
    assert summary["ref_min_score"] < summary["ref_max_score"]
    for kind in ("random", "medium", "medium-replay", "expert"):
        data = load_dataset(f"toy/pendulum/{kind}-v0")
        assert data.ref_min_score == summary["ref_min_score"] and data.ref_max_score == summary["ref_max_score"]
        assert data.num_episodes >= 1 and len(data) > 0
        assert torch.isfinite(data.observations).all() and torch.isfinite(data.actions).all()
        assert float(data.actions.abs().max()) <= 3.0 + 1e-6  # InvertedPendulum's action bound
    # medium-replay holds the learner's own early episodes: the first starts with uniform random actions,
    # so it is far from the expert's returns
    replay = load_dataset("toy/pendulum/medium-replay-v0")
    assert len(replay) <= summary["medium_step"]  # only what the learner saw before the medium snapshot
    expert = load_dataset("toy/pendulum/expert-v0")
    first_return = float(replay.returns[replay.episode_ids == 0][0])
    assert first_return <= float(np.max(expert.episode_returns.numpy()))
