"""Grid runner for offline RL: algorithms x datasets x seeds, one worker process per cell.

Each cell is ``python -m rl_adapters.train`` in its own process with one torch thread, so N workers
use N cores (and share the GPU with ``--device cuda``).  A finished cell leaves
``<out>/<cell>.json`` and is skipped on the next invocation; an interrupted cell with a checkpoint
is resumed (``--resume``), so re-running the same command completes an interrupted grid.
The aggregate (mean +- std over seeds of the final normalised score, 10 evaluation episodes per
seed, updates/s, wall time) goes to ``<out>/table.md`` and, with ``--report``, to the
"Offline RL baselines" section of docs/benchmarks.md.

Full grid (about 8 minutes on 16 cores + 1 GPU)::

    MINARI_DATASETS_PATH=../shared/datasets python benchmarks/offline_rl.py --device cuda --workers 18 --report

Smoke run on a small CPU box::

    python benchmarks/offline_rl.py --steps 2000 --seeds 0 --workers 2 --eval-episodes 2 --out results/offline_rl_smoke
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

DEFAULT_DATASETS = "suite/hopper/medium-v0,suite/halfcheetah/medium-replay-v0"

# Grid cells that are one registered algorithm with fixed hyper-parameters: name -> (algo, --set items).
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "vaco-one_step": ("vaco", ["solver=one_step"]),
    "vaco-k_step": ("vaco", ["solver=k_step", "k=5", "mode=reverse"]),
    "vaco-implicit": ("vaco", ["solver=implicit"]),
    # TD3+BC with ASPC's robust critic (3 hidden layers + LayerNorm): the fixed-alpha baseline of ASPC.
    "td3bc-rc": ("td3bc", ["critic_hidden_layers=3", "critic_layer_norm=True"]),
}


def cell_name(algo: str, dataset: str, seed: int) -> str:
    return f"{algo}__{dataset.replace('/', '_')}__s{seed}"


def run_cell(algo: str, dataset: str, seed: int, args: argparse.Namespace) -> dict:
    out = Path(args.out)
    name = cell_name(algo, dataset, seed)
    result_path = out / f"{name}.json"
    if result_path.exists():
        return json.loads(result_path.read_text()) | {"skipped": True}
    run_dir = out / "runs" / name
    log = out / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    base_algo, variant_sets = VARIANTS.get(algo, (algo, []))
    cmd = [sys.executable, "-m", "rl_adapters.train", "--threads", "1", "--no-progress"]
    if (run_dir / "checkpoint.pt").exists() and (run_dir / "config.json").exists():
        cmd += ["--resume", str(run_dir)]
    else:
        cmd += [
            "--algo",
            base_algo,
            "--dataset",
            dataset,
            "--seed",
            str(seed),
            "--steps",
            str(args.steps),
            "--device",
            args.device,
            "--out",
            str(run_dir),
            "--eval-every",
            str(args.eval_every),
            "--eval-episodes",
            str(args.eval_episodes),
            "--checkpoint-every",
            str(args.checkpoint_every),
            "--log-every",
            str(args.log_every),
        ]
        cmd += [f"--set={kv}" for kv in variant_sets + args.set]
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    t0 = time.perf_counter()
    with open(log, "a") as f:
        rc = subprocess.run(
            cmd, check=False, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT
        ).returncode
    if rc != 0:
        print(f"[offline_rl] {name} FAILED (exit {rc}); see {log}", flush=True)
        return {"algo": algo, "dataset": dataset, "seed": seed, "failed": True}
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["algo"] = algo  # the variant name, so that the table keeps variants apart
    if base_algo == "vaco" and "medium-expert" in dataset:
        from rl_adapters.analysis import analyze_weights

        summary["weight_return_pearson"] = analyze_weights(run_dir)["pearson_traj_weight_return"]
    if base_algo == "aspc":
        rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]
        summary["final_alpha"] = [r["alpha"] for r in rows if "alpha" in r][-1]
    tmp = result_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, result_path)
    print(
        f"[offline_rl] {name}: score {summary.get('final_normalized_score')} "
        f"({summary['updates_per_s']:.0f} upd/s, {time.perf_counter() - t0:.0f}s)",
        flush=True,
    )
    return summary


def table(results: list[dict], algos: list[str], datasets: list[str]) -> str:
    lines = [
        "| dataset | algorithm | normalised score (mean ± std) | final return | seeds | updates/s | wall time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for ds in datasets:
        for algo in algos:
            rows = [
                r for r in results if r.get("algo") == algo and r.get("dataset") == ds and not r.get("failed")
            ]
            if not rows:
                lines.append(f"| {ds} | {algo} | (no finished seed) | | 0 | | |")
                continue
            scores = np.array([r["final_normalized_score"] for r in rows], dtype=float)
            rets = np.array([r["final_return"] for r in rows], dtype=float)
            ups = np.mean([r["updates_per_s"] for r in rows])
            wall = np.mean([r["wall_time_s"] for r in rows])
            lines.append(
                f"| {ds} | {algo} | {scores.mean():.1f} ± {scores.std():.1f} | {rets.mean():.0f} | "
                f"{len(rows)} | {ups:.0f} | {wall:.0f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--algos", default="bc,td3bc,iql")
    p.add_argument("--datasets", default=DEFAULT_DATASETS)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=30_000)
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto (each worker process uses it)")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    p.add_argument("--eval-every", type=int, default=10_000)
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--checkpoint-every", type=int, default=5_000)
    p.add_argument("--log-every", type=int, default=1_000)
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="hyper-parameter for every cell"
    )
    p.add_argument("--out", default="results/offline_rl")
    p.add_argument("--report", action="store_true", help="write the table into docs/benchmarks.md")
    p.add_argument("--note", default="", help="extra line for the report (e.g. 'smoke run')")
    args = p.parse_args(argv)
    os.environ.setdefault("MINARI_DATASETS_PATH", str(ROOT.parent / "shared" / "datasets"))
    algos, datasets = args.algos.split(","), args.datasets.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    cells = [(a, d, s) for d in datasets for a in algos for s in seeds]
    # Slowest algorithms first so the pool's tail is short.
    cost = {"iql": 0, "td3bc": 1, "bc": 2}
    cells.sort(key=lambda c: cost.get(c[0], -1))
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        results = list(pool.map(lambda c: run_cell(*c, args), cells))
    wall = time.perf_counter() - t0
    body = table(results, algos, datasets)
    (Path(args.out) / "table.md").write_text(body + "\n")
    print(body)
    print(f"[offline_rl] grid wall time {wall:.0f}s, {len(cells)} cells, {args.workers} workers")
    if args.report:
        from _report import command_line, git_revision, machine_description, write_section

        section = (
            f"## Offline RL baselines\n\n"
            f"Command: `MINARI_DATASETS_PATH=../shared/datasets {command_line()}`\n\n"
            f"Machine: {machine_description(args.device)}; {args.workers} worker processes, one torch "
            f"thread each; git {git_revision()}. Grid wall time {wall:.0f}s.\n\n"
            f"{args.steps} updates, batch 256, final evaluation {args.eval_episodes} episodes per seed "
            f"(normalised score = 100 (R - ref_min) / (ref_max - ref_min) from the dataset metadata).\n"
            + (f"\n{args.note}\n" if args.note else "")
            + f"\n{body}\n"
        )
        write_section("offline_rl", section)
    return 0 if all(not r.get("failed") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
