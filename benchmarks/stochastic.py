"""Stochastic bilevel solvers on minibatches: ||grad h||^2 against wall time and samples seen.

Problems (``stochastic_problems.py``): the benchopt bilevel quadratic (n = 1024 samples per level,
d_in = 100, d_out = 10, [mu, L] = [0.1, 1], L_cross = 0.1, x0 = -2 * 1, exact oracle from the
closed-form z*(x)) and per-feature L2 selection for logistic regression on sklearn's breast-cancer
data (an offline stand-in for benchopt's ijcnn1 problem; exact oracle by Newton + IFT). Both levels
draw minibatches of 64 (epoch-shuffled, as benchopt's sampler).

Solvers, all with the same outer SGD step and inner SGD lr (one table, ``SETTINGS``):
SOBA (one step each on theta, v, lambda per call), F2SA (10 first-order steps on both inner copies),
warm-started implicit "AmIGO" (10 inner steps + 10 warm-started fixed-point / CG iterations), the
cold implicit solver of the issue (20 inner steps + 20 CG iterations from 0, no damping), K-step
(10 differentiated steps, theta kept across calls) and one-step.

``samples seen`` counts the sample indices drawn from the two samplers (a batch reused for a
Hessian-vector product is not counted twice); ``time`` is solver time only (the exact oracle is
evaluated every ``--eval-every`` calls outside the clock). Default run: 3 seeds x 2000 outer steps on
the quadratic, 3 x 1000 on breast cancer, a few minutes on one CPU core::

    python -m benchmarks.stochastic --report     # writes the "stochastic" section of docs/benchmarks.md
    python -m benchmarks.stochastic --quick      # 1 seed, 300 steps: a smoke run (results/stochastic only)
    python -m benchmarks.stochastic --report-only --report   # the section again from results/stochastic
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torchopt

ROOT = Path(__file__).resolve().parent.parent

import bilevel
from benchmarks._report import (
    command_line,
    git_revision,
    machine_description,
    pyplot,
    save_figure,
    write_section,
)
from benchmarks.stochastic_problems import Instance, make_breast_cancer, make_quadratic

IMG = ROOT / "docs" / "img"
BATCH = 64
K = 10  # inner steps per call of F2SA / K-step / AmIGO
EARLY = {1, 2, 5, 10}  # extra oracle calls before the first ``--eval-every`` (the log-scale samples axis)

#: per problem: inner SGD lr (also SOBA's v_lr and the fixed-point step), outer SGD lr, outer steps
SETTINGS: dict[str, dict[str, float]] = {
    "quadratic": {"inner_lr": 0.1, "outer_lr": 0.01, "steps": 2000},
    "breast_cancer": {"inner_lr": 0.1, "outer_lr": 10.0, "steps": 1000},
}
#: the plotted metric: column of a curve point (k, time, samples, ||grad h||^2, h) and its axis label.
PLOTTED = {"quadratic": (3, r"$\|\nabla h(\lambda)\|^2$"),
           "breast_cancer": (4, r"$h(\lambda)$ = validation log-loss at $\theta^*(\lambda)$")}


def sampler(n: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """Minibatches of ``BATCH`` indices, a fresh permutation every epoch (benchopt's MinibatchSampler)."""
    while True:
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n - BATCH + 1, BATCH):
            yield perm[i:i + BATCH]


# key -> (label, solver factory(problem, inner_lr, outer_lr), inner batches per call, outer batches per call,
#         whether the solver takes lists)
Method = tuple[str, Callable[[bilevel.Problem, float, float], bilevel.Solver], int, int, bool]


