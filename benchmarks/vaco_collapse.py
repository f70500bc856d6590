"""VACO's weight collapse (paper section 4.3): which mechanism keeps the meta-weights informative?

For each (dataset, seed) one IQL value phase is trained and cached (``value_<dataset>_s<seed>.pt``);
every (mechanism, solver) run then starts from that same critic, actor and scorer and takes
``--bilevel-steps`` bi-level updates, logging every ``--log-every`` updates the batch weights' raw mean
(sigmoid before any normalisation), their effective sample fraction ``(sum w)^2 / (B sum w^2)`` and the
hypergradient's RMS relative to the scorer's Adam eps. At the end it scores the whole dataset with the
meta-scorer (trajectory mean weight vs return, Pearson r) and evaluates the policy.

A run is one JSON file (``<out>/<dataset>__<mechanism>__<solver>__s<seed>.json``); finished runs are
skipped, so an interrupted study resumes by running the same command again. ``--report`` writes the
"VACO weight collapse" section of docs/benchmarks.md and a plot of weight mean / ESS over updates.

    MINARI_DATASETS_PATH=../shared/datasets python -m benchmarks.vaco_collapse --workers 2 --report
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

#: mechanism name -> VACO hyper-parameters (on top of the defaults).
MECHANISMS: dict[str, dict[str, Any]] = {
    # Every option spelled out, so that a change of VACO's defaults cannot change what a name means.
    "sigmoid": {"weight_norm": "none", "weight_kl": 0.0, "scorer_init": "torch"},  # the paper's Eq. 5
    "batch_mean": {"weight_norm": "batch_mean", "weight_kl": 0.0, "scorer_init": "torch"},  # no common scale
    # + a guard against sharpening, at three strengths
    "batch_mean+kl": {"weight_norm": "batch_mean", "weight_kl": 0.05, "scorer_init": "torch"},
    "batch_mean+kl0.01": {"weight_norm": "batch_mean", "weight_kl": 0.01, "scorer_init": "torch"},
    "batch_mean+kl0.001": {"weight_norm": "batch_mean", "weight_kl": 0.001, "scorer_init": "torch"},
    # + equal initial weights, so that any ranking is learned rather than inherited from a random scorer:
    # VACO's default since this study
    "guarded": {"weight_norm": "batch_mean", "weight_kl": 0.001, "scorer_init": "zero"},
}
SOLVERS = {"one_step": {"solver": "one_step"}, "k_step": {"solver": "k_step", "k": 5, "mode": "reverse"},
           "implicit": {"solver": "implicit"}}


def _slug(dataset: str) -> str:
    return dataset.replace("suite/", "").replace("/", "_")


def value_phase(dataset: str, seed: int, value_steps: int, out: Path) -> Path:
    """Train (or reuse) the IQL value phase for ``dataset``/``seed``; returns the cached state's path."""
    import torch

    from rl_adapters.algorithms import make_algorithm
    from rl_adapters.data import load_dataset

    path = out / f"value_{_slug(dataset)}_s{seed}_{value_steps}.pt"
    if path.exists():
        return path
    data = load_dataset(dataset)
    algo = make_algorithm("vaco", data.obs_dim, data.act_dim, data.stats, seed=seed,
                          total_steps=2 * value_steps, value_fraction=0.5)
    gen = data.make_generator(seed)
    for _ in range(value_steps):
        algo.update(data.sample(algo.config.batch_size, gen))
    state = {k: m.state_dict() for k, m in algo.modules.items()}
    tmp = path.with_suffix(".tmp")
    torch.save({"modules": state, "generator": gen.get_state()}, tmp)
    os.replace(tmp, path)
    return path


