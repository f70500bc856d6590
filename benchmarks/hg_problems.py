"""The problems of the hypergradient benchmark (benchmarks/hypergradients.py; mixed_mode.py uses the MLP):
ridge and logistic regression with known true hypergradients, the MLP of the speed and memory rows, and the
noisy-label digits split of the reweighting task."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.hg_peers import FunctionalProblem, Hyper


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def ridge_problem(device: str) -> tuple[FunctionalProblem, torch.Tensor]:
    """Per-feature ridge: f = mean((X t - y)^2) + sum_i exp(l_i) t_i^2, g = validation MSE.
    Features have spread-out scales so the inner Hessian is ill-conditioned (kappa ~ 1e2) and
    truncated unrolls/Neumann series visibly fall short. Returns the problem with theta = theta*
    and the analytic hypergradient."""
    dt64 = torch.float64
    gen = torch.Generator().manual_seed(0)
    n, d = 200, 10
    scales = torch.logspace(0, -1, d, dtype=dt64)
    X = torch.randn(n, d, generator=gen, dtype=dt64) * scales
    w = torch.randn(d, generator=gen, dtype=dt64)
    y = X @ w + 0.5 * torch.randn(n, generator=gen, dtype=dt64)
    Xv = torch.randn(n, d, generator=gen, dtype=dt64) * scales
    yv = Xv @ w + 0.5 * torch.randn(n, generator=gen, dtype=dt64)
    X, y, Xv, yv = (t.to(device) for t in (X, y, Xv, yv))
    log_lam = torch.linspace(-5, -3, d, dtype=dt64, device=device)

    def solve(ll: torch.Tensor) -> torch.Tensor:
        return torch.linalg.solve(X.T @ X / n + torch.diag(ll.exp()), X.T @ y / n)

    lam = log_lam.clone().requires_grad_()
    true = torch.autograd.grad(((Xv @ solve(lam) - yv) ** 2).mean(), lam)[0]
    model = nn.Linear(d, 1, bias=False).to(device=device, dtype=dt64)
    with torch.no_grad():
        model.weight.copy_(solve(log_lam)[None])
    hess = 2 * (X.T @ X / n + torch.diag(log_lam.exp()))
    lr = float(1.0 / torch.linalg.eigvalsh(hess).max())

    def f(logits: Callable, params: list[torch.Tensor], lam_: torch.Tensor, batch: Any) -> torch.Tensor:
        xb, yb = batch
        return ((logits(xb).squeeze(-1) - yb) ** 2).mean() + (lam_.exp() * params[0].squeeze(0) ** 2).sum()

    def g(logits: Callable, params: list[torch.Tensor], lam_: torch.Tensor, batch: Any) -> torch.Tensor:
        xb, yb = batch
        return ((logits(xb).squeeze(-1) - yb) ** 2).mean()

    return FunctionalProblem(model, Hyper(log_lam), f, g, (X, y), (Xv, yv), lr), true


def logistic_problem(device: str) -> tuple[FunctionalProblem, torch.Tensor, float]:
    """Binary logistic regression with per-feature L2 strengths exp(l_i); g = validation BCE.
    theta* by Newton's method (dense Hessian); true hypergradient by the IFT with the dense
    Hessian; also returns its relative difference to central finite differences of
    lambda -> g(theta*(lambda)) (each side re-solved by Newton) as a check of the reference."""
    dt64 = torch.float64
    gen = torch.Generator().manual_seed(1)
    n, d = 300, 10
    X = torch.randn(n, d, generator=gen, dtype=dt64) * torch.logspace(0, -0.7, d, dtype=dt64)
    w = torch.randn(d, generator=gen, dtype=dt64) * 2
    y = (torch.rand(n, generator=gen, dtype=dt64) < torch.sigmoid(X @ w)).to(dt64)
    Xv = torch.randn(n, d, generator=gen, dtype=dt64) * torch.logspace(0, -0.7, d, dtype=dt64)
    yv = (torch.rand(n, generator=gen, dtype=dt64) < torch.sigmoid(Xv @ w)).to(dt64)
    X, y, Xv, yv = (t.to(device) for t in (X, y, Xv, yv))
    log_lam = torch.linspace(-4, -2, d, dtype=dt64, device=device)

    def f_flat(t: torch.Tensor, ll: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(X @ t[:d] + t[d], y) + 0.5 * (ll.exp() * t[:d] ** 2).sum()

    def g_flat(t: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(Xv @ t[:d] + t[d], yv)

    def newton(ll: torch.Tensor) -> torch.Tensor:
        t = torch.zeros(d + 1, dtype=dt64, device=device)
        for _ in range(50):
            gr = torch.func.grad(f_flat)(t, ll)
            t = t - torch.linalg.solve(torch.func.hessian(f_flat)(t, ll), gr)
            if float(gr.norm()) < 1e-15:
                break
        return t

    t_star = newton(log_lam)
    H = torch.func.hessian(f_flat)(t_star, log_lam)
    mixed = torch.func.jacrev(torch.func.grad(f_flat, argnums=0), argnums=1)(t_star, log_lam)  # (d+1, d)
    true = -mixed.T @ torch.linalg.solve(H, torch.func.grad(g_flat)(t_star))
    eps = 1e-5
    fd = torch.stack([(g_flat(newton(log_lam + eps * e)) - g_flat(newton(log_lam - eps * e))) / (2 * eps)
                      for e in torch.eye(d, dtype=dt64, device=device)])
    ref_check = rel_err(fd, true)

    model = nn.Linear(d, 1).to(device=device, dtype=dt64)
    with torch.no_grad():
        model.weight.copy_(t_star[:d][None])
        model.bias.copy_(t_star[d:])
    lr = float(1.0 / torch.linalg.eigvalsh(H).max())

    def f(logits: Callable, params: list[torch.Tensor], lam_: torch.Tensor, batch: Any) -> torch.Tensor:
        xb, yb = batch
        return (F.binary_cross_entropy_with_logits(logits(xb).squeeze(-1), yb)
                + 0.5 * (lam_.exp() * params[0].squeeze(0) ** 2).sum())

    def g(logits: Callable, params: list[torch.Tensor], lam_: torch.Tensor, batch: Any) -> torch.Tensor:
        xb, yb = batch
        return F.binary_cross_entropy_with_logits(logits(xb).squeeze(-1), yb)

    return FunctionalProblem(model, Hyper(log_lam), f, g, (X, y), (Xv, yv), lr), true, ref_check



def mlp_problem(hidden: int, batch: int, device: str, dtype: torch.dtype, seed: int = 0) -> FunctionalProblem:
    """64 -> h -> h -> 10 tanh MLP, cross-entropy; outer variables: log weight decay of each of the
    three weight matrices (3 scalars, so forward mode is a fair option)."""
    torch.manual_seed(seed)
    d, c = 64, 10
    model = nn.Sequential(nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                          nn.Linear(hidden, c)).to(device=device, dtype=dtype)
    gen = torch.Generator().manual_seed(seed)
    teacher = torch.randn(d, c, generator=gen)

    def data() -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(batch, d, generator=gen)
        y = (x @ teacher + 0.5 * torch.randn(batch, c, generator=gen)).argmax(-1)
        return x.to(device=device, dtype=dtype), y.to(device)

    def f(logits: Callable, params: list[torch.Tensor], lam: torch.Tensor, b: Any) -> torch.Tensor:
        xb, yb = b
        weights = [p for p in params if p.dim() == 2]
        return F.cross_entropy(logits(xb), yb) + 0.5 * sum(l.exp() * (w * w).sum() for l, w in zip(lam, weights))

    def g(logits: Callable, params: list[torch.Tensor], lam: torch.Tensor, b: Any) -> torch.Tensor:
        xb, yb = b
        return F.cross_entropy(logits(xb), yb)

    lam = torch.full((3,), math.log(1e-3), device=device, dtype=dtype)
    return FunctionalProblem(model, Hyper(lam), f, g, data(), data(), lr=0.1)



def digits_split(seed: int, device: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """scikit-learn digits: 1000 train (40% of labels flipped to another class), 100 clean
    validation, 697 test; standardised with training statistics."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=gen)
    X = torch.tensor(X, dtype=torch.float64)[perm]
    y = torch.tensor(y)[perm]
    tr, va, te = slice(0, 1000), slice(1000, 1100), slice(1100, None)
    mu, sd = X[tr].mean(0), X[tr].std(0) + 1e-3
    X = (X - mu) / sd
    noisy = y[tr].clone()
    flip = torch.rand(1000, generator=gen) < 0.4
    noisy[flip] = (noisy[flip] + torch.randint(1, 10, (int(flip.sum()),), generator=gen)) % 10
    cast = {"device": device, "dtype": dtype}
    return {"Xtr": X[tr].to(**cast), "ytr": noisy.to(device), "clean": (~flip).to(device),
            "Xva": X[va].to(**cast), "yva": y[va].to(device), "Xte": X[te].to(**cast), "yte": y[te].to(device)}
