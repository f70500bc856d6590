"""Hyper-parameter optimisation: one L2 strength per feature for logistic regression (breast cancer).

The benchopt "L2 selection" problem: inner, logistic regression on the training split with penalty
``0.5 * sum_j exp(a_j) w_j^2`` (one log-strength ``a_j`` per feature, bias unpenalised); outer, the logistic loss
on the validation split. Every gallery solver tunes the 30 log-strengths by hypergradient descent (Adam on
``a``, projected onto a box), starting from one shared value; the result is compared with a grid search over
one shared strength. Every metric is taken at the *exact* inner solution for the final strengths (damped
Newton in float64), so the solvers are compared on what they found, not on how well they tracked theta*.

Run:  python examples/hpo_l2.py [--quick] [--solvers implicit-cg,one-step] [--seed 0]
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchopt
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # gallery.py sits beside this script
from gallery import (
    SOLVER_NAMES,
    build_solver,
    common_args,
    markdown_table,
    measure_step,
    select_solvers,
    setup_torch,
    solver_style,
    write_outputs,
)

import bilevel

DT = torch.float64  # 31 inner and 30 outer scalars: float64 costs nothing and keeps the Newton reference exact
NAME = "hpo_l2"
LOG_MIN, LOG_MAX = -12.0, 1.0  # the box the log-strengths are projected onto (LOG_MAX also bounds the inner lr)
START = -2.0  # shared initial log-strength: well off the grid optimum, so the solvers have to find it
GRID = torch.linspace(-10.0, 1.0, 45, dtype=DT).tolist()


@dataclass
class Split:
    X: torch.Tensor
    y: torch.Tensor


@dataclass
class Data:
    train: Split
    val: Split
    test: Split
    features: list[str]


def load_data(seed: int = 0) -> Data:
    """Breast cancer (569 x 30), stratified 50 / 25 / 25 split, standardised with the training statistics."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    ds = load_breast_cancer()
    X_tr, X_rest, y_tr, y_rest = train_test_split(ds.data, ds.target, train_size=0.5, stratify=ds.target,
                                                  random_state=seed)
    X_va, X_te, y_va, y_te = train_test_split(X_rest, y_rest, train_size=0.5, stratify=y_rest, random_state=seed)
    scaler = StandardScaler().fit(X_tr)

    def split(X: Any, y: Any) -> Split:
        return Split(torch.tensor(scaler.transform(X), dtype=DT), torch.tensor(y, dtype=DT))

    return Data(split(X_tr, y_tr), split(X_va, y_va), split(X_te, y_te), [str(f) for f in ds.feature_names])


class LogL2(nn.Module):
    """The outer variable: one log L2 strength per feature (the log keeps it positive and well scaled)."""

    def __init__(self, d: int, start: float = START) -> None:
        super().__init__()
        self.log_alpha = nn.Parameter(torch.full((d,), start, dtype=DT))


def inner_loss(inner: Any, outer: LogL2, batch: Split) -> torch.Tensor:
    """f: training logistic loss + 0.5 sum_j exp(a_j) w_j^2."""
    logits = inner(batch.X).squeeze(-1)
    return (F.binary_cross_entropy_with_logits(logits, batch.y)
            + 0.5 * (outer.log_alpha.exp() * inner.weight[0] ** 2).sum())


def outer_loss(inner: Any, outer: LogL2, batch: Split) -> torch.Tensor:
    """g: validation logistic loss (no penalty)."""
    return F.binary_cross_entropy_with_logits(inner(batch.X).squeeze(-1), batch.y)


def _augment(X: torch.Tensor) -> torch.Tensor:
    return torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype)], 1)


