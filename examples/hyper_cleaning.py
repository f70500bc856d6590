"""Data hyper-cleaning (Franceschi et al., ICML 2017): learn one weight per training example against clean data.

Half of the training labels of scikit-learn's digits are replaced by a different class drawn uniformly at
random. Inner: a linear softmax classifier trained on the weighted cross-entropy
``mean_i sigmoid(l_i) * CE_i + (rho / 2) ||W||^2``; outer: the cross-entropy on a small clean validation set,
w.r.t. the logits ``l`` (one per training example). Every applicable gallery solver learns ``l``; the weights
are then judged by how well they separate corrupted from clean examples (ROC AUC) and by the test accuracy of
a classifier retrained with them, against training on all the data and on the clean examples only (oracle).

Run:  python examples/hyper_cleaning.py [--quick] [--solvers implicit-cg,one-step] [--seed 0]
"""

from __future__ import annotations

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

DT = torch.float32
NAME = "hyper_cleaning"
N_CLASSES = 10
RHO = 1e-3  # inner L2 on W: makes f strongly convex, so theta* and the implicit hypergradient are defined


@dataclass
class Split:
    X: torch.Tensor
    y: torch.Tensor


@dataclass
class Data:
    train: Split  # labels partly corrupted
    val: Split  # clean
    test: Split
    corrupted: torch.Tensor  # bool, per training example


def load_data(seed: int = 0, n_train: int = 900, n_val: int = 300, corruption: float = 0.5) -> Data:
    """Digits (1797 x 64, pixels scaled to [0, 1]) split into train / clean val / test, with ``corruption`` of the
    training labels replaced by a uniformly drawn *different* class (so every corrupted label is wrong)."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(X), generator=g)
    X = torch.tensor(X, dtype=DT)[perm] / 16.0
    y = torch.tensor(y)[perm]
    tr, va, te = slice(0, n_train), slice(n_train, n_train + n_val), slice(n_train + n_val, None)
    y_train = y[tr].clone()
    corrupted = torch.zeros(n_train, dtype=torch.bool)
    idx = torch.randperm(n_train, generator=g)[: int(corruption * n_train)]
    corrupted[idx] = True
    shift = torch.randint(1, N_CLASSES, (len(idx),), generator=g)  # 1..9: never the true class
    y_train[idx] = (y_train[idx] + shift) % N_CLASSES
    return Data(Split(X[tr], y_train), Split(X[va], y[va]), Split(X[te], y[te]), corrupted)


class Logits(nn.Module):
    """The outer variable: one logit per training example; its weight is sigmoid(logit)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.logit = nn.Parameter(torch.zeros(n, dtype=DT))


def inner_loss(inner: Any, outer: Logits, batch: Split) -> torch.Tensor:
    ce = F.cross_entropy(inner(batch.X), batch.y, reduction="none")
    return (torch.sigmoid(outer.logit) * ce).mean() + 0.5 * RHO * (inner.weight ** 2).sum()


def outer_loss(inner: Any, outer: Logits, batch: Split) -> torch.Tensor:
    return F.cross_entropy(inner(batch.X), batch.y)


