"""``bilevel-rl``: train offline RL algorithms and generate datasets.

Algorithm hyper-parameters are not hard-coded here: every field of every registered algorithm's
``Config`` dataclass becomes a ``--field-name`` flag (bools get ``--x/--no-x``), and ``--set key=value``
reaches any field too.  Registering a new algorithm (``@register`` in its module, see
:mod:`rl_adapters.algorithms`) is all it takes to expose its options.

Errors are one line on stderr naming the flag, the value and a fix (``--debug`` shows the traceback);
exit codes: 2 usage error, 1 unreadable checkpoint or unusable dataset, 3 training diverged, 130 / 143 stopped
by SIGINT (Ctrl-C) / SIGTERM (``train`` checkpoints the current step first and prints the command that
continues the run).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import shlex
import signal
import sys
import textwrap
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import CheckpointError, UsageError

__all__ = ["build_parser", "main"]

# Flags of `train` that may differ from a resumed run's config.json: they change how the run is
# shown or scheduled, not what it computes.
_RESUME_FREE = {"command", "resume", "progress", "max_steps_this_session", "debug"}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (argparse prints the whole usage block first)."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's, but help lines break at spaces only: a flag, an algorithm (aspc-iql) or a value stays whole."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        text = " ".join(text.split())
        return textwrap.wrap(text, width, break_on_hyphens=False, break_long_words=False)


def _algorithm_fields() -> dict[str, tuple[type, dict[str, dataclasses.Field]]]:
    """field name -> (python type, {algorithm: its ``Config`` field}), across the registry in its order."""
    from .algorithms import ALGORITHMS

    out: dict[str, tuple[type, dict[str, dataclasses.Field]]] = {}
    for name, cls in ALGORITHMS.items():
        hints = typing.get_type_hints(cls.Config)
        for f in dataclasses.fields(cls.Config):
            out.setdefault(f.name, (hints.get(f.name, str), {}))[1][name] = f
    return out


def _grouped(by_algo: dict[str, str]) -> list[tuple[str, list[str]]]:
    """``{algo: text}`` -> ``[(text, algos)]``, in the order of each text's first algorithm."""
    groups: dict[str, list[str]] = {}
    for algo, text in by_algo.items():
        groups.setdefault(text, []).append(algo)
    return list(groups.items())


def _option_help(fields: dict[str, dataclasses.Field]) -> str:
    """``--help`` of one algorithm flag, from each algorithm's field (:mod:`rl_adapters.algorithms.options`):
    ``[algorithms (with the allowed values of a string option)] what it is (unit, range). Default: d.``"""
    from .algorithms.options import range_text

    choices = {a: f.metadata.get("choices") for a, f in fields.items()}
    if any(choices.values()):
        which = "; ".join(f"{', '.join(a)}: {c}" for c, a in _grouped(
            {a: "|".join(c) if c else "any string" for a, c in choices.items()}))
    else:
        which = ", ".join(fields)
    texts = {}
    for algo, f in fields.items():
        meta = f.metadata
        details = [d for d in (meta.get("unit"), meta.get("range") and range_text(meta["range"])) if d]
        texts[algo] = meta.get("help", "(no help)") + (f" ({', '.join(details)})" if details else "")
    described = _grouped(texts)
    what = described[0][0] if len(described) == 1 else ". ".join(f"{', '.join(a)}: {t}" for t, a in described)

    def shown(value: Any) -> str:
        return ("on" if value else "off") if isinstance(value, bool) else repr(value) if isinstance(value, float) \
            else str(value)

    (default, _), *others = _grouped({a: shown(f.default) for a, f in fields.items()})
    if others:
        default += " (" + "; ".join(f"{', '.join(a)}: {d}" for d, a in others) + ")"
    return f"[{which}] {what}. Default: {default}."


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
    p.add_argument("--seeds", default=None, metavar="LIST",
                   help="train several seeds in one process, e.g. 0,1,2,3 or 0-3 (BC, TD3+BC, IQL, ASPC); each seed "
                        "writes a single run's files into OUT/seed<k>")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--out", default=None, help="output dir (default runs/<algo>-<dataset>-s<seed>); must be new or "
                   "empty: an earlier run there is continued with --resume or replaced with --overwrite")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run in --out even if it holds an earlier run (whose files are deleted once "
                        "the new run's data has loaded) or other files (kept)")
    p.add_argument(
        "--eval-every",
        type=int,
        default=None,
        help="evaluate every N steps (0: only at the end; default ceil(steps/10), i.e. 10 evaluations)",
    )
    p.add_argument(
        "--eval-episodes", type=int, default=10, help="episodes per evaluation (0: never evaluate)"
    )
    p.add_argument("--checkpoint-every", type=int, default=10_000,
                   help="atomic checkpoint every N steps (N >= 1; the end of the run, Ctrl-C and SIGTERM checkpoint "
                        "too; N >= --steps: only those)")
    p.add_argument(
        "--log-every", type=int, default=None,
        help="append mean losses to metrics.jsonl every N steps (default ceil(steps/50), at most 1000)"
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
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default 1: more threads speed small MLPs up at best 1.5x on an idle "
        "machine but slow them down many times when the cores are busy; see docs/rl.md)",
    )
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the losses of each update (opt-in: minutes of compilation first; "
                        "docs/benchmarks.md measures what it buys)")
    p.add_argument("--value-cache", metavar="DIR", default=None,
                   help="reuse the value-only first phase (VACO two_phase) of an earlier run with the same settings "
                        "from DIR, or save this run's there (bit-identical result; saves that phase's time)")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
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
    group = p.add_argument_group(
        "algorithm hyper-parameters (each applies to the algorithms listed)",
        "[the algorithms that have the flag, with the values a string option takes] what it is (its unit, its "
        "range). Default: its value (where algorithms differ: algorithm: value). --set KEY=VALUE sets them too.")
    added = set()
    for name, (tp, fields) in sorted(_algorithm_fields().items()):
        if name in taken:
            continue  # reachable through --set
        flag = "--" + name.replace("_", "-")
        helptext = _option_help(fields).replace("%", "%%")  # argparse %-formats help
        if tp is bool:
            group.add_argument(
                flag,
                dest=f"hp_{name}",
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=helptext,
            )
        elif tp in (int, float, str):
            group.add_argument(
                flag, dest=f"hp_{name}", type=tp, default=argparse.SUPPRESS, metavar=name.upper(), help=helptext
            )
        else:
            group.add_argument(
                flag,
                dest=f"hp_{name}",
                type=_parse_literal,
                default=argparse.SUPPRESS,
                metavar=name.upper(),
                help=helptext + " A Python literal (e.g. None).",
            )
        added.add(name)
    return added


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bilevel-rl", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="train an offline RL algorithm on a Minari dataset",
                        formatter_class=_HelpFormatter)
    _add_train_args(tr)
    md = sub.add_parser("make-dataset", help="generate random/medium/medium-replay/expert Minari datasets")
    from .datasets.cli import add_arguments

    add_arguments(md)
    aw = sub.add_parser("analyze-weights", help="score a dataset with a trained VACO meta-scorer (plots + JSON)")
    from .vaco_analysis import add_arguments as add_analysis_arguments

    add_analysis_arguments(aw)
    return parser


