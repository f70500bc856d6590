"""Quickstart: learn a ridge-regression regulariser with every `bilevel` solver, then train a small VACO run.

Part 1 states a bi-level problem (inner: ridge regression on training data; outer: validation loss
w.r.t. the log regularisation strength), compares every solver's hypergradient with the closed-form
one, and tunes the hyperparameter by hypergradient descent.
Part 2 builds a tiny Minari dataset (Pendulum, a good and a bad behaviour policy), trains VACO on it
with the one-step solver and shows that the meta-scorer prefers the good trajectories.

Run:  bash run.sh quickstart          (or: python examples/quickstart.py [--skip-rl] [--out DIR])
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torchopt
from torch import nn

import bilevel

DT = torch.float64


class LogRidge(nn.Module):
    """The outer variable: log of the ridge strength (log keeps it positive and well scaled)."""

    def __init__(self) -> None:
        super().__init__()
        self.log_lam = nn.Parameter(torch.tensor(1.0, dtype=DT))


def make_regression(seed: int = 0, n: int = 60, d: int = 20):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, generator=g, dtype=DT)
    X, Xv = (torch.randn(n, d, generator=g, dtype=DT) for _ in range(2))
    y = X @ w + 1.5 * torch.randn(n, generator=g, dtype=DT)
    yv = Xv @ w + 1.5 * torch.randn(n, generator=g, dtype=DT)
    return (X, y), (Xv, yv)


def part1_hyperparameter() -> None:
    (X, y), (Xv, yv) = make_regression()
    n, d = X.shape
    model = nn.Linear(d, 1, bias=False).to(DT)
    hyper = LogRidge()

    def inner_loss(inner, outer, batch):  # f(theta, lambda): training loss + e^lambda ||theta||^2
        xb, yb = batch
        weight = next(inner.parameters())
        return ((inner(xb).squeeze(-1) - yb) ** 2).mean() + outer.log_lam.exp() * (weight ** 2).sum()

    def outer_loss(inner, outer, batch):  # g(theta): validation loss
        return ((inner(Xv).squeeze(-1) - yv) ** 2).mean()

    problem = bilevel.Problem(inner=model, outer=hyper, inner_loss=inner_loss, outer_loss=outer_loss)

    def closed_form(log_lam):
        return torch.linalg.solve(X.T @ X / n + log_lam.exp() * torch.eye(d, dtype=DT), X.T @ y / n)

    lam = hyper.log_lam.detach().clone().requires_grad_()
    [exact] = torch.autograd.grad(((Xv @ closed_form(lam) - yv) ** 2).mean(), lam)
    with torch.no_grad():  # start at the inner optimum, where the implicit function theorem is exact
        model.weight.copy_(closed_form(hyper.log_lam)[None])

    outer_opt = torch.optim.Adam(hyper.parameters(), lr=0.05)
    sgd = torchopt.sgd(lr=0.02)
    solvers = {
        "one-step (SGD)": bilevel.OneStepSolver(problem, sgd, outer_opt),
        "K-step K=20 reverse": bilevel.KStepSolver(problem, sgd, outer_opt, steps=20),
        "K-step K=20 forward": bilevel.KStepSolver(problem, sgd, outer_opt, steps=20, mode="forward"),
        "implicit CG (10 it.)": bilevel.ImplicitSolver(problem, sgd, outer_opt, inner_steps=0, iterations=10),
        "implicit Neumann (200)": bilevel.ImplicitSolver(problem, sgd, outer_opt, inner_steps=0,
                                                         linear_solver="neumann", iterations=200),
        "implicit fixed point (200)": bilevel.ImplicitSolver(problem, sgd, outer_opt, inner_steps=0,
                                                             linear_solver="fixed_point", iterations=200),
    }
    print("Part 1: ridge regression, d outer_loss / d log_lambda at the inner optimum")
    print(f"  {'closed form':28s} {exact.item(): .10f}")
    for name, s in solvers.items():
        [h] = s.hypergradient((X, y))
        print(f"  {name:28s} {h.item(): .10f}   rel. error {abs(h.item() - exact.item()) / abs(exact.item()):.1e}")
    print("  (one-step / K-step differentiate a few SGD steps from the optimum, not the optimum itself:"
          " they are biased by design)")

    # Hypergradient descent on log_lambda: 5 inner steps + implicit hypergradient per outer step.
    solver = bilevel.ImplicitSolver(problem, torchopt.sgd(lr=0.2), outer_opt, inner_steps=5, iterations=20)
    start = ((Xv @ closed_form(hyper.log_lam.detach()) - yv) ** 2).mean()
    t0 = time.perf_counter()
    for _ in range(300):
        info = solver.step((X, y))
    best = min((((Xv @ closed_form(torch.tensor(v, dtype=DT)) - yv) ** 2).mean().item(), v)
               for v in torch.linspace(-6, 4, 2001).tolist())
    print(f"\n  tuning log_lambda by implicit hypergradient descent (300 outer steps, {time.perf_counter() - t0:.1f}s):")
    print(f"  log_lambda 1.000 -> {hyper.log_lam.item():.3f} (grid-search optimum {best[1]:.3f}); validation loss "
          f"{start.item():.3f} -> {info.outer_loss:.3f} (grid optimum {best[0]:.3f}); CG residual "
          f"{info.extras['residual']:.1e}")


def part2_vaco(out_dir: str, steps: int) -> None:
    from vaco_demo import vaco_demo  # examples/vaco_demo.py, beside this script

    vaco_demo(out_dir, steps=steps)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--skip-rl", action="store_true", help="only run part 1 (no Minari / MuJoCo needed)")
    p.add_argument("--out", default="runs/quickstart", help="directory for the VACO run and its dataset")
    p.add_argument("--steps", type=int, default=3000, help="VACO training steps in part 2")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    part1_hyperparameter()
    if not args.skip_rl:
        print()
        part2_vaco(args.out, args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
