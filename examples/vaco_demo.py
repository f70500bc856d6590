"""Part 2 of the quickstart: a small VACO run on a dataset built on the spot.

The dataset mixes a good behaviour policy (a PD controller on InvertedPendulum-v5) with a bad one
(uniform random actions): 5 good and 40 bad episodes. VACO learns Q with IQL's value updates, then
trains the policy by weighted behaviour cloning while the meta-scorer's weights are fitted, through
the one-step hypergradient, to make the cloned policy score well under Q. If that works, the good
episodes end up with the higher weights: the run prints the mean weight of each group, the Pearson
correlation of trajectory weight with trajectory return, and the evaluation score.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from rl_adapters.datasets import make_tiny_dataset
from rl_adapters.training import TrainConfig, train
from rl_adapters.vaco_analysis import analyze_weights

DATASET_ID = "quickstart/pendulum/mixed-v0"

# A short horizon and raw rewards let Q converge within a few thousand updates on 1.8k transitions;
# the meta-scorer's weights are only as good as Q (docs/vaco.md).
HPARAMS: dict[str, Any] = {
    "hidden_dim": 64,
    "scorer_hidden_dim": 64,
    "batch_size": 64,
    "value_fraction": 0.5,
    "scorer_lr": 1e-3,
    "discount": 0.9,
    "normalize_reward": False,
    "critic_lr": 1e-3,
    "value_lr": 1e-3,
}


def vaco_demo(out_dir: str | os.PathLike, steps: int = 3000, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Build the dataset under ``out_dir/datasets``, train VACO into ``out_dir/vaco``, analyse its weights."""
    out = Path(out_dir).resolve()  # minari resolves a relative root against the dataset path again
    # The demo's dataset lives with its run, not in the user's Minari root.
    os.environ["MINARI_DATASETS_PATH"] = str(out / "datasets")
    print(f"Part 2: VACO on a tiny InvertedPendulum dataset (5 good + 40 random episodes) in {out}")
    make_tiny_dataset(DATASET_ID, episodes={"good": 5, "bad": 40}, root=out / "datasets", seed=seed)
    cfg = TrainConfig(algo="vaco", dataset=DATASET_ID, steps=steps, seed=seed, device="auto", out=str(out / "vaco"),
                      eval_episodes=5, checkpoint_every=steps,  # default cadence: ~10 evaluations, ~50 loss rows
                      progress=progress, hparams=dict(HPARAMS))
    summary = train(cfg)
    res = analyze_weights(out / "vaco")
    ret = np.asarray(res["episodes"]["return"])
    w = np.asarray(res["episodes"]["mean_weight"])
    good, bad = float(w[ret >= 40].mean()), float(w[ret < 20].mean())
    print(f"  mean meta-weight: good episodes {good:.3f}, random episodes {bad:.3f}")
    print(f"  Pearson(trajectory mean weight, trajectory return) = {res['pearson_traj_weight_return']:.3f}")
    print(f"  final normalised score {summary['final_normalized_score']:.1f} "
          f"(0 = random policy, 100 = the good controller), {summary['updates_per_s']:.0f} updates/s")
    print(f"  run directory: {out / 'vaco'} (metrics.jsonl, summary.json, learning_curve.png, weights/*.png)")
    return {"summary": summary, "good_weight": good, "bad_weight": bad,
            "pearson": res["pearson_traj_weight_return"]}