def initial_pearson(dataset: str, seed: int, args: argparse.Namespace) -> float | None:
    """Trajectory weight/return Pearson of a PyTorch-initialised scorer before any bi-level update (the
    value networks of the shared phase give its Q input): what a random scorer already 'finds'."""
    import torch

    torch.set_num_threads(1)
    from rl_adapters.algorithms import make_algorithm
    from rl_adapters.data import load_dataset
    from rl_adapters.vaco_analysis import analyze_weights

    data = load_dataset(dataset)
    algo = make_algorithm("vaco", data.obs_dim, data.act_dim, data.stats, seed=seed,
                          total_steps=2 * args.value_steps, value_fraction=0.5, **MECHANISMS["sigmoid"])
    cached = torch.load(value_phase(dataset, seed, args.value_steps, Path(args.out)), weights_only=True)
    for k in ("critic", "critic_target", "value"):
        algo.modules[k].load_state_dict(cached["modules"][k])
    return analyze_weights(algo=algo, data=data, plot=False)["pearson_traj_weight_return"]


def run_one(dataset: str, seed: int, mechanism: str, solver: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    from rl_adapters.algorithms import make_algorithm
    from rl_adapters.data import load_dataset
    from rl_adapters.evaluation import evaluate
    from rl_adapters.vaco_analysis import analyze_weights

    out = Path(args.out)
    res_path = out / f"{_slug(dataset)}__{mechanism}__{solver}__s{seed}.json"
    if res_path.exists():
        return json.loads(res_path.read_text())
    vpath = value_phase(dataset, seed, args.value_steps, out)
    data = load_dataset(dataset)
    total = args.value_steps + args.bilevel_steps
    hp = {**MECHANISMS[mechanism], **SOLVERS[solver], "value_fraction": args.value_steps / total}
    algo = make_algorithm("vaco", data.obs_dim, data.act_dim, data.stats, seed=seed, total_steps=total, **hp)
    cached = torch.load(vpath, weights_only=True)
    # Only the value networks come from the shared phase: the scorer (and the untouched actor) are built by
    # this run's own configuration, so that its scorer_init holds.
    for k in ("critic", "critic_target", "value"):
        algo.modules[k].load_state_dict(cached["modules"][k])
    algo.step = algo.value_steps
    gen = data.make_generator(seed)
    gen.set_state(cached["generator"])
    start = analyze_weights(algo=algo, data=data, plot=False)["pearson_traj_weight_return"]
    keys = ("w_mean", "w_raw_mean", "w_ess", "hypergrad_norm", "hypergrad_rms_over_eps", "bc_loss", "outer_loss")
    log: list[dict[str, float]] = []
    window: list[dict[str, float]] = []
    t0 = time.perf_counter()
    for i in range(1, args.bilevel_steps + 1):
        info = algo.update(data.sample(algo.config.batch_size, gen))
        window.append({k: info[k] for k in keys})
        if i % args.log_every == 0 or i == 1:
            log.append({"step": i, **{k: float(np.mean([w[k] for w in window])) for k in keys}})
            window = []
    wall = time.perf_counter() - t0
    weights = analyze_weights(algo=algo, data=data, plot=False)
    ev = evaluate(algo, data, episodes=args.eval_episodes, seed=10_000 + seed)
    result = {
        "dataset": dataset, "seed": seed, "mechanism": mechanism, "solver": solver, "hparams": hp,
        "value_steps": args.value_steps, "bilevel_steps": args.bilevel_steps, "log": log,
        "pearson_traj_weight_return": weights["pearson_traj_weight_return"], "pearson_at_start": start,
        "dataset_weight_mean": weights["weight"]["mean"],
        "return_thirds": {k: v["mean_weight"] for k, v in weights["return_thirds"].items()},
        "score": float(np.mean(ev.normalized)), "bilevel_wall_s": wall,
    }
    tmp = res_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, res_path)
    print(f"[vaco_collapse] {res_path.name}: r={result['pearson_traj_weight_return']:.3f} "
          f"raw mean {log[0]['w_raw_mean']:.3f}->{log[-1]['w_raw_mean']:.3f} ess {log[-1]['w_ess']:.3f} "
          f"score {result['score']:.1f} ({wall:.0f}s)", flush=True)
    return result


