"""ASPC vs TD3+BC (fixed alpha 2.5, the same robust critic): scores, final alpha, time per update.

Three parts, all on by default:

* grid: ``aspc`` and ``td3bc-rc`` (the runner's variant ``td3bc --set critic_hidden_layers=3 --set
  critic_layer_norm=True``) on every dataset x seed, one worker process per cell through
  ``grid_cells.run_cell`` on ``benchmarks/grid.py``'s pool, or on Ray with ``--ray`` / ``--ray-address``
  (resumable: finished cells are skipped, interrupted ones resumed); the
  final alpha and the alpha curve of each ASPC cell come from its ``metrics.jsonl``;
* timing: both algorithms in *this* process on the same batches, blocks of updates interleaved
  (TD3+BC, ASPC, TD3+BC, ...) so that load from other processes hits both alike; the ratio is the
  median ASPC block time over the median TD3+BC block time.  A block is a multiple of
  ``2 * update_interval`` updates, so every ASPC block holds the same number of outer updates;
* report: markdown table, ``<out>/alpha_curves.png`` (alpha over training, mean over seeds per
  dataset) and, with ``--report``, the "aspc" section of docs/benchmarks.md (plus the figure in docs/).

Grid and timing results are stored in ``<out>/grid.json`` and ``<out>/timing.json``; ``--no-grid`` /
``--no-timing`` skip a part and the report reuses its stored result when there is one (``--report-only``: both).

Full run (1 GPU, 16 cores; 18 cells of 20000 updates, sized for about 6-7 minutes; re-running the same
command resumes an interrupted grid from the cells' checkpoints)::

    MINARI_DATASETS_PATH=../shared/datasets python -m benchmarks.aspc_bench --device cuda --workers 18 \\
        --steps 20000 --checkpoint-every 2000 --timing-repeats 3 --out results/aspc --report

CPU smoke run::

    python -m benchmarks.aspc_bench --steps 1000 --seeds 0 --workers 2 --eval-episodes 2 \\
        --timing-updates 400 --timing-repeats 3 --out results/aspc_smoke --report
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

from benchmarks import grid as grid_runner  # the shared grid runner (both paths)
from benchmarks.grid_cells import make_cells

DATASETS = "suite/hopper/medium-v0,suite/hopper/medium-replay-v0,suite/halfcheetah/medium-expert"
#: grid cell names (``td3bc-rc`` is a variant of ``grid_cells.VARIANTS``) -> table labels
LABELS = {"aspc": "ASPC", "td3bc-rc": "TD3+BC (alpha 2.5, robust critic)"}


# ---------------------------------------------------------------------------- grid
def _alpha_curve(run_dir: Path) -> list[tuple[int, float]]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    rows = (json.loads(ln) for ln in path.read_text().splitlines() if ln.strip())
    return [(r["step"], r["alpha"]) for r in rows if "alpha" in r]


def run_grid(args: argparse.Namespace, datasets: list[str], seeds: list[int]) -> list[dict[str, Any]]:
    """Run (or resume, or skip) every cell; returns one dict per cell with label, summary, alpha curve."""
    cells = make_cells([(label, d, s) for d in datasets for label in LABELS for s in seeds], args)
    # ASPC cells first: they are the slower ones, so the pool's tail is short.
    cells.sort(key=lambda c: c.algo != "aspc")
    results = grid_runner.run_grid(cells, args, "aspc_bench")
    out = Path(args.out)
    return [{**res, "label": c.algo, "dataset": c.dataset, "seed": c.seed,
             "alpha_curve": _alpha_curve(out / "runs" / c.name)} for c, res in zip(cells, results)]


# ---------------------------------------------------------------------------- timing
def time_updates(dataset: str, device: str, intervals: list[int], updates: int, repeats: int,
                 hidden_dim: int = 256, seed: int = 0) -> list[dict[str, Any]]:
    """Seconds per update of TD3+BC (robust critic) and ASPC(update_interval) on the same batches."""
    import torch

    from rl_adapters.algorithms import make_algorithm
    from rl_adapters.data import load_dataset

    data = load_dataset(dataset, device)
    rows = []
    for interval in intervals:
        block = max(2 * interval, updates - updates % (2 * interval))
        total = block * (repeats + 1)
        common = {"hidden_dim": hidden_dim, "critic_hidden_layers": 3, "critic_layer_norm": True}
        algos = {"td3bc_rc": make_algorithm("td3bc", data.obs_dim, data.act_dim, data.stats, device=device,
                                            seed=seed, total_steps=total, **common),
                 "aspc": make_algorithm("aspc", data.obs_dim, data.act_dim, data.stats, device=device, seed=seed,
                                        total_steps=total, update_interval=interval, **common)}
        gens = {k: data.make_generator(seed) for k in algos}
        times: dict[tuple[str, str], list[float]] = {(k, c): [] for k in algos for c in ("cpu", "wall")}
        for r in range(repeats + 1):  # repeat 0 warms up caches and allocators, not counted
            for name, algo in algos.items():
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                # CPU time of this thread is what the algorithm costs; wall time also counts the moments
                # the OS gave the (shared) core to someone else.  Both are reported.
                w0, c0 = time.perf_counter(), time.thread_time()
                for _ in range(block):
                    algo.update(data.sample(256, gens[name]))
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                if r > 0:
                    times[name, "wall"].append((time.perf_counter() - w0) / block)
                    times[name, "cpu"].append((time.thread_time() - c0) / block)
        row: dict[str, Any] = {"update_interval": interval, "block": block, "repeats": repeats}
        for clock in ("cpu", "wall"):
            td3, aspc = statistics.median(times["td3bc_rc", clock]), statistics.median(times["aspc", clock])
            row.update({f"td3bc_{clock}_s": td3, f"aspc_{clock}_s": aspc, f"{clock}_ratio": aspc / td3,
                        f"{clock}_ratios": [a / t for a, t in zip(times["aspc", clock], times["td3bc_rc", clock])]})
            print(f"[aspc_bench] timing interval {interval} ({clock} clock): TD3+BC {td3 * 1e3:.2f} ms, "
                  f"ASPC {aspc * 1e3:.2f} ms, ratio {aspc / td3:.3f}", flush=True)
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------- report
def _mean_std(xs: list[float]) -> str:
    a = np.asarray(xs, dtype=float)
    return f"{a.mean():.1f} ± {a.std():.1f}" if len(a) else "n/a"


def results_table(results: list[dict[str, Any]], datasets: list[str]) -> str:
    lines = ["| dataset | algorithm | normalised score (mean ± std) | final alpha (mean ± std) | seeds | updates/s |",
             "|---|---|---|---|---|---|"]
    for ds in datasets:
        for label, title in LABELS.items():
            rows = [r for r in results if r["label"] == label and r["dataset"] == ds and not r.get("failed")]
            if not rows:
                lines.append(f"| {ds} | {title} | (no finished seed) | | 0 | |")
                continue
            scores = [r["final_normalized_score"] for r in rows]
            if label == "aspc":
                alphas = np.array([r.get("final_alpha", r["alpha_curve"][-1][1]) for r in rows if r["alpha_curve"]])
                alpha = f"{alphas.mean():.3f} ± {alphas.std():.3f}" if len(alphas) else "n/a"
            else:
                alpha = "2.5 (fixed)"
            ups = np.mean([r["updates_per_s"] for r in rows])
            lines.append(f"| {ds} | {title} | {_mean_std(scores)} | {alpha} | {len(rows)} | {ups:.0f} |")
    return "\n".join(lines)


def timing_table(rows: list[dict[str, float]]) -> str:
    head = ("| update_interval | clock | TD3+BC (ms/update) | ASPC (ms/update) | ratio ASPC / TD3+BC (median) "
            "| per-repeat ratios |")
    lines = [head, "|---|---|---|---|---|---|"]
    for r in rows:
        for clock in ("cpu", "wall"):
            per = ", ".join(f"{x:.3f}" for x in r[f"{clock}_ratios"])
            lines.append(f"| {r['update_interval']} | {clock} | {r[f'td3bc_{clock}_s'] * 1e3:.2f} | "
                         f"{r[f'aspc_{clock}_s'] * 1e3:.2f} | **{r[f'{clock}_ratio']:.3f}** | {per} |")
    return "\n".join(lines)


def plot_alpha(results: list[dict[str, Any]], datasets: list[str], png: Path) -> None:
    """alpha over training, one line per dataset (mean over seeds, band = min..max)."""
    from benchmarks._report import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for ds in datasets:
        curves = [r["alpha_curve"] for r in results if r["label"] == "aspc" and r["dataset"] == ds and r["alpha_curve"]]
        if not curves:
            continue
        n = min(len(c) for c in curves)
        steps = [s for s, _ in curves[0][:n]]
        a = np.array([[v for _, v in c[:n]] for c in curves])
        ax.plot(steps, a.mean(0), label=ds)
        ax.fill_between(steps, a.min(0), a.max(0), alpha=0.2)
    ax.set_xlabel("update")
    ax.set_ylabel("alpha = softplus(rho)")
    ax.set_title("ASPC: alpha over training")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, png)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default=DATASETS)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=30_000)
    p.add_argument("--device", default="cpu", help="cpu | cuda (each worker process and the timing use it)")
    p.add_argument("--workers", type=int, default=None,
                   help="cells at once (default: cores - 1 on the local pool; with --ray, as many as fit)")
    p.add_argument("--eval-every", type=int, default=0, help="0: evaluate only at the end")
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--checkpoint-every", type=int, default=5_000)
    p.add_argument("--log-every", type=int, default=500)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="hyper-parameter for every cell")
    p.add_argument("--timing-dataset", default="suite/hopper/medium-v0")
    p.add_argument("--timing-intervals", default="10", help="comma-separated update_interval values to time")
    p.add_argument("--timing-updates", type=int, default=1000, help="updates per timed block")
    p.add_argument("--timing-repeats", type=int, default=5, help="timed blocks per algorithm (after 1 warm-up)")
    p.add_argument("--no-grid", action="store_true", help="skip the grid (the report reuses <out>/grid.json)")
    p.add_argument("--no-timing", action="store_true", help="skip the timing (the report reuses <out>/timing.json)")
    p.add_argument("--out", default="results/aspc")
    p.add_argument("--report", action="store_true", help="write the 'aspc' section of docs/benchmarks.md")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: render from <out>/grid.json and <out>/timing.json (--no-grid --no-timing)")
    p.add_argument("--note", default="", help="extra line for the report (e.g. 'smoke run')")
    grid_runner.add_arguments(p)
    args = p.parse_args(argv)
    grid_runner.check_arguments(p, args)
    if args.report_only:
        args.no_grid = args.no_timing = True
        if not any((Path(args.out) / f).exists() for f in ("grid.json", "timing.json")):
            p.error(f"--report-only: neither {args.out}/grid.json nor {args.out}/timing.json exists; run the grid first")
    import torch

    torch.set_num_threads(1)  # the timing is defined on one thread; the report states this process's count
    os.environ.setdefault("MINARI_DATASETS_PATH", str(ROOT.parent / "shared" / "datasets"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    datasets = args.datasets.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    command = "python " + shlex.join([os.path.relpath(sys.argv[0])] + sys.argv[1:])
    t0 = time.perf_counter()
    grid_path, timing_path = out / "grid.json", out / "timing.json"
    if not args.no_grid:
        cells = run_grid(args, datasets, seeds)
        grid_path.write_text(json.dumps({"command": command, "wall_s": time.perf_counter() - t0, "steps": args.steps,
                                         "eval_episodes": args.eval_episodes, "workers": args.workers,
                                         "seeds": args.seeds, "cells": cells}, indent=1))
    if not args.no_timing:
        rows = time_updates(args.timing_dataset, args.device, [int(i) for i in args.timing_intervals.split(",")],
                            args.timing_updates, args.timing_repeats)
        timing_path.write_text(json.dumps({"command": command, "dataset": args.timing_dataset, "device": args.device,
                                           "repeats": args.timing_repeats, "rows": rows}, indent=1))
    grid = json.loads(grid_path.read_text()) if grid_path.exists() else None
    timing_run = json.loads(timing_path.read_text()) if timing_path.exists() else None
    results = grid["cells"] if grid else []
    timing = timing_run["rows"] if timing_run else []
    parts = []
    if results:
        parts.append(results_table(results, datasets))
        plot_alpha(results, datasets, out / "alpha_curves.png")
    if timing:
        parts.append(timing_table(timing))
    body = "\n\n".join(parts)
    (out / "table.md").write_text(body + "\n")
    print(body)
    print(f"[aspc_bench] total {time.perf_counter() - t0:.0f}s")
    if args.report:
        from benchmarks._report import git_revision, machine_description, write_section

        fig = ""
        if results:
            dst = ROOT / "docs" / "aspc_alpha_curves.png"
            shutil.copyfile(out / "alpha_curves.png", dst)
            fig = f"\n![alpha over training]({dst.name})\n"
        grid_txt = (f"Grid (`{grid['command']}`): {len(results)} cells ({', '.join(LABELS.values())}; datasets "
                    f"{', '.join(datasets)}; seeds {grid['seeds']}), {grid['steps']} updates each, batch 256, "
                    f"final evaluation {grid['eval_episodes']} episodes per seed; {grid['workers']} worker "
                    f"processes with one torch thread each; grid wall time {grid['wall_s']:.0f}s. Final alpha = "
                    f"mean alpha over the last log window (the outer lr has decayed to 1% by then). updates/s is the cells' own wall-clock rate, which depends on "
                    f"what else ran on the machine at the time; the controlled cost comparison is the timing "
                    f"table.\n\n" if grid else "")
        timing_txt = (f"Time per update (`{timing_run['command']}`): both algorithms in one process on "
                      f"`{timing_run['dataset']}`, device {timing_run['device']}, 1 torch thread, "
                      f"{timing_run['repeats']} interleaved blocks of "
                      f"{timing[0]['block']} updates each after a warm-up block; the ratio is median ASPC "
                      f"block time / median TD3+BC block time, by thread CPU time and by wall time (target <= 1.15 at "
                      f"update_interval 10; on a shared CPU the CPU-time ratio is the reliable one, on a GPU the "
                      f"wall-time one).\n"
                      if timing else "")
        section = (f"## ASPC vs TD3+BC (robust critic)\n\n"
                   f"Command: `MINARI_DATASETS_PATH=../shared/datasets {command}`\n\n"
                   f"Machine: {machine_description(args.device)}; git {git_revision()}.\n\n"
                   + grid_txt + timing_txt + (f"\n{args.note}\n" if args.note else "") + f"\n{body}\n{fig}")
        write_section("aspc", section)
    return grid_runner.exit_code(results)


if __name__ == "__main__":
    sys.exit(main())