def fit(train: Split, weights: torch.Tensor, iters: int = 300) -> nn.Linear:
    """The classifier minimising the weighted inner loss, by L-BFGS (convex): the reference retraining."""
    model = nn.Linear(train.X.shape[1], N_CLASSES).to(DT)
    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)
    opt = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=iters, tolerance_grad=1e-7,
                            tolerance_change=1e-10, history_size=20, line_search_fn="strong_wolfe")
    w = weights.detach().to(DT)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (w * F.cross_entropy(model(train.X), train.y, reduction="none")).mean() \
            + 0.5 * RHO * (model.weight ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return model


def accuracy(model: Any, split: Split) -> float:
    with torch.no_grad():
        return float((model(split.X).argmax(1) == split.y).float().mean())


def auc(weights: torch.Tensor, corrupted: torch.Tensor) -> float:
    """ROC AUC of the weights as a score for "clean": 1 = every clean example outweighs every corrupted one."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score((~corrupted).numpy(), weights.detach().double().numpy()))


def inner_lr(train: Split) -> float:
    """1 / L for f: the softmax cross-entropy's curvature is at most 1/2 times the largest eigenvalue of X^T X / n
    (weights <= 1), plus rho; the bias adds at most 1/2."""
    lmax = float(torch.linalg.eigvalsh(train.X.T.double() @ train.X.double() / len(train.X))[-1])
    return 1.0 / (0.5 * (lmax + 1.0) + RHO)


def baselines(data: Data) -> dict[str, dict[str, float]]:
    ones = torch.ones(len(data.train.y), dtype=DT)
    out = {}
    for name, w in (("all data", ones), ("oracle (clean only)", (~data.corrupted).to(DT))):
        out[name] = {"test_acc": accuracy(fit(data.train, w), data.test)}
    return out


OVERRIDES: dict[str, dict[str, Any]] = {
    "f2sa": {"penalty": 10.0, "penalty_growth": 0.5},  # deterministic losses: a large penalty costs no variance
}


def run_solver(name: str, data: Data, *, outer_steps: int, inner_steps: int, outer_lr: float,
               eval_every: int, repeats: int) -> dict[str, Any]:
    torch.manual_seed(0)
    n = len(data.train.y)
    hyper = Logits(n)
    model = fit(data.train, torch.sigmoid(hyper.logit))  # start at theta*(l_0)
    problem = bilevel.Problem(inner=model, outer=hyper, inner_loss=inner_loss, outer_loss=outer_loss)
    outer_opt = torch.optim.Adam(hyper.parameters(), lr=outer_lr)
    inner_opt = torchopt.sgd(lr=inner_lr(data.train), momentum=0.9)
    solver = build_solver(name, problem, inner_opt, outer_opt, steps=inner_steps, **OVERRIDES.get(name, {}))
    if isinstance(solver, bilevel.SOBASolver):
        solver.warm_up(data.train, data.val)
    elif isinstance(solver, bilevel.F2SASolver):
        solver.warm_up(data.train, data.val, steps=10)

    def step() -> bilevel.StepInfo:
        return solver.step(data.train, data.val)

    curve: list[dict[str, float]] = []
    t0 = time.perf_counter()
    for t in range(1, outer_steps + 1):
        step()
        if t % eval_every == 0 or t == outer_steps or t == 1:
            w = torch.sigmoid(hyper.logit.detach())
            # g at the inner module's theta, not info.outer_loss: SOBA and F2SA report g at other iterates
            with torch.no_grad():
                val_loss = float(outer_loss(model, hyper, data.val))
            curve.append({"step": t, "val_loss": val_loss, "auc": auc(w, data.corrupted),
                          "test_acc_online": accuracy(model, data.test)})
    wall = time.perf_counter() - t0
    weights = torch.sigmoid(hyper.logit.detach()).clone()
    final = {"auc": auc(weights, data.corrupted), "test_acc": accuracy(fit(data.train, weights), data.test),
             "test_acc_online": accuracy(model, data.test)}
    cost = measure_step(step, repeats=repeats)  # after the metrics: the extra steps change nothing reported
    return {"solver": name, **final, "weights": [round(w, 4) for w in weights.tolist()], "curve": curve,
            "run_wall_s": wall, **cost}


def applicable_solvers() -> list[str]:
    """All but forward mode: with one outer scalar per training example it would take one unroll per example."""
    return [s for s in SOLVER_NAMES if s != "k-step-forward"]


def run(*, quick: bool = False, seed: int = 0, solvers: list[str] | None = None) -> dict[str, Any]:
    """Baselines and every solver; returns rows, baselines and curves (nothing written)."""
    setup_torch(seed)
    data = load_data(seed)
    settings = ({"outer_steps": 30, "inner_steps": 10, "outer_lr": 0.1, "eval_every": 10, "repeats": 1} if quick
                else {"outer_steps": 150, "inner_steps": 10, "outer_lr": 0.1, "eval_every": 10, "repeats": 10})
    names = solvers if solvers is not None else (["implicit-cg"] if quick else applicable_solvers())
    rows = [run_solver(s, data, **settings) for s in names]
    return {"baselines": baselines(data), "rows": rows, "settings": settings,
            "corrupted": data.corrupted.tolist()}


def table(result: dict[str, Any]) -> str:
    rows: list[dict[str, Any]] = [{"method": k, "test acc": v["test_acc"]} for k, v in result["baselines"].items()]
    rows += [{"method": r["solver"], "test acc": r["test_acc"], "test acc (online)": r["test_acc_online"],
              "weight AUC": r["auc"], "ms / outer step": 1e3 * r["time_s"],
              "saved KiB / step": r["saved_bytes"] / 1024} for r in result["rows"]]
    return markdown_table(rows, ["method", "test acc", "test acc (online)", "weight AUC", "ms / outer step",
                                 "saved KiB / step"])


def figure(result: dict[str, Any]) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
    for r in result["rows"]:
        steps = [c["step"] for c in r["curve"]]
        axes[0].plot(steps, [c["val_loss"] for c in r["curve"]], label=r["solver"], **solver_style(r["solver"]))
        axes[1].plot(steps, [c["auc"] for c in r["curve"]], label=r["solver"], **solver_style(r["solver"]))
    axes[0].set(xlabel="outer step", ylabel="validation loss at the inner iterate", title="outer loss")
    axes[1].set(xlabel="outer step", ylabel="ROC AUC, clean vs corrupted", title="weights separate the noise")
    axes[0].legend(fontsize=7)
    best = max(result["rows"], key=lambda r: r["auc"]) if result["rows"] else None
    if best is not None:
        w = torch.tensor(best["weights"])
        bad = torch.tensor(result["corrupted"])
        bins = torch.linspace(0, 1, 41).tolist()
        axes[2].hist(w[~bad].tolist(), bins=bins, alpha=0.6, label="clean")
        axes[2].hist(w[bad].tolist(), bins=bins, alpha=0.6, label="corrupted")
        axes[2].set(xlabel="learned weight sigmoid(l_i)", ylabel="training examples",
                    title=f"weights ({best['solver']}, AUC {best['auc']:.3f})")
        axes[2].legend()
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = common_args(__doc__.split("\n")[0]).parse_args(argv)
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
