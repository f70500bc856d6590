"""``bilevel-rl make-dataset``: its flags and what it runs."""

from __future__ import annotations

import argparse
import json

from .rollout import make_tiny_dataset
from .suite import make_suite

__all__ = ["add_arguments", "run_from_args"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--env", required=True, help="gymnasium env id with Box spaces, e.g. Hopper-v5")
    p.add_argument("--namespace", required=True, help="dataset namespace, e.g. suite/hopper")
    p.add_argument("--root", default=None, help="Minari root to write into (default $MINARI_DATASETS_PATH)")
    p.add_argument("--train-steps", type=int, default=300_000, help="online TD3 environment steps")
    p.add_argument("--dataset-steps", type=int, default=100_000, help="transitions per medium/expert dataset")
    p.add_argument("--start-steps", type=int, default=10_000, help="uniform-random warm-up steps")
    p.add_argument(
        "--eval-every", type=int, default=5_000, help="snapshot + evaluate the learner every N steps"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--version", default="v0")
    p.add_argument(
        "--tiny",
        action="store_true",
        help="instead write one tiny scripted dataset <namespace>/mixed-<version> (no training)",
    )


def run_from_args(args: argparse.Namespace) -> int:
    if args.tiny:
        ds = make_tiny_dataset(
            f"{args.namespace}/mixed-{args.version}", env_id=args.env, root=args.root, seed=args.seed
        )
        print(
            json.dumps(
                {"dataset": ds.spec.dataset_id, "steps": ds.total_steps, "episodes": ds.total_episodes}
            )
        )
        return 0
    summary = make_suite(
        args.env,
        args.namespace,
        root=args.root,
        train_steps=args.train_steps,
        dataset_steps=args.dataset_steps,
        start_steps=args.start_steps,
        eval_every=args.eval_every,
        seed=args.seed,
        version=args.version,
    )
    print(json.dumps(summary, indent=2))
    return 0