def _outer(problem: bilevel.Problem, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(problem.outer.parameters(), lr=lr)


METHODS: dict[str, Method] = {
    "soba": ("SOBA", lambda p, lr, olr: bilevel.SOBASolver(p, torchopt.sgd(lr=lr), _outer(p, olr), v_lr=lr), 1, 1, False),
    "f2sa": ("F2SA", lambda p, lr, olr: bilevel.F2SASolver(p, torchopt.sgd(lr=lr), _outer(p, olr), inner_steps=K,
                                                   penalty=1.0, penalty_growth=0.01), K, K, True),
    "amigo": (
        "AmIGO (implicit, warm fixed point)", lambda p, lr, olr: bilevel.ImplicitSolver(p, torchopt.sgd(lr=lr), _outer(p, olr), inner_steps=K,
                                                  linear_solver="fixed_point", iterations=K, step_size=lr,
                                                  warm_start=True, residual=False), K, 1, True),
    "warm_cg": (
        "implicit, warm CG", lambda p, lr, olr: bilevel.ImplicitSolver(p, torchopt.sgd(lr=lr), _outer(p, olr), inner_steps=K,
                                                  linear_solver="cg", iterations=K, warm_start=True), K, 1, True),
    "cold_cg": (
        "implicit, cold CG (issue)", lambda p, lr, olr: bilevel.ImplicitSolver(p, torchopt.sgd(lr=lr), _outer(p, olr), inner_steps=20,
                                                  linear_solver="cg", iterations=20), 20, 1, True),
    "kstep": ("K-step (K=10)", lambda p, lr, olr: bilevel.KStepSolver(p, torchopt.sgd(lr=lr), _outer(p, olr),
                                                                        steps=K), K, 1, True),
    "onestep": ("one-step", lambda p, lr, olr: bilevel.OneStepSolver(p, torchopt.sgd(lr=lr), _outer(p, olr)), 1, 1, False),
}


def run_one(inst: Instance, method: str, seed: int, steps: int, eval_every: int) -> dict[str, Any]:
    """One solver on one problem: ||grad h||^2 every ``eval_every`` calls, with solver time and samples."""
    _, make, n_in, n_out, lists = METHODS[method]
    cfg = SETTINGS[inst.name]
    torch.manual_seed(seed)
    problem = inst.make_problem()
    solver = make(problem, cfg["inner_lr"], cfg["outer_lr"])
    gen = torch.Generator().manual_seed(seed)
    inner_s, outer_s = sampler(inst.n_inner, gen), sampler(inst.n_outer, gen)
    lam = next(problem.outer.parameters())
    start = inst.grad_h_sq(lam)
    curve = [(0, 0.0, 0, start, inst.value(lam))]
    clock, samples, status = 0.0, 0, "ok"
    for k in range(1, steps + 1):
        ib = [next(inner_s) for _ in range(n_in)]
        ob = [next(outer_s) for _ in range(n_out)]
        samples += BATCH * (n_in + n_out)
        t0 = time.perf_counter()
        try:
            solver.step(ib if lists else ib[0], ob if (lists and n_out > 1) else ob[0])
        except bilevel.NonFiniteError:
            status = f"non-finite at step {k}"
            break
        clock += time.perf_counter() - t0
        if k % eval_every == 0 or k == steps or k in EARLY:
            value = inst.grad_h_sq(lam)
            if not math.isfinite(value) or value > 1e12 * start:
                status = f"diverged at step {k}"
                curve.append((k, clock, samples, value if math.isfinite(value) else float("inf"), float("nan")))
                break
            curve.append((k, clock, samples, value, inst.value(lam)))
    return {"method": method, "seed": seed, "curve": curve, "status": status, "start": start,
            "final": curve[-1][3], "final_value": curve[-1][4], "steps": curve[-1][0], "time": clock,
            "samples_per_step": BATCH * (n_in + n_out)}


# ---------------------------------------------------------------------------- report
def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def summary(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for method in METHODS:
        rs = [r for r in runs if r["method"] == method]
        if not rs:
            continue
        ratio = [r["final"] / r["start"] for r in rs]
        ms = [1000 * r["time"] / max(r["steps"], 1) for r in rs]
        hit = []  # solver time to reduce ||grad h||^2 100x, per seed (inf when never)
        for r in rs:
            t = [c[1] for c in r["curve"] if c[3] <= r["start"] / 100]
            hit.append(t[0] if t else float("inf"))
        rows.append({"method": METHODS[method][0], "key": method, "seeds": len(rs), "ratio_median": _median(ratio),
                     "ratio_max": max(ratio), "value_median": _median([r["final_value"] for r in rs]),
                     "ms_per_step": _median(ms), "samples_per_step": rs[0]["samples_per_step"],
                     "time_to_100x": _median(hit), "failed": [r["status"] for r in rs if r["status"] != "ok"]})
    return rows


def plot(results: dict[str, list[dict[str, Any]]], path: Path) -> None:
    plt = pyplot()
    probs = list(results)
    fig, axes = plt.subplots(len(probs), 2, figsize=(11, 4 * len(probs)), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for row, prob in zip(axes, probs):
        top = 3 * max(r["curve"][0][PLOTTED[prob][0]] for r in results[prob])
        for i, method in enumerate(METHODS):
            rs = [r for r in results[prob] if r["method"] == method]
            for j, r in enumerate(rs):
                metric, _ = PLOTTED[prob]
                curve = [c for c in r["curve"] if math.isfinite(c[metric])]
                for ax, col in ((row[0], 1), (row[1], 2)):
                    pts = curve if col == 1 else curve[1:]  # samples = 0 has no place on a log axis
                    # A diverged run is clipped at the top of the axis (else it flattens every other curve)
                    # and its last point marked.
                    ys = [min(c[metric], top) for c in pts]
                    ax.plot([c[col] for c in pts], ys, color=colors[i % len(colors)],
                            alpha=0.8, lw=1.2, label=METHODS[method][0] if j == 0 else None)
                    if r["status"] != "ok":
                        ax.plot([pts[-1][col]], [ys[-1]], "x", color=colors[i % len(colors)], ms=8)
        for ax, xlabel in ((row[0], "solver wall time (s)"), (row[1], "samples seen")):
            ax.set_yscale("log")
            ax.set_ylim(top=top)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(PLOTTED[prob][1])
            ax.set_title(prob)
            ax.grid(alpha=0.3)
        row[1].set_xscale("log")
    axes[0][1].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def _fmt(x: float) -> str:
    if not math.isfinite(x):
        return "never" if x > 0 else "nan"
    return f"{x:.2e}" if (x < 1e-2 or x >= 1e3) else f"{x:.3g}"


def markdown(res: dict[str, Any]) -> str:
    meta = res["meta"]
    lines = ["## Stochastic bilevel solvers (minibatches of 64)", "",
             f"Command: `{meta['command']}` (git {meta['git']}, {meta['seconds']:.0f} s in all).  ",
             f"Machine: {meta['machine']}; the dev box is a shared 2-core CPU machine with no GPU.", "",
             ("Problems: the benchopt bilevel **quadratic** (`benchmarks/stochastic_problems.py`: n = 1024 samples "
             "per level (the dataset's default; benchopt's published quadratics config draws 32768 inner samples), d_in = 100, d_out = 10, [mu, L] = [0.1, 1], L_cross = 0.1, x0 = -2 * 1, rank-one "
             "sample Hessians, so a 64-sample Hessian is singular) and **breast_cancer**: per-feature L2 "
             "strengths (30) for logistic regression on `sklearn.datasets.load_breast_cancer`, half train / half "
             "validation, an *offline stand-in* for benchopt's ijcnn1 problem (no download). The oracles, "
             "evaluated off the clock, are exact: ||grad h(lambda)||^2 and h(lambda) = g(theta*(lambda)) (closed form "
             "for the quadratic; Newton + IFT for breast_cancer, whose h is not strongly convex in the log-strengths, "
             "so its plot shows h)."), "",
             "Settings (`SETTINGS`, `METHODS` in the script): inner SGD lr = SOBA's `v_lr` = the fixed-point step; "
             + "; ".join(f"{k}: inner lr {v['inner_lr']}, outer SGD lr {v['outer_lr']}, {v['steps']:.0f} outer steps"
                         for k, v in SETTINGS.items())
             + f"; K = {K} inner steps for F2SA / K-step / AmIGO, F2SA penalty 1 + 0.01 t; seeds "
             f"{meta['seeds']}.", ""]
    for prob, rows in res["summary"].items():
        first = res["runs"][prob][0]
        lines += [(f"**{prob}** (at the initial point ||grad h||^2 = {first['start']:.3g}, h = {first['curve'][0][4]:.4f}; "
                  "the ratio is final / initial ||grad h||^2, median and worst over seeds; h is the outer loss at "
                  "the exact theta*(lambda)):"), "",
                  ("| solver | ||grad h||^2 final/initial (median) | worst seed | final h (median) | ms / outer step "
                  "| samples / step | solver time to 100x | failures |"), "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['method']} | {_fmt(r['ratio_median'])} | {_fmt(r['ratio_max'])} | "
                         f"{r['value_median']:.4f} | "
                         f"{r['ms_per_step']:.2f} | {r['samples_per_step']} | "
                         f"{_fmt(r['time_to_100x'])}{' s' if math.isfinite(r['time_to_100x']) else ''} | "
                         f"{'; '.join(r['failed']) or '-'} |")
        lines.append("")
    lines += ["![stochastic solvers](img/stochastic.png)", "",
              ("Why (not measured here, but what the numbers are consistent with): on the quadratic every sample "
              "Hessian has rank one, so a 64-sample Hessian in 100 dimensions is singular and a linear solve "
              "from scratch on it (the cold implicit row) returns a huge v along its null space; the methods "
              "that keep v (SOBA, the warm-started implicit rows) or need no v (F2SA) average the minibatch "
              "noise over outer steps instead (warm CG least: its steps are not damped, so each call's singular "
              "minibatch Hessian can still push v along its null space, and it plateaus higher). On breast_cancer the L2 term makes every minibatch Hessian "
              "positive definite, so the cold solve is well posed there. K-step and one-step differentiate a "
              "truncated unroll and stall at a biased point (they do not diverge, but their ||grad h||^2 "
              "plateaus)."), "", ("Reading (written from the numbers above by "
              "`reading()` in the script):"), ""] + [f"- {x}" for x in res["reading"]]
    return "\n".join(lines)


def _at_time(curve: list[Any], budget: float, metric: int) -> float:
    """The metric at the last oracle point within ``budget`` seconds of solver time (inf if it diverged)."""
    inside = [c for c in curve if c[1] <= budget]
    v = inside[-1][metric]
    return v if math.isfinite(v) else float("inf")


def reading(res: dict[str, Any]) -> list[str]:
    """Plain statements derived from the summary, so the text cannot drift from the table."""
    out = []
    for prob, rows in res["summary"].items():
        by = {r["key"]: r for r in rows}
        ok = [r for r in rows if not r["failed"]]
        if not ok:
            continue
        best = min(ok, key=lambda r: r["ratio_median"])
        fastest = min(ok, key=lambda r: r["time_to_100x"])
        out.append(f"{prob}: lowest final ||grad h||^2 ratio {best['method']} ({_fmt(best['ratio_median'])}); "
                   f"first to a 100x reduction {fastest['method']} "
                   f"({_fmt(fastest['time_to_100x'])} s solver time)." if math.isfinite(fastest["time_to_100x"])
                   else f"{prob}: lowest final ratio {best['method']} ({_fmt(best['ratio_median'])}); no solver "
                   "reached a 100x reduction.")
        if "soba" in by:
            s = by["soba"]
            out.append(f"{prob}: SOBA reduced ||grad h||^2 by {1 / s['ratio_median']:.3g}x (median; worst seed "
                       f"{1 / s['ratio_max']:.3g}x) at {s['ms_per_step']:.2f} ms per outer step"
                       + ("" if not s["failed"] else f"; failures: {s['failed']}") + ".")
        if "f2sa" in by:
            f = by["f2sa"]
            out.append(f"{prob}: F2SA (first order only) reduced it by {1 / f['ratio_median']:.3g}x (median) at "
                       f"{f['ms_per_step']:.2f} ms per step ({f['samples_per_step']} samples per step).")
        metric = PLOTTED[prob][0]
        name = "||grad h||^2" if metric == 3 else "h"
        if "soba" in by:
            budget = _median([r["time"] for r in res["runs"][prob] if r["method"] == "soba"])
            at = []
            for key in by:
                vals = [_at_time(r["curve"], budget, metric) for r in res["runs"][prob] if r["method"] == key]
                at.append((_median(vals), by[key]["method"]))
            at.sort()
            out.append(f"{prob}: at equal solver time (SOBA's {budget:.1f} s for all its steps), median {name}: "
                       + ", ".join(f"{m} {_fmt(v)}" for v, m in at) + ".")
        cold = by.get("cold_cg")
        if cold is not None:
            verdict = ("diverged or went non-finite in " + f"{len(cold['failed'])}/{cold['seeds']} seeds"
                       if cold["failed"] else f"ended at ratio {_fmt(cold['ratio_median'])}")
            out.append(f"{prob}: the cold implicit solver (20 inner steps, 20 CG iterations from 0 on a "
                       f"64-sample Hessian) {verdict}.")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--problems", default="quadratic,breast_cancer")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated keys of METHODS")
    ap.add_argument("--steps-scale", type=float, default=1.0, help="multiply every problem's outer steps")
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--quick", action="store_true", help="1 seed, 15%% of the steps")
    ap.add_argument("--out", default="results/stochastic")
    ap.add_argument("--report", action="store_true",
                    help="write the 'stochastic' section of docs/benchmarks.md and docs/img/stochastic.png")
    ap.add_argument("--report-only", action="store_true",
                    help="run nothing: render the section from --from-json (default OUT/stochastic.json)")
    ap.add_argument("--from-json", default=None, help="a saved stochastic.json")
    args = ap.parse_args(argv)
    if args.report_only:
        path = Path(args.from_json) if args.from_json else ROOT / args.out / "stochastic.json"
        if not path.exists():
            ap.error(f"--report-only: {path} does not exist; run without --report-only first (or give --from-json)")
        res = json.loads(path.read_text())
        res["reading"] = reading(res)
        print(markdown(res))
        if args.report:
            plot(res["runs"], IMG / "stochastic.png")
            write_section("stochastic", markdown(res))
        return 0
    if args.from_json:
        ap.error("--from-json goes with --report-only")
    torch.set_num_threads(1)
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    scale = 0.15 if args.quick else args.steps_scale
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; choose from {list(METHODS)}")
    builders = {"quadratic": make_quadratic, "breast_cancer": make_breast_cancer}
    t_all = time.perf_counter()
    runs: dict[str, list[dict[str, Any]]] = {}
    for prob in args.problems.split(","):
        inst = builders[prob]()
        steps = max(1, int(SETTINGS[prob]["steps"] * scale))
        runs[prob] = []
        for method in methods:
            for seed in seeds:
                r = run_one(inst, method, seed, steps, args.eval_every)
                runs[prob].append(r)
                print(f"{prob:14s} {method:8s} seed {seed}: ||grad h||^2 {r['start']:.3g} -> {r['final']:.3g} "
                      f"in {r['steps']} steps, {r['time']:.1f} s [{r['status']}]", flush=True)
    res: dict[str, Any] = {
        "meta": {"command": command_line(), "machine": machine_description("cpu"), "git": git_revision(),
                 "seeds": seeds, "seconds": time.perf_counter() - t_all, "settings": SETTINGS},
        "runs": runs, "summary": {p: summary(rs) for p, rs in runs.items()}}
    res["reading"] = reading(res)
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "stochastic.json").write_text(json.dumps(res, indent=1, default=str))
    if args.report:
        plot(runs, IMG / "stochastic.png")
        write_section("stochastic", markdown(res))
        print("wrote docs/benchmarks.md section 'stochastic' and docs/img/stochastic.png")
    for line in res["reading"]:
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
