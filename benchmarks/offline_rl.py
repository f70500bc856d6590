"""Grid runner for offline RL: algorithms x datasets x seeds, one worker process per cell (pool or Ray).

Each cell is ``python -m rl_adapters train`` in its own process with one torch thread, so N workers
use N cores (and share the GPU with ``--device cuda``).  A finished cell leaves
``<out>/<cell>.json`` and is skipped on the next invocation; an interrupted cell with a checkpoint
is resumed (``--resume``), so re-running the same command completes an interrupted grid.
The aggregate (mean +- std over seeds of the final normalised score, 10 evaluation episodes per
seed, updates/s, wall time) goes to ``<out>/table.md`` and, with ``--report``, to the
"Offline RL baselines" section of docs/benchmarks.md.

Presets (``--preset``; explicit flags override them):

* ``quick``: every algorithm family on hopper medium-replay and medium-expert, VACO with all three
  solvers, 1 seed, 3k updates; about 12 minutes on 2 CPU cores. Checks the whole pipeline and gives a
  first ranking, not paper-grade numbers.
* ``mid``: the full preset's eight algorithm variants on hopper medium-expert and halfcheetah medium and
  medium-expert (the sets of this suite where the algorithms separate; hopper medium-replay and halfcheetah
  medium-replay are dominated by the learner's early episodes, see the baselines section), 3 seeds, 20k
  updates: 72 cells, about 7 core-hours at one thread per cell. Scores are not converged at 20k updates;
  rankings between variants are what it is for.
* ``full``: the comparison users come for: BC, TD3+BC, IQL, VACO (one-step / K-step / implicit), ASPC
  and its fixed-alpha twin on the hopper and halfcheetah medium, medium-replay and medium-expert sets,
  3 seeds, 100k updates: 144 cells, about 50 core-hours at one thread per cell (VACO K-step and implicit
  are two thirds of it), i.e. ~3.5 h on a 16-core host. Small MLPs time-slice badly when many processes
  share one GPU, so run it with CPU workers (``--device cpu --workers 16``); it resumes where it stopped,
  so it can be spread over several runs.

* ``equal``: the comparison at **equal policy budgets** (RL fidelity issue): BC, TD3+BC, IQL, ASPC, TD3+BC-rc
  and VACO x {one-step, K-step, implicit} on hopper and halfcheetah medium-expert, medium-replay and
  medium, 3 seeds, 50k *policy* updates each. VACO's IQL value phase (``--vaco-value-steps``, default
  the same 50k, the paper's 1:1 ratio) comes on top of its 50k bi-level updates and is said so in the
  report; its learning curves are plotted against policy updates. 144 cells, about 42 core-hours at one
  thread per cell (VACO K-step and implicit are 60% of it).

VACO's solver is an axis of its own: ``--solvers one_step,k_step,implicit`` expands an algorithm named
``vaco`` into one cell per solver. Each grid writes its own report section (``--section``) with a table
and a learning-curve plot (mean evaluation score over seeds against updates, one panel per dataset).

Baselines as measured for docs/benchmarks.md (18 cells, 16 cores)::

    MINARI_DATASETS_PATH=../shared/datasets python -m benchmarks.offline_rl --device cpu --workers 18 --report

Quick preset on a small CPU box::

    MINARI_DATASETS_PATH=../shared/datasets python -m benchmarks.offline_rl --preset quick --workers 2 --report

The cells run through ``benchmarks/grid.py``: a local process pool by default, Ray with ``--ray`` (this
machine's cores) or ``--ray-address ADDR`` (a cluster sharing a filesystem), with the same cells, results
layout and report; docs/rl.md "Benchmark grids on one machine or a Ray cluster" has the cluster steps::

    python -m benchmarks.offline_rl --preset full --ray-address auto --device cpu --out /shared/results/offline_rl_full
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import grid

ROOT = Path(__file__).resolve().parent.parent

DEFAULT_DATASETS = "suite/hopper/medium-v0,suite/halfcheetah/medium-replay-v0"

# Grid cells that are one registered algorithm with fixed hyper-parameters: name -> (algo, --set items).
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "vaco-one_step": ("vaco", ["solver=one_step"]),
    "vaco-k_step": ("vaco", ["solver=k_step", "k=5", "mode=reverse"]),
    "vaco-implicit": ("vaco", ["solver=implicit"]),
    # TD3+BC with ASPC's robust critic (3 hidden layers + LayerNorm, the authors' initialisation): ASPC
    # with alpha frozen at 2.5.
    "td3bc-rc": ("td3bc", ["critic_hidden_layers=3", "critic_layer_norm=True", "critic_init=aspc"]),
    # ARQ with the CPU candidate settings (docs/algorithms.md "ARQ"); its behaviour-model phase
    # (--arq-bm-steps) comes on top of --steps, like VACO's value phase.
    "arq": ("arq", ["sampler_steps=20", "corrector_steps=0", "ode_steps=2", "ode_method=heun", "trace=hutchinson"]),
}


# Mean milliseconds per update at one thread (2-core Xeon box, two-phase VACO averaged over its
# phases): only used to start the longest cells first.
COST_MS = {"vaco-k_step": 29.0, "vaco-implicit": 23.0, "vaco-one_step": 11.0, "iql": 10.8, "aspc": 9.5,
           "td3bc-rc": 9.5, "td3bc": 9.0, "bc": 3.6,
           "arq": 100.0}  # ARQ: ~11x TD3+BC per Q/policy update, plus ~20+ min of candidates per dataset

PRESETS: dict[str, dict[str, object]] = {
    "quick": {
        "algos": "bc,td3bc,iql,vaco,aspc,td3bc-rc",
        "datasets": "suite/hopper/medium-replay-v0,suite/hopper/medium-expert",
        "seeds": "0",
        "steps": 3_000,
        "eval_every": 1_000,
        "eval_episodes": 5,
        "checkpoint_every": 1_000,
        "section": "offline_rl_quick",
    },
    "mid": {
        "algos": "bc,td3bc,iql,vaco,aspc,td3bc-rc",
        "datasets": "suite/hopper/medium-expert,suite/halfcheetah/medium-v0,suite/halfcheetah/medium-expert",
        "seeds": "0,1,2",
        "steps": 20_000,
        "eval_every": 2_000,
        "eval_episodes": 10,
        "checkpoint_every": 2_000,
        "section": "offline_rl_mid",
    },
    "full": {
        "algos": "bc,td3bc,iql,vaco,aspc,td3bc-rc",
        "datasets": ",".join(f"suite/{env}/{kind}" for env in ("hopper", "halfcheetah")
                             for kind in ("medium-v0", "medium-replay-v0", "medium-expert")),
        "seeds": "0,1,2",
        "steps": 100_000,
        "eval_every": 10_000,
        "eval_episodes": 10,
        "checkpoint_every": 10_000,
        "section": "offline_rl_full",
    },
    "equal": {
        "algos": "bc,td3bc,iql,vaco,aspc,td3bc-rc",
        "datasets": ",".join(f"suite/{env}/{kind}" for env in ("hopper", "halfcheetah")
                             for kind in ("medium-expert", "medium-replay-v0", "medium-v0")),
        "seeds": "0,1,2",
        "steps": 50_000,
        "vaco_value_steps": 50_000,
        "eval_every": 5_000,
        "eval_episodes": 10,
        "checkpoint_every": 5_000,
        "section": "offline_rl_equal",
    },
}


def expand_solvers(algos: list[str], solvers: list[str]) -> list[str]:
    """``vaco`` -> ``vaco-<solver>`` for each solver: the one-step / K-step / implicit axis."""
    out: list[str] = []
    for a in algos:
        out += [f"vaco-{s}" for s in solvers] if a == "vaco" else [a]
    return out


def learning_curves(results: list[dict], algos: list[str], datasets: list[str], out_dir: Path, png: Path) -> None:
    """Mean evaluation score over seeds against updates, one panel per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 3.6), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        for algo in algos:
            curves = []
            for r in results:
                # Unfinished cells (--report-only) are drawn as far as they got.
                if r.get("algo") != algo or r.get("dataset") != ds or (r.get("failed") and not r.get("in_progress")):
                    continue
                metrics = out_dir / "runs" / cell_name(algo, ds, int(r["seed"])) / "metrics.jsonl"
                if not metrics.exists():
                    continue
                rows = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
                # x = policy updates: a VACO cell's value-only phase is drawn before 0 and cut off.
                off = int(r.get("value_steps", 0) or 0)
                pts = {row["step"] - off: row["eval_normalized_score"] for row in rows
                       if "eval_normalized_score" in row and row["step"] - off >= 0}
                if pts:
                    curves.append(pts)
            if not curves:
                continue
            steps = sorted(set.intersection(*(set(c) for c in curves)))
            mean = [float(np.mean([c[s] for c in curves])) for s in steps]
            # One colour per algorithm across panels, so a panel with fewer finished cells reads the same.
            ax.plot(steps, mean, marker="o", ms=3, color=f"C{algos.index(algo) % 10}",
                    label=f"{algo} ({len(curves)} seeds)")
        ax.set_title(ds.replace("suite/", ""), fontsize=10)
        ax.set_xlabel("policy updates")
        ax.set_ylabel("normalised score")
        ax.grid(alpha=0.3)
    for ax in axes[0]:
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def _runs(results: list[dict], out_dir: Path, pred: Any) -> list[tuple[dict, Path]]:
    return [(r, out_dir / "runs" / cell_name(r["algo"], r["dataset"], int(r["seed"])))
            for r in results if (not r.get("failed") or r.get("in_progress")) and "seed" in r and pred(r)]