def _hparams_from_args(args: argparse.Namespace, algo: str) -> dict[str, Any]:
    hp = {k[3:]: v for k, v in vars(args).items() if k.startswith("hp_")}
    for item in args.overrides:
        if "=" not in item:
            raise UsageError(f"--set {item!r}: expects KEY=VALUE, e.g. --set expectile=0.9")
        k, v = item.split("=", 1)
        hp[k.strip().replace("-", "_")] = _parse_literal(v.strip())
    from .algorithms import ALGORITHMS

    fields = {f.name for f in dataclasses.fields(ALGORITHMS[algo].Config)}
    wrong = sorted(set(hp) - fields)
    if wrong:
        owners = _algorithm_fields()
        detail = "; ".join(f"{w} belongs to {list(owners[w][1]) if w in owners else 'no algorithm'}" for w in wrong)
        raise UsageError(
            f"option(s) {wrong} do not apply to --algo {algo} ({detail}). Valid for {algo}: {sorted(fields)}"
        )
    return hp


def _explicit_train_flags(argv: Sequence[str]) -> set[str]:
    """The ``train`` dests given on the command line (a default-free parse of the same argv)."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for action in sub.choices["train"]._actions:
        if action.dest != "help":
            action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(list(argv))))


def _check_resume_flags(args: argparse.Namespace, explicit: set[str], cfg: Any) -> None:
    """Refuse flags that would change a resumed run: it continues with the settings it started with."""
    from .algorithms import make_config

    saved_hp = dataclasses.asdict(make_config(cfg.algo, **cfg.hparams))
    given_hp = _hparams_from_args(args, cfg.algo) if (args.overrides or any(
        d.startswith("hp_") for d in explicit)) else {}
    conflicts = []
    for dest in sorted(explicit - _RESUME_FREE - {"overrides"}):
        if dest.startswith("hp_"):
            continue
        value, saved = getattr(args, dest), getattr(cfg, dest, None)
        if dest == "threads" and saved is None:  # a run recorded before threads were saved: take the flag
            cfg.threads = value
            continue
        if dest == "out":
            value, saved = str(Path(value).resolve()), str(Path(cfg.out).resolve())
        if dest == "seeds":
            from .training.config import parse_seeds

            value = parse_seeds(value)
        if value != saved:
            conflicts.append((f"--{dest.replace('_', '-')} {value}", f"{dest}={saved}"))
    for k, v in sorted(given_hp.items()):
        if v != saved_hp.get(k):
            conflicts.append((f"--{k.replace('_', '-')} {v}", f"{k}={saved_hp.get(k)}"))
    if not conflicts:
        return
    flag, saved = conflicts[0]
    hint = (
        f"to train longer start a new run, e.g. --out {args.resume}-longer {flag} (schedules such as "
        f"IQL's cosine lr depend on --steps, so a run cannot be extended exactly)"
        if flag.startswith("--steps ")
        else f"drop it, or start a new run with it, e.g. --out {args.resume}-new {flag}"
    )
    raise UsageError(
        f"{flag} with --resume {args.resume}: the run was started with {saved} (config.json) and --resume "
        f"continues it unchanged; {hint}"
    )


def _train(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .training import NonFiniteLossError, StopOnSignals, TrainConfig, train
    from .training.config import check_out_free

    clear_out = False
    if args.resume and args.overwrite:
        raise UsageError(f"--overwrite with --resume {args.resume}: --resume continues that run and --overwrite "
                         f"would start a new one over it; give one of them")
    if args.resume:
        run = Path(args.resume)
        cfg_path = run / "config.json"
        if not run.is_dir():
            raise UsageError(f"--resume {args.resume}: no such directory; pass a run directory written by "
                             f"bilevel-rl train (it holds config.json and checkpoint.pt)")
        if not cfg_path.exists():
            raise UsageError(f"--resume {args.resume}: {cfg_path} not found (not a bilevel-rl run directory); "
                             f"pass the --out directory of an earlier run")
        try:
            cfg = TrainConfig.from_dict(json.loads(cfg_path.read_text()))
        except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{cfg_path}: not a readable run configuration ({type(e).__name__}: {e}); "
                                  f"start the run again without --resume") from e
        cfg.out = args.resume
        _check_resume_flags(args, _explicit_train_flags(argv), cfg)
        cfg.progress = args.progress
    else:
        if not args.algo or not args.dataset:
            raise UsageError("--algo and --dataset are required (or --resume DIR); e.g. --algo iql "
                             "--dataset suite/hopper/medium-v0")
        seeds = None
        if args.seeds is not None:
            from .training.config import parse_seeds

            if "seed" in _explicit_train_flags(argv):
                raise UsageError(f"--seed {args.seed} with --seeds {args.seeds}: give one of them (--seeds lists "
                                 f"every seed of a multi-seed run)")
            seeds = parse_seeds(args.seeds)
        tag = f"s{args.seed}" if seeds is None else "s" + "_".join(map(str, seeds))
        out = args.out or f"runs/{args.algo}-{args.dataset.replace('/', '_')}-{tag}"
        cfg = TrainConfig(
            algo=args.algo,
            dataset=args.dataset,
            steps=args.steps,
            seed=args.seed if seeds is None else seeds[0],
            seeds=seeds,
            compile=args.compile,
            value_cache=args.value_cache,
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
        if args.threads is not None:
            cfg.threads = args.threads
        clear_out = check_out_free(cfg.out, args.overwrite)
    with StopOnSignals() as stop:
        try:
            summary = train(cfg, resume=bool(args.resume), max_steps_this_session=args.max_steps_this_session,
                            clear_out=clear_out, stop=stop)
        except NonFiniteLossError as e:
            if args.debug:
                raise
            _error(args, e)
            return 3
        except KeyboardInterrupt:  # outside the update loop, or a second signal: no step of its own to save
            if args.debug:
                raise
            print(f"bilevel-rl train: {_interrupted_where(Path(cfg.out))}", file=sys.stderr)
            return 128 + (stop.signum or signal.SIGINT)
    if summary["status"] == "interrupted" and stop.signum is not None:
        print(f"bilevel-rl train: interrupted at step {summary['steps']}; continue with: bilevel-rl train --resume "
              f"{shlex.quote(cfg.out)}", file=sys.stderr)
        return 128 + stop.signum
    print(json.dumps(summary))
    return 0


def _interrupted_where(out: Path) -> str:
    """What an interrupt that found no update to checkpoint left in ``out``, and what to do next."""
    runs = [out, *sorted(out.glob("seed*"))]
    if any((d / "summary.json").exists() for d in runs):
        return f"interrupted after the run finished (its results are in {out})"
    if any((d / "checkpoint.pt").exists() for d in runs):
        return (f"interrupted; continue from the last checkpoint with: bilevel-rl train --resume "
                f"{shlex.quote(str(out))}")
    return "interrupted before the first checkpoint, so there is nothing to resume; start the run again"


def _error(args: argparse.Namespace, e: BaseException) -> None:
    text = " ".join(str(e).split("\n")).strip() or type(e).__name__
    print(f"bilevel-rl {args.command}: error: {text}", file=sys.stderr)


def _run_command(args: argparse.Namespace, argv: Sequence[str]) -> int:
    if args.command == "analyze-weights":
        from .vaco_analysis import run_from_args as analyze

        return analyze(args)
    if args.command == "make-dataset":
        from .datasets.cli import run_from_args

        return run_from_args(args)
    return _train(args, argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    from .data import DatasetError, DatasetNotFoundError
    from .evaluation import MissingReferenceScoresError

    try:
        return _run_command(args, argv)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"bilevel-rl {args.command}: interrupted", file=sys.stderr)
        return 130
    except (UsageError, DatasetNotFoundError, MissingReferenceScoresError) as e:
        if args.debug:
            raise
        _error(args, e)
        return 2
    except (CheckpointError, DatasetError) as e:
        if args.debug:
            raise
        _error(args, e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
