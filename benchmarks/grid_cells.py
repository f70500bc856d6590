"""One grid cell: what it is, its budget, and how it trains (a ``rl_adapters train`` subprocess) into a record.

The library half of every grid script (``offline_rl``, ``vaco_bench``, ``aspc_bench``, ``gpu_campaign`` through
``offline_rl``): :class:`Cell` and its file names, the variant table :data:`VARIANTS`, the equal-budget rule
(:func:`policy_budget`), :func:`run_cell` (train, resume or reuse one cell and write its record to the store,
benchmarks/store.py) and a cell's state against the store (:func:`cell_status`). The runner that runs many cells
on a pool or on Ray is benchmarks/grid.py; it imports this module, never the other way round.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import store

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Cell:
    """One grid cell, resolved on the driver so that a worker never consults the scripts' variant tables."""

    algo: str  # the grid's name for it (e.g. ``vaco-k_step``): result files and tables use this
    dataset: str
    seed: int
    base_algo: str  # the registered algorithm it trains
    variant_sets: tuple[str, ...] = ()  # the variant's ``--set`` items
    steps: int = 0  # total updates, for the progress line (all seeds of a group)
    group: tuple[int, ...] = ()  # seeds trained together in one process (``bilevel-rl train --seeds``)
    # (updates, ms per update) of the cell's phases in order where their costs differ by much (ARQ); empty:
    # every update costs COST_MS[algo]. Only the ETA reads it.
    phases: tuple[tuple[int, float], ...] = ()

    def work(self, updates: int) -> float:
        """Estimated one-core milliseconds of the cell's first ``updates`` updates: the ETA's unit, so that a
        grid mixing BC (4 ms an update) with ARQ's Q-only phase (83 ms) is not timed by whichever runs now."""
        if not self.phases:
            return updates * COST_MS.get(self.algo, COST_MS.get(self.base_algo, 10.0))
        left, total = updates, 0.0
        for n, ms in self.phases:
            take = min(left, n)
            total, left = total + take * ms, left - take
        return total + left * self.phases[-1][1]

    @property
    def name(self) -> str:
        if self.group:  # its seeds keep their own result files, under their single-cell names
            return f"{self.algo}__{self.dataset.replace('/', '_')}__s{'_'.join(map(str, self.group))}"
        return cell_name(self.algo, self.dataset, self.seed)


def cell_name(algo: str, dataset: str, seed: int) -> str:
    """A cell's file name in ``--out`` (``<name>.json``, ``runs/<name>``, ``logs/<name>.log``): grids that are
    running must resume after any change here, so it never changes."""
    return f"{algo}__{dataset.replace('/', '_')}__s{seed}"


# Grid cells that are one registered algorithm with fixed hyper-parameters: name -> (algo, --set items).
VARIANTS: dict[str, tuple[str, list[str]]] = {
    # Filtered BC ("%BC", Chen et al. 2021): BC on the best 10% / 25% of trajectories by return.
    "bc-top10": ("bc", ["top_fraction=0.1"]),
    "bc-top25": ("bc", ["top_fraction=0.25"]),
    "vaco-one_step": ("vaco", ["solver=one_step"]),
    "vaco-k_step": ("vaco", ["solver=k_step", "k=5", "mode=reverse"]),
    "vaco-implicit": ("vaco", ["solver=implicit"]),
    # TD3+BC with ASPC's robust critic (3 hidden layers + LayerNorm, the authors' initialisation): ASPC
    # with alpha frozen at 2.5.
    "td3bc-rc": ("td3bc", ["critic_hidden_layers=3", "critic_layer_norm=True", "critic_init=aspc"]),
    # ARQ with the CPU candidate settings (docs/algorithms.md "ARQ"); its behaviour-model and Q-only phases
    # (--arq-bm-steps, --arq-q-steps) come on top of --steps, like VACO's value phase.
    "arq": ("arq", ["sampler_steps=20", "corrector_steps=0", "ode_steps=2", "ode_method=heun", "trace=hutchinson"]),
    # ARQ with its paper's sampler and ODE settings (the config's defaults): affordable on a GPU only.
    "arq-paper": ("arq", []),
}


# Mean milliseconds per update at one thread (2-core box, two-phase VACO averaged over its
# phases): only used to start the longest cells first.
COST_MS = {"bc-top10": 3.6, "bc-top25": 3.6, "vaco-k_step": 29.0, "vaco-implicit": 23.0, "vaco-one_step": 11.0, "iql": 10.8, "aspc": 9.5,
           "td3bc-rc": 9.5, "td3bc": 9.0, "bc": 3.6,
           # ARQ (CPU settings), hopper and halfcheetah medium, 2026-12-06: 50k behaviour-model updates at 23 ms,
           # 25 min of candidates, 50k Q-only at 83 ms, 50k policy at 4.4 ms and evaluations: ~2 h over 150k updates
           "arq": 49.0, "arq-paper": 400.0}
