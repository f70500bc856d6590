"""VACO benchmarks: the solver grid against BC and IQL, update-time ratios, and the weight-option comparison.

Subcommands (each writes JSON under ``--out``; with ``--report`` it then regenerates the "vaco" section of
docs/benchmarks.md from *all* JSON found there, so they can run in any order, on different machines;
``--report-only`` runs nothing and only renders that section, ``--report-only --report`` writes it):

``grid``
    BC, IQL and VACO with the one-step, K-step (K=5, reverse) and implicit (CG) solvers on
    hopper-medium-replay, hopper-medium-expert (medium + expert concatenated) and halfcheetah-medium,
    through the shared resumable cell runner (``benchmarks/grid.py``; one process per cell, one torch
    thread each); for VACO on medium-expert it adds the Pearson coefficient of trajectory mean weight
    vs trajectory return (``rl_adapters.vaco_analysis.analyze_weights``). Full grid, 45 cells of 10k updates
    (estimated 6-8 minutes on 16 cores + 1 H100; re-running the same command resumes unfinished cells),
    then the per-update timing on the GPU, alone::

        MINARI_DATASETS_PATH=../shared/datasets python -m benchmarks.vaco_bench grid --device cuda \\
            --workers 15 --steps 10000 --seeds 0,1,2 --report
        python -m benchmarks.vaco_bench timing --device cuda --report

    ``grid`` and ``options`` take ``--ray`` / ``--ray-address ADDR`` to run the cells on Ray
    (``benchmarks/grid.py``; docs/rl.md "Benchmark grids on one machine or a Ray cluster").

``timing``
    Milliseconds per update of IQL, BC and VACO (bi-level updates only, each solver; plus the joint
    schedule) on one CPU thread (or ``--device cuda``), interleaved in rounds so that load from other
    processes hits all of them alike; the ratio VACO / IQL is the number the paper reports as 1.7x.

``options``
    Sigmoid weights vs batch-mean-normalised weights vs sigmoid weights with Q normalisation in the
    outer loss, on one dataset (default hopper-medium-expert, where the weight/return Pearson
    coefficient measures whether the weights separate the two behaviour policies), same seeds and steps.

"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

from benchmarks import grid, grid_cells
from benchmarks._report import write_section

DATASETS = "suite/hopper/medium-replay-v0,suite/hopper/medium-expert,suite/halfcheetah/medium-v0"
GRID_ALGOS = "bc,iql,vaco-one_step,vaco-k_step,vaco-implicit"
# Extra grid cells for the option comparison (registered in the shared runner's variant table).
OPTION_VARIANTS = {
    "vaco-sigmoid": ("vaco", ["weight_norm=none", "outer_q_norm=False"]),
    "vaco-batch_mean": ("vaco", ["weight_norm=batch_mean", "outer_q_norm=False"]),
    "vaco-sigmoid-qnorm": ("vaco", ["weight_norm=none", "outer_q_norm=True"]),
}
grid_cells.VARIANTS.update(OPTION_VARIANTS)
# Cost per update relative to IQL (CPU, measured by ``timing``), to start the slowest cells first.
COST = {"vaco-k_step": 5.0, "vaco-implicit": 3.9, "vaco-one_step": 1.3, "iql": 1.0, "bc": 0.15}


def _cell_args(a: argparse.Namespace, out: Path) -> argparse.Namespace:
    # Intermediate evaluations are off (eval_every = steps): only the final 10-episode score is reported.
    return argparse.Namespace(
        out=str(out),
        steps=a.steps,
        device=a.device,
        eval_every=a.steps,
        eval_episodes=a.eval_episodes,
        checkpoint_every=max(1000, a.steps // 4),
        log_every=max(100, a.steps // 20),
        set=list(a.set),
        threads=1,
        workers=a.workers,
        ray=a.ray,
        ray_address=a.ray_address,
        gpus_per_cell=a.gpus_per_cell,
        progress_every=a.progress_every,
    )


def run_cells(
    a: argparse.Namespace, algos: list[str], datasets: list[str], out: Path
) -> list[dict[str, Any]]:
    """Run (or resume / skip finished) every algos x datasets x seeds cell; returns the summaries."""
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in a.seeds.split(",")]
    cargs = _cell_args(a, out)
    cells = grid_cells.make_cells([(al, d, s) for d in datasets for al in algos for s in seeds], cargs)
    cells.sort(key=lambda c: -COST.get(c.algo, 1.3))
    t0 = time.perf_counter()
    results = grid.run_grid(cells, cargs, "vaco_bench")
    meta = {
        "steps": a.steps,
        "seeds": seeds,
        "device": a.device,
        "workers": cargs.workers,
        "eval_episodes": a.eval_episodes,
        "wall_time_s": time.perf_counter() - t0,
        "command": _command(),
        "machine": _machine(a.device),
    }
    (out / "grid_meta.json").write_text(json.dumps(meta, indent=2))
    return results


def _command() -> str:
    from benchmarks._report import command_line

    return "MINARI_DATASETS_PATH=../shared/datasets " + command_line()


def _machine(device: str) -> str:
    from benchmarks._report import git_revision, machine_description

    return f"{machine_description(device)}, git {git_revision()}"


# ---------------------------------------------------------------------------------------- timing
def timing(a: argparse.Namespace) -> dict[str, Any]:
    """Per-update time of each algorithm on the same pre-sampled batches, interleaved over rounds."""
    import torch

    torch.set_num_threads(a.threads)
    from rl_adapters.algorithms import make_algorithm
    from rl_adapters.data import load_dataset
    from rl_adapters.training import resolve_device

    device = resolve_device(a.device)
    data = load_dataset(a.dataset, device)
    specs = {
        "iql": ("iql", {}),
        "bc": ("bc", {}),
        # value_fraction=0: every timed update is a bi-level update (phase 2 of the default schedule).
        "vaco-one_step": ("vaco", {"solver": "one_step", "value_fraction": 0.0}),
        "vaco-one_step (joint)": ("vaco", {"solver": "one_step", "schedule": "joint"}),
        "vaco-k_step (K=5)": ("vaco", {"solver": "k_step", "k": 5, "value_fraction": 0.0}),
        "vaco-implicit": ("vaco", {"solver": "implicit", "value_fraction": 0.0}),
        "vaco value phase": ("vaco", {"value_fraction": 0.99}),
    }
    algos = {
        k: make_algorithm(n, data.obs_dim, data.act_dim, data.stats, device=device, total_steps=10**6, **hp)
        for k, (n, hp) in specs.items()
    }
    gen = data.make_generator(0)
    batches = [data.sample(256, gen) for _ in range(a.updates)]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for algo in algos.values():  # warm-up (allocator, CUDA kernels, Adam state)
        for b in batches[:5]:
            algo.update(b)
    times: dict[str, list[float]] = {k: [] for k in algos}
    for _ in range(a.rounds):
        for k, algo in algos.items():
            sync()
            t0 = time.perf_counter()
            for b in batches:
                algo.update(b)
            sync()
            times[k].append((time.perf_counter() - t0) / len(batches))
    med = {k: statistics.median(v) for k, v in times.items()}
    res = {
        "dataset": a.dataset,
        "device": str(device),
        "threads": a.threads,
        "rounds": a.rounds,
        "updates_per_round": a.updates,
        "ms_per_update": {k: 1e3 * v for k, v in med.items()},
        "ms_per_update_min": {k: 1e3 * min(v) for k, v in times.items()},
        "ratio_to_iql": {k: v / med["iql"] for k, v in med.items()},
        "command": _command(),
        "machine": _machine(str(device)),
    }
    name = "timing_cuda.json" if device.type == "cuda" else "timing_cpu.json"
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_text(json.dumps(res, indent=2))
    for k, v in med.items():
        print(f"{k:24s} {1e3 * v:8.2f} ms/update   x{res['ratio_to_iql'][k]:.2f} of IQL")
    return res


# ---------------------------------------------------------------------------------------- report
def _load(out: Path, pattern: str) -> list[dict[str, Any]]:
    rows = []
    for p in sorted(out.glob(pattern)):
        try:
            rows.append(json.loads(p.read_text()))
        except json.JSONDecodeError:
            continue
    return rows


def _score_table(rows: list[dict[str, Any]], algos: list[str], datasets: list[str]) -> str:
    lines = [
        (
            "| dataset | algorithm | normalised score (mean ± std) | seeds | updates/s | time/update vs IQL "
            "(whole run) | weight/return Pearson |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    for ds in datasets:
        iql = [r["updates_per_s"] for r in rows if r.get("algo") == "iql" and r.get("dataset") == ds]
        for al in algos:
            rs = [
                r
                for r in rows
                if r.get("algo") == al and r.get("dataset") == ds and "final_normalized_score" in r
            ]
            if not rs:
                continue
            sc = np.array([r["final_normalized_score"] for r in rs], float)
            ups = float(np.mean([r["updates_per_s"] for r in rs]))
            ratio = f"{np.mean(iql) / ups:.2f}x" if iql else "n/a"
            pr = [r["weight_return_pearson"] for r in rs if r.get("weight_return_pearson") is not None]
            pear = f"{np.mean(pr):.3f} ± {np.std(pr):.3f}" if pr else ""
            lines.append(
                f"| {ds} | {al} | {sc.mean():.1f} ± {sc.std():.1f} | {len(rs)} | {ups:.0f} | {ratio} | "
                f"{pear} |"
            )
    return "\n".join(lines)


def report(out: Path) -> str:
    """The "vaco" section from every JSON in ``out``."""
    parts = [
        "## VACO: solvers, baselines, update cost, weight options",
        (
            "Produced by `benchmarks/vaco_bench.py` (see its docstring); VACO options and defaults are explained "
            "in docs/vaco.md. `time/update vs IQL (whole run)` divides IQL's updates/s by the cell's, over the "
            "whole run: in the default two-phase schedule half of VACO's updates are value-only (cheaper than "
            "IQL's), so the per-bi-level-update ratio is the one in the timing table."
        ),
    ]
    for label, sub in (("Solver grid", "grid"), ("Smoke grid (CPU)", "smoke"), ("Weight options", "options")):
        d = out / sub
        meta_p = d / "grid_meta.json"
        if not meta_p.exists():
            continue
        meta = json.loads(meta_p.read_text())
        rows = [r for r in _load(d, "*__s*.json")]
        algos = sorted({r["algo"] for r in rows if "algo" in r}, key=lambda x: (x.startswith("vaco"), x))
        datasets = sorted({r["dataset"] for r in rows if "dataset" in r})
        parts.append(
            f"### {label}\n\nCommand: `{meta['command']}`\n\nMachine: {meta['machine']}; "
            f"{meta['workers']} workers, device {meta['device']}; {meta['steps']} updates per run "
            f"(VACO default two-phase: first half value-only), batch 256, seeds {meta['seeds']}, final "
            f"evaluation {meta['eval_episodes']} episodes; grid wall time {meta['wall_time_s']:.0f}s.\n\n"
            + _score_table(rows, algos, datasets)
        )
        if (d / "note.md").exists():
            parts.append((d / "note.md").read_text().strip())
    for name in ("timing_cpu.json", "timing_cuda.json"):
        p = out / name
        if not p.exists():
            continue
        t = json.loads(p.read_text())
        lines = [
            f"### Time per update ({t['device']}, {t['threads']} torch thread(s))",
            (
                f"Command: `{t['command']}`\n\nMachine: {t['machine']}. Dataset {t['dataset']}, batch 256, "
                f"median over {t['rounds']} interleaved rounds of {t['updates_per_round']} updates.\n"
            ),
            "| algorithm | ms / update (median) | ms / update (best round) | ratio to IQL |",
            "|---|---|---|---|",
        ]
        for k, v in t["ms_per_update"].items():
            lines.append(f"| {k} | {v:.2f} | {t['ms_per_update_min'][k]:.2f} | {t['ratio_to_iql'][k]:.2f} |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


# ---------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("grid", "options"):
        g = sub.add_parser(name)
        g.add_argument("--algos", default=GRID_ALGOS if name == "grid" else ",".join(OPTION_VARIANTS))
        g.add_argument("--datasets", default=DATASETS if name == "grid" else "suite/hopper/medium-expert")
        g.add_argument("--seeds", default="0,1,2")
        g.add_argument("--steps", type=int, default=10_000)
        g.add_argument("--device", default="cpu")
        g.add_argument("--workers", type=int, default=None,
                       help="cells at once (default: cores - 1 on the local pool; with --ray, as many as fit)")
        g.add_argument("--eval-episodes", type=int, default=10)
        g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
        g.add_argument("--out", default="results/vaco")
        g.add_argument(
            "--subdir", default=name, help="results go to OUT/SUBDIR (e.g. 'smoke' for a CPU smoke run)"
        )
        grid.add_arguments(g)
    t = sub.add_parser("timing")
    t.add_argument("--dataset", default="suite/hopper/medium-replay-v0")
    t.add_argument("--device", default="cpu")
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--rounds", type=int, default=7)
    t.add_argument("--updates", type=int, default=20)
    t.add_argument("--out", default="results/vaco")
    for s in sub.choices.values():
        s.add_argument("--report", action="store_true", help="write the 'vaco' section of docs/benchmarks.md")
        s.add_argument("--report-only", action="store_true",
                       help="run nothing: render the section from the JSON in --out (with --report: write it)")
    a = p.parse_args(argv)
    if a.cmd in ("grid", "options"):
        grid.check_arguments(sub.choices[a.cmd], a)
    os.environ.setdefault("MINARI_DATASETS_PATH", str(ROOT.parent / "shared" / "datasets"))
    out = Path(a.out)
    status = 0
    if a.report_only:
        pass
    elif a.cmd in ("grid", "options"):
        results = run_cells(a, a.algos.split(","), a.datasets.split(","), out / a.subdir)
        status = grid.exit_code(results)
        rows = _load(out / a.subdir, "*__s*.json")
        print(_score_table(rows, a.algos.split(","), a.datasets.split(",")))
    else:
        timing(a)
    if a.report or a.report_only:
        body = report(out)
        print(body)
        if a.report:
            write_section("vaco", body)
    return status


if __name__ == "__main__":
    sys.exit(main())
