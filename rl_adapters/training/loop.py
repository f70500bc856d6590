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
fails before its first checkpoint removes the output directory it created.  With ``stop`` (a
:class:`~rl_adapters.training.interrupts.StopOnSignals`, as ``bilevel-rl train`` passes) SIGINT/SIGTERM
stop the loop after the current update and checkpoint that step.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import shutil
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..algorithms import Algorithm, make_algorithm
from ..data import OfflineData, load_dataset
from ..errors import CheckpointError, UsageError
from ..evaluation import evaluate, make_eval_env_fn
from .checkpoint import (
    CHECKPOINT,
    atomic_write_json,
    first_line,
    read_checkpoint,
    restore_checkpoint,
    save_checkpoint,
)
from .config import VALUE_PHASE_FILE, TrainConfig, clear_run_files, resolve_device
from .interrupts import StopOnSignals
from .metrics import MetricsWindow, truncate_metrics
from .plots import write_run_figures

__all__ = ["NonFiniteLossError", "train"]


class NonFiniteLossError(RuntimeError):
    """An update produced a NaN/inf diagnostic; the run stopped, the last good checkpoint is kept."""


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
    *,
    clear_out: bool = False,
    stop: StopOnSignals | None = None,
) -> dict[str, Any]:
    """Train ``cfg.algo`` on ``cfg.dataset`` for ``cfg.steps`` updates, writing into ``cfg.out``.

    Files: ``config.json``, ``metrics.jsonl`` (one JSON object per line: training means every
    ``log_every`` steps, evaluations every ``eval_every``), ``checkpoint.pt`` (every
    ``checkpoint_every`` steps and at the end), ``summary.json``, ``learning_curve.png``, ``tb/``.
    ``resume=True`` continues from ``checkpoint.pt`` with ``cfg`` as saved in ``config.json``.
    ``max_steps_this_session`` stops after that many updates in this call (checkpointing first), to
    simulate or schedule interruptions.  ``data`` skips loading when the caller already has the dataset.
    ``clear_out`` deletes the files of an earlier run in ``cfg.out`` once the data is loaded and the algorithm
    built, before anything is written (``bilevel-rl train --overwrite``; :func:`~rl_adapters.training.config.check_out_free` is the check
    that refuses such a directory without it; this function itself writes over whatever is there).  ``stop``:
    while its signals are handled, a SIGINT/SIGTERM ends the loop after the current update with a checkpoint
    of that step (status ``"interrupted"``).  Runs with ``cfg.threads`` torch threads (restored afterwards).

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
    saved: list[dict[str, Any]] | None = None  # one checkpoint per seed
    if resume:
        saved = [read_checkpoint(path, device) for path in _checkpoint_paths(cfg)]
        if len({st["step"] for st in saved}) != 1:
            assert cfg.seeds is not None  # a single run has one checkpoint
            raise CheckpointError(f"--resume {cfg.out}: the seeds' checkpoints are at different steps "
                                  f"({', '.join(str(st['step']) for st in saved)}); resume each seed on its own "
                                  f"(--resume {cfg.out}/seed{cfg.seeds[0]}) or start again without --resume")
        if saved[0]["step"] >= cfg.steps:
            raise UsageError(f"--resume {cfg.out}: the run already finished ({saved[0]['step']} of {cfg.steps} "
                             f"steps); to train longer start a new run, e.g. --out {cfg.out}-longer "
                             f"--steps {2 * cfg.steps}")
    previous_threads = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg, device, saved, max_steps_this_session, data, clear_out and not resume, stop)
    finally:
        torch.set_num_threads(previous_threads)


def _checkpoint_paths(cfg: TrainConfig) -> list[Path]:
    """Where each seed of ``cfg`` checkpoints: ``out/checkpoint.pt``, or ``out/seed<k>/checkpoint.pt`` with ``--seeds``."""
    out = Path(cfg.out)
    return [out / CHECKPOINT] if cfg.seeds is None else [out / f"seed{s}" / CHECKPOINT for s in cfg.seeds]


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
    saved: list[dict[str, Any]] | None,
    max_steps_this_session: int | None,
    data: OfflineData | None,
    clear_out: bool = False,
    stop: StopOnSignals | None = None,
) -> dict[str, Any]:
    if data is None:
        data = load_dataset(cfg.dataset, device)
    elif data.device != device:
        data = data.to(device)
    if cfg.eval_episodes > 0:
        if cfg.normalized_score and (data.ref_min_score is None or data.ref_max_score is None):
            from ..evaluation import normalized_score

            normalized_score(0.0, data.ref_min_score, data.ref_max_score, f"dataset {data.name!r}")  # raises
        try:
            make_eval_env_fn(data)().close()  # fail now, not at the first evaluation hours later
        except Exception as e:
            raise UsageError(f"--eval-episodes {cfg.eval_episodes}: the evaluation environment of {data.name!r} "
                             f"cannot be created ({type(e).__name__}: {first_line(e)}); install what it "
                             f"needs (e.g. pip install 'gymnasium[mujoco]') or pass --eval-episodes 0") from e

    out = Path(cfg.out)
    created = _first_missing(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # e.g. under /proc or /sys, which accept no new directories
        raise UsageError(f"--out {cfg.out}: cannot be created ({type(e).__name__}: {e.strerror or e}); pass a "
                         f"directory you can write to, e.g. --out runs/{out.name or 'run'}") from e
    try:
        return _loop(cfg, device, saved, max_steps_this_session, data, out, stop, clear_out)
    except BaseException:
        # A run that never wrote a checkpoint cannot be resumed: leave no directory it created behind.
        if created is not None and not any(path.exists() for path in _checkpoint_paths(cfg)):
            shutil.rmtree(created, ignore_errors=True)
        raise


def _build_algorithm(cfg: TrainConfig, data: OfflineData, device: torch.device) -> Algorithm:
    """``cfg.algo`` for ``data``'s sizes; a setting refused only now that they are known is a usage error."""
    try:
        return make_algorithm(cfg.algo, data.obs_dim, data.act_dim, data.stats, device=device, seed=cfg.seed,
                              total_steps=cfg.steps, **cfg.hparams)
    except UsageError:
        raise
    except ValueError as e:  # checks that need the data's dimensions, e.g. VACO's forward-mode size limit
        raise UsageError(f"--algo {cfg.algo}: {e}") from e


