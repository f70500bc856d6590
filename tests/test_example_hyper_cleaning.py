"""examples/hyper_cleaning.py: the learned example weights separate corrupted labels from clean ones and the
classifier retrained with them beats training on all the (corrupted) data."""

from __future__ import annotations

import hyper_cleaning
import torch


def test_quick_cleaning_beats_all_data_and_finds_the_corrupted_labels():
    torch.set_num_threads(1)
    result = hyper_cleaning.run(quick=True)
    [row] = result["rows"]
    assert row["solver"] == "implicit-cg"
    all_data = result["baselines"]["all data"]["test_acc"]
    assert row["test_acc"] > all_data + 0.05, (row["test_acc"], all_data)
    assert row["auc"] > 0.9, row["auc"]


def test_corruption_is_half_and_always_wrong():
    data = hyper_cleaning.load_data(0)
    clean = hyper_cleaning.load_data(0, corruption=0.0)
    assert int(data.corrupted.sum()) == len(data.corrupted) // 2
    changed = data.train.y != clean.train.y
    assert torch.equal(changed, data.corrupted)
