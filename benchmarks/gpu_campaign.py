"""The prepared run for a lent GPU machine (one H100, 16 CPU cores, ~9 minutes): what only it makes affordable.

Two lanes run side by side until one deadline (``--budget-s``):

* **GPU lane**, one job after the other on the GPU: the CUDA tests, the GPU rows of the hypergradient and
  throughput benchmarks, then VACO K-step / implicit cells and ARQ cells (the paper's sampler settings) with
  ``--device cuda``, each a grid cell that writes the same record as a CPU cell (``benchmarks/results/equal``).
* **CPU lane**: the next unfinished cells of the equal preset in priority order (``offline_rl --next``), one per
  remaining core (small MLPs run faster on a CPU core each than time-sliced on one GPU, docs/benchmarks.md).

At the deadline every job is stopped; cells checkpoint every 5,000 policy steps into ``--out`` (give a folder
under ``$OUT`` so the checkpoints come back, and carry it to the next machine: the same command continues them).
Every finished cell is a record in the store; commit them. ``--smoke`` runs the same path at toy size on a CPU
(tests/test_gpu_campaign.py).

    python -m benchmarks.gpu_campaign --out "$OUT/campaign"                    # on the GPU machine
    python -m benchmarks.gpu_campaign --smoke --dataset tiny/pendulum/mixed-v0 --out /tmp/c --store /tmp/s
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks import store

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Job:
    """One command of the GPU lane; ``estimate_s`` is the planned H100 time (docs/benchmarks.md lists the plan)."""

    name: str
    argv: tuple[str, ...]
    estimate_s: float
    note: str = ""
    done_if: str = ""  # a file under --out whose existence means a previous machine finished this job


def _grid(algos: str, solvers: str, datasets: str, seeds: str, device: str, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    return ("-m", "benchmarks.offline_rl", "--preset", "equal", "--algos", algos, "--solvers", solvers, "--datasets",
            datasets, "--seeds", seeds, "--device", device, "--workers", "1", *extra)


#: The CPU lane's algorithms: everything of the equal preset the GPU lane does not run, except ARQ with the CPU
#: settings (~2 h a cell on one core: longer than a loan; the GPU lane runs ARQ with the paper's sampler).
CPU_LANE_ALGOS = "bc,bc-top10,bc-top25,td3bc,iql,aspc,td3bc-rc,vaco"

#: ARQ with the paper's candidate sampler (its defaults: no CPU shortcuts), on the sets the ARQ item names.
ARQ_SETS = "suite/hopper/medium-v0,suite/halfcheetah/medium-v0,suite/hopper/medium-replay-v0,suite/halfcheetah/medium-replay-v0"


def plan(smoke: bool, dataset: str | None) -> list[Job]:
    """The GPU lane, in order. Estimates are for one H100 and are replaced by the measured time once run."""
    if smoke:
        ds = dataset or "tiny/pendulum/mixed-v0"
        toy = ("--steps", "40", "--vaco-value-steps", "20", "--eval-every", "20", "--eval-episodes", "1",
               "--checkpoint-every", "20", "--log-every", "10", "--set", "hidden_dim=16", "--set", "batch_size=16")
        return [Job("vaco k-step cell", _grid("vaco", "k_step", ds, "0", "cpu", toy), 30),
                Job("vaco implicit cell", _grid("vaco", "implicit", ds, "0", "cpu", toy), 30)]
    # The VACO comparison's sets and seeds: finished cells are skipped, so each machine takes the ones the store
    # lacks (on this project's 2-core CPU an implicit cell takes 40-95 min, a K-step cell 12-30 min).
    vaco_sets = ",".join(f"suite/{e}/{k}" for k in ("medium-expert", "medium-replay-v0") for e in ("hopper", "halfcheetah"))
    return [
        Job("CUDA tests", ("-m", "pytest", "-q", "-m", "cuda", "tests"), 60),
        Job("hypergradient GPU rows", ("-m", "benchmarks.hypergradients", "--device", "cuda", "--quick",
                                        "--out", "{out}/hypergradients"), 120,
            "re-render here with --report-only --report --from-json",
            done_if="{out}/hypergradients/hypergradients.json"),
        Job("throughput GPU rows", ("-m", "benchmarks.throughput", "--device", "cuda", "--seeds-n", "1,4,10",
                                     "--seconds", "5", "--repeats", "2", "--save", "{out}/throughput_cuda.json"), 120,
            done_if="{out}/throughput_cuda.json"),
        Job("ARQ cells (paper sampler), seed 0", _grid("arq-paper", "one_step", ARQ_SETS, "0", "cuda"), 2400,
            "the longest: continues on the next machine from its checkpoints; first, as a CPU cell takes ~2 h "
            "with the CPU sampler and the paper's sampler is unaffordable there"),
        Job("VACO implicit cells of the VACO comparison the store lacks (seeds 0-2)",
            _grid("vaco", "implicit", vaco_sets, "0,1,2", "cuda"), 400 * 6, "~400 s a cell"),
        Job("VACO K-step cells of the VACO comparison the store lacks (seeds 0-2)",
            _grid("vaco", "k_step", vaco_sets, "0,1,2", "cuda"), 200 * 4, "~200 s a cell"),
    ]


def plan_section(jobs: list[Job]) -> str:
    """docs/benchmarks.md's description of the campaign: what runs, in which order, and the planned times."""
    rows = "\n".join(f"| {i + 1} | {j.name} | `python {' '.join(j.argv)}` | {j.estimate_s:.0f} | {j.note} |"
                     for i, j in enumerate(jobs))
    return (
        "## GPU campaign (plan)\n\n"
        "Command on a lent GPU machine: `python -m benchmarks.gpu_campaign --out \"$OUT/campaign\"` (a 540 s "
        "deadline, leaving time to rerun within 15 device-minutes; `--smoke` runs the same path on a CPU and is "
        "tested). Two lanes until the deadline: the GPU lane below, one job after the other, and a CPU lane that "
        "runs the next unfinished cells of the equal preset (`offline_rl --next`) on the remaining cores. Every "
        "finished cell becomes a record in `benchmarks/results/equal/`; stopped cells keep their checkpoints under "
        "`--out` for the next machine (carry that folder there: finished cells and benchmark rows are skipped, "
        "stopped cells resume). **Times are planning estimates for one H100, not measurements:** no GPU "
        "was lent to the sessions since this campaign was written; a run writes the measured times to "
        "`campaign.json`.\n\n"
        "| # | GPU lane job | command | planned s | note |\n|---|---|---|---|---|\n" + rows + "\n"
    )


