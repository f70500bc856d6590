"""How different are two trained policies, and is a score gap between them more than evaluation noise?

For two ``bilevel-rl train`` run directories on the same dataset: the normalised score of each final policy
over ``--episodes`` evaluation episodes (mean and standard error), and on every dataset state the mean
distance between their actions next to each one's distance to the dataset action (``F.mse_loss`` units).
Used to read a VACO-vs-BC gap in the equal-budget grid (benchmarks/notes/offline_rl_equal.md)::

    MINARI_DATASETS_PATH=../shared/datasets python -m benchmarks.policy_gap RUN_A RUN_B --episodes 30
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch


def load(run_dir: Path):
    from rl_adapters.algorithms import make_algorithm
    from rl_adapters.data import load_dataset
    from rl_adapters.training import read_checkpoint

    cfg = json.loads((run_dir / "config.json").read_text())
    data = load_dataset(cfg["dataset"])
    algo = make_algorithm(cfg["algo"], data.obs_dim, data.act_dim, data.stats, seed=cfg.get("seed", 0),
                          total_steps=cfg.get("steps", 1), **cfg.get("hparams", {}))
    algo.load_state_dict(read_checkpoint(run_dir / "checkpoint.pt")["algorithm"])
    return algo, data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_a", type=Path)
    p.add_argument("run_b", type=Path)
    p.add_argument("--episodes", type=int, default=30)
    p.add_argument("--seed", type=int, default=123_456, help="first evaluation episode's reset seed")
    args = p.parse_args(argv)
    if args.episodes < 2:
        p.error(f"--episodes must be >= 2 (a standard error needs two), got {args.episodes}")
    torch.set_num_threads(1)
    from rl_adapters.evaluation import evaluate

    (a, data), (b, data_b) = load(args.run_a), load(args.run_b)
    if data.name != data_b.name:
        p.error(f"the runs trained on different datasets ({data.name} vs {data_b.name})")
    out: dict[str, object] = {"dataset": data.name, "episodes": args.episodes}
    for key, algo, run in (("a", a, args.run_a), ("b", b, args.run_b)):
        ev = evaluate(algo, data, episodes=args.episodes, seed=args.seed)
        s = np.asarray(ev.normalized, dtype=float)
        out[key] = {"run": str(run), "score_mean": float(s.mean()), "score_sem": float(s.std(ddof=1) / np.sqrt(s.size))}
    with torch.no_grad():
        obs = a.normalize(data.observations)
        pa, pb = a.policy(obs), b.policy(obs)
        out["mse_a_vs_b"] = float(torch.nn.functional.mse_loss(pa, pb))
        out["mse_a_vs_data"] = float(torch.nn.functional.mse_loss(pa, data.actions))
        out["mse_b_vs_data"] = float(torch.nn.functional.mse_loss(pb, data.actions))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
