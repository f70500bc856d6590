"""Updates/s of our offline-RL algorithms beside plain CORL-style loops of the same algorithms (issue #17).

    python -m benchmarks.throughput                                  # bc,td3bc,iql,vaco,aspc; hopper medium; 1 thread
    python -m benchmarks.throughput --algos bc,td3bc,iql --repeats 3 --report
    python -m benchmarks.throughput --dataset synthetic --seconds 1  # no dataset needed
    python -m benchmarks.throughput --report-only --report           # the section again, from --save's JSON

For every algorithm two variants run in this one process, interleaved (repeat r runs ours then plain, repeat
r + 1 plain then ours, ...), each for ``--seconds`` of updates after a short warm-up; the table gives the
median updates/s of each and the ratio of the medians (the per-repeat ratios show the spread). A loaded
machine moves both variants alike, so the ratio is the number to read.

* **ours**: ``rl_adapters.algorithms.make_algorithm(name, ...)`` fed ``data.sample(batch, generator)``,
  exactly what ``bilevel-rl train`` runs per update (diagnostics included).
* **plain**: the same algorithm written the way CORL writes it, benchmarks/reference_loops.py (which loop for
  which algorithm; VACO one-step and ASPC have no CORL implementation, their plain loops are written there).

The measured rows go to ``--save`` (JSON); ``--report`` writes the "throughput" section of docs/benchmarks.md
(``throughput-cuda`` on a GPU) with the readings of benchmarks/notes/throughput.md. Besides the single-seed rows:
:func:`seeds_rows` (N seeds of ours in one process, ``SeedStack``: seed-updates/s for N = 1, 4, 16),
:func:`batched_plain_rows` (N TD3+BC seeds batched by hand in plain torch, ``PlainTD3BCBatched``, against
the same loop with one seed: what batching alone buys) and :func:`compiled_rows` (``torch.compile``'d updates).
The CPU-ceiling analysis of batching seeds (the share of matrix products, ``bmm`` vs ``mm``) is a finished
study: benchmarks/notes/batching_ceiling.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks._report import command_line, git_revision, machine_description, note, write_section
from benchmarks.reference_loops import ALGOS, CORLReplayBuffer, PlainTD3BCBatched, make_plain, max_action_of

#: Our algorithm's hyper-parameters per benchmark name (defaults otherwise). VACO: the one-step solver, and
#: no value phase, so every measured update is a bi-level one.
OURS_HPARAMS: dict[str, dict[str, Any]] = {
    "bc": {},
    "td3bc": {},
    "iql": {},
    "vaco": {"solver": "one_step", "value_fraction": 0.0},
    "aspc": {},
}
ALGO_LABELS = {"bc": "BC", "td3bc": "TD3+BC", "iql": "IQL", "vaco": "VACO one-step", "aspc": "ASPC"}
PLAIN_LABELS = {
    "bc": "CORL any_percent_bc",
    "td3bc": "CORL td3_bc",
    "iql": "CORL iql (deterministic policy)",
    "vaco": "plain VACO one-step (written here)",
    "aspc": "plain ASPC: TD3+BC, LN critic, functional Adam (written here)",
}
SYNTHETIC = "synthetic"


# ============================================================================================ data
def synthetic_dataset(n: int = 100_000, obs_dim: int = 11, act_dim: int = 3, episode_len: int = 500,
                      seed: int = 0, device: str = "cpu") -> Any:
    """A random :class:`OfflineData` (hopper-sized by default), for running without a dataset."""
    from rl_adapters.data import OfflineData

    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, obs_dim, generator=g)
    next_obs = torch.randn(n, obs_dim, generator=g)
    actions = torch.rand(n, act_dim, generator=g) * 2 - 1
    rewards = torch.randn(n, generator=g)
    ep = torch.arange(n) // episode_len
    dones = ((torch.arange(n) % episode_len) == episode_len - 1).float()
    n_ep = int(ep.max()) + 1
    ep_returns = torch.zeros(n_ep).index_add_(0, ep, rewards)
    return OfflineData(
        name=SYNTHETIC, observations=obs, actions=actions, rewards=rewards, next_observations=next_obs,
        dones=dones, truncations=torch.zeros(n), episode_ids=ep, returns=ep_returns[ep], episode_returns=ep_returns,
        action_low=-np.ones(act_dim, np.float32), action_high=np.ones(act_dim, np.float32),
    ).to(device)


def load_data(name: str, device: str) -> Any:
    if name == SYNTHETIC:
        return synthetic_dataset(device=device)
    from rl_adapters.data import load_dataset

    return load_dataset(name, device=device)


# ============================================================================================ measuring
Step = Callable[[], Any]


def ours_step(name: str, data: Any, device: str, batch_size: int, seed: int, total_steps: int,
              compiled: bool = False) -> Step:
    from rl_adapters.algorithms import make_algorithm

    algo = make_algorithm(name, data.obs_dim, data.act_dim, data.stats, device=device, seed=seed,
                          total_steps=total_steps, **OURS_HPARAMS[name])
    if compiled:
        algo.compile_losses()
    gen = data.make_generator(seed)
    return lambda: algo.update(data.sample(batch_size, gen))


def plain_step(name: str, data: Any, device: str, batch_size: int, seed: int, total_steps: int) -> Step:
    torch.manual_seed(seed)
    trainer = make_plain(name, data, device, total_steps)
    buffer = CORLReplayBuffer(data, seed)

    def step() -> Any:
        batch = buffer.sample(batch_size)
        batch = [b.to(device) for b in batch]
        return trainer.train(batch)

    return step


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def updates_per_second(step: Step, seconds: float, device: str) -> tuple[float, float]:
    """``(updates per wall second, updates per CPU second of this process)`` over ``seconds`` of wall time.

    On a machine shared with other work the CPU-time rate is the steadier of the two (it does not count the
    time the scheduler gives to others); the wall rate is what a user waits for.
    """
    _sync(device)
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while True:
        step()
        n += 1
        if n % 8 == 0:
            _sync(device)
            dt = time.perf_counter() - t0
            if dt >= seconds:
                return n / dt, n / max(time.process_time() - c0, 1e-9)


@dataclass
class Row:
    algo: str
    variant: str
    ours: list[float]
    plain: list[float]
    peer: str
    note: str = ""
    ours_cpu: list[float] = field(default_factory=list)
    plain_cpu: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ours_median(self) -> float:
        return statistics.median(self.ours)

    @property
    def plain_median(self) -> float:
        return statistics.median(self.plain) if self.plain else float("nan")

    @property
    def ratio(self) -> float:
        return self.ours_median / self.plain_median

    @property
    def paired(self) -> list[float]:
        return [o / p for o, p in zip(self.ours, self.plain)]

    @property
    def cpu_ratio(self) -> float:
        """Ratio of the median updates per CPU second (nan when not measured)."""
        if not self.ours_cpu or not self.plain_cpu:
            return float("nan")
        return statistics.median(self.ours_cpu) / statistics.median(self.plain_cpu)


def measure_pair(name: str, data: Any, args: argparse.Namespace) -> Row:
    """``args.repeats`` interleaved measurements of ours and plain for algorithm ``name``."""
    total = 10_000_000  # schedules (IQL's cosine lr, ASPC's outer lr) stay in their early phase
    steps = {
        "ours": ours_step(name, data, args.device, args.batch_size, args.seed, total),
        "plain": plain_step(name, data, args.device, args.batch_size, args.seed, total),
    }
    for step in steps.values():  # warm-up: allocator, lazy inits, first ASPC outer steps
        for _ in range(args.warmup):
            step()
    res: dict[str, list[float]] = {"ours": [], "plain": []}
    cpu: dict[str, list[float]] = {"ours": [], "plain": []}
    for r in range(args.repeats):
        order = ("ours", "plain") if r % 2 == 0 else ("plain", "ours")
        for variant in order:
            wall, per_cpu = updates_per_second(steps[variant], args.seconds, args.device)
            res[variant].append(wall)
            cpu[variant].append(per_cpu)
        print(f"  {name} repeat {r + 1}/{args.repeats}: ours {res['ours'][-1]:.1f}/s, plain {res['plain'][-1]:.1f}/s "
              f"(per CPU s: {cpu['ours'][-1]:.1f}, {cpu['plain'][-1]:.1f})", flush=True)
    return Row(ALGO_LABELS[name], "single seed", res["ours"], res["plain"], PLAIN_LABELS[name],
               ours_cpu=cpu["ours"], plain_cpu=cpu["plain"])


# ----------------------------------------------------------------------------- many seeds, compiled updates
STACKABLE = ("bc", "td3bc", "iql", "aspc")


def stacked_step(name: str, data: Any, device: str, batch_size: int, seeds: list[int], total_steps: int,
                 compiled: bool = False) -> Step:
    """N seeds of ours in one process (:class:`~rl_adapters.training.seed_stack.SeedStack`), one stacked update."""
    from rl_adapters.training.seed_stack import SeedStack

    stack = SeedStack.build(name, seeds, data.obs_dim, data.act_dim, data.stats, device=device,
                            total_steps=total_steps, **OURS_HPARAMS[name])
    if compiled:
        stack.algo.compile_losses()
    gens = [data.make_generator(s) for s in seeds]
    return lambda: stack.update(data.sample_many(batch_size, gens))


def _interleaved(name: str, steps: dict[str, Step], args: argparse.Namespace, scale: dict[str, float]
                 ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    res: dict[str, list[float]] = {k: [] for k in steps}
    cpu: dict[str, list[float]] = {k: [] for k in steps}
    keys = list(steps)
    for r in range(args.repeats):
        for k in (keys if r % 2 == 0 else keys[::-1]):
            wall, per_cpu = updates_per_second(steps[k], args.seconds, args.device)
            res[k].append(wall * scale[k])
            cpu[k].append(per_cpu * scale[k])
        print(f"  {name} repeat {r + 1}/{args.repeats}: " + ", ".join(f"{k} {res[k][-1]:.1f}/s" for k in keys),
              flush=True)
    return res, cpu


def seeds_rows(data: Any, args: argparse.Namespace) -> list[Row]:
    """Seed-updates/s (N x stacked updates/s) of N seeds trained in one process, beside our single-seed
    process (one seed, ``make_algorithm(...).update``), for N in ``--seeds-n``."""
    rows = []
    total = 10_000_000
    for name in [a for a in args.algos.split(",") if a in STACKABLE]:
        for n in args.seeds_n:
            steps = {"stack": stacked_step(name, data, args.device, args.batch_size, list(range(n)), total),
                     "single": ours_step(name, data, args.device, args.batch_size, args.seed, total)}
            res, cpu = _interleaved(f"{name} x{n}", steps, args, {"stack": float(n), "single": 1.0})
            rows.append(Row(ALGO_LABELS[name], f"{n} seed{'s' if n > 1 else ''} in one process", res["stack"],
                            res["single"], "ours, one seed per process", note="seed-updates/s",
                            ours_cpu=cpu["stack"], plain_cpu=cpu["single"]))
    return rows

def batched_plain_step(data: Any, device: str, batch_size: int, n: int, seed: int) -> Step:
    """:class:`PlainTD3BCBatched` of ``n`` seeds, sampling ``(n, batch)`` indices from one buffer."""
    torch.manual_seed(seed)
    trainer = PlainTD3BCBatched(n, data.obs_dim, data.act_dim, max_action_of(data), device)
    buffer = CORLReplayBuffer(data, seed)

    def step() -> Any:
        batch = buffer.sample(n * batch_size)
        return trainer.train([b.reshape(n, batch_size, -1).to(device) for b in batch])

    return step


def batched_plain_rows(data: Any, args: argparse.Namespace) -> list[Row]:
    """Seed-updates/s of :class:`PlainTD3BCBatched` with N seeds beside the same loop with one seed (same code,
    same fused Adam): what batching seeds alone buys on this device, with no framework cost on either side."""
    rows = []
    if "td3bc" not in args.algos.split(","):
        return rows
    for n in [k for k in args.seeds_n if k > 1]:
        steps = {"batched": batched_plain_step(data, args.device, args.batch_size, n, args.seed),
                 "single": batched_plain_step(data, args.device, args.batch_size, 1, args.seed)}
        res, cpu = _interleaved(f"td3bc hand-batched x{n}", steps, args, {"batched": float(n), "single": 1.0})
        rows.append(Row(ALGO_LABELS["td3bc"], f"{n} seeds hand-batched (plain, no framework)", res["batched"],
                        res["single"], "the same loop with one seed", note="seed-updates/s; what batching alone buys",
                        ours_cpu=cpu["batched"], plain_cpu=cpu["single"]))
    return rows


def compiled_rows(data: Any, args: argparse.Namespace) -> list[Row]:
    """Ours with ``--compile`` (the losses through ``torch.compile``) beside ours eager, for ``--compile-algos``;
    the compilation time (first updates) is in the note."""
    rows = []
    total = 10_000_000
    for name in args.compile_algos:
        compiled = ours_step(name, data, args.device, args.batch_size, args.seed, total, compiled=True)
        t0 = time.perf_counter()
        for _ in range(3):  # every loss of an update (TD3+BC's actor loss runs every 2nd update) compiles here
            compiled()
        t_compile = time.perf_counter() - t0
        steps = {"compiled": compiled, "eager": ours_step(name, data, args.device, args.batch_size, args.seed, total)}
        res, cpu = _interleaved(f"{name} compiled", steps, args, {"compiled": 1.0, "eager": 1.0})
        rows.append(Row(ALGO_LABELS[name], "--compile", res["compiled"], res["eager"], "ours, eager",
                        note=f"compilation {t_compile:.0f} s", ours_cpu=cpu["compiled"], plain_cpu=cpu["eager"]))
    return rows


EXTRA_ROWS: tuple[Callable[[Any, argparse.Namespace], list[Row]], ...] = (seeds_rows, batched_plain_rows,
                                                                         compiled_rows)


# ============================================================================================ report
def table(rows: list[Row]) -> str:
    lines = [
        (
            "| algorithm | variant | ours, updates/s (median) | plain, updates/s (median) | ours / plain "
            "| per-repeat ratios | ours / plain per CPU second | plain loop |"
        ),
        "|---|---|---:|---:|---:|---|---:|---|",
    ]
    for r in rows:
        paired = ", ".join(f"{x:.2f}" for x in r.paired)
        lines.append(f"| {r.algo} | {r.variant} | {r.ours_median:.1f} | {r.plain_median:.1f} | **{r.ratio:.2f}** | "
                     f"{paired} | {r.cpu_ratio:.2f} | {r.peer}{'; ' + r.note if r.note else ''} |")
    return "\n".join(lines)


def load_line() -> str:
    try:
        la = os.getloadavg()
        return f"load average {la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f} (1/5/15 min) at the start"
    except OSError:
        return "load average unavailable"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--algos", default=",".join(ALGOS), help=f"comma-separated, from {','.join(ALGOS)}")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seconds", type=float, default=2.5, help="measured seconds per variant and repeat")
    p.add_argument("--warmup", type=int, default=30, help="untimed updates per variant before the repeats")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--dataset", default="suite/hopper/medium-v0",
                   help=f"a Minari id under MINARI_DATASETS_PATH, or '{SYNTHETIC}' (random hopper-sized data)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds-n", default="1,4,16",
                   help="seed counts for the 'N seeds in one process' rows ('' to skip them)")
    p.add_argument("--compile-algos", default="td3bc",
                   help="algorithms measured compiled vs eager ('' to skip; compiling takes minutes on a CPU)")
    p.add_argument("--report", action="store_true",
                   help="write the 'throughput' section of docs/benchmarks.md ('throughput-cuda' on a GPU)")
    p.add_argument("--save", type=Path, default=None,
                   help="where the measured rows go (JSON; default results/throughput/<device>.json)")
    p.add_argument("--report-only", action="store_true",
                   help="measure nothing: render the table from --save's JSON (e.g. a run copied from a GPU machine); "
                        "with --report, into docs/benchmarks.md")
    args = p.parse_args(argv)
    try:
        args.seeds_n = [int(x) for x in args.seeds_n.split(",") if x.strip()]
    except ValueError:
        p.error(f"--seeds-n {args.seeds_n!r}: give comma-separated seed counts, e.g. --seeds-n 1,4,16")
    if any(n < 1 for n in args.seeds_n):
        p.error(f"--seeds-n {args.seeds_n}: seed counts must be >= 1")
    args.compile_algos = [a for a in args.compile_algos.split(",") if a]
    if args.save is None:
        args.save = Path("results") / "throughput" / f"{args.device}.json"
    for a in args.compile_algos:
        if a not in ALGOS:
            p.error(f"--compile-algos: {a!r} is not one of {','.join(ALGOS)}")
    algos = [a for a in args.algos.split(",") if a]
    for a in algos:
        if a not in ALGOS:
            p.error(f"unknown algorithm {a!r}; choose from {','.join(ALGOS)}")
    if args.report_only:
        if not args.save.exists():
            p.error(f"--report-only: {args.save} does not exist; run without --report-only first (or give --save PATH)")
        run = json.loads(args.save.read_text())
    else:
        run = measure(args)
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps(run, indent=1))
        print(f"saved {args.save}")
    rows = [Row(**r) for r in run["rows"]]
    text = table(rows)
    print(text)
    if args.report:
        write_section_from(run, text)
        print(f"wrote the throughput section ({run['device']}) of docs/benchmarks.md")
    return 0


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Every row of the run, with what the report's header needs (JSON-ready)."""
    algos = [a for a in args.algos.split(",") if a]
    torch.set_num_threads(args.threads)
    load_at_start = load_line()
    data = load_data(args.dataset, args.device)
    print(f"{data.name}: {len(data)} transitions, obs_dim {data.obs_dim}, act_dim {data.act_dim}; "
          f"{args.threads} thread(s), {args.device}; {load_at_start}", flush=True)
    rows = [measure_pair(a, data, args) for a in algos]
    for hook in EXTRA_ROWS:
        rows += hook(data, args)
    return {
        "command": f"OMP_NUM_THREADS={args.threads} MINARI_DATASETS_PATH=../shared/datasets {command_line()}",
        "git": git_revision(), "machine": machine_description(args.device), "load_start": load_at_start,
        "load_end": load_line(), "dataset": f"{data.name} ({len(data)} transitions)", "device": args.device,
        "batch_size": args.batch_size, "threads": args.threads, "repeats": args.repeats, "seconds": args.seconds,
        "warmup": args.warmup, "rows": [dataclasses.asdict(r) for r in rows],
    }