# The same ARQ cells phase by phase (policy: 8 min over 50k updates, evaluations included); the candidates'
# one-off 25 min is charged to the first update after the behaviour model, which is the one that generates them.
ARQ_PHASE_MS = {"bm": 23.0, "candidates": 1.5e6, "q": 83.0, "policy": 9.6}


def arq_cost_phases(steps: int, bm: int, q: int) -> tuple[tuple[int, float], ...]:
    """:attr:`Cell.phases` of an ARQ cell with the CPU settings and a Q-only phase (none without one)."""
    if not q:
        return ()
    m = ARQ_PHASE_MS
    return (bm, m["bm"]), (1, m["candidates"]), (q - 1, m["q"]), (steps, m["policy"])


def host_description() -> str:
    """CPU model and core count: the updates/s of a cell mean something only next to this."""
    cpu = platform.machine()
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def inner_steps_per_update(base_algo: str, variant_sets: Sequence[str] = ()) -> int:
    """Policy gradient steps one update of the cell takes: K for VACO K-step (it keeps theta_K), the implicit
    solver's ``implicit_steps``, 1 otherwise. The equal-budget rule counts policy steps, so such a cell runs
    ``--steps / K`` updates."""
    if base_algo != "vaco":
        return 1
    cfg = store.config_of("vaco", variant_sets)
    return cfg.k if cfg.solver == "k_step" else cfg.implicit_steps if cfg.solver == "implicit" else 1


def policy_budget(base_algo: str, args: argparse.Namespace, variant_sets: Sequence[str] = ()) -> tuple[int, int]:
    """``(total updates, value-only updates)`` of a cell: ``--steps`` policy gradient steps for every algorithm
    (``--steps / K`` updates for a solver taking K policy steps per update, see :func:`inner_steps_per_update`);
    a two-phase VACO cell adds ``--vaco-value-steps`` value-only updates in front when that is set, and
    otherwise splits ``--steps`` by its ``value_fraction`` (the older presets); an ARQ cell adds its
    behaviour-model and Q-only phases in front (:func:`arq_phases`)."""
    if base_algo == "arq":
        bm, q = arq_phases(args, variant_sets)
        return args.steps + bm + q, bm + q
    extra = int(getattr(args, "vaco_value_steps", 0) or 0)
    if base_algo == "vaco" and extra > 0:
        return args.steps // inner_steps_per_update(base_algo, variant_sets) + extra, extra
    return args.steps, 0


def arq_phases(args: argparse.Namespace, variant_sets: Sequence[str] = ()) -> tuple[int, int]:
    """``(behaviour-model, Q-only)`` updates of an ARQ cell, both before its ``--steps`` policy updates:
    ``--arq-bm-steps``, and ``--arq-q-steps`` (unset: ``--steps``, the paper's 1:1 of Q and policy updates)
    when the cell's schedule has a Q-only phase (``schedule=sequential`` with the explicit policy), else 0."""
    from rl_adapters.algorithms.arq import ARQConfig
    from rl_adapters.cli import _parse_literal

    bm = int(getattr(args, "arq_bm_steps", 0) or 0)
    # Only the two options that decide it (a global --set may hold others, checked when the cell runs).
    sets = dict(kv.split("=", 1) for kv in [*variant_sets, *getattr(args, "set", [])] if "=" in kv)
    cfg = ARQConfig(**{k: _parse_literal(sets[k]) for k in ("schedule", "policy") if k in sets})
    if not cfg.has_q_phase:
        return bm, 0
    q = getattr(args, "arq_q_steps", None)
    return bm, int(args.steps if q is None else q)


def arq_sets(args: argparse.Namespace, variant_sets: Sequence[str] = ()) -> list[str]:
    """The ``--set`` items that give an ARQ cell its phases (:func:`arq_phases`)."""
    bm, q = arq_phases(args, variant_sets)
    return [f"bm_steps={bm}"] + ([f"q_steps={q}"] if q else [])


