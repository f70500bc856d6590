"""The committed results store of the offline RL grids: one small JSON file per finished cell.

``benchmarks/results/<preset>/<cell>.json`` holds everything a report needs about a cell (its scores, its
downsampled evaluation and training curves, the resolved hyper-parameters, the git revision its last
invocation started at (and, for a run resumed under other code, the earlier ones), machine and wall time it
ran with, and the algorithm's own statistics), so that docs/benchmarks.md is re-rendered from a clone
alone (``python -m benchmarks.offline_rl --preset equal --report-only``) and every machine adds to one grid.
Checkpoints, ``metrics.jsonl`` and logs stay in the (ignored) run folder ``--out``.

A cell's *score* is the mean of its last three evaluations (one evaluation of hopper can differ from the next
by 70 points); the final evaluation is kept beside it.  A stored cell whose hyper-parameters differ from what
the code would run today (a default changed since) is *stale*: reports leave it out and ``--next`` reruns it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
STORE = ROOT / "benchmarks" / "results"
MAX_BYTES = 50_000  # a cell file above this is a bug (curves are downsampled)
CURVE_POINTS = 40  # training curves keep at most this many points
EVAL_POINTS = 60  # and evaluation curves this many (a 50k-step cell evaluated every 5k steps has 10)
SCATTER_EPISODES = 600  # VACO's per-trajectory (weight, return) pairs kept for the scatter plot (1,200 overflowed
# MAX_BYTES on hopper medium-replay, 2,000+ episodes: 58 KB)
#: What an ARQ record keeps of its candidate generation (``arq_candidates.json``; the digest is left out).
CANDIDATE_STATS = ("seconds", "states", "n_candidates", "valid_fraction", "logp_mean", "logp_median", "threads",
                   "device", "sampler_steps", "corrector_steps", "ode_steps", "ode_method", "trace")
# Settings of a run that are not algorithm hyper-parameters but change its result; a stored cell must match.
RUN_KEYS = ("policy_steps", "value_steps", "eval_every", "eval_episodes")


def git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def downsample(points: Sequence[Sequence[float]], n: int = CURVE_POINTS) -> list[list[float]]:
    """At most ``n`` points of a curve, evenly spaced in index, first and last always kept."""
    pts = [list(p) for p in points]
    if len(pts) <= n:
        return pts
    idx = sorted({round(i * (len(pts) - 1) / (n - 1)) for i in range(n)})
    return [pts[i] for i in idx]


def _round(x: Any, digits: int = 5) -> Any:
    if isinstance(x, float):
        return float(f"{x:.{digits}g}") if math.isfinite(x) else None
    if isinstance(x, list):
        return [_round(v, digits) for v in x]
    if isinstance(x, dict):
        return {k: _round(v, digits) for k, v in x.items()}
    return x


def last3(curve: Sequence[Sequence[float]]) -> float | None:
    """The cell's score: the mean of its last three evaluations (fewer when it has fewer)."""
    vals = [float(v) for _, v in curve[-3:]]
    return float(np.mean(vals)) if vals else None


def record_from_run(run_dir: Path, *, algo: str, base_algo: str, variant_sets: Sequence[str], preset: str | None,
                    value_steps: int, policy_steps: int, per_update: int, eval_every: int, eval_episodes: int,
                    host: str, summary: dict[str, Any], revisions: Sequence[str] = ()) -> dict[str, Any]:
    """The stored form of a finished run (``summary.json`` + ``metrics.jsonl`` of ``run_dir``). Curves are
    indexed by *policy* steps: an update after the ``value_steps`` value-only ones takes ``per_update``.
    ``revisions``: the git revisions its invocations started at (the last one's is ``git_revision``; without
    them, the current HEAD's)."""
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]

    def x(step: int) -> int:
        return (step - value_steps) * per_update

    evals = [(x(r["step"]), r["eval_normalized_score"]) for r in rows
             if "eval_normalized_score" in r and r["step"] - value_steps >= 0]
    train_rows = [r for r in rows if "eval_normalized_score" not in r and r["step"] > value_steps]
    keys = sorted({k for r in train_rows for k, v in r.items()
                   if k not in ("step", "updates_per_s", "wall_time_s", "phase") and isinstance(v, (int, float))})
    curves = {k: downsample([(x(r["step"]), r[k]) for r in train_rows if isinstance(r.get(k), (int, float))])
              for k in keys}
    rec: dict[str, Any] = {
        "status": summary.get("status"),
        "algo": algo,
        "base_algo": base_algo,
        "variant_sets": list(variant_sets),
        "preset": preset,
        "dataset": summary["dataset"],
        "seed": int(summary["seed"]),
        "policy_steps": int(policy_steps),
        "steps": summary.get("steps"),  # updates trained (value-only ones included)
        "value_steps": int(value_steps),
        "policy_steps_per_update": int(per_update),
        "eval_every": int(eval_every),
        "eval_episodes": int(eval_episodes),
        "score_last3": last3(evals),
        "final_normalized_score": summary.get("final_normalized_score"),
        "final_return": summary.get("final_return"),
        # (the score uses every evaluation; the stored curve keeps its last three and at most EVAL_POINTS)
        "eval_curve": downsample(evals[:-3], EVAL_POINTS - 3) + [list(p) for p in evals[-3:]],
        "train_curves": curves,
        "hparams": summary.get("hparams", {}),
        "git_revision": revisions[-1] if revisions else git_revision(),
        "host": host,
        "device": summary.get("device"),
        "threads": summary.get("threads"),
        "wall_time_s": summary.get("wall_time_s"),
        "updates_per_s": summary.get("updates_per_s"),
        "stats": {},
    }
    earlier = [r for r in dict.fromkeys(revisions[:-1]) if r != rec["git_revision"]]
    if earlier:  # resumed under other code: each revision it ran under is named
        rec["earlier_git_revisions"] = earlier
    if base_algo == "vaco":
        from rl_adapters.vaco_analysis import analyze_weights

        w = analyze_weights(run_dir, plot=False)
        ep = w["episodes"]
        keep = downsample(list(zip(ep["mean_weight"], ep["return"])), SCATTER_EPISODES)
        rec["stats"] = {
            "weight_return_pearson": w["pearson_traj_weight_return"],
            "top10_weight_lift": w["top10_weight_lift"],
            "top10_transition_share": w["top10_transition_share"],
            "ess_fraction": w["ess_fraction"],
            "weight_quantiles": w["weight"],
            "trajectory_weight_return": keep,
        }
    elif base_algo == "aspc":
        rec["stats"] = {"final_alpha": curves["alpha"][-1][1] if curves.get("alpha") else None}
    elif base_algo == "arq":
        from rl_adapters.algorithms.arq import CANDIDATE_INFO

        # A run whose candidates came from its own cache (a resumed cell) keeps the first generation's file.
        cost = run_dir / CANDIDATE_INFO
        if cost.exists():
            info = json.loads(cost.read_text())
            rec["stats"] = {"candidates": {k: info.get(k) for k in CANDIDATE_STATS}}
    return _round(rec)