def exact_inner(log_alpha: torch.Tensor, train: Split, iters: int = 100) -> torch.Tensor:
    """theta*(a) = (w, b) by damped Newton (the problem is strictly convex): the reference inner solution."""
    Xa = _augment(train.X)
    n, d1 = Xa.shape
    diag = torch.cat([log_alpha.detach().exp(), torch.zeros(1, dtype=DT)])
    theta = torch.zeros(d1, dtype=DT)

    def f(t: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(Xa @ t, train.y) + 0.5 * (diag * t * t).sum()

    for _ in range(iters):
        p = torch.sigmoid(Xa @ theta)
        grad = Xa.T @ (p - train.y) / n + diag * theta
        hess = Xa.T @ (Xa * (p * (1 - p))[:, None]) / n + torch.diag(diag)
        direction = torch.linalg.solve(hess, grad)
        decrement = grad @ direction
        if decrement < 1e-24:  # Newton decrement at round-off: converged
            break
        t, f0 = 1.0, f(theta)
        while f(theta - t * direction) > f0 - 0.25 * t * decrement and t > 1e-8:
            t *= 0.5
        theta = theta - t * direction
    return theta


def evaluate(log_alpha: torch.Tensor, data: Data) -> dict[str, float]:
    """Validation / test loss and test accuracy at the exact inner solution for ``log_alpha``."""
    theta = exact_inner(log_alpha, data.train)
    out = {}
    for key, s in (("val", data.val), ("test", data.test)):
        z = _augment(s.X) @ theta
        out[f"{key}_loss"] = float(F.binary_cross_entropy_with_logits(z, s.y))
        out[f"{key}_acc"] = float(((z > 0).to(DT) == s.y).to(DT).mean())
    return out


def grid_search(data: Data, grid: list[float] = GRID) -> dict[str, Any]:
    """One shared log-strength for every feature, chosen on the validation loss."""
    curve = [(a, evaluate(torch.full((data.train.X.shape[1],), a, dtype=DT), data)) for a in grid]
    best_a, best = min(curve, key=lambda c: c[1]["val_loss"])
    return {"log_alpha": best_a, **best, "curve": [(a, m["val_loss"]) for a, m in curve]}


def inner_lr(train: Split) -> float:
    """1 / L for f: a quarter of the largest eigenvalue of X^T X / n (the logistic curvature is <= 1/4; the
    bias column adds at most 1/4) plus the largest strength the box allows."""
    lmax = float(torch.linalg.eigvalsh(_augment(train.X).T @ _augment(train.X) / len(train.X))[-1])
    return 1.0 / (0.25 * lmax + math.exp(LOG_MAX))


def make_problem(data: Data, start: float = START) -> tuple[bilevel.Problem, nn.Linear, LogL2]:
    d = data.train.X.shape[1]
    model = nn.Linear(d, 1).to(DT)
    hyper = LogL2(d, start)
    with torch.no_grad():  # start at theta*(a_0), as a tuned pipeline would
        theta = exact_inner(hyper.log_alpha, data.train)
        model.weight.copy_(theta[:-1][None])
        model.bias.copy_(theta[-1:])
    return bilevel.Problem(inner=model, outer=hyper, inner_loss=inner_loss, outer_loss=outer_loss), model, hyper


# Per-solver settings that differ from the gallery defaults, and why.
OVERRIDES: dict[str, dict[str, Any]] = {
    # F2SA's bias is O(1/mu): a larger starting penalty, grown faster, since the losses here are deterministic.
    "f2sa": {"penalty": 10.0, "penalty_growth": 0.5},
}


def run_solver(name: str, data: Data, *, outer_steps: int, inner_steps: int, outer_lr: float,
               eval_every: int, repeats: int) -> dict[str, Any]:
    torch.manual_seed(0)
    problem, _, hyper = make_problem(data)
    outer_opt = torch.optim.Adam(hyper.parameters(), lr=outer_lr)
    inner_opt = torchopt.sgd(lr=inner_lr(data.train), momentum=0.9)
    solver = build_solver(name, problem, inner_opt, outer_opt, steps=inner_steps, **OVERRIDES.get(name, {}))
    if isinstance(solver, bilevel.SOBASolver):  # v = H^-1 grad g at the start, else the first steps are ~0
        solver.warm_up(data.train, data.val)
    elif isinstance(solver, bilevel.F2SASolver):  # separate y from z before the first outer step
        solver.warm_up(data.train, data.val, steps=10)

    def step() -> bilevel.StepInfo:
        info = solver.step(data.train, data.val)
        with torch.no_grad():
            hyper.log_alpha.clamp_(LOG_MIN, LOG_MAX)
        return info

    curve = [(0, evaluate(hyper.log_alpha, data)["val_loss"])]
    t0 = time.perf_counter()
    for t in range(1, outer_steps + 1):
        step()
        if t % eval_every == 0 or t == outer_steps:
            curve.append((t, evaluate(hyper.log_alpha, data)["val_loss"]))
    wall = time.perf_counter() - t0
    final = evaluate(hyper.log_alpha, data)
    log_alpha = hyper.log_alpha.detach().clone()
    cost = measure_step(step, repeats=repeats)  # after the metrics: these extra steps change nothing reported
    return {"solver": name, **final, "log_alpha": log_alpha.tolist(), "curve": curve, "run_wall_s": wall, **cost}


def applicable_solvers() -> list[str]:
    """All of them: 30 outer scalars is small enough for forward mode, and full-batch losses suit SOBA / F2SA."""
    return list(SOLVER_NAMES)


def run(*, quick: bool = False, seed: int = 0, solvers: list[str] | None = None) -> dict[str, Any]:
    """Grid search and every solver; returns the rows, the grid result and the curves (nothing written)."""
    setup_torch(seed)
    data = load_data(seed)
    grid = grid_search(data, GRID[::4] if quick else GRID)
    settings = ({"outer_steps": 60, "inner_steps": 10, "outer_lr": 0.1, "eval_every": 20, "repeats": 1} if quick
                else {"outer_steps": 200, "inner_steps": 10, "outer_lr": 0.1, "eval_every": 10, "repeats": 10})
    names = solvers if solvers is not None else (["implicit-cg"] if quick else applicable_solvers())
    rows = [run_solver(n, data, **settings) for n in names]
    return {"grid": grid, "rows": rows, "settings": settings, "features": data.features,
            "start": evaluate(torch.full((data.train.X.shape[1],), START, dtype=DT), data)}


def table(result: dict[str, Any]) -> str:
    grid = result["grid"]
    rows = [{"method": f"grid search, shared a = {grid['log_alpha']:.2f}", "val loss": grid["val_loss"],
             "test loss": grid["test_loss"], "test acc": grid["test_acc"]},
            {"method": f"start, shared a = {START:.1f}", "val loss": result["start"]["val_loss"],
             "test loss": result["start"]["test_loss"], "test acc": result["start"]["test_acc"]}]
    rows += [{"method": r["solver"], "val loss": r["val_loss"], "test loss": r["test_loss"],
              "test acc": r["test_acc"], "ms / outer step": 1e3 * r["time_s"],
              "saved KiB / step": r["saved_bytes"] / 1024} for r in result["rows"]]
    return markdown_table(rows, ["method", "val loss", "test loss", "test acc", "ms / outer step",
                                 "saved KiB / step"])


def figure(result: dict[str, Any]) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(13, 4.6), gridspec_kw={"width_ratios": [1, 1.5]})
    for r in result["rows"]:
        steps, vals = zip(*r["curve"])
        ax0.plot(steps, vals, label=r["solver"], **solver_style(r["solver"]))
    ax0.axhline(result["grid"]["val_loss"], color="k", ls="--", lw=1, label="grid search (shared)")
    ax0.set(xlabel="outer step", ylabel="validation loss at theta*(a)", yscale="log",
            title="per-feature L2 by hypergradient descent")
    ax0.legend(fontsize=7, ncol=2)
    d = len(result["features"])
    shown = [r for r in result["rows"] if r["solver"] in ("implicit-cg", "k-step-reverse", "one-step")]
    width = 0.8 / max(len(shown), 1)
    for i, r in enumerate(shown):
        ax1.bar([j + i * width for j in range(d)], r["log_alpha"], width=width, label=r["solver"],
                color=solver_style(r["solver"])["color"])
    ax1.axhline(result["grid"]["log_alpha"], color="k", ls="--", lw=1, label="grid search (shared)")
    ax1.set_xticks([j + 0.4 - width / 2 for j in range(d)], result["features"], rotation=90, fontsize=7)
    ax1.set(ylabel="learned log L2 strength a_j", title="learned strengths per feature")
    ax1.legend(fontsize=7)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = common_args(__doc__.split("\n")[0])
    args = p.parse_args(argv)
    names = select_solvers(args.solvers, applicable_solvers()) if args.solvers else None
    result = run(quick=args.quick, seed=args.seed, solvers=names)
    text = table(result)
    print(text)
    paths = write_outputs(NAME, args, {**result, "table": text}, figure(result))
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return result


if __name__ == "__main__":
    main()