def make_cells(cells: list[tuple[str, str, int]], args: argparse.Namespace) -> list[Cell]:
    """``(algo, dataset, seed)`` -> runner cells, with each variant's algorithm, ``--set`` items and budget."""
    out = []
    for algo, dataset, seed in cells:
        base, sets = VARIANTS.get(algo, (algo, []))
        phases = arq_cost_phases(args.steps, *arq_phases(args, sets)) if algo == "arq" else ()
        out.append(Cell(algo, dataset, seed, base, tuple(sets), policy_budget(base, args, sets)[0], phases=phases))
    return out


def group_seeds(cells: list[Cell], args: argparse.Namespace) -> list[Cell]:
    """Unfinished cells of one stackable algorithm variant on one dataset merged into one cell per group
    (``--seeds-per-process``); the others as they are."""
    from rl_adapters.training.seed_stack import stackable_algorithms

    groups, rest = {}, []
    for c in cells:
        finished = (result_dir(args) / f"{c.name}.json").exists()
        if c.base_algo in stackable_algorithms() and not finished:
            groups.setdefault((c.algo, c.dataset, c.base_algo, c.variant_sets), []).append(c)
        else:
            rest.append(c)
    merged = [Cell(a, d, members[0].seed, base, sets, sum(m.steps for m in members),
                   group=tuple(m.seed for m in members)) if len(members) > 1 else members[0]
              for (a, d, base, sets), members in groups.items()]
    return merged + rest


def run_cell(algo: str, dataset: str, seed: int, args: argparse.Namespace,
             variant: tuple[str, list[str]] | None = None, group: list[int] | None = None) -> dict:
    """Train one cell (or resume it from its checkpoint, or reuse its finished result) and write
    ``<out>/<cell>.json`` atomically; the cell function of both grid paths (benchmarks/grid.py).
    ``variant``: ``(registered algorithm, --set items)``, looked up in :data:`VARIANTS` when not given (a
    Ray worker gets it from the driver, whose table the vaco/aspc scripts extend).  ``group``: seeds trained
    together in one process (``bilevel-rl train --seeds``, ``--seeds-per-process``); each still writes the
    result file of its own cell, and the return value is the first seed's result."""
    out = Path(args.out)
    results_at = result_dir(args)
    seeds = group or [seed]
    names = [cell_name(algo, dataset, s) for s in seeds]
    if all((results_at / f"{n}.json").exists() for n in names):
        return json.loads((results_at / f"{names[0]}.json").read_text()) | {"skipped": True}
    name = Cell(algo, dataset, seed, algo, group=tuple(group)).name if group else names[0]
    run_dir = out / "runs" / name
    log = out / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    holder = _claim(lock_path(out, name))
    if holder is not None:  # two grids on one machine (e.g. two --next runs) must never train one cell together
        return {"algo": algo, "dataset": dataset, "seed": seed, "failed": True,
                "error": f"being trained by another process (pid {holder}); left to it"}
    try:
        return _run_cell(algo, dataset, seed, args, variant, group, out, results_at, seeds, names, name, run_dir, log)
    finally:
        lock_path(out, name).unlink(missing_ok=True)


def lock_path(out: Path, name: str) -> Path:
    """The claim file of the cell (or seed group) ``name`` training under ``out``."""
    return out / "logs" / f"{name}.lock"


def live_holder(lock: Path) -> int | None:
    """The pid of the live process that holds ``lock``; None when none does (no file, or its holder died)."""
    try:
        pid = int(lock.read_text().strip())
    except (OSError, ValueError):
        return None
    if pid <= 0:  # os.kill(0, 0) would probe our own process group and call it alive
        return None
    try:
        os.kill(pid, 0)
    except PermissionError:  # alive, another user's
        return pid
    except OSError:
        return None
    return pid


def running_pid(c: Cell, args: argparse.Namespace) -> int | None:
    """The pid of a live process training cell ``c`` under ``--out`` (another ``--next`` run), alone or in a
    group of seeds (``--seeds-per-process``), else None."""
    logs = Path(args.out) / "logs"
    prefix = f"{c.algo}__{c.dataset.replace('/', '_')}__s"
    for lock in [lock_path(Path(args.out), c.name), *sorted(logs.glob(f"{prefix}*_*.lock"))]:
        seeds = lock.name[len(prefix):-len(".lock")].split("_")
        if str(c.seed) in seeds and (pid := live_holder(lock)) is not None:
            return pid
    return None