def write(path: Path, rec: dict[str, Any]) -> None:
    """Write ``rec`` atomically; refuse a file over :data:`MAX_BYTES` (a curve that was not downsampled)."""
    text = json.dumps(rec, indent=1, sort_keys=True) + "\n"
    if len(text) > MAX_BYTES:
        raise ValueError(f"{path.name}: {len(text)} bytes, over the store's {MAX_BYTES} (downsample its curves)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def load(store: Path) -> dict[str, dict[str, Any]]:
    """Every stored cell of one store folder, by cell name."""
    out = {}
    for p in sorted(store.glob("*.json")):
        try:
            out[p.stem] = json.loads(p.read_text())
        except json.JSONDecodeError:
            continue  # a torn write cannot happen (atomic), but a hand-edited file must not stop a report
    return out


def config_of(base_algo: str, variant_sets: Iterable[str]) -> Any:
    """``base_algo``'s config under ``--set`` items ``KEY=VALUE``, parsed as ``bilevel-rl train --set`` parses them."""
    from rl_adapters.algorithms import make_config
    from rl_adapters.cli import _parse_literal

    return make_config(base_algo, **{k: _parse_literal(v) for k, v in (kv.split("=", 1) for kv in variant_sets)})


def expected_hparams(base_algo: str, variant_sets: Iterable[str]) -> dict[str, Any]:
    """The resolved hyper-parameters the code would train ``base_algo`` with under ``variant_sets`` today."""
    return json.loads(json.dumps(dataclasses.asdict(config_of(base_algo, variant_sets))))


def stale_reason(rec: dict[str, Any], base_algo: str, variant_sets: Sequence[str], run: dict[str, int]) -> str | None:
    """Why a stored cell no longer matches the cell the code would run now (None when it matches)."""
    for k in RUN_KEYS:
        if k in run and rec.get(k) != run[k]:
            return f"{k} {rec.get(k)} != {run[k]}"
    want = _round(expected_hparams(base_algo, variant_sets))
    have = rec.get("hparams", {})
    diff = sorted(k for k in want if k != "value_fraction" and have.get(k) != want[k])
    return f"hyper-parameters changed: {', '.join(f'{k} {have.get(k)!r} -> {want[k]!r}' for k in diff)}" if diff else None


# ------------------------------------------------------------------------------------------ statistics
def mean_std_n(xs: Sequence[float]) -> tuple[float, float | None, int]:
    """Mean, sample standard deviation (ddof 1; None for one value) and n."""
    a = np.asarray(xs, dtype=float)
    return float(a.mean()), (float(a.std(ddof=1)) if len(a) > 1 else None), len(a)


def fmt_score(xs: Sequence[float]) -> str:
    """``mean ± std (n=k)``, or ``mean (n=1)`` for one seed (no spread to show)."""
    if not xs:
        return ""
    m, s, n = mean_std_n(xs)
    return f"{m:.1f} ± {s:.1f} (n={n})" if s is not None else f"{m:.1f} (n=1)"


def welch_t(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Welch's t of mean(a) - mean(b); None unless both have two or more values and some spread."""
    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    return float((np.mean(a) - np.mean(b)) / math.sqrt(va + vb)) if va + vb > 0 else None