def vaco_weight_scatter(results: list[dict], out_dir: Path, png: Path) -> bool:
    """Trajectory mean meta-weight vs trajectory return for each VACO solver (seed 0 of each mixed
    dataset the grid analysed), Pearson r in the panel titles. False when there is nothing to plot."""
    cells = [(r, d) for r, d in _runs(results, out_dir, lambda r: str(r["algo"]).startswith("vaco")
                                        and int(r["seed"]) == 0) if (d / "weights" / "weights.json").exists()]
    if not cells:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(cells), figsize=(4 * len(cells), 3.4), squeeze=False)
    for ax, (r, d) in zip(axes[0], cells):
        w = json.loads((d / "weights" / "weights.json").read_text())
        ax.scatter(w["episodes"]["mean_weight"], w["episodes"]["return"], s=6, alpha=0.6)
        ax.set_title(f"{r['algo']} on {r['dataset'].replace('suite/', '')}\nPearson r = "
                     f"{w['pearson_traj_weight_return']:.3f}", fontsize=9)
        ax.set_xlabel("trajectory mean meta-weight")
        ax.set_ylabel("trajectory return")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return True


def vaco_weight_stats(results: list[dict], out_dir: Path, png: Path) -> bool:
    """VACO's weight diagnostics over its bi-level phase, one line per (solver, dataset, seed): the batch mean
    of the sigmoid before normalisation (falls toward 0 when the weights collapse) and the effective sample
    fraction (falls toward 1/B when they sharpen)."""
    curves = []
    for r, d in _runs(results, out_dir, lambda r: str(r["algo"]).startswith("vaco")):
        m = d / "metrics.jsonl"
        if m.exists():
            off = int(r.get("value_steps", 0) or 0)
            rows = [json.loads(x) for x in m.read_text().splitlines() if x.strip()]
            pts = [(row["step"] - off, row["w_raw_mean"], row["w_ess"]) for row in rows if "w_raw_mean" in row]
            if pts:
                curves.append((f"{r['algo']} {r['dataset'].replace('suite/', '')} s{r['seed']}", pts))
    if not curves:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for label, pts in curves:
        axes[0].plot([x[0] for x in pts], [x[1] for x in pts], label=label)
        axes[1].plot([x[0] for x in pts], [x[2] for x in pts], label=label)
    axes[0].set_ylabel("raw sigmoid weight, batch mean")
    axes[1].set_ylabel("effective sample fraction")
    for ax in axes:
        ax.set_xlabel("policy (bi-level) updates")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return True