class Lane(threading.Thread):
    """Runs its commands one after the other until they end or the deadline passes (then SIGTERM, SIGKILL)."""

    def __init__(self, name: str, jobs: list[Job], deadline: float, env: dict[str, str], out: Path,
                 common: tuple[str, ...]) -> None:
        super().__init__(daemon=True)
        self.label, self.jobs, self.deadline, self.env, self.out, self.common = name, jobs, deadline, env, out, common
        self.done: list[tuple[str, str, float]] = []

    def run(self) -> None:
        for job in self.jobs:
            left = self.deadline - time.time()
            if left < 5:
                self.done.append((job.name, "not started (deadline)", 0.0))
                continue
            if job.done_if and Path(job.done_if.replace("{out}", str(self.out))).exists():
                self.done.append((job.name, "done on an earlier machine", 0.0))
                continue
            argv = [a.replace("{out}", str(self.out)) for a in job.argv]
            if argv[:2] == ["-m", "benchmarks.offline_rl"]:
                argv += list(self.common)
            log = self.out / "logs" / f"{self.label}_{len(self.done)}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            t0 = time.time()
            with open(log, "w") as f:
                p = subprocess.Popen([sys.executable, *argv], stdout=f, stderr=subprocess.STDOUT, env=self.env,
                                     cwd=ROOT, start_new_session=True)
                try:
                    rc = p.wait(timeout=left)
                    state = "finished" if rc == 0 else f"exit {rc} (see {log})"
                except subprocess.TimeoutExpired:
                    _stop(p)
                    state = "stopped at the deadline (checkpointed; the same command continues it)"
            self.done.append((job.name, state, time.time() - t0))
            print(f"[gpu_campaign] {self.label}: {job.name}: {state} after {time.time() - t0:.0f}s", flush=True)


