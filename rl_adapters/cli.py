"""``bilevel-rl``: train offline RL algorithms and generate datasets.

Algorithm hyper-parameters are not hard-coded here: every field of every registered algorithm's
``Config`` dataclass becomes a ``--field-name`` flag (bools get ``--x/--no-x``), and ``--set key=value``
reaches any field too.  Registering a new algorithm in ``rl_adapters.algorithms.ALGORITHMS`` is all it
takes to expose its options.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import sys
import typing
from collections.abc import Sequence
from typing import Any

__all__ = ["build_parser", "main"]


def _algorithm_fields() -> dict[str, tuple[type, list[str]]]:
    """field name -> (python type, algorithms that have it), across the registry."""
    from .algorithms import ALGORITHMS

    out: dict[str, tuple[type, list[str]]] = {}
    for name, cls in ALGORITHMS.items():
        hints = typing.get_type_hints(cls.Config)
        for f in dataclasses.fields(cls.Config):
            tp = hints.get(f.name, str)
            if f.name in out:
                out[f.name][1].append(name)
            else:
                out[f.name] = (tp, [name])
    return out


def _parse_literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # plain strings need no quotes: --set schedule=joint


def _add_train_args(p: argparse.ArgumentParser) -> set[str]:
    from .algorithms import ALGORITHMS

    p.add_argument("--algo", choices=sorted(ALGORITHMS), help="algorithm (required unless --resume)")
    p.add_argument("--dataset", help="Minari id, 'a+b' to concatenate, or '<ns>/<env>/medium-expert'")
    p.add_argument("--steps", type=int, default=100_000, help="gradient updates (default 100000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--out", default=None, help="output dir (default runs/<algo>-<dataset>-s<seed>)")
    p.add_argument(
        "--eval-every", type=int, default=10_000, help="evaluate every N steps (0: only at the end)"
    )
    p.add_argument(
        "--eval-episodes", type=int, default=10, help="episodes per evaluation (0: never evaluate)"
    )
    p.add_argument("--checkpoint-every", type=int, default=10_000, help="atomic checkpoint every N steps")
    p.add_argument(
        "--log-every", type=int, default=1_000, help="append mean losses to metrics.jsonl every N steps"
    )
    p.add_argument(
        "--normalized-score",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="report 100*(R-ref_min)/(ref_max-ref_min) (needs reference scores in the dataset)",
    )
    p.add_argument("--tensorboard", action="store_true", help="also write TensorBoard logs to OUT/tb")
    p.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=True, help="tqdm progress bar"
    )
    p.add_argument(
        "--plot", action=argparse.BooleanOptionalAction, default=True, help="write learning_curve.png"
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)"
    )
    p.add_argument(
        "--resume",
        metavar="DIR",
        default=None,
        help="continue the run in DIR from its checkpoint (settings are read from DIR/config.json)",
    )
    p.add_argument(
        "--max-steps-this-session",
        type=int,
        default=None,
        help="stop (after checkpointing) once this many updates ran in this invocation",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set any algorithm hyper-parameter, e.g. --set expectile=0.9 (repeatable)",
    )
    taken = {a.dest for a in p._actions}
    group = p.add_argument_group("algorithm hyper-parameters (each applies to the algorithms listed)")
    added = set()
    for name, (tp, algos) in sorted(_algorithm_fields().items()):
        if name in taken:
            continue  # reachable through --set
        flag = "--" + name.replace("_", "-")
        helptext = f"[{', '.join(algos)}]"
        if tp is bool:
            group.add_argument(
                flag,
                dest=f"hp_{name}",
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=helptext,
            )
        elif tp in (int, float, str):
            group.add_argument(flag, dest=f"hp_{name}", type=tp, default=argparse.SUPPRESS, help=helptext)
        else:
            group.add_argument(
                flag,
                dest=f"hp_{name}",
                type=_parse_literal,
                default=argparse.SUPPRESS,
                help=helptext + " (Python literal)",
            )
        added.add(name)
    return added


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bilevel-rl", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="train an offline RL algorithm on a Minari dataset")
    _add_train_args(tr)
    md = sub.add_parser("make-dataset", help="generate random/medium/medium-replay/expert Minari datasets")
    from .make_dataset import add_arguments

    add_arguments(md)
    aw = sub.add_parser("analyze-weights", help="score a dataset with a trained VACO meta-scorer (plots + JSON)")
    from .analysis import add_arguments as add_analysis_arguments

    add_analysis_arguments(aw)
    return parser


def _hparams_from_args(args: argparse.Namespace, algo: str) -> dict[str, Any]:
    hp = {k[3:]: v for k, v in vars(args).items() if k.startswith("hp_")}
    for item in args.overrides:
        if "=" not in item:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        hp[k.strip().replace("-", "_")] = _parse_literal(v.strip())
    from .algorithms import ALGORITHMS

    fields = {f.name for f in dataclasses.fields(ALGORITHMS[algo].Config)}
    wrong = sorted(set(hp) - fields)
    if wrong:
        owners = _algorithm_fields()
        detail = "; ".join(f"{w} belongs to {owners[w][1] if w in owners else 'no algorithm'}" for w in wrong)
        raise SystemExit(
            f"option(s) {wrong} do not apply to --algo {algo} ({detail}). Valid for {algo}: {sorted(fields)}"
        )
    return hp


def _train(args: argparse.Namespace) -> int:
    import torch

    from .trainer import NonFiniteLossError, TrainConfig, train

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.resume:
        from pathlib import Path

        cfg_path = Path(args.resume) / "config.json"
        if not cfg_path.exists():
            raise SystemExit(f"--resume {args.resume}: {cfg_path} not found (not a bilevel-rl run directory)")
        cfg = TrainConfig.from_dict(json.loads(cfg_path.read_text()))
        cfg.out = args.resume
        cfg.progress = args.progress
    else:
        if not args.algo or not args.dataset:
            raise SystemExit("bilevel-rl train: --algo and --dataset are required (or --resume DIR)")
        out = args.out or f"runs/{args.algo}-{args.dataset.replace('/', '_')}-s{args.seed}"
        cfg = TrainConfig(
            algo=args.algo,
            dataset=args.dataset,
            steps=args.steps,
            seed=args.seed,
            device=args.device,
            out=out,
            eval_every=args.eval_every,
            eval_episodes=args.eval_episodes,
            checkpoint_every=args.checkpoint_every,
            log_every=args.log_every,
            normalized_score=args.normalized_score,
            tensorboard=args.tensorboard,
            progress=args.progress,
            plot=args.plot,
            hparams=_hparams_from_args(args, args.algo),
        )
    try:
        summary = train(cfg, resume=bool(args.resume), max_steps_this_session=args.max_steps_this_session)
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    print(json.dumps(summary))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "train":
        return _train(args)
    if args.command == "analyze-weights":
        from .analysis import run_from_args as analyze

        return analyze(args)
    from .make_dataset import run_from_args

    return run_from_args(args)


if __name__ == "__main__":
    sys.exit(main())