def write_section_from(run: dict[str, Any], text: str) -> None:
    # A run saved before the ceiling analysis became a note (benchmarks/notes/batching_ceiling.md) carries its
    # paragraph; it is rendered as it was measured.
    ceiling, cpu = run.get("ceiling", ""), run["device"] == "cpu"
    body = (
        f"## Throughput{'' if cpu else ' on a GPU'} (issue #17)\n\nCommand: `{run['command']}` (git {run['git']})\n\n"
        f"Machine: {run['machine']}; {run['load_end'].replace('at the start', 'at the end')}, "
        f"{run['load_start'].replace('load average ', '')}. Dataset {run['dataset']}, batch "
        f"{run['batch_size']}, {run['device']}, {run['threads']} torch thread(s); {run['repeats']} interleaved repeats "
        f"of {run['seconds']:g} s per variant after {run['warmup']} warm-up updates, all in one process.\n\n"
        f"{text}\n\n" + (f"{ceiling}\n\n" if ceiling else "") +
        "*ours*: `make_algorithm(name).update(data.sample(256, generator))`, diagnostics included. *plain*: the "
        "same algorithm written CORL's way in `benchmarks/reference_loops.py` (module docstring: which loop for "
        "which algorithm; VACO one-step and ASPC have no CORL implementation, their plain loops are written "
        "there). Rows \"N seeds in one process\": `SeedStack` of N seeds (`bilevel-rl train --seeds`), "
        "seed-updates/s (N x stacked updates/s) against ours with one seed per process. Rows \"N seeds "
        "hand-batched\": `PlainTD3BCBatched`, N TD3+BC seeds written batched in plain torch (one batched product "
        "per layer for every seed, one fused Adam, no `vmap`), seed-updates/s against the same loop with one seed: "
        "what batching seeds alone buys on this device. Row \"--compile\": ours with `compile_losses()` "
        "against ours eager, compilation time in the note. The ratio is of the medians of updates per wall "
        "second; the next column is the same ratio per CPU second of the process (steadier on a shared machine). "
        "On a loaded machine read the ratios, not the absolute rates. The measured rows are saved in "
        "`results/throughput/<device>.json`; `--report-only --report` re-renders this section from them.\n"
    )
    # The readings, written by people, kept with every rerun; a GPU run is its own section beside the CPU one.
    readings = note("throughput" if cpu else f"throughput_{run['device']}")
    if readings:
        body += "\n" + readings
    write_section("throughput" if cpu else f"throughput-{run['device']}", body)


if __name__ == "__main__":
    raise SystemExit(main())
