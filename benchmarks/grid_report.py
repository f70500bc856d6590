"""A grid's report section rendered from stored cell records only (benchmarks/store.py).

Nothing here reads a run folder, the clock or the git revision: the same records give the same text and
figures on any clone (each record carries its own revision and machine), which tests/test_store.py checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import grid_cells, store
from benchmarks._report import pyplot, save_figure


def _fmt(v: float | None, spec: str = ".2f") -> str:
    return "" if v is None else format(v, spec)


def _stat(rows: Sequence[dict[str, Any]], key: str) -> str:
    vals = [r["stats"][key] for r in rows if r.get("stats", {}).get(key) is not None]
    if not vals:
        return ""
    m, s, _ = store.mean_std_n(vals)
    return f"{m:.2f}" + (f" ± {s:.2f}" if s is not None else "")


#: ARQ's CPU candidate settings (benchmarks/grid_cells.py VARIANTS["arq"]) and what they were measured to change
#: against the paper's (docs/algorithms.md "Cost, and what the CPU settings change"; docs/data/arq-candidates-
#: hopper-medium.json: 60 hopper-medium states x 30 candidates, one behaviour model).
_cpu_config = store.config_of("arq", grid_cells.VARIANTS["arq"][1])
ARQ_CPU_SETTINGS = {k: getattr(_cpu_config, k) for k in ("sampler_steps", "corrector_steps", "ode_steps",
                                                         "ode_method", "trace")}
CPU_MARK = "; CPU settings †"
ARQ_CPU_NOTE = ("† ARQ with the CPU candidate settings (20 Euler-Maruyama steps, no corrector; likelihood by 2 Heun "
                "steps with a Hutchinson trace), measured against the paper's (500 steps + Langevin; RK4 x 100, "
                "exact trace) on hopper medium: the log-likelihood is biased by +2.5 nats (MAE 2.6), the valid flag "
                "differs on 1.0% of candidates, and the candidates spread 0.32 around their state's mean against "
                "0.22 (a wider support, a less conservative K-th max). docs/algorithms.md, ARQ.")


def _arq_candidates(rows: Sequence[dict[str, Any]]) -> str:
    cands = [r["stats"]["candidates"] for r in rows if r.get("stats", {}).get("candidates")]
    if not cands:
        return ""
    minutes = np.mean([c["seconds"] for c in cands]) / 60
    kept = 100 * np.mean([c["valid_fraction"] for c in cands])
    cpu = all(all(c.get(k) == v for k, v in ARQ_CPU_SETTINGS.items()) for c in cands)
    return f"candidates {minutes:.0f} min, {kept:.1f}% kept" + (CPU_MARK if cpu else "")


def table(records: Sequence[dict[str, Any]], algos: Sequence[str], datasets: Sequence[str],
          baseline: str = "bc", if_run: Sequence[str] = ()) -> str:
    """One row per (dataset, algorithm): score = mean of each seed's last three evaluations, then mean ±
    sample std over seeds (n=1 shows no ±); the final evaluation beside it; Welch t against ``baseline``.
    An algorithm in ``if_run`` gets no "not run yet" row."""
    lines = [
        (f"| dataset | algorithm | score: last 3 evals, mean ± std (n) | final eval | Welch t vs {baseline} | "
         "policy steps | wall time (s) | VACO lift, weight/return r, ESS; ASPC alpha; ARQ candidates |"),
        "|---|---|---|---|---|---|---|---|",
    ]
    cpu_arq = False  # a row of ARQ with the CPU settings: the footnote on their bias follows the table
    for ds in datasets:
        base = [r["score_last3"] for r in records if r["algo"] == baseline and r["dataset"] == ds]
        for algo in algos:
            rows = sorted((r for r in records if r["algo"] == algo and r["dataset"] == ds), key=lambda r: r["seed"])
            if not rows:
                if algo not in if_run:
                    lines.append(f"| {ds} | {algo} | (not run yet) | | | | | |")
                continue
            scores = [r["score_last3"] for r in rows]
            finals = [r["final_normalized_score"] for r in rows]
            t = store.welch_t(scores, base) if algo != baseline else None
            arq = _arq_candidates(rows)
            cpu_arq |= arq.endswith(CPU_MARK)
            extra = "; ".join(p for p in (
                f"lift {_stat(rows, 'top10_weight_lift')}" if _stat(rows, "top10_weight_lift") else "",
                f"r {_stat(rows, 'weight_return_pearson')}" if _stat(rows, "weight_return_pearson") else "",
                f"ESS {_stat(rows, 'ess_fraction')}" if _stat(rows, "ess_fraction") else "",
                f"alpha {_stat(rows, 'final_alpha')}" if _stat(rows, "final_alpha") else "",
                arq) if p)
            steps = sorted({r["policy_steps"] for r in rows})
            lines.append(
                f"| {ds} | {algo} | {store.fmt_score(scores)} | {np.mean(finals):.1f} | {_fmt(t)} | "
                f"{'/'.join(map(str, steps))} | {np.mean([r['wall_time_s'] for r in rows]):.0f} | {extra} |")
    if cpu_arq:
        lines += ["", ARQ_CPU_NOTE]
    return "\n".join(lines)


def summary(records: Sequence[dict[str, Any]], algos: Sequence[str], datasets: Sequence[str]) -> str:
    """Datasets x algorithms, ``mean (n)`` of the per-seed scores: the headline table of docs/benchmarks.md."""
    lines = ["| dataset | " + " | ".join(algos) + " |", "|---|" + "---|" * len(algos)]
    for ds in datasets:
        cells = []
        for algo in algos:
            xs = [r["score_last3"] for r in records if r["algo"] == algo and r["dataset"] == ds]
            cells.append(f"{np.mean(xs):.1f} ({len(xs)})" if xs else "-")
        lines.append(f"| {ds.replace('suite/', '')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def learning_curves(records: Sequence[dict[str, Any]], algos: Sequence[str], datasets: Sequence[str],
                    png: Path) -> bool:
    """Mean evaluation score over seeds against policy steps, one panel per dataset (band: min..max of seeds)."""
    if not records:
        return False
    plt = pyplot()
    cols = min(3, len(datasets))
    rows_n = -(-len(datasets) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(5 * cols, 3.4 * rows_n), squeeze=False)
    for ax, ds in zip(axes.flat, datasets):
        for i, algo in enumerate(algos):
            curves = [{int(s): v for s, v in r["eval_curve"]} for r in records
                      if r["algo"] == algo and r["dataset"] == ds]
            if not curves:
                continue
            steps = sorted(set.intersection(*(set(c) for c in curves)))
            ys = np.array([[c[s] for s in steps] for c in curves])
            ax.plot(steps, ys.mean(0), marker="o", ms=2.5, color=f"C{i % 10}", label=f"{algo} (n={len(curves)})",
                    ls="-" if i < 10 else "--")
            if len(curves) > 1:
                ax.fill_between(steps, ys.min(0), ys.max(0), color=f"C{i % 10}", alpha=0.12)
        ax.set_title(ds.replace("suite/", ""), fontsize=10)
        ax.set_xlabel("policy steps")
        ax.set_ylabel("normalised score")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(datasets):]:
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, png)
    return True


def vaco_weights(records: Sequence[dict[str, Any]], png: Path) -> bool:
    """Per VACO cell of seed 0: trajectory mean weight against return (left of each pair) and, over training,
    the batch ESS fraction."""
    cells = [r for r in records if r.get("base_algo") == "vaco" and r["seed"] == 0
             and r.get("stats", {}).get("trajectory_weight_return")]
    if not cells:
        return False
    cells.sort(key=lambda r: (r["dataset"], r["algo"]))
    plt = pyplot()
    cols = min(4, len(cells))
    rows_n = -(-len(cells) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(3.8 * cols, 3.2 * rows_n), squeeze=False)
    for ax, r in zip(axes.flat, cells):
        pts = np.array(r["stats"]["trajectory_weight_return"], dtype=float)
        ax.scatter(pts[:, 0], pts[:, 1], s=5, alpha=0.5)
        st = r["stats"]
        ax.set_title(f"{r['algo']} {r['dataset'].replace('suite/', '')}\nlift {_fmt(st.get('top10_weight_lift'))}, "
                     f"r {_fmt(st.get('weight_return_pearson'))}", fontsize=8)
        ax.set_xlabel("trajectory mean weight", fontsize=8)
        ax.set_ylabel("trajectory return", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(cells):]:
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, png)
    return True


def train_curve_panel(records: Sequence[dict[str, Any]], keys: Sequence[tuple[str, str]], base_algo: str,
                      png: Path) -> bool:
    """One panel per training statistic ``(key, label)``, one line per cell of ``base_algo`` (mean over seeds)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r.get("base_algo") == base_algo and any(r.get("train_curves", {}).get(k) for k, _ in keys):
            groups.setdefault(f"{r['algo']} {r['dataset'].replace('suite/', '')}", []).append(r)
    if not groups:
        return False
    plt = pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 3.4), squeeze=False)
    for ax, (key, label) in zip(axes[0], keys):
        for i, (name, rs) in enumerate(sorted(groups.items())):
            curves = [{int(s): v for s, v in r["train_curves"].get(key, [])} for r in rs]
            curves = [c for c in curves if c]
            if not curves:
                continue
            steps = sorted(set.intersection(*(set(c) for c in curves)))
            ax.plot(steps, [np.mean([c[s] for c in curves]) for s in steps], color=f"C{i % 10}",
                    ls=("-", "--", ":")[i // 10 % 3], label=f"{name} (n={len(curves)})")
        ax.set_xlabel("policy steps")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=5)
    fig.tight_layout()
    save_figure(fig, png)
    return True
