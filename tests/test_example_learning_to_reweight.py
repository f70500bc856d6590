"""examples/learning_to_reweight.py: one-step reweighting from a balanced validation set learns the rare classes
that plain training on the imbalanced data misses."""

from __future__ import annotations

import learning_to_reweight as l2rw
import torch


def test_quick_reweighting_beats_plain_training_on_rare_classes():
    torch.set_num_threads(1)
    result = l2rw.run(quick=True)
    rows = {r["method"]: r for r in result["rows"]}
    assert set(rows) == {"plain", "class-balanced", "one-step"}
    assert rows["one-step"]["rare_acc"] > rows["plain"]["rare_acc"] + 0.2, (
        rows["one-step"]["rare_acc"], rows["plain"]["rare_acc"])
    # The mechanism: the rare classes get far more than their share of the training examples' weight.
    assert rows["one-step"]["rare_weight_share"] > 2 * rows["plain"]["rare_weight_share"]


def test_split_is_imbalanced_and_validation_balanced():
    data = l2rw.load_data(0)
    train = torch.bincount(data.train.y, minlength=10)
    val = torch.bincount(data.val.y, minlength=10)
    assert torch.all(val == val[0])
    rare = torch.tensor(l2rw.RARE)
    common = torch.tensor([c for c in range(10) if c not in l2rw.RARE])
    assert train[rare].max() * 5 < train[common].min()
