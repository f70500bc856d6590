"""Learning to reweight examples (Ren et al., ICML 2018) on class-imbalanced digits.

A few digit classes keep only a small fraction of their training examples. A small MLP is trained by SGD on
minibatches; before every update, each example of the minibatch gets a weight from the hypergradient of the
loss on a small *balanced* validation set w.r.t. a per-example perturbation ``eps`` of the training loss
``sum_i eps_i CE_i``: ``w_i = max(-dG/deps_i, 0)``, normalised to sum to one, then the model takes its SGD
step on ``sum_i w_i CE_i``. The paper's rule is the one-step hypergradient at ``eps = 0``; K-step unrolls and a
damped implicit hypergradient at ``eps = 1/B`` (at 0 their inner loss, and its Hessian, vanish) are shown too.
Compared with plain training and with class-balanced (inverse-frequency weighted) training, on the rare
classes and overall.

Run:  python examples/learning_to_reweight.py [--quick] [--solvers one-step,k-step-reverse] [--seed 0]
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
NAME = "learning_to_reweight"
N_CLASSES = 10
RARE = (3, 5, 8)  # the classes kept at KEEP of their training examples
KEEP = 0.08
BATCH = 64
LR = 0.01  # with momentum 0.9; at 0.03, or with batches of 32, the reweighted runs oscillate (few examples carry
# most of a batch's weight)
MOMENTUM = 0.9


@dataclass
class Split:
    X: torch.Tensor
    y: torch.Tensor


@dataclass
class Data:
    train: Split  # imbalanced
    val: Split  # small and balanced
    test: Split  # balanced (the dataset's own class frequencies)


def load_data(seed: int = 0, test_fraction: float = 0.3, val_per_class: int = 10) -> Data:
    """Digits (pixels / 16): a test set, a balanced validation set of ``val_per_class`` per class, and a training
    set in which the classes of :data:`RARE` keep :data:`KEEP` of their examples."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(X), generator=g)
    X, y = torch.tensor(X, dtype=DT)[perm] / 16.0, torch.tensor(y)[perm]
    n_test = int(test_fraction * len(X))
    test = Split(X[:n_test], y[:n_test])
    X, y = X[n_test:], y[n_test:]
    val_idx, train_idx = [], []
    for c in range(N_CLASSES):
        idx = (y == c).nonzero().squeeze(1)
        val_idx.append(idx[:val_per_class])
        rest = idx[val_per_class:]
        train_idx.append(rest[: max(1, round(KEEP * len(rest)))] if c in RARE else rest)
    val, train = torch.cat(val_idx), torch.cat(train_idx)
    return Data(Split(X[train], y[train]), Split(X[val], y[val]), test)


class MLP(nn.Module):
    def __init__(self, d_in: int = 64, hidden: int = 32) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class Eps(nn.Module):
    """The outer variable: the per-example perturbation of one minibatch's loss (reset before every batch)."""

    def __init__(self, n: int = BATCH) -> None:
        super().__init__()
        self.eps = nn.Parameter(torch.zeros(n, dtype=DT))


def inner_loss(inner: Any, outer: Eps, batch: Split) -> torch.Tensor:
    return (outer.eps * F.cross_entropy(inner(batch.X), batch.y, reduction="none")).sum()


def outer_loss(inner: Any, outer: Eps, batch: Split) -> torch.Tensor:
    return F.cross_entropy(inner(batch.X), batch.y)


def evaluate(model: nn.Module, split: Split) -> dict[str, float]:
    with torch.no_grad():
        correct = model(split.X).argmax(1) == split.y
    rare = torch.isin(split.y, torch.tensor(RARE))
    return {"acc": float(correct.float().mean()), "rare_acc": float(correct[rare].float().mean()),
            "common_acc": float(correct[~rare].float().mean())}


# Per-label settings: where the hypergradient is taken and solver options. The one-step rule is the paper's
# (eps = 0); the others are taken at uniform eps = 1/B, since at 0 the inner loss, its unroll and its Hessian vanish.
METHODS: dict[str, dict[str, Any]] = {
    "one-step": {"uniform": False, "options": {}},
    "k-step-reverse": {"uniform": True, "options": {"steps": 3}},
    "k-step-forward": {"uniform": True, "options": {"steps": 3}},
    "k-step-mixed": {"uniform": True, "options": {"steps": 3}},
    # A minibatch Hessian of an MLP mid-training is indefinite and singular: damping makes the system solvable.
    "implicit-cg": {"uniform": True, "options": {"steps": 0, "damping": 1.0, "iterations": 10}},
}
# Forward mode carries one tangent per example of the batch (64): it gives reverse mode's weights at ~10x its
# time here, so it runs only when asked for (--solvers k-step-forward).
DEFAULT_SOLVERS = ("one-step", "k-step-reverse", "k-step-mixed", "implicit-cg")
BASELINES = ("plain", "class-balanced")


def reweight(solver: bilevel.Solver, hyper: Eps, batch: Split, val: Split, eps0: float) -> torch.Tensor:
    """The paper's weights for ``batch``: -dG/deps at eps0, clipped at 0 and normalised to sum to one."""
    with torch.no_grad():
        hyper.eps.fill_(eps0)
    [hg] = solver.hypergradient(batch, val)
    w = torch.clamp(-hg, min=0.0)
    total = w.sum()
    return w / total if total > 0 else w  # all zero: the paper skips the batch (a zero-weighted step)


