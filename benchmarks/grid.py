"""The grid runner of every benchmark grid script: cells on a local process pool (default) or on Ray.

A cell is one training run, ``python -m rl_adapters train`` in a subprocess with one torch thread
(:func:`benchmarks.grid_cells.run_cell`); both paths run that same function and share what is around it:

* a cell whose ``<out>/<cell>.json`` exists is finished and is not run again (its summary is reused);
* a cell whose ``<out>/runs/<cell>/`` holds a checkpoint was interrupted and is resumed from it;
* a progress line each time a cell ends and every ``--progress-every`` seconds (cells done, cells
  running, updates done of the grid's total, a rough ETA), the same on both paths.

Paths:

* default: a pool of ``--workers`` threads on this machine, each waiting on one cell's subprocess;
* ``--ray``: a local Ray with this machine's cores; ``--ray-address ADDR`` (e.g. ``auto`` on a node of a
  cluster started with ``ray start --head``): an existing cluster. Each cell is a Ray task asking for
  ``--threads`` CPUs (and ``--gpus-per-cell`` of a GPU with ``--device cuda``); ``--workers`` caps the cells in
  flight (default: as many as the cluster's CPUs fit). A task whose node dies is retried (twice) on another
  node and resumes from the cell's last checkpoint.

Storage: the Ray path needs ``--out``, the datasets (``MINARI_DATASETS_PATH``) and this checkout at the
same paths on every node, i.e. a shared filesystem (NFS or similar), which is what makes a cell interrupted on
one node resumable on another. A task that does not see the driver's ``--out`` fails at once with a one-line
error instead of writing results nobody reads. Ray installs with ``pip install -e ".[sweep]"`` and is imported
only when ``--ray`` or ``--ray-address`` is given.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import grid_cells
from benchmarks.grid_cells import Cell, cell_name, finished_result, stop_children

ROOT = Path(__file__).resolve().parent.parent

# A node's task retries after its node died (not after the cell's own failure, which is deterministic).
RAY_MAX_RETRIES = 2
STORAGE_ID = ".storage_id"  # in --out: lets a Ray task check that it sees the driver's results folder
SWEEP_HINT = 'pip install -e ".[sweep]"'


# ------------------------------------------------------------------------------------------- flags
def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags every grid script takes for the runner itself (``--workers`` and ``--threads`` stay theirs)."""
    g = p.add_argument_group("where the cells run (see benchmarks/grid.py)")
    g.add_argument("--ray", action="store_true",
                   help=f"run cells as Ray tasks on a local Ray with this machine's cores ({SWEEP_HINT})")
    g.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="join an existing Ray cluster (e.g. 'auto' on a node of it, or HOST:6379); implies --ray")
    g.add_argument("--ray-cpus", type=int, default=None, metavar="N",
                   help="local Ray (--ray): CPUs it offers (default: all of this machine's cores)")
    g.add_argument("--gpus-per-cell", type=float, default=None, metavar="F",
                   help="Ray: fraction of a GPU each cell reserves with --device cuda (default 0.25, i.e. 4 cells "
                        "per GPU; 0 with --device cpu or auto, so give --device cuda for cells on GPUs)")
    g.add_argument("--progress-every", type=float, default=60.0, metavar="S",
                   help="seconds between progress lines while cells run (a line also follows every finished cell)")


