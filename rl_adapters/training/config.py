"""What a run is asked to do (:class:`TrainConfig`) and the checks that refuse a bad request before anything
is loaded or written (one line naming the flag, the value and a fix)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..algorithms import make_config
from ..data import check_dataset_available
from ..errors import UsageError

__all__ = ["DEFAULT_THREADS", "TrainConfig", "check_out_dir", "check_out_free", "clear_run_files", "default_eval_every",
           "default_log_every", "free_sibling", "resolve_device"]

#: torch CPU threads of a run unless set.  The networks are small (256x256 MLPs, batch 256): on an idle
#: 2-core box two threads were 1.45x faster than one, but with both cores busy they were 12x slower
#: (TD3+BC 6.7 vs 84.9 updates/s), see docs/rl.md "Threads".  One thread never oversubscribes; ask for
#: more with ``threads`` / ``--threads N`` (saved in config.json: bitwise resume needs the same count).
DEFAULT_THREADS = 1


@dataclass
class TrainConfig:
    algo: str
    dataset: str
    steps: int = 100_000
    seed: int = 0
    device: str = "auto"
    out: str = "runs/default"
    eval_every: int | None = None  # None: default_eval_every(steps), about 10 evaluations per run
    eval_episodes: int = 10
    checkpoint_every: int = 10_000
    log_every: int | None = None  # None: default_log_every(steps), about 50 rows of losses per run
    normalized_score: bool = True
    tensorboard: bool = False
    progress: bool = True
    plot: bool = True
    threads: int | None = DEFAULT_THREADS  # None: leave torch's thread count alone
    #: Train these seeds in one process (``--seeds 0,1,2,3``), each in ``out/seed<k>``; ``seed`` is then unused.
    seeds: list[int] | None = None
    #: ``torch.compile`` the losses of every update (``--compile``); see Algorithm.compile_losses.
    compile: bool = False
    #: Folder of saved value-only first phases (``--value-cache``): a run whose phase was trained before with
    #: the same settings starts after it (rl_adapters/training/value_cache.py). None: no cache.
    value_cache: str | None = None
    hparams: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        # Runs recorded before ``threads`` existed ran with torch's default.
        cfg = cls(**({"threads": None} | {k: v for k, v in d.items() if k in known}))
        if cfg.checkpoint_every == 0 and isinstance(cfg.steps, int):
            # Runs recorded while 0 meant "only at the end" (now refused): the same thing, said as a step count.
            cfg.checkpoint_every = max(1, cfg.steps)
        return cfg

    def resolved(self) -> TrainConfig:
        """A copy with the automatic defaults filled in (what ``config.json`` records)."""
        every = default_eval_every(self.steps - self.value_only_steps()) if self.eval_every is None else self.eval_every
        log_every = default_log_every(self.steps) if self.log_every is None else self.log_every
        return dataclasses.replace(self, eval_every=every, log_every=log_every, hparams=dict(self.hparams))

    def value_only_steps(self) -> int:
        """The updates of a value-only first phase, which the trainer does not evaluate (the policy is untouched):
        VACO's ``two_phase`` schedule spends ``round(value_fraction * steps)`` updates there, ARQ its behaviour
        model and Q-only phase (``BaseConfig.value_only_steps``).  The default ``eval_every`` spreads its ten
        evaluations over the rest of the run.  0 for the other algorithms."""
        try:
            algo_cfg = make_config(self.algo, **self.hparams)
        except (UsageError, ValueError, TypeError, KeyError):
            return 0  # validate() names the bad option
        if not isinstance(self.steps, int):
            return 0
        return min(max(0, algo_cfg.value_only_steps(self.steps)), self.steps - 1)

    def check_seeds(self) -> None:
        from .seed_stack import stackable_algorithms

        seeds = self.seeds or []
        text = ",".join(map(str, seeds))
        if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**32 for s in seeds):
            raise UsageError(f"--seeds {text!r}: give non-negative integers, e.g. --seeds 0,1,2,3")
        if len(set(seeds)) != len(seeds):
            raise UsageError(f"--seeds {text}: a seed is repeated; give distinct seeds, e.g. --seeds 0,1,2,3")
        if self.algo not in stackable_algorithms():
            raise UsageError(f"--seeds with --algo {self.algo}: this algorithm trains one seed per process; "
                             f"--seeds works for {', '.join(stackable_algorithms())}. Run one process per seed")

    def validate(self, check_dataset: bool = True) -> None:
        """Raise :class:`~rl_adapters.errors.UsageError` naming the flag, the value and a fix for the
        first setting that cannot work; cheap (no data is loaded, nothing is written)."""

        def need_int(flag: str, value: Any, low: int, what: str, example: Any, none_ok: bool = False) -> None:
            if value is None and none_ok:
                return
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise UsageError(f"{flag} {value!r}: must be an integer >= {low} ({what}); e.g. {flag} {example}")

        need_int("--steps", self.steps, 1, "the number of gradient updates", 100_000)
        need_int("--seed", self.seed, 0, "numpy seeds must be non-negative", 0)
        if self.seed >= 2**32:
            raise UsageError(f"--seed {self.seed}: must be < 2**32 (numpy's seed range); e.g. --seed 0")
        steps = self.steps if isinstance(self.steps, int) and self.steps > 0 else 100_000
        need_int("--eval-every", self.eval_every, 0, "0: evaluate only at the end", default_eval_every(steps),
                 none_ok=True)
        need_int("--eval-episodes", self.eval_episodes, 0, "0: never evaluate", 10)
        need_int("--checkpoint-every", self.checkpoint_every, 1, "updates between checkpoints; a value >= --steps "
                 "checkpoints only at the end", 10_000)
        need_int("--log-every", self.log_every, 1, "steps per line of metrics.jsonl", default_log_every(steps),
                 none_ok=True)
        need_int("--threads", self.threads, 1, "torch CPU threads", DEFAULT_THREADS, none_ok=True)
        if self.seeds is not None:
            self.check_seeds()
        if not isinstance(self.dataset, str) or not self.dataset.strip():
            raise UsageError(f"--dataset {self.dataset!r}: must name a Minari dataset, e.g. "
                             f"--dataset suite/hopper/medium-v0")
        resolve_device(self.device)
        check_out_dir(self.out)
        algo_cfg = make_config(self.algo, **self.hparams)
        if isinstance(self.steps, int):
            try:  # options whose validity depends on --steps (ARQ's behaviour-model phase)
                algo_cfg.check_steps(self.steps)
            except ValueError as e:
                raise UsageError(f"--algo {self.algo}: {e}") from e
        if check_dataset:
            check_dataset_available(self.dataset)


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2,3"`` -> ``[0, 1, 2, 3]`` (also ``"0-3"``); a :class:`UsageError` naming ``--seeds`` otherwise."""
    parts = [part.strip() for part in text.split(",")]
    try:
        seeds: list[int] = []
        for k, part in enumerate(parts):
            lo, sep, hi = part.partition("-")
            if sep and 0 <= int(hi) < int(lo):
                fixed = ",".join(parts[:k] + [f"{int(hi)}-{int(lo)}"] + parts[k + 1:])
                raise UsageError(f"--seeds {text}: the range {part} is empty (a range counts up: low-high); "
                                 f"e.g. --seeds {fixed}")
            seeds += list(range(int(lo), int(hi) + 1)) if sep else [int(lo)]
    except UsageError:
        raise
    except ValueError:
        raise UsageError(f"--seeds {text!r}: give comma-separated integers or a range, e.g. --seeds 0,1,2,3 or "
                         f"--seeds 0-3") from None
    if not seeds:
        raise UsageError(f"--seeds {text!r}: lists no seed; e.g. --seeds 0,1,2,3 or --seeds 0-3")
    return seeds