def train(method: str, data: Data, *, epochs: int, eval_every: int, repeats: int, seed: int = 0,
          batch_size: int = BATCH, lr: float = LR) -> dict[str, Any]:
    """Train the MLP with ``method`` (a solver label of :data:`METHODS` or one of :data:`BASELINES`)."""
    torch.manual_seed(seed)
    model = MLP().to(DT)
    hyper = Eps(batch_size)
    problem = bilevel.Problem(inner=model, outer=hyper, inner_loss=inner_loss, outer_loss=outer_loss)
    inner_opt = torchopt.sgd(lr=lr, momentum=MOMENTUM)
    outer_opt = torch.optim.SGD(hyper.parameters(), lr=0.0)  # eps is set, never stepped
    spec = METHODS.get(method, {"uniform": False, "options": {}})
    solver = build_solver(method if method in METHODS else "one-step", problem, inner_opt, outer_opt,
                          **spec["options"])
    counts = torch.bincount(data.train.y, minlength=N_CLASSES).to(DT)
    inv_freq = len(data.train.y) / (N_CLASSES * counts)  # mean weight 1 over the training set

    def weights(batch: Split) -> torch.Tensor:
        if method == "plain":
            return torch.full((batch_size,), 1.0 / batch_size, dtype=DT)
        if method == "class-balanced":
            return inv_freq[batch.y] / batch_size
        return reweight(solver, hyper, batch, data.val, 1.0 / batch_size if spec["uniform"] else 0.0)

    def update(batch: Split) -> torch.Tensor:
        w = weights(batch)
        with torch.no_grad():
            hyper.eps.copy_(w)
        solver.inner_update(batch)
        return w

    g = torch.Generator().manual_seed(seed)
    n = len(data.train.y)
    curve: list[dict[str, float]] = []
    rare = torch.isin(data.train.y, torch.tensor(RARE))
    rare_weight = []  # share of the total weight the rare-class examples of each batch receive
    t0 = time.perf_counter()
    step = 0
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        for i in range(n // batch_size):  # drop the last partial batch: eps has a fixed size
            idx = perm[i * batch_size:(i + 1) * batch_size]
            w = update(Split(data.train.X[idx], data.train.y[idx]))
            rare_weight.append(float(w[rare[idx]].sum()))
            step += 1
            if step % eval_every == 0:
                curve.append({"step": step, **evaluate(model, data.test)})
    wall = time.perf_counter() - t0
    final = evaluate(model, data.test)
    probe = Split(data.train.X[:batch_size], data.train.y[:batch_size])
    cost = measure_step(lambda: update(probe), repeats=repeats)
    return {"method": method, **final, "curve": curve, "run_wall_s": wall, "steps": step,
            "rare_weight_share": sum(rare_weight) / len(rare_weight), **cost}


def applicable_solvers() -> list[str]:
    """The labels with a per-minibatch meaning: implicit variants beyond one damped CG solve add nothing, and
    SOBA / F2SA / warm-started implicit carry state for an outer variable that persists across calls (here each
    minibatch has its own eps)."""
    return list(METHODS)


def run(*, quick: bool = False, seed: int = 0, solvers: list[str] | None = None) -> dict[str, Any]:
    setup_torch(seed)
    data = load_data(seed)
    settings = ({"epochs": 16, "eval_every": 25, "repeats": 1} if quick
                else {"epochs": 50, "eval_every": 25, "repeats": 20})
    names = solvers if solvers is not None else (["one-step"] if quick else list(DEFAULT_SOLVERS))
    rows = [train(m, data, seed=seed, **settings) for m in (*BASELINES, *names)]
    sizes = {"train": len(data.train.y), "val": len(data.val.y), "test": len(data.test.y),
             "rare_train": int(torch.isin(data.train.y, torch.tensor(RARE)).sum())}
    return {"rows": rows, "settings": settings, "sizes": sizes, "rare": list(RARE)}


def table(result: dict[str, Any]) -> str:
    rows = []
    for r in result["rows"]:
        row = {"method": r["method"], "rare-class acc": r["rare_acc"], "other-class acc": r["common_acc"],
               "overall acc": r["acc"], "rare share of weight": r["rare_weight_share"],
               "ms / step": 1e3 * r["time_s"], "saved KiB / step": r["saved_bytes"] / 1024}
        rows.append(row)
    return markdown_table(rows, ["method", "rare-class acc", "other-class acc", "overall acc",
                                 "rare share of weight", "ms / step", "saved KiB / step"])


def figure(result: dict[str, Any]) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.3))
    for r in result["rows"]:
        steps = [c["step"] for c in r["curve"]]
        style = {"ls": "--", "lw": 1.3, "color": "k" if r["method"] == "plain" else "0.55"} \
            if r["method"] in BASELINES else solver_style(r["method"])
        axes[0].plot(steps, [c["rare_acc"] for c in r["curve"]], label=r["method"], **style)
        axes[1].plot(steps, [c["acc"] for c in r["curve"]], label=r["method"], **style)
    axes[0].set(xlabel="SGD step", ylabel="test accuracy", ylim=(0, 1),
                title=f"rare classes {tuple(result['rare'])} ({result['sizes']['rare_train']} training examples)")
    axes[1].set(xlabel="SGD step", ylabel="test accuracy", ylim=(0.5, 1), title="all classes")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = common_args(__doc__.split("\n")[0]).parse_args(argv)
    names = select_solvers(args.solvers, applicable_solvers()) if args.solvers else None
    result = run(quick=args.quick, seed=args.seed, solvers=names)
    text = table(result)
    print(text)
    print(f"data: {result['sizes']}")
    paths = write_outputs(NAME, args, {**result, "table": text}, figure(result))
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return result


if __name__ == "__main__":
    main()
