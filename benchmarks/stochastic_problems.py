"""The two problems of ``benchmarks/stochastic.py`` as :class:`bilevel.Problem` s with exact oracles.

* :func:`make_quadratic`: the benchopt bilevel *quadratic* problem (``benchmark_bilevel``,
  ``datasets/quadratic.py``), rebuilt from its definition: inner and outer losses

  .. math::

      g(z, x) = \\frac1n \\sum_i \\tfrac12 z^\\top A_i z + \\tfrac12 x^\\top B_i x + x^\\top C_i z + a_i^\\top z + b_i^\\top x

  (inner: the library's f; outer: the same form with its own draws, the library's g). A_i = u_i u_i^T
  with u_i ~ N(0, H), H's spectrum log-spaced on [mu, L]: every A_i has rank one, so a minibatch
  Hessian of 64 samples in d_in = 100 dimensions is singular while the mean is well conditioned.
  B_i = w_i w_i^T likewise with spectrum {0} U [mu, L] on d_out - 1 directions; C_i = p_i q_i^T with
  E[C_i] = U diag(logspace(mu, L_cross)) V^T; a_i, b_i ~ N(0, I). As in benchopt the data are redrawn
  (up to 20 times) until the value function h(x) = G(z*(x), x) is strongly convex. z*(x) and
  grad h(x) are closed form, so ``grad_h_sq(x)`` is the exact oracle ||grad h(x)||^2.
  The rank-one factors are stored instead of the d x d matrices (same losses, 1/100 of the memory).

* :func:`make_breast_cancer`: per-feature L2 strengths for logistic regression on
  ``sklearn.datasets.load_breast_cancer`` (569 samples, 30 standardised features + intercept): inner
  loss the training log-loss + 1/2 sum_j exp(lambda_j) theta_j^2, outer the validation log-loss. An
  offline stand-in for benchopt's ijcnn1 regularisation-selection problem (which needs a download);
  the inner problem is strongly convex in 31 dimensions, so Newton's method gives theta*(lambda) and the
  IFT gives grad h(lambda) to machine precision: the same ``grad_h_sq`` oracle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

import bilevel

DT = torch.float64


class Vector(nn.Module):
    """One parameter vector (theta or lambda) as a module; losses read it as ``inner.z`` / ``outer.x``."""

    def __init__(self, name: str, init: torch.Tensor) -> None:
        super().__init__()
        self.register_parameter(name, nn.Parameter(init.clone()))


@dataclass
class Instance:
    """A bilevel problem with minibatch losses, an exact oracle and its sample counts."""

    name: str
    make_problem: Callable[[], bilevel.Problem]  # fresh modules at the initial point
    grad_h_sq: Callable[[torch.Tensor], float]  # exact ||grad h(lambda)||^2 at an outer point
    value: Callable[[torch.Tensor], float]  # exact h(lambda) (outer loss at theta*(lambda))
    n_inner: int
    n_outer: int
    grad_h: Callable[[torch.Tensor], torch.Tensor] | None = None  # exact grad h(lambda)
    data: dict[str, dict[str, torch.Tensor]] | None = None  # quadratic: per-sample factors of each level


def _orthogonal(d: int, gen: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=DT))
    return q * torch.sign(torch.diagonal(r))


def _quadratic_terms(n: int, d_in: int, d_out: int, mu: float, lip_in: float, lip_out: float, lip_cross: float,
                     gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Rank-one factors of one level's sample terms (benchopt's ``gen_matrices``)."""
    u = _orthogonal(d_in, gen)
    sqrt_h = u @ torch.diag(torch.logspace(torch.log10(torch.tensor(mu)) / 2, torch.log10(torch.tensor(lip_in)) / 2,
                                           d_in, dtype=DT)) @ u.T
    u_in = torch.randn(n, d_in, generator=gen, dtype=DT) @ sqrt_h  # A_i = u_i u_i^T, E[A_i] spectrum [mu, L]
    u2 = _orthogonal(d_out, gen)
    spec = torch.cat([torch.zeros(1, dtype=DT), torch.logspace(torch.log10(torch.tensor(mu)) / 2,
                                                                torch.log10(torch.tensor(lip_out)) / 2, d_out - 1,
                                                                dtype=DT)])
    w_out = torch.randn(n, d_out, generator=gen, dtype=DT) @ (u2 @ torch.diag(spec) @ u2.T)  # B_i = w_i w_i^T
    uc, vc = _orthogonal(d_out, gen), _orthogonal(d_in, gen)
    k = min(d_in, d_out)
    dmat = torch.zeros(d_out, d_in, dtype=DT)
    dmat[:k, :k] = torch.diag(torch.logspace(torch.log10(torch.tensor(mu)), torch.log10(torch.tensor(lip_cross)), k,
                                             dtype=DT))
    xi = torch.randn(n, d_in, generator=gen, dtype=DT)
    p = xi @ (uc @ dmat).T  # C_i = p_i q_i^T, E[C_i] = U D V^T
    q = xi @ vc.T
    return {"u": u_in, "w": w_out, "p": p, "q": q, "a": torch.randn(n, d_in, generator=gen, dtype=DT),
            "b": torch.randn(n, d_out, generator=gen, dtype=DT)}