def default_eval_every(steps: int) -> int:
    """``ceil(steps / 10)``: ten evaluations per run (the last one at the end)."""
    return max(1, -(-steps // 10))


#: The most steps one row of ``metrics.jsonl`` averages over by default (a long run: a row per 1000 updates).
MAX_DEFAULT_LOG_EVERY = 1_000


def default_log_every(steps: int) -> int:
    """``ceil(steps / 50)``, at most 1000: about 50 rows of mean losses per run, so that a short run's curve has
    points too (a 2000-step run logs every 40 steps; a loss that exists in one half of it still gets 25 points),
    and a long one logs every 1000 steps as before."""
    return max(1, min(MAX_DEFAULT_LOG_EVERY, -(-steps // 50)))


def check_out_dir(out: str) -> None:
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out {out}: is an existing file, not a directory; pass a new directory (or a "
                         f"previous run's), e.g. --out runs/{path.stem or 'run'}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"--out {out}: {parent} is a file, so no directory can be made under it; "
                                 f"pass a path under a directory, e.g. --out runs/{path.name}")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise UsageError(f"--out {out}: {parent} is not writable; pass a directory you can write "
                                 f"to, e.g. --out runs/{path.name}")
            break


#: Entries ``bilevel-rl train`` writes into a run directory besides ``*.png`` figures, ``*.tmp`` files of atomic
#: writes and the ``seed<k>/`` folders of a multi-seed run (``weights/``: ``analyze-weights``' default output).
_RUN_ENTRIES = {"config.json", "metrics.jsonl", "checkpoint.pt", "summary.json", "tb", "weights",
                "arq_candidates.pt", "arq_candidates.json", "arq_candidates.partial.pt", "value_phase.json"}
#: Written by a run that took its value phase from ``--value-cache``: ``{"from": entry, "steps": updates}``.
VALUE_PHASE_FILE = "value_phase.json"


def _is_run_entry(path: Path) -> bool:
    name = path.name
    if name in _RUN_ENTRIES or name.endswith(".tmp"):
        return True
    if name.endswith(".png"):
        return path.is_file()
    return re.fullmatch(r"seed\d+", name) is not None and path.is_dir()


def _holds_run(path: Path) -> bool:
    """Whether ``path/config.json`` is the configuration of a ``bilevel-rl train`` run."""
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and {"algo", "dataset", "steps"} <= set(cfg)


def free_sibling(out: str) -> str:
    """``OUT-2`` (or ``-3``, ...): a directory name next to ``out`` that does not exist yet."""
    base = out.rstrip("/") or "/"
    if Path(base).name in ("", ".", ".."):
        base = str(Path(base).resolve())
    n = 2
    while Path(f"{base}-{n}").exists():
        n += 1
    return f"{base}-{n}"


def check_out_free(out: str, overwrite: bool = False) -> bool:
    """Refuse (:class:`~rl_adapters.errors.UsageError`) to start a new run in ``out`` when it holds an earlier
    run or any other file, unless ``overwrite``; reads only.  Returns whether ``out`` holds an earlier run whose
    files the new run deletes first (:func:`clear_run_files`).

    A new or empty directory is free; so is the debris of a run stopped before its first checkpoint (only the
    files a run writes, no ``checkpoint.pt``: nothing to resume), which the new run replaces.  With ``overwrite``
    an earlier run is replaced, and a directory holding no run receives the new run beside its files."""
    path = Path(out)
    if not path.is_dir():
        return False  # a new directory (an existing file is check_out_dir's refusal)
    entries = sorted(path.iterdir())
    if not entries:
        return False
    q, other = shlex.quote(out), shlex.quote(free_sibling(out))
    if _holds_run(path):
        runs = [path, *(e for e in entries if re.fullmatch(r"seed\d+", e.name) and e.is_dir())]
        checkpoints = [d for d in runs if (d / "checkpoint.pt").is_file()]
        summaries = [d for d in runs if (d / "summary.json").is_file()]
        foreign = [e for e in entries if not _is_run_entry(e)]
        if not checkpoints and not summaries and not foreign:
            return True  # stopped before its first checkpoint: nothing to resume
        if overwrite:
            return True
        if summaries and all(d in summaries for d in checkpoints):
            raise UsageError(f"--out {out}: holds a finished run (summary.json); replace it with --overwrite, or "
                             f"pass another --out, e.g. --out {other}")
        if checkpoints:
            raise UsageError(f"--out {out}: holds an unfinished run (checkpoint.pt); continue it with --resume {q}, "
                             f"replace it with --overwrite, or pass another --out, e.g. --out {other}")
    if overwrite:
        return False
    names = ", ".join(e.name for e in entries[:3]) + (", ..." if len(entries) > 3 else "")
    raise UsageError(f"--out {out}: is not empty ({len(entries)} entries: {names}) and a new run would mix its "
                     f"files with them; pass another --out, e.g. --out {other}, or --overwrite to write the run "
                     f"into it anyway")


def clear_run_files(out: str | Path) -> None:
    """Delete what an earlier ``bilevel-rl train`` run wrote into ``out`` (``--overwrite``); other files stay."""
    path = Path(out)
    if not _holds_run(path):
        return
    for entry in path.iterdir():
        if _is_run_entry(entry):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> cuda if available else cpu; ``cpu``, ``cuda``, ``cuda:N`` and ``mps`` are checked
    against this machine (:class:`~rl_adapters.errors.UsageError` otherwise)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device {device!r}: not a device bilevel-rl can train on; use auto, cpu, cuda or "
                         f"cuda:N (e.g. --device cuda:0)")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: torch.cuda.is_available() is False on this machine (no GPU "
                             f"visible or a CPU-only torch build); use --device cpu or --device auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                             f"use --device cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {device}: torch.backends.mps.is_available() is False; use --device cpu")
    return dev