class _Seeds:
    """What one run trains: the seed of a single run, or the ``--seeds`` trained together by a
    :class:`~rl_adapters.training.seed_stack.SeedStack`; to the loop a single run is a run of one seed.

    ``members[k]`` is seed ``k``'s single-seed algorithm and ``samplers[k]`` its batch generator: what is
    evaluated and checkpointed, so that every seed writes a single run's files.  ``algo`` takes the updates: the
    one member itself, or the stack's instance holding every seed's parameters (``sync`` copies them into the
    members, ``restack`` back).  Without ``--seeds`` nothing is stacked: a stack of one seed would not be
    bit-identical to the run it replaces (a batched matmul sums in another order).
    """

    def __init__(self, cfg: TrainConfig, data: OfflineData, device: torch.device) -> None:
        self.seeds = [cfg.seed] if cfg.seeds is None else list(cfg.seeds)
        self.stack: Any = None
        if cfg.seeds is None:
            self.algo = _build_algorithm(cfg, data, device)
            self.members = [self.algo]
        else:
            from .seed_stack import SeedStack

            try:
                self.stack = SeedStack.build(cfg.algo, self.seeds, data.obs_dim, data.act_dim, data.stats,
                                             device=device, total_steps=cfg.steps, **cfg.hparams)
            except ValueError as e:
                raise UsageError(f"--algo {cfg.algo}: {e}") from e
            self.algo, self.members = self.stack.algo, self.stack.members
        self.samplers = [data.make_generator(s) for s in self.seeds]

    def restore(self, saved: list[dict[str, Any]]) -> None:
        """Each member, its sampler and the global RNGs from its checkpoint (the last one's RNGs stay)."""
        for state, member, sampler in zip(saved, self.members, self.samplers):
            restore_checkpoint(state, member, sampler)
        if self.stack is not None:
            self.stack.restack()

    def sample(self, data: OfflineData, batch_size: int) -> Any:
        if self.stack is None:
            return data.sample(batch_size, self.samplers[0])
        return data.sample_many(batch_size, self.samplers)

    def update(self, batch: Any) -> list[dict[str, float]]:
        """One update of every seed; each seed's diagnostics."""
        return [self.algo.update(batch)] if self.stack is None else self.stack.update(batch)

    def sync(self) -> None:
        """Bring the members up to date with ``algo`` (before evaluating or checkpointing them)."""
        if self.stack is not None:
            self.stack.sync_members()