def _summary(results: list[dict[str, Any]]) -> str:
    lines = [("| dataset | mechanism | solver | seeds | raw weight mean: start → min → end | ESS fraction: end (min) | "
             "hypergrad RMS / eps (end) | trajectory weight/return Pearson | score |"),
             "|---|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["dataset"], r["mechanism"], r["solver"]), []).append(r)
    for (ds, mech, solver), rs in sorted(groups.items()):
        start = np.mean([r["log"][0]["w_raw_mean"] for r in rs])
        low = np.mean([min(x["w_raw_mean"] for x in r["log"]) for r in rs])
        end = np.mean([r["log"][-1]["w_raw_mean"] for r in rs])
        ess = np.mean([r["log"][-1]["w_ess"] for r in rs])
        ess_min = np.mean([min(x["w_ess"] for x in r["log"]) for r in rs])
        hg = np.mean([r["log"][-1]["hypergrad_rms_over_eps"] for r in rs])
        pr = [r["pearson_traj_weight_return"] for r in rs if r["pearson_traj_weight_return"] is not None]
        sc = [r["score"] for r in rs]
        lines.append(f"| {_slug(ds)} | {mech} | {solver} | {len(rs)} | {start:.3f} → {low:.3f} → {end:.3f} | "
                     f"{ess:.2f} ({ess_min:.2f}) | {hg:.2f} | {np.mean(pr):.2f} ± {np.std(pr):.2f} "
                     f"(min {min(pr):.2f}) | {np.mean(sc):.1f} ± {np.std(sc):.1f} |")
    return "\n".join(lines)


def _plot(results: list[dict[str, Any]], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({r["dataset"] for r in results})
    fig, axes = plt.subplots(2, len(datasets), figsize=(5.5 * len(datasets), 6.5), squeeze=False)
    # colour = mechanism, line style = solver: the question is which mechanism keeps every solver's weights up
    colors = {m: f"C{i}" for i, m in enumerate(MECHANISMS)}
    styles = {"one_step": "-", "k_step": "--", "implicit": ":"}
    for col, ds in enumerate(datasets):
        for mech in MECHANISMS:
            for solver in SOLVERS:
                rs = [r for r in results if r["dataset"] == ds and r["mechanism"] == mech and r["solver"] == solver]
                if not rs:
                    continue
                steps = [x["step"] for x in rs[0]["log"]]
                for row, key in ((0, "w_raw_mean"), (1, "w_ess")):
                    vals = np.mean([[x[key] for x in r["log"]] for r in rs], axis=0)
                    axes[row][col].plot(steps, vals, linestyle=styles[solver], color=colors[mech],
                                        label=f"{mech}, {solver} ({len(rs)} seeds)" if row == 1 else None)
        axes[1][col].legend(fontsize=6, loc="lower left", ncol=2)
        axes[0][col].set_title(_slug(ds))
        axes[0][col].set_ylabel("batch mean of sigmoid weight")
        axes[1][col].set_ylabel("effective sample fraction")
        axes[0][col].set_yscale("log")
        for row in (0, 1):
            axes[row][col].set_xlabel("bi-level updates")
            axes[row][col].grid(alpha=0.3)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default="suite/hopper/medium-expert")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--mechanisms", default=",".join(MECHANISMS))
    p.add_argument("--solvers", default=",".join(SOLVERS))
    p.add_argument("--value-steps", type=int, default=10_000)
    p.add_argument("--bilevel-steps", type=int, default=3_000)
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--eval-episodes", type=int, default=5)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default="results/vaco_collapse")
    p.add_argument("--report", action="store_true")
    p.add_argument("--report-only", action="store_true",
                   help="render the report from the runs already in --out (every mechanism, seed and dataset found) "
                        "without training anything")
    args = p.parse_args(argv)
    for flag, val in (("--value-steps", args.value_steps), ("--bilevel-steps", args.bilevel_steps),
                      ("--log-every", args.log_every), ("--workers", args.workers)):
        if val < 1:
            p.error(f"{flag} must be >= 1, got {val}")
    bad = [m for m in args.mechanisms.split(",") if m not in MECHANISMS] + [
        s for s in args.solvers.split(",") if s not in SOLVERS]
    if bad:
        p.error(f"unknown mechanism/solver {bad}; mechanisms: {list(MECHANISMS)}, solvers: {list(SOLVERS)}")
    os.environ.setdefault("MINARI_DATASETS_PATH", str(ROOT.parent / "shared" / "datasets"))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    datasets, seeds = args.datasets.split(","), [int(s) for s in args.seeds.split(",")]
    if args.report_only:
        results = [json.loads(f.read_text()) for f in sorted(out.glob("*__*__*__s*.json"))]
        if not results:
            p.error(f"--report-only: no finished runs in {out}")
        init_path = out / "init_pearson.json"
        init = json.loads(init_path.read_text()) if init_path.exists() else {}
        datasets = sorted({r["dataset"] for r in results})
        seeds = sorted({int(r["seed"]) for r in results})
        args.report = True
        return _render(results, init, datasets, seeds, args)
    # Value phases first (one per dataset and seed), so runs sharing one never train it twice.
    with ProcessPoolExecutor(args.workers) as pool:
        list(pool.map(value_phase, *zip(*[(d, s, args.value_steps, out) for d in datasets for s in seeds])))
        # K-step first: the longest runs, so the pool's tail is short.
        order = {"k_step": 0, "implicit": 1, "one_step": 2}
        jobs = sorted([(d, s, m, v) for d in datasets for s in seeds for m in args.mechanisms.split(",")
                       for v in args.solvers.split(",")], key=lambda j: order[j[3]])
        futures = [pool.submit(run_one, *j, args) for j in jobs]
        init_path = out / "init_pearson.json"
        init = json.loads(init_path.read_text()) if init_path.exists() else {}
        todo = [(d, s) for d in datasets for s in seeds if f"{_slug(d)}_s{s}" not in init]
        for (d, s), r in zip(todo, pool.map(initial_pearson, *zip(*todo), [args] * len(todo)) if todo else []):
            init[f"{_slug(d)}_s{s}"] = r
        init_path.write_text(json.dumps(init, indent=1))
        results = [f.result() for f in futures]
    return _render(results, init, datasets, seeds, args)


def _render(results: list[dict[str, Any]], init: dict[str, float | None], datasets: list[str], seeds: list[int],
            args: argparse.Namespace) -> int:
    body = _summary(results)
    body += ("\n\nTrajectory weight/return Pearson of a PyTorch-initialised scorer before any bi-level update "
             "(same value networks): " + ", ".join(f"{_slug(d)} seed {s}: {init[f'{_slug(d)}_s{s}']:.2f}"
                                                   for d in datasets for s in seeds
                                                   if init.get(f"{_slug(d)}_s{s}") is not None) + ".")
    print(body)
    if args.report:
        from benchmarks._report import REPORT, command_line, git_revision, machine_description, write_section

        png = REPORT.parent / "img" / "vaco_collapse.png"
        _plot(results, png)
        notes = ROOT / "benchmarks" / "notes" / "vaco_collapse.md"
        write_section("vaco_collapse", (
            "## VACO weight collapse: mechanisms compared\n\n"
            f"Command: `MINARI_DATASETS_PATH=../shared/datasets {command_line()}`\n\n"
            f"Machine: {machine_description()}; {args.workers} worker processes, one torch thread each; "
            f"git {git_revision()}.\n\n"
            f"Each run: {args.value_steps} IQL value steps (shared by all runs of a seed), then "
            f"{args.bilevel_steps} bi-level updates; weights logged every {args.log_every} updates; "
            f"Pearson over the dataset's trajectories; score over {args.eval_episodes} episodes.\n\n"
            f"{body}\n\n![weight mean and ESS over updates](img/{png.name})\n"
            + (f"\n{notes.read_text()}" if notes.exists() else "")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