def _claim(lock: Path) -> int | None:
    """Take ``lock`` for this process; the pid of a live process that holds it instead (a dead holder's lock
    is taken over)."""
    # The pid goes in before the name appears (link is atomic and refuses an existing name), so a reader
    # never finds an empty claim and mistakes a starting holder for a dead one.
    tmp = lock.with_name(f"{lock.name}.{os.getpid()}.tmp")
    tmp.write_text(str(os.getpid()))
    try:
        for _ in range(2):
            try:
                os.link(tmp, lock)
                return None
            except FileExistsError:
                pid = live_holder(lock)
                if pid is not None:
                    return pid
                lock.unlink(missing_ok=True)  # its holder died: take it over
        return -1
    finally:
        tmp.unlink(missing_ok=True)


def _run_cell(algo: str, dataset: str, seed: int, args: argparse.Namespace, variant: tuple[str, list[str]] | None,
              group: list[int] | None, out: Path, results_at: Path, seeds: list[int], names: list[str], name: str,
              run_dir: Path, log: Path) -> dict:
    base_algo, variant_sets = variant if variant is not None else VARIANTS.get(algo, (algo, []))
    steps, value_steps = policy_budget(base_algo, args, variant_sets)
    per_update = inner_steps_per_update(base_algo, variant_sets)
    # Evaluations and checkpoints every --eval-every *policy* steps, whatever an update takes.
    eval_every, ckpt_every = max(1, args.eval_every // per_update), max(1, args.checkpoint_every // per_update)
    if value_steps and base_algo == "vaco":
        variant_sets = variant_sets + [f"value_fraction={value_steps / steps!r}"]
    if base_algo == "arq":
        variant_sets = variant_sets + arq_sets(args, variant_sets)
    threads = int(getattr(args, "threads", 1))  # vaco_bench / aspc_bench have no --threads: one per cell
    cmd = [sys.executable, "-m", "rl_adapters", "train", "--no-progress"]
    checkpointed = (run_dir / "checkpoint.pt").exists() or any(run_dir.glob("seed*/checkpoint.pt"))
    resumed = checkpointed and (run_dir / "config.json").exists()
    if resumed:
        cmd += ["--resume", str(run_dir)]  # with the threads its config.json recorded
    else:
        cmd += [
            "--threads",
            str(threads),
            "--algo",
            base_algo,
            "--dataset",
            dataset,
            *(["--seeds", ",".join(map(str, seeds))] if group else ["--seed", str(seed)]),
            "--steps",
            str(steps),
            "--device",
            args.device,
            "--out",
            str(run_dir),
            "--eval-every",
            str(eval_every),
            "--eval-episodes",
            str(args.eval_episodes),
            "--checkpoint-every",
            str(ckpt_every),
            "--log-every",
            str(args.log_every),
        ]
        cmd += [f"--set={kv}" for kv in variant_sets + args.set]
        if base_algo == "vaco" and value_steps:
            # The value phase is the same for every VACO solver at a dataset, seed and budget: train it once.
            cmd += ["--value-cache", str(out / "value_cache")]
    env = dict(
        os.environ,
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    seed_dirs = [run_dir / f"seed{s}" for s in seeds] if group else [run_dir]
    if all((d / "summary.json").exists() for d in seed_dirs):
        # Trained to the end by an invocation killed before it wrote the result (the trainer writes
        # summary.json last): only the result is missing, and --resume of a finished run is refused.
        rc, revisions = 0, _note_revision(log.with_suffix(".revisions"), resumed=True, started=False)
    else:
        revisions = _note_revision(log.with_suffix(".revisions"), resumed=resumed)
        with open(log, "a") as f:
            rc = run_child(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    if rc != 0:
        return {"algo": algo, "dataset": dataset, "seed": seed, "failed": True, "error": f"exit {rc}; see {log}"}
    results = [_write_result(algo, base_algo, variant_sets, d, results_at / f"{n}.json", value_steps, steps,
                             per_update, args, seeds if group else None, revisions)
               for d, n in zip(seed_dirs, names)]
    return results[0]


def _note_revision(path: Path, resumed: bool, started: bool = True) -> list[str]:
    """The git revisions the invocations of one run started at, this one's last (``started``: this invocation
    trains; else the list as it is): a record names the code that trained it, not whatever HEAD is when a
    two-hour cell ends (commits land meanwhile). A fresh start forgets an abandoned run's revisions."""
    revs: list[str] = []
    if resumed:
        try:
            revs = [str(r) for r in json.loads(path.read_text())]
        except (OSError, ValueError, TypeError):
            revs = []
    if started or not revs:  # (a run trained before revisions were noted: HEAD is all there is to say)
        revs.append(store.git_revision())
        path.write_text(json.dumps(revs))
    return revs


def _write_result(algo: str, base_algo: str, variant_sets: Sequence[str], run_dir: Path, result_path: Path,
                  value_steps: int, steps: int, per_update: int, args: argparse.Namespace,
                  group: list[int] | None, revisions: Sequence[str] = ()) -> dict:
    """A finished run as a store record (benchmarks/store.py), written atomically to ``result_path``."""
    summary = json.loads((run_dir / "summary.json").read_text())
    rec = store.record_from_run(
        run_dir, algo=algo, base_algo=base_algo, variant_sets=variant_sets, preset=getattr(args, "preset", None),
        value_steps=value_steps, policy_steps=(steps - value_steps) * per_update, per_update=per_update,
        eval_every=args.eval_every, eval_episodes=args.eval_episodes, host=host_description(), summary=summary,
        revisions=revisions)
    if group:
        rec["seeds_in_process"] = group  # its updates_per_s counts updates of the whole group
    store.write(result_path, rec)
    return rec


def result_dir(args: argparse.Namespace) -> Path:
    """Where finished cells' records are: the committed store of a preset (``--store``), else ``--out``."""
    return Path(getattr(args, "store", None) or args.out)


def cell_status(c: Cell, args: argparse.Namespace) -> tuple[str, str]:
    """``("done" | "stale" | "todo", detail)`` of a cell against the store: stale when its record was made
    with other settings or hyper-parameters than the code would use now."""
    path = result_dir(args) / f"{c.name}.json"
    if not path.exists():
        return "todo", ""
    rec = json.loads(path.read_text())
    steps, value_steps = policy_budget(c.base_algo, args, c.variant_sets)
    per = inner_steps_per_update(c.base_algo, c.variant_sets)
    run = {"policy_steps": (steps - value_steps) * per, "value_steps": value_steps, "eval_every": args.eval_every,
           "eval_episodes": args.eval_episodes}
    sets = list(c.variant_sets) + list(args.set) + (arq_sets(args, c.variant_sets) if c.base_algo == "arq" else [])
    why = store.stale_reason(rec, c.base_algo, sets, run)
    return ("stale", why) if why else ("done", f"score {rec.get('score_last3')}")


def retire_stale(c: Cell, args: argparse.Namespace) -> None:
    """Move a stale cell's record to ``stale/`` in the store and its run folder aside: kept, not overwritten."""
    res = result_dir(args) / f"{c.name}.json"
    k = 0
    while (res.parent / "stale" / f"{c.name}.{k}.json").exists():
        k += 1
    (res.parent / "stale").mkdir(exist_ok=True)
    os.replace(res, res.parent / "stale" / f"{c.name}.{k}.json")
    run = Path(args.out) / "runs" / c.name
    if run.exists():
        os.replace(run, run.with_name(f"{c.name}.stale{k}"))


def parse_seeds(text: str) -> list[int]:
    return [int(s) for s in str(text).split(",")]


# ------------------------------------------------------------------------------ the training subprocess
_CHILDREN: set[subprocess.Popen] = set()
_CHILDREN_LOCK = threading.Lock()


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child before exec
    # PR_SET_PDEATHSIG: the training subprocess gets SIGKILL when the thread that started it dies, so a
    # killed runner or Ray worker never leaves a cell training unsupervised (a rerun would resume it twice).
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGKILL)


try:  # loaded once here: the child between fork and exec must not import anything
    import ctypes

    _LIBC = ctypes.CDLL("libc.so.6", use_errno=True) if sys.platform.startswith("linux") else None
except OSError:
    _LIBC = None


def run_child(cmd: list[str], **kw: Any) -> int:
    """``subprocess.run(cmd, **kw).returncode`` for a cell's training process: it dies with its runner, and an
    interrupted pool stops it (:func:`stop_children`)."""
    # preexec_fn is safe here although the pool has threads: it makes one libc call and imports nothing.
    proc = subprocess.Popen(cmd, preexec_fn=_die_with_parent if _LIBC is not None else None, **kw)  # noqa: PLW1509
    with _CHILDREN_LOCK:
        _CHILDREN.add(proc)
    try:
        return proc.wait()
    finally:
        with _CHILDREN_LOCK:
            _CHILDREN.discard(proc)


def stop_children() -> None:
    with _CHILDREN_LOCK:
        procs = list(_CHILDREN)
    for proc in procs:
        proc.terminate()


def finished_result(out: Path, cell: Cell) -> dict[str, Any] | None:
    """The saved summary of a cell finished by an earlier invocation (on any machine), else None."""
    path = out / f"{cell.name}.json"
    try:
        return json.loads(path.read_text()) | {"skipped": True}
    except (OSError, json.JSONDecodeError):
        return None