def aspc_alpha_curves(results: list[dict], out_dir: Path, png: Path) -> bool:
    """ASPC's constraint scale alpha over training, mean over seeds, one line per dataset."""
    by_ds: dict[str, list[list[tuple[int, float]]]] = {}
    for r, d in _runs(results, out_dir, lambda r: r["algo"] == "aspc"):
        m = d / "metrics.jsonl"
        if m.exists():
            rows = [json.loads(x) for x in m.read_text().splitlines() if x.strip()]
            by_ds.setdefault(r["dataset"], []).append([(row["step"], row["alpha"]) for row in rows if "alpha" in row])
    if not by_ds:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4))
    for ds, curves in by_ds.items():
        steps = sorted(set.intersection(*({s for s, _ in c} for c in curves)))
        mean = [float(np.mean([dict(c)[s] for c in curves])) for s in steps]
        ax.plot(steps, mean, label=f"{ds.replace('suite/', '')} ({len(curves)} seeds)")
    ax.set_xlabel("updates")
    ax.set_ylabel("alpha = softplus(rho)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return True


def host_description() -> str:
    """CPU model and core count: the updates/s of a cell mean something only next to this."""
    cpu = platform.machine()
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def hosts_line(results: list[dict], datasets: list[str]) -> str:
    """Which machine ran which dataset's cells, when a grid was spread over more than one."""
    hosts = {r["host"] for r in results if r.get("host")}
    if len(hosts) < 2:
        return ""
    parts = []
    for h in sorted(hosts):
        ds = [d.replace("suite/", "") for d in datasets
              if any(r.get("host") == h and r.get("dataset") == d for r in results)]
        parts.append(f"{h}: {', '.join(ds)}")
    return ("Cells ran on more than one machine (updates/s compare only within a machine): "
            + "; ".join(parts) + ".")


def policy_budget(base_algo: str, args: argparse.Namespace) -> tuple[int, int]:
    """``(total updates, value-only updates)`` of a cell: ``--steps`` policy updates for every algorithm;
    a two-phase VACO cell adds ``--vaco-value-steps`` value-only updates in front when that is set, and
    otherwise splits ``--steps`` by its ``value_fraction`` (the older presets); an ARQ cell adds
    ``--arq-bm-steps`` behaviour-model updates in front."""
    if base_algo == "arq":
        bm = int(getattr(args, "arq_bm_steps", 0) or 0)
        return args.steps + bm, bm
    extra = int(getattr(args, "vaco_value_steps", 0) or 0)
    if base_algo == "vaco" and extra > 0:
        return args.steps + extra, extra
    return args.steps, 0


cell_name = grid.cell_name


def make_cells(cells: list[tuple[str, str, int]], args: argparse.Namespace) -> list[grid.Cell]:
    """``(algo, dataset, seed)`` -> runner cells, with each variant's algorithm, ``--set`` items and budget."""
    out = []
    for algo, dataset, seed in cells:
        base, sets = VARIANTS.get(algo, (algo, []))
        out.append(grid.Cell(algo, dataset, seed, base, tuple(sets), policy_budget(base, args)[0]))
    return out


def group_seeds(cells: list[grid.Cell], args: argparse.Namespace) -> list[grid.Cell]:
    """Unfinished cells of one stackable algorithm variant on one dataset merged into one cell per group
    (``--seeds-per-process``); the others as they are."""
    from rl_adapters.training.seed_stack import stackable_algorithms

    out, groups, rest = Path(args.out), {}, []
    for c in cells:
        finished = (out / f"{c.name}.json").exists()
        if c.base_algo in stackable_algorithms() and not finished:
            groups.setdefault((c.algo, c.dataset, c.base_algo, c.variant_sets), []).append(c)
        else:
            rest.append(c)
    merged = [grid.Cell(a, d, members[0].seed, base, sets, sum(m.steps for m in members),
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
    seeds = group or [seed]
    names = [cell_name(algo, dataset, s) for s in seeds]
    if all((out / f"{n}.json").exists() for n in names):
        return json.loads((out / f"{names[0]}.json").read_text()) | {"skipped": True}
    name = grid.Cell(algo, dataset, seed, algo, group=tuple(group)).name if group else names[0]
    run_dir = out / "runs" / name
    log = out / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    base_algo, variant_sets = variant if variant is not None else VARIANTS.get(algo, (algo, []))
    steps, value_steps = policy_budget(base_algo, args)
    if value_steps and base_algo == "vaco":
        variant_sets = variant_sets + [f"value_fraction={value_steps / steps!r}"]
    if base_algo == "arq":
        variant_sets = variant_sets + [f"bm_steps={value_steps}"]
    threads = int(getattr(args, "threads", 1))  # vaco_bench / aspc_bench have no --threads: one per cell
    cmd = [sys.executable, "-m", "rl_adapters", "train", "--no-progress"]
    checkpointed = (run_dir / "checkpoint.pt").exists() or any(run_dir.glob("seed*/checkpoint.pt"))
    if checkpointed and (run_dir / "config.json").exists():
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
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    from benchmarks.grid import run_child

    seed_dirs = [run_dir / f"seed{s}" for s in seeds] if group else [run_dir]
    if all((d / "summary.json").exists() for d in seed_dirs):
        # Trained to the end by an invocation killed before it wrote the result (the trainer writes
        # summary.json last): only the result is missing, and --resume of a finished run is refused.
        rc = 0
    else:
        with open(log, "a") as f:
            rc = run_child(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    if rc != 0:
        return {"algo": algo, "dataset": dataset, "seed": seed, "failed": True, "error": f"exit {rc}; see {log}"}
    results = [_write_result(algo, base_algo, d, out / f"{n}.json", value_steps, steps, seeds if group else None)
               for d, n in zip(seed_dirs, names)]
    return results[0]


def _write_result(algo: str, base_algo: str, run_dir: Path, result_path: Path, value_steps: int, steps: int,
                  group: list[int] | None) -> dict:
    """A finished run's summary with the grid's additions, written atomically to ``result_path``."""
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["algo"] = algo  # the variant name, so that the table keeps variants apart
    summary["host"] = host_description()  # a grid may be spread over machines; updates/s is per host
    summary["value_steps"] = value_steps
    summary["policy_updates"] = steps - value_steps
    if group:
        summary["seeds_in_process"] = group  # its updates_per_s counts updates of the whole group
    if base_algo == "vaco":
        from rl_adapters.vaco_analysis import analyze_weights

        summary["weight_return_pearson"] = analyze_weights(run_dir)["pearson_traj_weight_return"]
        rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]
        w = [(r["step"], r["w_raw_mean"], r["w_ess"]) for r in rows if "w_raw_mean" in r]
        if w:
            summary["weight_raw_mean_start_end"] = [w[0][1], w[-1][1]]
            summary["weight_ess_end"] = w[-1][2]
    if base_algo == "aspc":
        rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]
        summary["final_alpha"] = [r["alpha"] for r in rows if "alpha" in r][-1]
    tmp = result_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, result_path)
    return summary


def cell_state(algo: str, dataset: str, seed: int, args: argparse.Namespace) -> dict:
    """A cell's result without running it: the finished result, or how far an unfinished run got
    (``in_progress`` updates, from its metrics), so that a report can be written while a grid is incomplete."""
    out = Path(args.out)
    name = cell_name(algo, dataset, seed)
    if (out / f"{name}.json").exists():
        return json.loads((out / f"{name}.json").read_text()) | {"skipped": True}
    steps, value_steps = policy_budget(VARIANTS.get(algo, (algo, []))[0], args)
    metrics = out / "runs" / name / "metrics.jsonl"
    done = 0
    if metrics.exists():
        rows = [ln for ln in metrics.read_text().splitlines() if ln.strip()]
        done = json.loads(rows[-1])["step"] if rows else 0
    return {"algo": algo, "dataset": dataset, "seed": seed, "failed": True, "in_progress": done,
            "total_steps": steps, "value_steps": value_steps}


def table(results: list[dict], algos: list[str], datasets: list[str]) -> str:
    lines = [
        ("| dataset | algorithm | normalised score (mean ± std) | final return | seeds | updates/s | wall time (s) | "
         "VACO weight/return Pearson, ESS, raw weight mean start → end; ASPC final alpha |"),
        "|---|---|---|---|---|---|---|---|",
    ]
    for ds in datasets:
        for algo in algos:
            rows = [
                r for r in results if r.get("algo") == algo and r.get("dataset") == ds and not r.get("failed")
            ]
            if not rows:
                partial = [r for r in results if r.get("algo") == algo and r.get("dataset") == ds and r.get("in_progress")]
                state = ("unfinished: " + ", ".join(f"seed {r['seed']} at {r['in_progress']}/{r['total_steps']} updates"
                                                     for r in partial)) if partial else "not started"
                lines.append(f"| {ds} | {algo} | ({state}) | | 0 | | | |")
                continue
            scores = np.array([r["final_normalized_score"] for r in rows], dtype=float)
            rets = np.array([r["final_return"] for r in rows], dtype=float)
            ups = np.mean([r["updates_per_s"] for r in rows])
            wall = np.mean([r["wall_time_s"] for r in rows])
            parts = []
            for key, fmt in (("weight_return_pearson", "r = {:.2f} ± {:.2f}"), ("final_alpha", "alpha = {:.3f} ± {:.3f}"),
                             ("weight_ess_end", "ESS {:.2f} ± {:.2f}")):
                vals = [r[key] for r in rows if r.get(key) is not None]
                if vals:
                    parts.append(fmt.format(np.mean(vals), np.std(vals)))
            w = [r["weight_raw_mean_start_end"] for r in rows if r.get("weight_raw_mean_start_end")]
            if w:
                parts.append(f"w {np.mean([x[0] for x in w]):.2f} → {np.mean([x[1] for x in w]):.2f}")
            extra = "; ".join(parts)
            lines.append(
                f"| {ds} | {algo} | {scores.mean():.1f} ± {scores.std():.1f} | {rets.mean():.0f} | "
                f"{len(rows)} | {ups:.0f} | {wall:.0f} | {extra} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="quick (about 12 min on 2 CPU cores), mid (~7 core-hours), full (~50 core-hours) or equal "
                        "(~42 core-hours); flags below override it")
    p.add_argument("--algos", default="bc,td3bc,iql")
    p.add_argument("--solvers", default="one_step,k_step,implicit",
                   help="VACO solvers: an algorithm named 'vaco' runs once per solver")
    p.add_argument("--datasets", default=DEFAULT_DATASETS)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=30_000, help="policy updates per cell")
    p.add_argument("--vaco-value-steps", type=int, default=0,
                   help="IQL value-only updates a VACO cell takes before its --steps bi-level updates "
                        "(0: VACO splits --steps by its value_fraction, as the quick/mid/full presets do)")
    p.add_argument("--arq-bm-steps", type=int, default=50_000,
                   help="behaviour-model updates an ARQ cell takes before its --steps Q/policy updates")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto (each worker process uses it)")
    p.add_argument("--workers", type=int, default=None,
                   help="cells at once (default: cores - 1 on the local pool; with --ray, as many as the cluster fits)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per cell (default 1; keep workers x threads <= cores, see docs/rl.md)")
    p.add_argument("--seeds-per-process", action="store_true",
                   help="train the seeds of a BC / TD3+BC / IQL / ASPC cell together in one process (bilevel-rl train "
                        "--seeds; docs/benchmarks.md 'Throughput' measures what it buys); each seed keeps its result")
    p.add_argument("--eval-every", type=int, default=10_000)
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--checkpoint-every", type=int, default=5_000)
    p.add_argument("--log-every", type=int, default=1_000)
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="hyper-parameter for every cell"
    )
    p.add_argument("--out", default="results/offline_rl")
    p.add_argument("--report", action="store_true", help="write the table into docs/benchmarks.md")
    p.add_argument("--report-only", action="store_true",
                   help="write the report from the cells already in --out without running any (unfinished cells "
                        "are listed with how far they got; their curves are drawn as far as they go)")
    p.add_argument("--note", default="", help="extra line for the report (e.g. 'smoke run')")
    p.add_argument("--section", default="offline_rl", help="docs/benchmarks.md section this grid writes")
    grid.add_arguments(p)
    if argv is None:
        argv = sys.argv[1:]
    pre = p.parse_known_args(argv)[0].preset
    if pre is not None:
        # Preset values become defaults, so any flag given explicitly still wins.
        p.set_defaults(**PRESETS[pre], out=f"results/offline_rl_{pre}")
    args = p.parse_args(argv)
    for flag, val in (("--steps", args.steps), ("--workers", args.workers), ("--log-every", args.log_every),
                      ("--threads", args.threads)):
        if val is not None and val < 1:
            p.error(f"{flag} must be >= 1, got {val}")
    grid.check_arguments(p, args)
    if args.vaco_value_steps < 0:
        p.error(f"--vaco-value-steps must be >= 0, got {args.vaco_value_steps}")
    os.environ.setdefault("MINARI_DATASETS_PATH", str(ROOT.parent / "shared" / "datasets"))
    algos = expand_solvers(args.algos.split(","), args.solvers.split(","))
    datasets = args.datasets.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    cells = make_cells([(a, d, s) for d in datasets for a in algos for s in seeds], args)
    # Longest cells first so the pool's tail is short (unknown variants count as the slowest).
    cells.sort(key=lambda c: -COST_MS.get(c.algo, max(COST_MS.values())))
    t0 = time.perf_counter()
    if args.report_only:
        results = [cell_state(c.algo, c.dataset, c.seed, args) for c in cells]
    elif args.seeds_per_process:
        grid.run_grid(group_seeds(cells, args), args, "offline_rl")
        results = [cell_state(c.algo, c.dataset, c.seed, args) for c in cells]
    else:
        results = grid.run_grid(cells, args, "offline_rl")
    wall = time.perf_counter() - t0
    body = table(results, algos, datasets)
    (Path(args.out) / "table.md").write_text(body + "\n")
    print(body)
    print(f"[offline_rl] grid wall time {wall:.0f}s, {len(cells)} cells, {args.workers} workers"
          + (" (Ray)" if args.ray else ""))
    png = Path(args.out) / "learning_curves.png"
    learning_curves(results, algos, datasets, Path(args.out), png)
    if args.report:
        import shutil

        from benchmarks._report import REPORT, command_line, git_revision, machine_description, write_section

        img = REPORT.parent / "img" / f"{args.section}_curves.png"
        reused = sum(bool(r.get("skipped")) for r in results)
        extra = ""
        for kind, fn, caption in (("vaco_weights", vaco_weight_scatter, "VACO meta-weights vs return"),
                                  ("vaco_weight_stats", vaco_weight_stats, "VACO weight statistics over training"),
                                  ("aspc_alpha", aspc_alpha_curves, "ASPC alpha over training")):
            extra_png = REPORT.parent / "img" / f"{args.section}_{kind}.png"
            if fn(results, Path(args.out), extra_png):
                extra += f"\n![{caption}](img/{extra_png.name})\n"
        # Hand-written findings about a grid (e.g. an investigation of a surprising cell) live beside the
        # script, so that regenerating the section keeps them.
        notes_file = ROOT / "benchmarks" / "notes" / f"{args.section}.md"
        img.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, img)
        title = {"offline_rl": "Offline RL baselines"}.get(
            args.section, f"Offline RL grid ({args.preset or 'custom'} preset)")
        section = (
            f"## {title}\n\n"
            f"Command: `MINARI_DATASETS_PATH=../shared/datasets {command_line()}`\n\n"
            + (f"Rendered with --report-only from the cells in `{args.out}` (git {git_revision()}); the cells ran "
               f"in earlier invocations, one torch thread each (see the notes below for where).\n\n"
               if args.report_only else
               f"Machine: {machine_description(args.device)}; {args.workers} "
               + ("Ray tasks at once" if args.ray else "worker processes") + ", one torch "
               f"thread each; git {git_revision()}. Grid wall time {wall:.0f}s"
               + (f" ({reused} of {len(results)} cells reused from an earlier invocation)" if reused else "")
               + ".\n\n")
            + (f"{args.steps} policy updates per cell; VACO cells train {args.vaco_value_steps} IQL value-only "
               f"updates first (not counted as policy updates, drawn before 0 in the curves). "
               if args.vaco_value_steps else f"{args.steps} updates, ")
            + f"batch 256, final evaluation {args.eval_episodes} episodes per seed "
            f"(normalised score = 100 (R - ref_min) / (ref_max - ref_min) from the dataset metadata).\n"
            + (f"\n{args.note}\n" if args.note else "")
            + (f"\n{hosts_line(results, datasets)}\n" if hosts_line(results, datasets) else "")
            + f"\n{body}\n\n![learning curves](img/{img.name})\n"
            + extra
            + (f"\n{notes_file.read_text()}" if notes_file.exists() else "")
        )
        write_section(args.section, section)
    return 0 if args.report_only or all(not r.get("failed") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