def check_arguments(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse runner flags that cannot work, with one line on stderr and exit status 2."""
    if args.ray_address:
        args.ray = True
    prog = p.prog
    if args.progress_every <= 0:
        p.exit(2, f"{prog}: error: --progress-every must be > 0, got {args.progress_every}\n")
    gpus = args.gpus_per_cell
    if gpus is not None and not 0 <= gpus <= 1:
        p.exit(2, f"{prog}: error: --gpus-per-cell must be in [0, 1] (a fraction of one GPU), got {gpus}\n")
    if args.ray_cpus is not None and (args.ray_cpus < 1 or args.ray_address):
        p.exit(2, f"{prog}: error: --ray-cpus must be >= 1 and is for a local Ray only (a cluster's nodes declare "
                  f"theirs with `ray start --num-cpus`), got {args.ray_cpus}\n")
    if gpus and not args.ray:
        p.exit(2, f"{prog}: error: --gpus-per-cell applies to Ray only; add --ray or drop it\n")
    if args.ray:
        try:
            import ray  # noqa: F401
        except ImportError:
            p.exit(2, f"{prog}: error: --ray needs Ray, which is not installed: {SWEEP_HINT} (the 'sweep' extra)\n")


def gpus_per_cell(args: argparse.Namespace) -> float:
    if args.gpus_per_cell is not None:
        return float(args.gpus_per_cell)
    return 0.25 if str(args.device).startswith("cuda") else 0.0


# ---------------------------------------------------------------------------------------- progress
def last_step(run_dir: Path) -> int:
    """The step of the last row of ``run_dir/metrics.jsonl`` (0 without one): a running cell's progress."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():  # a group of seeds: they advance together
        path = next(iter(sorted(run_dir.glob("seed*/metrics.jsonl"))), path)
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return 0
    for ln in reversed(lines):
        try:
            return int(json.loads(ln)["step"])
        except (ValueError, KeyError, TypeError):
            continue
    return 0


def skipped_steps(run_dir: Path) -> int:
    """Updates ``run_dir``'s run took from a value cache instead of training them (0 without one)."""
    from rl_adapters.training.config import VALUE_PHASE_FILE

    try:
        return int(json.loads((run_dir / VALUE_PHASE_FILE).read_text())["steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _resumable(run_dir: Path) -> bool:
    """Whether a cell's run folder is continued (a checkpoint) or already finished (a summary), not restarted."""
    return any(any(run_dir.glob(pat)) for pat in ("checkpoint.pt", "summary.json", "seed*/checkpoint.pt",
                                                  "seed*/summary.json"))


def _hms(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


@dataclass
class Progress:
    """The runner's own progress report: the same lines on the pool and the Ray path."""

    tag: str
    cells: Sequence[Cell]
    out: Path
    t0: float = field(default_factory=time.perf_counter)
    finished: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.total = sum(c.steps for c in self.cells) or 1
        self.total_work = sum(c.work(c.steps) for c in self.cells)
        self.finished_trained = 0  # updates the finished cells trained (cached ones left out)
        self.finished_trained_work = 0.0  # and their estimated cost (Cell.work)
        # What the run folders hold now, but only where a run will go on from it: a folder with neither a
        # checkpoint nor a summary restarts from update 0, and its old metrics would make the first minutes'
        # rate negative (no ETA) and the percentage jump back.
        self._kept = {c.name for c in self.cells if _resumable(self.out / "runs" / c.name)}
        self.start_updates = self.updates(running=self.cells)
        self.start_trained_work = self.trained_work(running=self.cells)
        self._kept = None

    def _cell_updates(self, c: Cell) -> int:
        if self._kept is not None and c.name not in self._kept:
            return 0
        return min(c.steps, last_step(self.out / "runs" / c.name) * max(1, len(c.group)))

    def updates(self, running: Sequence[Cell]) -> int:
        done = sum(c.steps for c in self.cells if c.name in self.finished)
        return done + sum(self._cell_updates(c) for c in running if c.name not in self.finished)

    def trained(self, running: Sequence[Cell]) -> int:
        """:meth:`updates` less those the running cells took from a value cache: what the ETA's rate counts
        (a restored value phase arrives in seconds and would make the ETA minutes where it is half an hour)."""
        return self.finished_trained + sum(
            max(0, self._cell_updates(c) - skipped_steps(self.out / "runs" / c.name))
            for c in running if c.name not in self.finished)

    def trained_work(self, running: Sequence[Cell]) -> float:
        """:meth:`trained` in the cells' estimated milliseconds (:meth:`Cell.work`): the ETA's rate."""
        return self.finished_trained_work + sum(self._trained_work(c) for c in running if c.name not in self.finished)

    def _trained_work(self, c: Cell) -> float:
        n, cached = self._cell_updates(c), skipped_steps(self.out / "runs" / c.name)
        return max(0.0, c.work(n) - c.work(min(n, cached)))

    def work_done(self, running: Sequence[Cell]) -> float:
        return (sum(c.work(c.steps) for c in self.cells if c.name in self.finished)
                + sum(c.work(self._cell_updates(c)) for c in running if c.name not in self.finished))

    def cell_done(self, cell: Cell, result: dict[str, Any], t_cell: float | None = None) -> None:
        self.finished_trained += max(0, self._cell_updates(cell) - skipped_steps(self.out / "runs" / cell.name))
        self.finished_trained_work += self._trained_work(cell)
        self.finished[cell.name] = result
        if result.get("skipped"):
            return
        if result.get("failed"):
            msg = f"FAILED: {result['error']}" if result.get("error") else "FAILED"
        else:
            ups = result.get("updates_per_s")
            msg = (f"score {result.get('final_normalized_score')} ({ups:.0f} upd/s"
                   + (f", {t_cell:.0f}s" if t_cell is not None else "") + ")") if ups else "done"
        print(f"[{self.tag}] {cell.name}: {msg}", flush=True)

    def line(self, running: Sequence[Cell]) -> str:
        elapsed = time.perf_counter() - self.t0
        done = self.updates(running)
        failed = sum(bool(r.get("failed")) for r in self.finished.values())
        # Work, not updates, per second: an ARQ cell's Q-only updates cost ~20 of its policy updates.
        rate = (self.trained_work(running) - self.start_trained_work) / elapsed if elapsed > 0 else 0.0
        left = self.total_work - self.work_done(running)
        eta = f", ETA ~{_hms(left / rate)}" if rate > 0 and done < self.total else ""
        text = (f"[{self.tag}] {len(self.finished)}/{len(self.cells)} cells done"
                + (f" ({failed} failed)" if failed else "")
                + f", {len(running)} running, {100 * done / self.total:.0f}% of {self.total} updates, "
                f"elapsed {_hms(elapsed)}{eta}")
        print(text, flush=True)
        return text


# ---------------------------------------------------------------------------------------- the cell
def _run(cell: Cell, args: argparse.Namespace) -> dict[str, Any]:
    try:
        return grid_cells.run_cell(cell.algo, cell.dataset, cell.seed, args, variant=(cell.base_algo, list(cell.variant_sets)),
                        group=list(cell.group) or None)
    except Exception as e:  # noqa: BLE001 - one broken cell must not take the rest of the grid down with it
        return {"algo": cell.algo, "dataset": cell.dataset, "seed": cell.seed, "failed": True,
                "error": f"{type(e).__name__}: {e}"}


def _ray_cell(cell: Cell, args: argparse.Namespace, storage_id: str) -> dict[str, Any]:
    """A cell as a Ray task, on whichever node Ray picked."""
    import socket

    try:
        seen = (Path(args.out) / STORAGE_ID).read_text().strip()
    except OSError:
        seen = ""
    if seen != storage_id:
        return {"algo": cell.algo, "dataset": cell.dataset, "seed": cell.seed, "failed": True,
                "error": f"node {socket.gethostname()} does not see the driver's --out {args.out} (the Ray path "
                         "needs a filesystem shared by all nodes at the same path; see benchmarks/grid.py)"}
    return _run(cell, args)


def worker_imports() -> dict[str, str]:
    """Where this process imports ``benchmarks`` and ``rl_adapters`` from, and where a cell's training
    subprocess would (it runs with this checkout first on its path): a Ray worker must use the driver's code."""
    import rl_adapters

    child = subprocess.run([sys.executable, "-c", "import rl_adapters; print(rl_adapters.__file__)"],
                           capture_output=True, text=True, check=False,
                           env=dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")))
    return {"benchmarks": str(ROOT), "rl_adapters": str(Path(rl_adapters.__file__).parent.parent),
            "rl_adapters (cell)": str(Path(child.stdout.strip() or ".").parent.parent)}


class RayCodeMismatch(RuntimeError):
    pass


# ---------------------------------------------------------------------------------------- the runner
def run_grid(cells: Sequence[Cell], args: argparse.Namespace, tag: str) -> list[dict[str, Any]]:
    """Run every cell that is not finished yet (in the given order, longest first is best) on the pool or
    on Ray; returns the summaries in the order of ``cells``. ``args`` carries the cell settings
    (:func:`benchmarks.grid_cells.run_cell`) and the runner flags (:func:`add_arguments`); ``args.out`` is
    made absolute and ``args.workers`` set to the number of cells that ran at once."""
    args.out = str(Path(args.out).resolve())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    progress = Progress(tag, cells, out)
    todo = []
    for c in cells:
        r = finished_result(Path(getattr(args, "store", None) or out), c)
        if r is None:
            todo.append(c)
            run_dir = out / "runs" / c.name
            if (run_dir / "summary.json").exists():
                print(f"[{tag}] {c.name}: trained by an earlier invocation, writing its result", flush=True)
            elif (run_dir / "checkpoint.pt").exists():
                print(f"[{tag}] {c.name}: resuming from its checkpoint (step {last_step(run_dir)} logged)",
                      flush=True)
        else:
            results[c.name] = r
            progress.cell_done(c, r)
    print(f"[{tag}] {len(cells)} cells: {len(cells) - len(todo)} finished earlier, {len(todo)} to run"
          + (" on Ray" if getattr(args, "ray", False) else ""), flush=True)
    # SIGTERM (kill, a scheduler's timeout) unwinds the pool like Ctrl-C, so that running cells stop with the
    # runner; the next invocation resumes them. (On the Ray path ray.init installs its own handler, which
    # ends the driver and, with it, a local Ray and its tasks; a training subprocess dies with its task.)
    old = signal.signal(signal.SIGTERM, _raise_interrupt) if _main_thread() else None
    try:
        if todo:
            runner = _run_ray if getattr(args, "ray", False) else _run_pool
            for c, r in runner(todo, args, progress):
                results[c.name] = r
    except RayCodeMismatch as e:
        print(f"[{tag}] error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        done = sum(c.name in results for c in cells)
        print(f"[{tag}] interrupted with {done}/{len(cells)} cells finished; the same command resumes the rest",
              file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)
    if getattr(args, "workers", None) is None:  # nothing ran: the report still names a worker count
        args.workers = max(1, (os.cpu_count() or 2) - 1)
    return [results[c.name] for c in cells]


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _run_pool(todo: Sequence[Cell], args: argparse.Namespace, progress: Progress):
    if getattr(args, "workers", None) is None:
        args.workers = max(1, (os.cpu_count() or 2) - 1)
    pool = cf.ThreadPoolExecutor(max_workers=args.workers)
    started: dict[cf.Future, tuple[Cell, float]] = {}
    try:
        for c in todo:
            started[pool.submit(_timed, _run, c, args)] = (c, 0.0)
        pending = set(started)
        while pending:
            done, pending = cf.wait(pending, timeout=args.progress_every, return_when=cf.FIRST_COMPLETED)
            for f in done:
                c = started[f][0]
                r, dt = f.result()
                progress.cell_done(c, r, dt)
                yield c, r
            progress.line(running=[started[f][0] for f in pending if f.running()])
    except BaseException:
        # Interrupted: the pool's threads wait on their cells' subprocesses, so stop those first (they keep
        # their last checkpoint; the next invocation resumes them).
        pool.shutdown(wait=False, cancel_futures=True)
        stop_children()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _timed(fn: Callable[..., dict[str, Any]], *a: Any) -> tuple[dict[str, Any], float]:
    t0 = time.perf_counter()
    r = fn(*a)
    return r, time.perf_counter() - t0


def ray_runtime_env(args: argparse.Namespace) -> dict[str, Any]:
    """Environment of every Ray worker: this checkout first on the path (a worker imports the driver's code,
    not another install), one thread per cell, the driver's datasets folder."""
    threads = str(getattr(args, "threads", 1))
    env = {"PYTHONPATH": str(ROOT) + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else ""),
           "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    if os.environ.get("MINARI_DATASETS_PATH"):
        env["MINARI_DATASETS_PATH"] = str(Path(os.environ["MINARI_DATASETS_PATH"]).resolve())
    return {"env_vars": env}


def start_ray(args: argparse.Namespace) -> Any:
    """``ray.init`` for this grid: a local Ray with this machine's cores, or the cluster at ``--ray-address``."""
    import ray

    kw: dict[str, Any] = {"runtime_env": ray_runtime_env(args), "log_to_driver": True}
    if args.ray_address:
        ctx = ray.init(address=args.ray_address, **kw)
    else:
        ctx = ray.init(num_cpus=getattr(args, "ray_cpus", None) or os.cpu_count(), **kw)
    url = getattr(ctx, "dashboard_url", None)
    if url:
        print(f"[grid] Ray dashboard: http://{url}", flush=True)
    return ray


def _storage_id(out: Path) -> str:
    path = out / STORAGE_ID
    try:
        with open(path, "x") as f:  # the first runner on a results folder names it; later ones read the name
            f.write(uuid.uuid4().hex)
    except FileExistsError:
        pass
    return path.read_text().strip()


def _run_ray(todo: Sequence[Cell], args: argparse.Namespace, progress: Progress):
    threads = int(getattr(args, "threads", 1))
    gpus = gpus_per_cell(args)
    sid = _storage_id(Path(args.out))
    ray = start_ray(args)
    try:
        # A probe task first: a worker running other code than this checkout (another install, another clone)
        # would produce results that look right and are not, so refuse at once.
        seen = ray.get(ray.remote(num_cpus=0)(worker_imports).remote())
        wrong = {k: v for k, v in seen.items() if v != str(ROOT)}
        if wrong:
            raise RayCodeMismatch(f"Ray workers import {wrong} instead of this checkout {ROOT}: the Ray path needs "
                                  "the same checkout at the same path on every node (see benchmarks/grid.py)")
        print(f"[{progress.tag}] Ray workers import benchmarks and rl_adapters from {ROOT}", flush=True)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        fit = max(1, cpus // threads)
        if gpus > 0:
            fit = min(fit, int(ray.cluster_resources().get("GPU", 0) / gpus) or 1)
        cap = min(args.workers, fit) if getattr(args, "workers", None) else fit
        args.workers = cap
        print(f"[{progress.tag}] Ray: {cpus} CPUs, {threads} per cell"
              + (f", {gpus:g} GPU per cell" if gpus else "") + f": up to {cap} cells at once", flush=True)
        task = ray.remote(num_cpus=threads, num_gpus=gpus, max_retries=RAY_MAX_RETRIES)(_ray_cell)
        queue = list(todo)
        inflight: dict[Any, tuple[Cell, float]] = {}
        try:
            def refill() -> None:
                while queue and len(inflight) < cap:
                    c = queue.pop(0)
                    inflight[task.remote(c, args, sid)] = (c, time.perf_counter())

            refill()
            while inflight:
                ready, _ = ray.wait(list(inflight), num_returns=1, timeout=args.progress_every)
                for ref in ready:
                    c, t0 = inflight.pop(ref)
                    try:
                        r = ray.get(ref)
                    except ray.exceptions.RayError as e:  # the task died (node lost past its retries, OOM kill)
                        r = {"algo": c.algo, "dataset": c.dataset, "seed": c.seed, "failed": True,
                             "error": f"Ray task: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
                    progress.cell_done(c, r, time.perf_counter() - t0)
                    yield c, r
                refill()
                progress.line(running=[c for c, _ in inflight.values()])
        finally:
            for ref in inflight:  # stop the cells (and, with them, their training subprocesses)
                ray.cancel(ref, force=True)
    finally:
        ray.shutdown()


def exit_code(results: Sequence[dict[str, Any]]) -> int:
    """A grid script's exit status: 1 when a cell failed, else 0."""
    return 0 if all(not r.get("failed") for r in results) else 1


__all__ = [
    "Cell",
    "Progress",
    "add_arguments",
    "cell_name",
    "check_arguments",
    "exit_code",
    "gpus_per_cell",
    "last_step",
    "ray_runtime_env",
    "run_grid",
    "start_ray",
    "worker_imports",
]

if __name__ == "__main__":  # pragma: no cover
    sys.exit("benchmarks.grid is a library; run a grid script, e.g. python -m benchmarks.offline_rl --help")