def _quadratic_loss(t: dict[str, torch.Tensor]) -> Callable[[object, nn.Module, torch.Tensor], torch.Tensor]:
    def loss(inner, outer, idx):
        z, x = inner.z, outer.x
        u, w, p, q, a, b = (t[k][idx] for k in "uwpqab")
        per = 0.5 * (u @ z) ** 2 + 0.5 * (w @ x) ** 2 + (p @ x) * (q @ z) + a @ z + b @ x
        return per.mean()
    return loss


def _full(t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Full-batch matrices: A = mean u u^T, B = mean w w^T, C = mean p q^T (d_out x d_in), means of a, b."""
    n = t["u"].shape[0]
    return {"A": t["u"].T @ t["u"] / n, "B": t["w"].T @ t["w"] / n, "C": t["p"].T @ t["q"] / n,
            "a": t["a"].mean(0), "b": t["b"].mean(0)}


def make_quadratic(n: int = 1024, d_in: int = 100, d_out: int = 10, mu: float = 0.1, lip: float = 1.0,
                   lip_cross: float = 0.1, x0: float = -2.0, seed: int = 2442) -> Instance:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(20):
        inner = _quadratic_terms(n, d_in, d_out, mu, lip, lip, lip_cross, gen)
        outer = _quadratic_terms(n, d_in, d_out, mu, lip, lip, lip_cross, gen)
        fi, fo = _full(inner), _full(outer)
        jac = -torch.linalg.solve(fi["A"], fi["C"].T)  # d z* / d x
        hess_h = fo["B"] + fo["C"] @ jac + jac.T @ fo["C"].T + jac.T @ fo["A"] @ jac
        if torch.linalg.eigvalsh(0.5 * (hess_h + hess_h.T)).min() > 1e-12:
            break
    else:
        raise RuntimeError("could not draw a quadratic problem with a strongly convex value function")

    def z_star(x: torch.Tensor) -> torch.Tensor:
        return -torch.linalg.solve(fi["A"], fi["a"] + fi["C"].T @ x)

    def grad_h(x: torch.Tensor) -> torch.Tensor:
        z = z_star(x)
        v = torch.linalg.solve(fi["A"], fo["A"] @ z + fo["C"].T @ x + fo["a"])
        return fo["B"] @ x + fo["C"] @ z + fo["b"] - fi["C"] @ v

    def value(x: torch.Tensor) -> float:
        z = z_star(x)
        return float(0.5 * z @ fo["A"] @ z + 0.5 * x @ fo["B"] @ x + x @ fo["C"] @ z + fo["a"] @ z + fo["b"] @ x)

    def make_problem() -> bilevel.Problem:
        return bilevel.Problem(Vector("z", torch.zeros(d_in, dtype=DT)), Vector("x", torch.full((d_out,), x0, dtype=DT)),
                               _quadratic_loss(inner), _quadratic_loss(outer))

    return Instance("quadratic", make_problem, lambda x: float(grad_h(x.detach()).pow(2).sum()),
                    lambda x: value(x.detach()), n, n, grad_h, {"inner": inner, "outer": outer})


def make_breast_cancer(lam0: float = 0.0, seed: int = 0, train_fraction: float = 0.5) -> Instance:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    x_all = torch.tensor(data.data, dtype=DT)
    y_all = torch.tensor(data.target, dtype=DT) * 2 - 1
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y_all), generator=gen)
    n_tr = int(train_fraction * len(y_all))
    tr, va = perm[:n_tr], perm[n_tr:]
    mean, std = x_all[tr].mean(0), x_all[tr].std(0)
    feats = torch.cat([(x_all - mean) / std, torch.ones(len(y_all), 1, dtype=DT)], 1)  # last: intercept
    x_tr, y_tr, x_va, y_va = feats[tr], y_all[tr], feats[va], y_all[va]
    d = feats.shape[1]

    def inner_loss(inner, outer, idx):
        w = inner.w
        margins = y_tr[idx] * (x_tr[idx] @ w)
        return nn.functional.softplus(-margins).mean() + 0.5 * (outer.lam.exp() * w[:-1] ** 2).sum()  # no intercept

    def outer_loss(inner, outer, idx):
        return nn.functional.softplus(-y_va[idx] * (x_va[idx] @ inner.w)).mean()

    def full_outer(w: torch.Tensor) -> torch.Tensor:
        return nn.functional.softplus(-y_va * (x_va @ w)).mean()

    def penalty(lam: torch.Tensor) -> torch.Tensor:
        return torch.cat([lam.exp(), torch.zeros(1, dtype=DT)])  # the intercept is not penalised

    def theta_star(lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Newton's method on the full training loss (strongly convex, 31 dims; converges in ~10 steps);
        returns theta* and the Hessian there."""
        w = torch.zeros(d, dtype=DT)
        reg = penalty(lam)
        for _ in range(100):
            s = torch.sigmoid(-y_tr * (x_tr @ w))  # d softplus(-m) / dm = -s
            grad = -x_tr.T @ (y_tr * s) / n_tr + reg * w
            hess = (x_tr.T * (s * (1 - s))) @ x_tr / n_tr + torch.diag(reg)
            step = torch.linalg.solve(hess, grad)
            w = w - step
            if float(step.abs().max()) < 1e-13:
                break
        s = torch.sigmoid(-y_tr * (x_tr @ w))
        return w, (x_tr.T * (s * (1 - s))) @ x_tr / n_tr + torch.diag(reg)

    def grad_h(lam: torch.Tensor) -> torch.Tensor:
        # IFT: grad h = -(d2 f / dlam dw) H^{-1} grad_w g, with d2 f / dlam_j dw_j = exp(lam_j) w_j.
        w, hess = theta_star(lam)
        s = torch.sigmoid(-y_va * (x_va @ w))
        v = torch.linalg.solve(hess, -x_va.T @ (y_va * s) / len(y_va))
        return -(lam.exp() * w[:-1] * v[:-1])

    def make_problem() -> bilevel.Problem:
        return bilevel.Problem(Vector("w", torch.zeros(d, dtype=DT)), Vector("lam", torch.full((d - 1,), lam0, dtype=DT)),
                               inner_loss, outer_loss)

    return Instance("breast_cancer", make_problem, lambda lam: float(grad_h(lam.detach()).pow(2).sum()),
                    lambda lam: float(full_outer(theta_star(lam.detach())[0])), n_tr, len(va), grad_h)