def _stop(p: subprocess.Popen) -> None:
    """SIGTERM the job's process group (a grid stops its cells, which keep their last checkpoint), then SIGKILL."""
    try:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget-s", type=float, default=None,
                   help="stop everything after this many seconds (default 540 on a GPU, 150 with --smoke)")
    p.add_argument("--out", default="results/gpu_campaign",
                   help="run folders, checkpoints, logs (put it under $OUT on the device machine; carry it back)")
    p.add_argument("--store", default=str(store.STORE / "equal"), help="where finished cells' records go")
    p.add_argument("--cpu-workers", type=int, default=None,
                   help="cells at once in the CPU lane (default: cores - 2; 0 turns the lane off)")
    p.add_argument("--smoke", action="store_true", help="toy sizes on a CPU: the same path in about a minute")
    p.add_argument("--dataset", default=None, help="--smoke: the dataset of every toy cell")
    p.add_argument("--plan", action="store_true", help="print the GPU lane's jobs and estimates, run nothing")
    p.add_argument("--report", action="store_true",
                   help="with --plan: write the plan into docs/benchmarks.md (section 'gpu_campaign')")
    args = p.parse_args(argv)
    jobs = plan(args.smoke, args.dataset)
    if args.plan:
        for j in jobs:
            print(f"{j.estimate_s:6.0f} s  {j.name}" + (f"  ({j.note})" if j.note else ""))
        if args.report:
            from benchmarks._report import write_section

            write_section("gpu_campaign", plan_section(jobs))
        return 0
    if not args.smoke:
        import torch

        if not torch.cuda.is_available():
            p.exit(2, "gpu_campaign: no CUDA device here (torch.cuda.is_available() is False); run it on the lent "
                      "GPU machine, or try the path with --smoke\n")
    budget = args.budget_s if args.budget_s is not None else (150.0 if args.smoke else 540.0)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.time() + budget
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("MINARI_DATASETS_PATH", str(ROOT.parent / "shared" / "datasets"))
    before = set(store.load(Path(args.store)))
    common = ("--out", str(out / "runs"), "--store", args.store)
    lanes = [Lane("gpu", jobs, deadline, env, out, common)]
    workers = args.cpu_workers if args.cpu_workers is not None else max(0, (os.cpu_count() or 2) - 2)
    if workers > 0:
        # Not the GPU lane's cells (VACO K-step / implicit, ARQ): two processes must never train one cell.
        cpu_argv = ("-m", "benchmarks.offline_rl", "--preset", "equal", "--next", "1000", "--device", "cpu",
                    "--workers", str(workers), "--algos", CPU_LANE_ALGOS, "--solvers", "one_step")
        if args.smoke:
            ds = args.dataset or "tiny/pendulum/mixed-v0"
            cpu_argv += ("--algos", "bc,bc-top25", "--datasets", ds, "--seeds", "0", "--steps", "40",
                         "--eval-every", "20", "--eval-episodes", "1", "--checkpoint-every", "20", "--log-every", "10",
                         "--set", "hidden_dim=16", "--set", "batch_size=16")
        lanes.append(Lane("cpu", [Job(f"equal preset, next cells ({workers} workers)", cpu_argv, budget)], deadline,
                          env, out, common))
    for lane in lanes:
        lane.start()
    for lane in lanes:
        lane.join()
    new = sorted(set(store.load(Path(args.store))) - before)
    summary = {"budget_s": budget, "jobs": [{"lane": lane.label, "job": n, "state": s, "seconds": round(t, 1)}
                                            for lane in lanes for n, s, t in lane.done], "new_cells": new}
    (out / "campaign.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"[gpu_campaign] {len(new)} new cell records in {args.store}: {', '.join(new) or 'none'}")
    print(f"[gpu_campaign] summary: {out / 'campaign.json'}; commit the new records")
    return 0


if __name__ == "__main__":
    sys.exit(main())
