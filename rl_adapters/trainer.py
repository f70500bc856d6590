"""Offline training loop: sample -> update -> log -> evaluate -> checkpoint, resumable bit for bit.

Reproducibility contract: a run interrupted after a checkpoint and resumed with ``resume=True``
reaches exactly the parameters of an uninterrupted run with the same seed (same device, same
thread count, which ``config.json`` records).  This holds because every source of randomness is
saved in the checkpoint: the algorithm's networks, optimizers, schedulers, step counter, noise
generator and carried attributes (``Algorithm.checkpoint_attrs``), the batch-sampling
``torch.Generator``, the global torch (and CUDA) RNG, numpy's and Python's global RNGs.  Evaluation
uses its own env seeds and touches none of them.  The partial sums of the current logging window are
saved too, so ``metrics.jsonl`` of a resumed run equals the uninterrupted one except for the
wall-clock field ``updates_per_s``.

Checkpoints hold only tensors and plain Python values and are read with
``torch.load(weights_only=True)``: a checkpoint from elsewhere cannot run code when loaded.

Inputs are checked before anything is loaded or written (:meth:`TrainConfig.validate`); a run that
fails before its first checkpoint removes the output directory it created.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import random
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .algorithms import Algorithm, make_algorithm, make_config
from .data import OfflineData, check_dataset_available, load_dataset
from .errors import CheckpointError, UsageError
from .evaluation import evaluate, make_eval_env_fn

__all__ = [
    "DEFAULT_THREADS",
    "NonFiniteLossError",
    "TrainConfig",
    "default_eval_every",
    "load_checkpoint",
    "read_checkpoint",
    "resolve_device",
    "save_checkpoint",
    "train",
]

CHECKPOINT = "checkpoint.pt"
#: torch CPU threads of a run unless set.  The networks are small (256x256 MLPs, batch 256): on an idle
#: 2-core box two threads were 1.45x faster than one, but with both cores busy they were 12x slower
#: (TD3+BC 6.7 vs 84.9 updates/s), see docs/rl.md "Threads".  One thread never oversubscribes; ask for
#: more with ``threads`` / ``--threads N`` (saved in config.json: bitwise resume needs the same count).
DEFAULT_THREADS = 1
#: Metrics that measure time, not training: the only fields in which a resumed run's
#: ``metrics.jsonl`` may differ from an uninterrupted one.
TIMING_FIELDS = ("updates_per_s",)


class NonFiniteLossError(RuntimeError):
    """An update produced a NaN/inf diagnostic; the run stopped, the last good checkpoint is kept."""


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
    log_every: int = 1_000
    normalized_score: bool = True
    tensorboard: bool = False
    progress: bool = True
    plot: bool = True
    threads: int | None = DEFAULT_THREADS  # None: leave torch's thread count alone
    hparams: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        # Runs recorded before ``threads`` existed ran with torch's default.
        return cls(**({"threads": None} | {k: v for k, v in d.items() if k in known}))

    def resolved(self) -> TrainConfig:
        """A copy with the automatic defaults filled in (what ``config.json`` records)."""
        every = default_eval_every(self.steps) if self.eval_every is None else self.eval_every
        return dataclasses.replace(self, eval_every=every, hparams=dict(self.hparams))

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
        need_int("--eval-every", self.eval_every, 0, "0: evaluate only at the end", default_eval_every(
            self.steps if isinstance(self.steps, int) and self.steps > 0 else 100_000), none_ok=True)
        need_int("--eval-episodes", self.eval_episodes, 0, "0: never evaluate", 10)
        need_int("--checkpoint-every", self.checkpoint_every, 0, "0: checkpoint only at the end", 10_000)
        need_int("--log-every", self.log_every, 1, "steps per line of metrics.jsonl", 1_000)
        need_int("--threads", self.threads, 1, "torch CPU threads", DEFAULT_THREADS, none_ok=True)
        if not isinstance(self.dataset, str) or not self.dataset.strip():
            raise UsageError(f"--dataset {self.dataset!r}: must name a Minari dataset, e.g. "
                             f"--dataset suite/hopper/medium-v0")
        resolve_device(self.device)
        _check_out_dir(self.out)
        algo_cfg = make_config(self.algo, **self.hparams)
        if hasattr(algo_cfg, "check_steps") and isinstance(self.steps, int):
            try:  # options whose validity depends on --steps (ARQ's behaviour-model phase)
                algo_cfg.check_steps(self.steps)
            except ValueError as e:
                raise UsageError(f"--algo {self.algo}: {e}") from e
        if check_dataset:
            check_dataset_available(self.dataset)


def default_eval_every(steps: int) -> int:
    """``ceil(steps / 10)``: ten evaluations per run (the last one at the end)."""
    return max(1, -(-steps // 10))


def _check_out_dir(out: str) -> None:
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


def _atomic_write_bytes(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # readers see the old or the new file, never a torn one


def _atomic_write_json(path: Path, obj: Any) -> None:
    _atomic_write_bytes(path, lambda f: f.write(json.dumps(obj, indent=2).encode()))


def _global_rng_states() -> dict[str, Any]:
    """torch, CUDA, numpy and Python RNG states as tensors and plain values (``weights_only``-loadable)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy_rng": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python_rng": {
            "version": int(version),
            "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
    }


