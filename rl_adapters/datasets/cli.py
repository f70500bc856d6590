"""``bilevel-rl make-dataset``: its flags and what it runs.

Every flag is checked before anything is trained or written (one line naming the flag, the value and a fix,
as ``bilevel-rl train`` does): the numbers, the environment (registered, with Box observation and action
spaces), the dataset ids, and that no dataset of that name exists already unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

from ..errors import UsageError
from .rollout import make_tiny_dataset
from .suite import make_suite

__all__ = ["SUITE_KINDS", "add_arguments", "check_args", "dataset_ids", "run_from_args"]

#: The datasets a suite writes, ``<namespace>/<kind>-<version>`` each.
SUITE_KINDS = ("random", "medium", "medium-replay", "expert")


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
    p.add_argument("--overwrite", action="store_true",
                   help="delete and regenerate datasets of the same ids (refused without it)")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")


def dataset_ids(namespace: str, version: str, tiny: bool) -> list[str]:
    """The ids ``make-dataset`` writes for these flags."""
    kinds = ("mixed",) if tiny else SUITE_KINDS
    return [f"{namespace}/{kind}-{version}" for kind in kinds]


def _root(args: argparse.Namespace) -> Path:
    """The Minari root written into (what minari itself resolves, without creating it)."""
    root = args.root or os.environ.get("MINARI_DATASETS_PATH")
    return Path(root) if root else Path.home() / ".minari" / "datasets"


def _check_env(env_id: str, tiny: bool) -> None:
    import gymnasium as gym

    example = "InvertedPendulum-v5" if tiny else "Hopper-v5"
    try:
        gym.spec(env_id)
    except gym.error.Error as e:
        raise UsageError(f"--env {env_id}: not a registered gymnasium environment ({type(e).__name__}: "
                         f"{' '.join(str(e).split())}); e.g. --env {example}") from None
    from ..evaluation import known_mujoco_warnings_silenced

    try:
        with known_mujoco_warnings_silenced():
            env = gym.make(env_id)
    except Exception as e:  # noqa: BLE001 - a missing simulator (mujoco) or a broken install: say which
        raise UsageError(f"--env {env_id}: cannot be created ({type(e).__name__}: {' '.join(str(e).split())}); "
                         f"install what it needs, e.g. pip install 'gymnasium[mujoco]'") from None
    try:
        spaces = {"action": env.action_space, "observation": env.observation_space}
    finally:
        env.close()
    for name, space in spaces.items():
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
            raise UsageError(f"--env {env_id}: its {name} space is {space}, but datasets need continuous (Box, "
                             f"1-D) observations and actions for the offline RL algorithms here; e.g. --env "
                             f"{example}")


def _free_version(root: Path, namespace: str, version: str, tiny: bool) -> str | None:
    """The first ``v<N>`` after ``version`` whose datasets do not exist (None: ``version`` is not ``v<N>``)."""
    m = re.fullmatch(r"v(\d+)", version)
    if not m:
        return None
    n = int(m.group(1)) + 1
    while any((root / i).exists() for i in dataset_ids(namespace, f"v{n}", tiny)):
        n += 1
    return f"v{n}"


def check_args(args: argparse.Namespace) -> None:
    """Raise :class:`~rl_adapters.errors.UsageError` for the first flag that cannot work; writes nothing."""
    limits = [("--train-steps", args.train_steps, 1, 300_000), ("--dataset-steps", args.dataset_steps, 2, 100_000),
              ("--start-steps", args.start_steps, 0, 10_000), ("--eval-every", args.eval_every, 1, 5_000),
              ("--seed", args.seed, 0, 0)]
    for flag, value, low, example in limits:
        if value < low:
            raise UsageError(f"{flag} {value}: must be an integer >= {low}; e.g. {flag} {example}")
    if not args.tiny and args.eval_every > args.train_steps:
        raise UsageError(f"--eval-every {args.eval_every} with --train-steps {args.train_steps}: no policy snapshot "
                         f"would be taken (the expert and medium datasets come from the snapshots); give "
                         f"--eval-every <= --train-steps, e.g. --eval-every {max(1, args.train_steps // 10)}")
    from minari.namespace import validate_namespace

    try:
        validate_namespace(args.namespace)
    except (TypeError, ValueError):
        raise UsageError(f"--namespace {args.namespace!r}: not a Minari namespace (letters, digits, -, _ and /, "
                         f"at least 2 characters); e.g. --namespace suite/hopper") from None
    if not re.fullmatch(r"v\d+", args.version):
        raise UsageError(f"--version {args.version!r}: Minari dataset ids end in -v<N>, so give v and a number; "
                         f"e.g. --version v0")
    _check_env(args.env, args.tiny)
    root = _root(args)
    existing = [i for i in dataset_ids(args.namespace, args.version, args.tiny) if (root / i).exists()]
    if existing and not args.overwrite:
        free = _free_version(root, args.namespace, args.version, args.tiny)
        other = f"another --namespace or --version, e.g. --version {free}" if free else "another --namespace"
        raise UsageError(f"--namespace {args.namespace}: dataset {existing[0]} exists already in {root}"
                         f"{f' (and {len(existing) - 1} more)' if len(existing) > 1 else ''}; pass --overwrite to "
                         f"delete and regenerate it, or {other}")


def run_from_args(args: argparse.Namespace) -> int:
    check_args(args)
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