class _RunRecord:
    """One seed's files and bookkeeping: ``config.json``, ``metrics.jsonl``, ``checkpoint.pt``,
    ``summary.json``, figures, TensorBoard; shared by single runs and every seed of a multi-seed run."""

    def __init__(self, cfg: TrainConfig, out: Path, saved: dict[str, Any] | None, data: OfflineData,
                 extra_config: dict[str, Any] | None = None) -> None:
        self.cfg, self.out = cfg, out
        self.metrics_path, self.ckpt_path = out / "metrics.jsonl", out / CHECKPOINT
        self.train_time, self.prev_wall, self.last_eval, self.last_ckpt = 0.0, 0.0, None, None
        #: The value-phase cache entry this run started from (None: it trained its whole run).
        self.from_cache: str | None = None
        self.skipped_steps = 0  # updates this run took over from the cache instead of training them
        window_state: dict[str, Any] = {}
        if saved is not None:
            self.from_cache = saved.get("value_phase_from")
            self.train_time, self.prev_wall = saved["train_time_s"], saved["wall_time_s"]
            self.last_eval, self.last_ckpt = saved.get("last_eval"), saved["step"]
            window_state = saved.get("log_window", {})
            truncate_metrics(self.metrics_path, saved["step"])
        else:
            out.mkdir(parents=True, exist_ok=True)
            self.metrics_path.write_text("")
            for stale in (out / "summary.json", self.ckpt_path):
                stale.unlink(missing_ok=True)
            atomic_write_json(out / "config.json", dataclasses.asdict(cfg) | {
                "resolved_device": str(data.device), "dataset_size": len(data)} | (extra_config or {}))
        self.window = MetricsWindow(window_state, self.train_time)
        self.writer = None
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out / "tb"), purge_step=saved["step"] + 1 if saved else None)

    def log(self, row: dict[str, Any]) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and v is not None:
                    self.writer.add_scalar(k, v, row["step"])

    def add(self, step: int, info: dict[str, float], seconds: float) -> dict[str, Any] | None:
        """Record one update's diagnostics; the logged row when this step ends a logging window."""
        cfg = self.cfg
        self.train_time += seconds
        bad = [k for k, v in info.items() if not math.isfinite(v)]
        if bad:
            kept = (
                f"Last good checkpoint kept at {self.ckpt_path} (step {self.last_ckpt})"
                if self.last_ckpt is not None
                else "No checkpoint had been written yet (nothing to resume)"
            )
            raise NonFiniteLossError(
                f"step {step}: non-finite {', '.join(f'{k}={info[k]}' for k in bad)} for {cfg.algo} on "
                f"{cfg.dataset} (seed {cfg.seed}); stopped. {kept}; lower the learning rates or check the data."
            )
        self.window.add(info)
        if step % cfg.log_every == 0 or step == cfg.steps:
            row = self.window.flush(step, self.train_time)
            self.log(row)
            return row
        return None

    def evaluate(self, algo: Algorithm, data: OfflineData, step: int) -> None:
        row = _evaluate(algo, data, self.cfg, step)
        self.last_eval = row["eval_normalized_score"] if self.cfg.normalized_score else row["eval_return"]
        self.log(row)

    def wall_time(self, algo: Algorithm, session_start: float) -> float:
        """The run's wall time so far: what its last checkpoint counted, the work of an interrupted invocation
        after that checkpoint that this one reused (:meth:`Algorithm.carried_seconds`), and this invocation."""
        return self.prev_wall + algo.carried_seconds() + time.perf_counter() - session_start

    def checkpoint_extra(self, step: int, session_start: float, algo: Algorithm) -> dict[str, Any]:
        """What a checkpoint holds besides the algorithm and the RNGs."""
        return {
            "step": step,
            "train_time_s": self.train_time,
            "last_eval": self.last_eval,
            "wall_time_s": self.wall_time(algo, session_start),
            "config": dataclasses.asdict(self.cfg),
            "log_window": self.window.state(),
            "value_phase_from": self.from_cache,
        }

    def checkpoint(self, step: int, algo: Algorithm, sampler: torch.Generator, session_start: float) -> None:
        save_checkpoint(self.ckpt_path, algo, sampler, self.checkpoint_extra(step, session_start, algo))
        self.last_ckpt = step

    def finish(self, step: int, status: str, algo: Algorithm, sampler: torch.Generator, data: OfflineData,
               device: torch.device, session_start: float, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Final evaluation, checkpoint, ``summary.json`` and figures (when finished); the summary dict."""
        cfg = self.cfg
        summary: dict[str, Any] = {
            "status": status,
            "algo": cfg.algo,
            "dataset": cfg.dataset,
            "seed": cfg.seed,
            "steps": step,
            "device": str(device),
            "threads": torch.get_num_threads(),
            "updates_per_s": ((step - self.skipped_steps) / self.train_time) if self.train_time > 0 else None,
            "value_phase_from": self.from_cache,
            **(extra or {}),
        }
        if status == "finished":
            final = _evaluate(algo, data, cfg, step) if cfg.eval_episodes > 0 else {}
            if final:
                self.log(final)
                summary.update(
                    final_normalized_score=final["eval_normalized_score"],
                    final_return=final["eval_return"],
                    final_return_std=final["eval_return_std"],
                )
                self.last_eval = final["eval_normalized_score"] if cfg.normalized_score else final["eval_return"]
            self.checkpoint(step, algo, sampler, session_start)
        summary["wall_time_s"] = self.wall_time(algo, session_start)
        summary["hparams"] = dataclasses.asdict(algo.config)
        if self.writer is not None:
            self.writer.close()
        if status == "finished":
            atomic_write_json(self.out / "summary.json", summary)
            if cfg.plot:
                write_run_figures(algo, self.metrics_path, self.out, f"{cfg.algo} on {cfg.dataset}, seed {cfg.seed}")
        return summary

    def due(self, step: int) -> tuple[bool, bool]:
        """Whether ``step`` (not the last) evaluates and whether it checkpoints."""
        cfg = self.cfg
        assert cfg.eval_every is not None  # resolved()
        last = step == cfg.steps
        return (cfg.eval_episodes > 0 and cfg.eval_every > 0 and step % cfg.eval_every == 0 and not last,
                cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0 and not last)


def _progress_bar(cfg: TrainConfig, start: int, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=cfg.steps, initial=start, disable=not cfg.progress, desc=desc, dynamic_ncols=True,
                file=sys.stderr)


def _postfix(row: dict[str, Any], last_eval: float | None) -> dict[str, str]:
    return ({k: f"{row[k]:.3g}" for k in row if k.endswith("loss")}
            | ({"score": f"{last_eval:.1f}"} if last_eval is not None else {}))


def _stopping(stop: StopOnSignals | None, max_steps_this_session: int | None, done: int) -> bool:
    """Whether the loop stops (after checkpointing) now that this session ran ``done`` updates."""
    return (stop is not None and stop.requested) or (
        max_steps_this_session is not None and done >= max_steps_this_session)


def _seed_config(cfg: TrainConfig, seed: int) -> TrainConfig:
    """Seed ``seed``'s part of a multi-seed run: the config a single run with that seed would have."""
    return dataclasses.replace(cfg, seed=seed, seeds=None, out=str(Path(cfg.out) / f"seed{seed}"),
                               hparams=dict(cfg.hparams))


def _loop(
    cfg: TrainConfig,
    device: torch.device,
    saved: list[dict[str, Any]] | None,
    max_steps_this_session: int | None,
    data: OfflineData,
    out: Path,
    stop: StopOnSignals | None = None,
    clear_out: bool = False,
) -> dict[str, Any]:
    """The training loop of a single run and of ``--seeds`` alike (:class:`_Seeds`).  With ``--seeds``, seed
    ``k`` writes a single run's files into ``out/seed<k>`` (its checkpoint resumes as a single run too) and
    ``out/config.json`` records the whole run."""
    stacked = cfg.seeds is not None
    first_seed = cfg.seed if cfg.seeds is None else cfg.seeds[0]
    torch.manual_seed(first_seed)
    np.random.seed(first_seed)
    random.seed(first_seed)
    run = _Seeds(cfg, data, device)
    algo = run.algo
    if cfg.compile:
        algo.compile_losses()
    batch_size = algo.config.batch_size
    start = 0
    if saved is not None:
        try:
            run.restore(saved)
        except (KeyError, ValueError, RuntimeError, TypeError) as e:
            where = f"{out}/seed*/{CHECKPOINT}" if stacked else str(out / CHECKPOINT)
            raise CheckpointError(f"{where}: does not fit this run's config.json ({type(e).__name__}: "
                                  f"{first_line(e)}); start the run again without --resume") from e
        start = saved[0]["step"]
    else:
        if clear_out:  # the last check passed (the algorithm fits the data): replace the earlier run
            clear_run_files(out)
        if stacked:
            atomic_write_json(out / "config.json", dataclasses.asdict(cfg) | {"resolved_device": str(device),
                                                                              "dataset_size": len(data)})
    together = {"seeds_in_process": run.seeds} if stacked else None
    if stacked:
        records = [_RunRecord(_seed_config(cfg, s), out / f"seed{s}", saved[k] if saved else None, data, together)
                   for k, s in enumerate(run.seeds)]
    else:
        records = [_RunRecord(cfg, out, saved[0] if saved else None, data)]
    phase = algo.value_phase()
    cache = None
    if cfg.value_cache and phase is not None and saved is None and phase.steps < cfg.steps and not stacked:
        from .value_cache import ValueCache

        cache = ValueCache(cfg.value_cache, cfg, algo, device)
        if cache.exists():
            record = records[0]
            cached = cache.restore(algo, run.samplers[0], record.metrics_path)
            start = phase.steps
            record.window = MetricsWindow(cached.get("log_window", {}), record.train_time)
            record.last_eval = cached.get("last_eval")
            record.from_cache, record.skipped_steps = str(cache.dir), phase.steps
            # Says which updates came from the cache, so progress reports (the grid's ETA) do not count them
            # as trained in the first seconds.
            atomic_write_json(out / VALUE_PHASE_FILE, {"from": str(cache.dir), "steps": phase.steps})
            cache = None  # nothing to save
    algo.attach_data(data, out, progress=cfg.progress)  # precomputation over the whole dataset (ARQ's candidates)

    train_data = algo.training_data(data)
    bar = _progress_bar(cfg, start, f"{cfg.algo} {cfg.dataset}" + (f" x{len(run.seeds)} seeds" if stacked else ""))
    session_start = time.perf_counter()
    step = start
    status = "finished"

    def checkpoint_all(step: int) -> None:
        run.sync()
        for record, member, sampler in zip(records, run.members, run.samplers):
            record.checkpoint(step, member, sampler, session_start)

    armed = stop.armed() if stop is not None else nullcontext()
    try:
        with armed:
            for step in range(start + 1, cfg.steps + 1):
                t0 = time.perf_counter()
                infos = run.update(run.sample(train_data, batch_size))
                seconds = time.perf_counter() - t0
                rows = [record.add(step, info, seconds) for record, info in zip(records, infos)]
                if rows[0] is not None:
                    bar.set_postfix(_postfix(rows[0], records[0].last_eval), refresh=False)
                evaluate, checkpoint = records[0].due(step)
                if evaluate and not (phase is not None and step <= phase.steps):
                    # (a value-only phase leaves the policy untouched: evaluating it would measure nothing)
                    run.sync()
                    for record, member in zip(records, run.members):
                        record.evaluate(member, data, step)
                if checkpoint:
                    checkpoint_all(step)
                if cache is not None and step == phase.steps and not cache.exists():
                    cache.save(algo, run.samplers[0], records[0].metrics_path,
                               records[0].checkpoint_extra(step, session_start, run.members[0]))
                bar.update(1)
                if step < cfg.steps and _stopping(stop, max_steps_this_session, step - start):
                    checkpoint_all(step)
                    status = "interrupted"
                    break
    finally:
        bar.close()
    run.sync()
    runs = [record.finish(step, status, member, sampler, data, device, session_start, together)
            for record, member, sampler in zip(records, run.members, run.samplers)]
    if not stacked:
        return runs[0]
    train_time = records[0].train_time
    return {
        "status": status,
        "algo": cfg.algo,
        "dataset": cfg.dataset,
        "seeds": run.seeds,
        "steps": step,
        "seed_updates_per_s": (len(run.seeds) * step / train_time) if train_time > 0 else None,
        "final_normalized_scores": [r.get("final_normalized_score") for r in runs],
        "runs": runs,
    }