def _set_global_rng_states(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch_rng"].cpu())
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
    n, p = state["numpy_rng"], state["python_rng"]
    if isinstance(n, dict):
        n = (n["kind"], n["keys"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    np.random.set_state(n)  # a tuple: checkpoints written before the RNG states became tensors
    if isinstance(p, dict):
        p = (p["version"], tuple(int(x) for x in p["internal"].tolist()), p["gauss_next"])
    random.setstate(p)


def save_checkpoint(path: Path, algo: Algorithm, sampler: torch.Generator, extra: dict[str, Any]) -> None:
    """Atomically write algorithm state plus every RNG state to ``path`` (tensors and plain values only)."""
    state = {
        "algorithm": algo.state_dict(),
        "sampler_rng": sampler.get_state(),
        **_global_rng_states(),
        **extra,
    }
    _atomic_write_bytes(path, lambda f: torch.save(state, f))


# ``np.ndarray.__reduce__`` names numpy's array reconstructor without touching the deprecated np.core.
_NUMPY_GLOBALS = [np.empty(0).__reduce__()[0], np.ndarray, np.dtype, type(np.dtype(np.uint32))]
_CHECKPOINT_KEYS = ("algorithm", "sampler_rng", "torch_rng", "numpy_rng", "python_rng", "step")


def read_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load ``path`` with ``torch.load(weights_only=True)``; a :class:`~rl_adapters.errors.CheckpointError`
    (one line, naming the file) if it is missing, unreadable, holds a pickled object, or lacks a key."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"--resume {path.parent}: no {path.name} there (the run never reached a "
                              f"checkpoint); start it again without --resume")
    try:
        # numpy arrays (no code) are allowed so that checkpoints written before the RNG states were
        # stored as tensors still load.
        with torch.serialization.safe_globals(_NUMPY_GLOBALS):
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = re.search(r"GLOBAL ([\w.]+)", str(e))
        if unsafe is None:  # garbage bytes the unpickler choked on
            raise CheckpointError(f"{path}: not a readable checkpoint (UnpicklingError); it is truncated or not "
                                  f"a torch file: restore it or start the run again without --resume") from e
        raise CheckpointError(
            f"{path}: refused: it holds a pickled Python object (GLOBAL {unsafe.group(1)}) that could run code "
            f"when loaded; bilevel-rl checkpoints hold only tensors and plain values, so this file was not "
            f"written by bilevel-rl train (use one that was, or start the run again without --resume)"
        ) from e
    except Exception as e:  # truncated zip (RuntimeError), empty file (EOFError), random bytes, ...
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({type(e).__name__}: {_first_line(e) or 'empty file'}); it "
            f"is truncated or not a torch file: restore it or start the run again without --resume"
        ) from e
    missing = [k for k in _CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a bilevel-rl checkpoint (no {', '.join(missing)}); start the run "
                              f"again without --resume")
    return state


def _first_line(e: BaseException) -> str:
    """The first sentence of an exception's message (library messages run to paragraphs)."""
    text = str(e).strip()
    return text.splitlines()[0].split(". ")[0][:160] if text else ""


def restore_checkpoint(state: dict[str, Any], algo: Algorithm, sampler: torch.Generator) -> None:
    """Put a :func:`read_checkpoint` dict back into ``algo``, ``sampler`` and the global RNGs."""
    algo.load_state_dict(state["algorithm"])
    sampler.set_state(state["sampler_rng"].cpu())
    _set_global_rng_states(state)


def load_checkpoint(path: Path, algo: Algorithm, sampler: torch.Generator) -> dict[str, Any]:
    """Restore what :func:`save_checkpoint` wrote; returns the checkpoint dict (for ``step`` etc.)."""
    state = read_checkpoint(path, algo.device)
    restore_checkpoint(state, algo, sampler)
    return state


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of ``metrics.jsonl``; a torn last line (a kill mid-write) is skipped."""
    rows = []
    for ln in path.read_text().splitlines():
        if ln.strip():
            try:
                rows.append(json.loads(ln))
            except json.JSONDecodeError:
                continue
    return rows


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Drop metric lines written after the checkpoint we resume from (they will be written again)."""
    if not path.exists():
        return
    keep = [json.dumps(r) for r in _read_metrics(path) if r.get("step", 0) <= last_step]
    _atomic_write_bytes(path, lambda f: f.write("".join(ln + "\n" for ln in keep).encode()))


def loss_series(rows: list[dict[str, Any]]) -> dict[str, tuple[list[int], list[float]]]:
    """``{name: (steps, values)}`` for every ``*loss`` metric of the training rows of ``metrics.jsonl``.

    Each series covers only the rows that report it: VACO's bi-level losses start at its second phase,
    TD3+BC's actor loss is absent from windows without an actor update.
    """
    series: dict[str, tuple[list[int], list[float]]] = {}
    for r in rows:
        if "eval_return" in r:
            continue
        for k, v in r.items():
            if k.endswith("loss") and isinstance(v, (int, float)) and not isinstance(v, bool):
                steps, values = series.setdefault(k, ([], []))
                steps.append(int(r["step"]))
                values.append(float(v))
    return dict(sorted(series.items()))


def _decade_label(v: float, linthresh: float = 1.0, stride: int = 1) -> str:
    """``0``, ``10²``, ``-10⁻³`` for the decade ticks of a symlog axis; every ``stride``-th decade only
    (counted from ``linthresh``), and nothing for a tick that is not a decade."""
    if v == 0:
        return "0"
    exp = round(math.log10(abs(v)))
    if not math.isclose(abs(v), 10.0**exp, rel_tol=1e-6):
        return ""
    if (exp - round(math.log10(linthresh))) % stride:
        return ""
    return f"${'-' if v < 0 else ''}10^{{{exp}}}$"


def _symlog_decades(ax: Any, values: list[float]) -> None:
    """Symlog y axis labelled at decades only, linear below the decade of the 5th percentile of |v|.

    Losses of one run span decades and may be negative (TD3+BC's actor loss): a log scale on both
    sides of 0.  matplotlib's default symlog labels put ``1.59708x10^-1``-style labels next to ``0``;
    here the linear part is as tall as a decade and at most ~10 decades carry a label.
    """
    from matplotlib.ticker import FuncFormatter, NullLocator, SymmetricalLogLocator

    magnitudes = sorted(abs(v) for v in values if v != 0 and math.isfinite(v))
    if not magnitudes:
        return
    linthresh = 10.0 ** math.floor(math.log10(magnitudes[len(magnitudes) // 20]))
    ax.set_yscale("symlog", linthresh=linthresh, linscale=1.0)
    ax.yaxis.set_major_locator(SymmetricalLogLocator(base=10, linthresh=linthresh, subs=[1.0]))
    ax.yaxis.set_minor_locator(NullLocator())
    lo, hi = ax.get_ylim()
    decades = sum(math.log10(max(abs(x), linthresh) / linthresh) + 1 for x in (lo, hi) if abs(x) > linthresh)
    stride = max(1, math.ceil(decades / 10))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: _decade_label(v, linthresh, stride)))


def _atomic_savefig(fig: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, dpi=100, format=path.suffix.lstrip(".") or "png")
    os.replace(tmp, path)


def _plot_curve(metrics_path: Path, png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _read_metrics(metrics_path)
    evals = [r for r in rows if "eval_return" in r]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    if evals:
        key = "eval_normalized_score" if evals[0].get("eval_normalized_score") is not None else "eval_return"
        axes[0].plot([r["step"] for r in evals], [r[key] for r in evals], marker="o")
        axes[0].set_ylabel(key)
    axes[0].set_xlabel("step")
    axes[0].set_title(f"evaluation ({len(evals)} points)")
    series = loss_series(rows)
    if series:
        for k, (steps, values) in series.items():
            axes[1].plot(steps, values, label=k, marker="." if len(steps) < 3 else None)
        _symlog_decades(axes[1], [v for _, values in series.values() for v in values])
        axes[1].legend(fontsize=7)
    axes[1].set_xlabel("step")
    axes[1].set_title("training losses")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _atomic_savefig(fig, png)
    plt.close(fig)


def _evaluate(algo: Algorithm, data: OfflineData, cfg: TrainConfig, step: int) -> dict[str, Any]:
    res = evaluate(
        algo, data, episodes=cfg.eval_episodes, seed=cfg.seed * 10_000, normalized=cfg.normalized_score
    )
    return {
        "step": step,
        "eval_return": res.mean_return,
        "eval_return_std": res.std_return,
        "eval_normalized_score": res.normalized_score,
        "eval_episode_length": float(res.lengths.mean()),
    }


def train(
    cfg: TrainConfig,
    resume: bool = False,
    max_steps_this_session: int | None = None,
    data: OfflineData | None = None,
) -> dict[str, Any]:
    """Train ``cfg.algo`` on ``cfg.dataset`` for ``cfg.steps`` updates, writing into ``cfg.out``.

    Files: ``config.json``, ``metrics.jsonl`` (one JSON object per line: training means every
    ``log_every`` steps, evaluations every ``eval_every``), ``checkpoint.pt`` (every
    ``checkpoint_every`` steps and at the end), ``summary.json``, ``learning_curve.png``, ``tb/``.
    ``resume=True`` continues from ``checkpoint.pt`` with ``cfg`` as saved in ``config.json``.
    ``max_steps_this_session`` stops after that many updates in this call (checkpointing first), to
    simulate or schedule interruptions.  ``data`` skips loading when the caller already has the dataset.
    Runs with ``cfg.threads`` torch threads (restored afterwards).

    Raises :class:`~rl_adapters.errors.UsageError` for settings that cannot work and
    :class:`~rl_adapters.errors.CheckpointError` for an unreadable checkpoint, both before anything is
    written; :class:`~rl_adapters.data.DatasetError` for unusable data before the output directory is
    created.  Returns the summary dict (``status`` is ``"finished"`` or ``"interrupted"``).
    """
    cfg.validate(check_dataset=data is None)
    if max_steps_this_session is not None and (
        isinstance(max_steps_this_session, bool)
        or not isinstance(max_steps_this_session, int)
        or max_steps_this_session < 1
    ):
        raise UsageError(f"--max-steps-this-session {max_steps_this_session!r}: must be an integer >= 1; "
                         f"e.g. --max-steps-this-session 1000")
    cfg = cfg.resolved()
    device = resolve_device(cfg.device)
    saved: dict[str, Any] | None = None
    if resume:
        saved = read_checkpoint(Path(cfg.out) / CHECKPOINT, device)
        if saved["step"] >= cfg.steps:
            raise UsageError(f"--resume {cfg.out}: the run already finished ({saved['step']} of {cfg.steps} "
                             f"steps); to train longer start a new run, e.g. --out {cfg.out}-longer "
                             f"--steps {2 * cfg.steps}")
    previous_threads = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg, device, saved, max_steps_this_session, data)
    finally:
        torch.set_num_threads(previous_threads)


def _first_missing(path: Path) -> Path | None:
    """The outermost directory of ``path`` that does not exist yet (what ``mkdir(parents=True)`` creates)."""
    path = path.absolute()
    if path.exists():
        return None
    while not path.parent.exists():
        path = path.parent
    return path


def _run(
    cfg: TrainConfig,
    device: torch.device,
    saved: dict[str, Any] | None,
    max_steps_this_session: int | None,
    data: OfflineData | None,
) -> dict[str, Any]:
    if data is None:
        data = load_dataset(cfg.dataset, device)
    elif data.device != device:
        data = data.to(device)
    if cfg.eval_episodes > 0:
        if cfg.normalized_score and (data.ref_min_score is None or data.ref_max_score is None):
            from .evaluation import normalized_score

            normalized_score(0.0, data.ref_min_score, data.ref_max_score, f"dataset {data.name!r}")  # raises
        try:
            make_eval_env_fn(data)().close()  # fail now, not at the first evaluation hours later
        except Exception as e:
            raise UsageError(f"--eval-episodes {cfg.eval_episodes}: the evaluation environment of {data.name!r} "
                             f"cannot be created ({type(e).__name__}: {_first_line(e)}); install what it "
                             f"needs (e.g. pip install 'gymnasium[mujoco]') or pass --eval-episodes 0") from e

    out = Path(cfg.out)
    created = _first_missing(out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / CHECKPOINT
    try:
        return _loop(cfg, device, saved, max_steps_this_session, data, out)
    except BaseException:
        # A run that never wrote a checkpoint cannot be resumed: leave no directory it created behind.
        if created is not None and not ckpt_path.exists():
            shutil.rmtree(created, ignore_errors=True)
        raise


def _loop(
    cfg: TrainConfig,
    device: torch.device,
    saved: dict[str, Any] | None,
    max_steps_this_session: int | None,
    data: OfflineData,
    out: Path,
) -> dict[str, Any]:
    resume = saved is not None
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    try:
        algo = make_algorithm(
            cfg.algo,
            data.obs_dim,
            data.act_dim,
            data.stats,
            device=device,
            seed=cfg.seed,
            total_steps=cfg.steps,
            **cfg.hparams,
        )
    except UsageError:
        raise
    except ValueError as e:  # checks that need the data's dimensions, e.g. VACO's forward-mode size limit
        raise UsageError(f"--algo {cfg.algo}: {e}") from e
    sampler = data.make_generator(cfg.seed)
    batch_size = algo.config.batch_size
    metrics_path, ckpt_path = out / "metrics.jsonl", out / CHECKPOINT
    start, train_time, prev_wall, last_eval = 0, 0.0, 0.0, None
    # Per-key counts: some metrics exist only on some steps (TD3+BC's actor loss, VACO's bi-level phase),
    # and a mean over the whole window would shrink them.
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    n_sum = 0
    last_ckpt: int | None = None
    if saved is not None:
        try:
            restore_checkpoint(saved, algo, sampler)
        except (KeyError, ValueError, RuntimeError, TypeError) as e:
            raise CheckpointError(f"{ckpt_path}: does not fit this run's config.json ({type(e).__name__}: "
                                  f"{_first_line(e)}); start the run again without --resume") from e
        start, train_time, prev_wall = saved["step"], saved["train_time_s"], saved["wall_time_s"]
        last_eval, last_ckpt = saved.get("last_eval"), saved["step"]
        window = saved.get("log_window", {})
        sums, counts, n_sum = dict(window.get("sums", {})), dict(window.get("counts", {})), window.get("n", 0)
        _truncate_metrics(metrics_path, start)
    else:
        metrics_path.write_text("")
        for stale in (out / "summary.json", ckpt_path):
            stale.unlink(missing_ok=True)
        _atomic_write_json(
            out / "config.json",
            dataclasses.asdict(cfg) | {"resolved_device": str(device), "dataset_size": len(data)},
        )
    if hasattr(algo, "attach_data"):  # algorithms that precompute over the whole dataset (ARQ's candidates)
        algo.attach_data(data, out, progress=cfg.progress)

    writer = None
    if cfg.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tb"), purge_step=start + 1 if resume else None)

    from tqdm.auto import tqdm

    bar = tqdm(
        total=cfg.steps,
        initial=start,
        disable=not cfg.progress,
        desc=f"{cfg.algo} {cfg.dataset}",
        dynamic_ncols=True,
        file=sys.stderr,
    )
    session_start = time.perf_counter()
    window_train = train_time

    def log(row: dict[str, Any]) -> None:
        with open(metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if writer is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and v is not None:
                    writer.add_scalar(k, v, row["step"])

    def checkpoint(step: int) -> None:
        nonlocal last_ckpt
        save_checkpoint(
            ckpt_path,
            algo,
            sampler,
            {
                "step": step,
                "train_time_s": train_time,
                "last_eval": last_eval,
                "wall_time_s": prev_wall + time.perf_counter() - session_start,
                "config": dataclasses.asdict(cfg),
                "log_window": {"sums": dict(sums), "counts": dict(counts), "n": n_sum},
            },
        )
        last_ckpt = step

    step = start
    status = "finished"
    try:
        for step in range(start + 1, cfg.steps + 1):
            t0 = time.perf_counter()
            info = algo.update(data.sample(batch_size, sampler))
            train_time += time.perf_counter() - t0
            bad = [k for k, v in info.items() if not math.isfinite(v)]
            if bad:
                kept = (
                    f"Last good checkpoint kept at {ckpt_path} (step {last_ckpt})"
                    if last_ckpt is not None
                    else "No checkpoint had been written yet (nothing to resume)"
                )
                raise NonFiniteLossError(
                    f"step {step}: non-finite {', '.join(f'{k}={info[k]}' for k in bad)} for {cfg.algo} on "
                    f"{cfg.dataset}; stopped. {kept}; lower the learning rates or check the data."
                )
            for k, v in info.items():
                sums[k] = sums.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + 1
            n_sum += 1
            if step % cfg.log_every == 0 or step == cfg.steps:
                row = {
                    "step": step,
                    **{k: v / counts[k] for k, v in sums.items()},
                    "updates_per_s": n_sum / max(train_time - window_train, 1e-9),
                }
                log(row)
                bar.set_postfix(
                    {k: f"{row[k]:.3g}" for k in row if k.endswith("loss")}
                    | ({"score": f"{last_eval:.1f}"} if last_eval is not None else {}),
                    refresh=False,
                )
                sums, counts, n_sum, window_train = {}, {}, 0, train_time
            assert cfg.eval_every is not None  # resolved()
            if (
                cfg.eval_episodes > 0
                and cfg.eval_every > 0
                and step % cfg.eval_every == 0
                and step != cfg.steps
            ):
                row = _evaluate(algo, data, cfg, step)
                last_eval = row["eval_normalized_score"] if cfg.normalized_score else row["eval_return"]
                log(row)
            if cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0 and step != cfg.steps:
                checkpoint(step)
            bar.update(1)
            if (
                max_steps_this_session is not None
                and step - start >= max_steps_this_session
                and step < cfg.steps
            ):
                checkpoint(step)
                status = "interrupted"
                break
    finally:
        bar.close()

    summary: dict[str, Any] = {
        "status": status,
        "algo": cfg.algo,
        "dataset": cfg.dataset,
        "seed": cfg.seed,
        "steps": step,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "updates_per_s": (step / train_time) if train_time > 0 else None,
    }
    if status == "finished":
        final = _evaluate(algo, data, cfg, step) if cfg.eval_episodes > 0 else {}
        if final:
            log(final)
            summary.update(
                final_normalized_score=final["eval_normalized_score"],
                final_return=final["eval_return"],
                final_return_std=final["eval_return_std"],
            )
            last_eval = final["eval_normalized_score"] if cfg.normalized_score else final["eval_return"]
        checkpoint(step)
    summary["wall_time_s"] = prev_wall + time.perf_counter() - session_start
    summary["hparams"] = dataclasses.asdict(algo.config)
    if writer is not None:
        writer.close()
    if status == "finished":
        _atomic_write_json(out / "summary.json", summary)
        if cfg.plot:
            _plot_curve(
                metrics_path, out / "learning_curve.png", f"{cfg.algo} on {cfg.dataset}, seed {cfg.seed}"
            )
            if hasattr(algo, "plot_metrics"):  # algorithm-specific figures, e.g. ASPC's alpha_curve.png
                algo.plot_metrics(metrics_path, out)
    return summary
