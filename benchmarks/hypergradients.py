"""Hypergradient benchmark: accuracy, speed and memory against peers, checkpointing, data reweighting.

Sections (all in one run, written to ``docs/benchmarks.md`` section ``hypergradients`` and to
``--out`` as JSON):

1. **Accuracy** (always float64): ridge regression (true hypergradient in closed form) and
   L2-regularised logistic regression (true hypergradient by the implicit function theorem with a
   dense Hessian at a Newton-converged optimum, checked against finite differences of the solution
   map). Every solver starts at the exact inner optimum theta*. Each row reports the error against
   the true bilevel hypergradient and against the solver's *own* target (for one-step / K-step: the
   exact derivative of the unrolled map from theta*, by central finite differences of an
   independent unroll), so approximation bias and implementation error are separated.
2. **Speed and peak memory** per hypergradient on an MLP (10^3..10^6 inner parameters) with
   per-layer weight decays as outer variables, for K = 1, 5, 20: ours vs ``higher``, ``torchopt``
   (unroll and ``custom_root``) and Betty (darts / cg / neumann).
3. **Checkpointing the reverse unroll**: peak memory and time of ``KStepSolver(checkpoint=s)`` (s = 1 and
   s = round(sqrt(K))) vs plain reverse and forward mode at K = 20, 50.
4. **Data reweighting** on scikit-learn digits with 40% flipped training labels: test accuracy and
   AUC (clean vs flipped) of learned per-sample weights.

Usage::

    python -m benchmarks.hypergradients --quick                       # CPU, a few minutes
    python -m benchmarks.hypergradients --device cuda --dtype float32   # full preset (~minutes on a GPU)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import benchmarks.hg_peers as peers
from benchmarks._report import command_line, git_revision, machine_description, write_section
from benchmarks.hg_peers import FunctionalProblem, Hyper

ROOT = Path(__file__).resolve().parent.parent
IMG = ROOT / "docs" / "img"

# ============================================================================================ presets
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "hidden": [16, 128], "batch": 128, "ks": [1, 5, 20], "warmup": 1, "repeats": 3, "budget_s": 0.6,
        "ckpt_hidden": 128, "ckpt_ks": [20, 50], "rw_seeds": 1, "rw_inner_steps": 600, "acc_repeats": 3,
    },
    "full": {
        "hidden": [16, 128, 362, 1024], "batch": 256, "ks": [1, 5, 20], "warmup": 2, "repeats": 7,
        "budget_s": 1.0, "ckpt_hidden": 1024, "ckpt_ks": [20, 50], "rw_seeds": 3, "rw_inner_steps": 1000,
        "acc_repeats": 5,
    },
}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


# ============================================================================================ accuracy
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


def unrolled_fd(fp: FunctionalProblem, k: int, eps: float = 1e-6) -> torch.Tensor:
    """Central finite differences of lambda -> g(theta_k(lambda)) for plain SGD from the current
    theta (an independent hand-written unroll: the own target of one-step and K-step)."""
    lam0 = fp.hyper.lam.detach()

    def value(lam: torch.Tensor) -> float:
        params = tuple(t.clone() for t in fp.theta0())
        for _ in range(k):
            ps = tuple(p.requires_grad_() for p in params)
            grads = torch.autograd.grad(fp.f(ps, lam), ps)
            params = tuple((p - fp.lr * gr).detach() for p, gr in zip(ps, grads))
        return float(fp.g(params, lam))

    out = torch.zeros_like(lam0)
    for i in range(lam0.numel()):
        e = torch.zeros_like(lam0)
        e.view(-1)[i] = eps
        out.view(-1)[i] = (value(lam0 + e) - value(lam0 - e)) / (2 * eps)
    return out


def run_accuracy(device: str, repeats: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("ridge", "logistic"):
        if name == "ridge":
            fp, true = ridge_problem(device)
            ref_note = "closed form theta*(lambda) differentiated by autograd"
            ref_check = None
        else:
            fp, true, ref_check = logistic_problem(device)
            ref_note = "IFT with the dense Hessian at a Newton-converged theta*"
        rows = []

        def add(label: str, family: str, fn: Callable[[], list[torch.Tensor]], own: torch.Tensor | None,
                rows: list[dict[str, Any]] = rows, true: torch.Tensor = true) -> None:
            with peers.quiet_warnings():
                h = fn()[0]
                t = peers.time_call(fn, device, 1, repeats, budget_s=2.0)
            rows.append({"solver": label, "family": family, "err_true": rel_err(h, true),
                         "err_own": None if own is None else rel_err(h, own), "time_s": t["median_s"]})

        fd = {k: unrolled_fd(fp, k) for k in (1, 5, 20)}
        add("one-step", "ours", peers.ours(fp, "one_step", 1), fd[1])
        for mode in ("reverse", "forward"):
            for k in (1, 5, 20):
                add(f"K-step {mode} K={k}", "ours", peers.ours(fp, mode, k), fd[k])
        for solver in ("cg", "neumann", "fixed_point"):
            for it in (5, 10, 20):
                # inner_steps=0: theta is already theta*, so the error is the linear solve's alone.
                add(f"implicit {solver} {it} it.", "ours", peers.ours(fp, solver, 0, iterations=it), true)
        for k in (5, 20):
            add(f"higher K={k}", "higher", peers.higher_unroll(fp, k), fd[k])
            add(f"torchopt unroll K={k}", "torchopt", peers.torchopt_unroll(fp, k), fd[k])
        for it in (10, 20):
            add(f"torchopt custom_root cg {it} it.", "torchopt", peers.torchopt_implicit(fp, 0, "cg", it), true)
            add(f"torchopt custom_root neumann {it} it. (alpha=lr)", "torchopt",
                peers.torchopt_implicit(fp, 0, "neumann", it, alpha=fp.lr), true)
        if peers.betty_available() is None:
            for kind in ("darts", "cg", "neumann"):
                its = (1,) if kind == "darts" else (10, 20)
                for it in its:
                    label = "Betty darts (1 SGD step)" if kind == "darts" else f"Betty {kind} {it} it. (1 SGD step)"
                    # Betty always takes >= 1 real inner step before the hypergradient; from theta* the
                    # step leaves theta (numerically) at theta*.
                    add(label, "Betty", peers.betty_hypergrad(fp, 1, kind, it, device), true)
        out[name] = {"reference": ref_note, "reference_vs_fd": ref_check, "inner_lr": fp.lr,
                     "true_norm": float(true.norm()), "rows": rows}
    return out


# ============================================================================================ speed
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


def speed_methods(betty_ok: bool) -> list[tuple[str, str, str, Callable[[FunctionalProblem, int, str], Any]]]:
    """(group, library, label, builder(fp, K, device)). Groups compute the same mathematical object;
    ratios are taken within a group."""
    it = 10
    m: list[tuple[str, str, str, Callable[[FunctionalProblem, int, str], Any]]] = [
        ("one-step", "ours", "OneStepSolver", lambda fp, k, dev: peers.ours(fp, "one_step", 1)),
        ("one-step", "higher", "higher K=1", lambda fp, k, dev: peers.higher_unroll(fp, 1)),
        ("one-step", "torchopt", "torchopt unroll K=1", lambda fp, k, dev: peers.torchopt_unroll(fp, 1)),
        ("unrolled", "ours", "KStepSolver reverse", lambda fp, k, dev: peers.ours(fp, "reverse", k)),
        ("unrolled", "ours", "KStepSolver forward", lambda fp, k, dev: peers.ours(fp, "forward", k)),
        ("unrolled", "higher", "higher innerloop_ctx", lambda fp, k, dev: peers.higher_unroll(fp, k)),
        ("unrolled", "torchopt", "torchopt unroll", lambda fp, k, dev: peers.torchopt_unroll(fp, k)),
        # Same products as the peers: textbook CG through negative curvature (torchopt and Betty do not stop
        # there), and no residual product for Neumann / fixed point (the peers do not measure one).
        ("implicit CG", "ours", "ImplicitSolver cg", lambda fp, k, dev: peers.ours(
            fp, "cg", k, iterations=it, negative_curvature="continue")),
        ("implicit CG", "torchopt", "torchopt custom_root cg",
         lambda fp, k, dev: peers.torchopt_implicit(fp, k, "cg", it)),
        ("implicit Neumann", "ours", "ImplicitSolver neumann",
         lambda fp, k, dev: peers.ours(fp, "neumann", k, iterations=it, step_size=fp.lr, residual=False)),
        ("implicit Neumann", "ours", "ImplicitSolver fixed_point",
         lambda fp, k, dev: peers.ours(fp, "fixed_point", k, iterations=it, step_size=fp.lr, residual=False)),
        ("implicit Neumann", "torchopt", "torchopt custom_root neumann",
         lambda fp, k, dev: peers.torchopt_implicit(fp, k, "neumann", it, alpha=fp.lr)),
    ]
    betty = [
        ("one-step", "Betty", "Betty darts (K SGD steps + darts)", lambda fp, k, dev: peers.betty_hypergrad(fp, k, "darts", it, dev)),
        ("implicit CG", "Betty", "Betty cg", lambda fp, k, dev: peers.betty_hypergrad(fp, k, "cg", it, dev)),
        ("implicit Neumann", "Betty", "Betty neumann",
         lambda fp, k, dev: peers.betty_hypergrad(fp, k, "neumann", it, dev)),
    ]
    return m + betty if betty_ok else m + [(g, lib, lab, None) for g, lib, lab, _ in betty]  # type: ignore[misc]


def run_speed(device: str, dtype: torch.dtype, p: dict[str, Any], betty_reason: str | None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for hidden in p["hidden"]:
        for k in p["ks"]:
            for group, lib, label, build in speed_methods(betty_reason is None):
                if group == "one-step" and k != 1 and lib != "Betty":
                    continue  # one-step is K-independent; Betty's darts is timed with K real inner steps
                if group == "one-step" and lib == "Betty" and k != 1:
                    continue
                fp = mlp_problem(hidden, p["batch"], device, dtype)
                n_params = sum(q.numel() for q in fp.model.parameters())
                row: dict[str, Any] = {"group": group, "library": lib, "method": label, "hidden": hidden,
                                       "params": n_params, "K": k}
                if build is None:
                    row["error"] = f"Betty unavailable: {betty_reason}"
                    rows.append(row)
                    continue
                try:
                    with peers.quiet_warnings():
                        fn = build(fp, k, device)
                        row.update(peers.time_call(fn, device, p["warmup"], p["repeats"], p["budget_s"]))
                        row.update(peers.peak_memory(fn, device))
                except Exception as err:  # noqa: BLE001 - a failing peer is reported, not fatal
                    row["error"] = f"{type(err).__name__}: {str(err)[:160]}"
                rows.append(row)
                print(f"  speed h={hidden:5d} K={k:2d} {label:36s} "
                      + (f"{row['median_s'] * 1e3:9.2f} ms {row['peak_bytes'] / 2**20:9.2f} MiB"
                         if "median_s" in row else row["error"]), flush=True)
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    for r in rows:  # ratio to the fastest / leanest peer (not ours) of the same group and config
        if "median_s" not in r:
            continue
        same = [q for q in rows if q["group"] == r["group"] and q["hidden"] == r["hidden"] and q["K"] == r["K"]
                and q["library"] != "ours" and "median_s" in q]
        if same:
            # min over repeats: the least noisy estimate on a shared machine
            best_t = min(same, key=lambda q: q["min_s"])
            best_m = min(same, key=lambda q: q["peak_bytes"])
            r["time_ratio"] = r["min_s"] / best_t["min_s"]
            r["best_peer_time"] = best_t["method"]
            r["mem_ratio"] = r["peak_bytes"] / max(best_m["peak_bytes"], 1)
            r["best_peer_mem"] = best_m["method"]
    return rows


# ============================================================================================ checkpointing
def run_checkpoint(device: str, dtype: torch.dtype, p: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for k in p["ckpt_ks"]:
        seg = max(1, round(math.sqrt(k)))
        variants: list[tuple[str, Callable[[FunctionalProblem], Any]]] = [
            ("KStepSolver reverse", lambda fp, k=k: peers.ours(fp, "reverse", k)),
            ("KStepSolver forward (3 directions, one vmapped jvp unroll)", lambda fp, k=k: peers.ours(fp, "forward", k)),
            ("KStepSolver reverse, checkpoint=1", lambda fp, k=k: peers.ours(fp, "reverse", k, checkpoint=1)),
            (f"KStepSolver reverse, checkpoint={seg}",
             lambda fp, k=k, seg=seg: peers.ours(fp, "reverse", k, checkpoint=seg)),
        ]
        for label, build in variants:
            fp = mlp_problem(p["ckpt_hidden"], p["batch"], device, dtype)
            row: dict[str, Any] = {"method": label, "K": k, "hidden": p["ckpt_hidden"],
                                   "params": sum(q.numel() for q in fp.model.parameters())}
            with peers.quiet_warnings():
                fn = build(fp)
                ref = peers.ours(mlp_problem(p["ckpt_hidden"], p["batch"], device, dtype), "reverse", k)()[0]
                row["err_vs_reverse"] = rel_err(fn()[0], ref)
                row.update(peers.time_call(fn, device, p["warmup"], p["repeats"], p["budget_s"]))
                row.update(peers.peak_memory(fn, device))
            rows.append(row)
            print(f"  ckpt K={k} {label:36s} {row['median_s'] * 1e3:9.2f} ms {row['peak_bytes'] / 2**20:9.2f} MiB",
                  flush=True)
    return rows


# ============================================================================================ reweighting
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


def run_reweighting(device: str, dtype: torch.dtype, p: dict[str, Any]) -> dict[str, Any]:
    """Meta-weight style: one logit per training sample, weight = 2 sigmoid(w) (1 at init); inner
    loss = mean(weight * CE) + 1e-4 |theta|^2, outer loss = clean validation CE. Every method gets
    the same number of inner SGD steps (``rw_inner_steps``), full batch."""
    import torchopt
    from sklearn.metrics import roc_auc_score

    import bilevel

    total = p["rw_inner_steps"]
    k = 5
    methods = ["uniform", "clean only (oracle)", "one-step", f"K-step reverse K={k}",
               f"implicit cg K={k}, 10 it., damping 0.1"]
    results: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
    for seed in range(p["rw_seeds"]):
        data = digits_split(seed, device, dtype)
        for method in methods:
            torch.manual_seed(seed)
            model = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10)).to(device=device, dtype=dtype)
            hyper = Hyper(torch.zeros(1000, device=device, dtype=dtype))

            def f(inner: Any, outer: nn.Module, batch: Any) -> torch.Tensor:
                x, y = batch
                ce = F.cross_entropy(inner(x), y, reduction="none")
                reg = sum((q * q).sum() for q in inner.parameters())
                return (2 * torch.sigmoid(outer.lam) * ce).mean() + 1e-4 * reg

            def g(inner: Any, outer: nn.Module, batch: Any) -> torch.Tensor:
                x, y = batch
                return F.cross_entropy(inner(x), y)

            problem = bilevel.Problem(model, hyper, f, g)
            inner_opt = torchopt.sgd(lr=0.3, momentum=0.9)
            outer_opt = torch.optim.Adam(hyper.parameters(), lr=0.05)
            batch, val = (data["Xtr"], data["ytr"]), (data["Xva"], data["yva"])
            t0 = time.perf_counter()
            if method in ("uniform", "clean only (oracle)"):
                # Plain training with the same inner optimiser; the oracle drops the flipped samples.
                keep = data["clean"] if method.startswith("clean") else torch.ones_like(data["clean"])
                xb, yb = data["Xtr"][keep], data["ytr"][keep]
                theta = tuple(q.detach().requires_grad_() for q in model.parameters())
                state = inner_opt.init(theta)
                names = [n for n, _ in model.named_parameters()]
                for _ in range(total):
                    out = torch.func.functional_call(model, dict(zip(names, theta)), (xb,))
                    loss = F.cross_entropy(out, yb) + 1e-4 * sum((q * q).sum() for q in theta)
                    grads = torch.autograd.grad(loss, theta)
                    updates, state = inner_opt.update(grads, state, inplace=False)
                    theta = tuple(torchopt.apply_updates(theta, updates, inplace=False))
                    theta = tuple(q.detach().requires_grad_() for q in theta)
                with torch.no_grad():
                    for q, v in zip(model.parameters(), theta):
                        q.copy_(v)
                auc = float("nan")
            else:
                if method == "one-step":
                    s, outer_steps = bilevel.OneStepSolver(problem, inner_opt, outer_opt), total
                elif method.startswith("K-step"):
                    s, outer_steps = bilevel.KStepSolver(problem, inner_opt, outer_opt, steps=k), total // k
                else:
                    s, outer_steps = bilevel.ImplicitSolver(problem, inner_opt, outer_opt, inner_steps=k,
                                                            linear_solver="cg", iterations=10,
                                                            damping=0.1), total // k
                for _ in range(outer_steps):
                    s.step(batch, val)
                w = torch.sigmoid(hyper.lam.detach()).double().cpu().numpy()
                auc = float(roc_auc_score(data["clean"].cpu().numpy(), w))
            with torch.no_grad():
                acc = float((model(data["Xte"]).argmax(-1) == data["yte"]).double().mean())
            results[method].append({"seed": seed, "test_acc": acc, "auc": auc, "time_s": time.perf_counter() - t0})
            print(f"  reweight seed={seed} {method:40s} acc={acc:.3f} auc={auc:.3f} "
                  f"({time.perf_counter() - t0:.1f}s)", flush=True)
    return {"inner_steps": total, "K": k, "results": results}


# ============================================================================================ report
def fmt_bytes(b: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if b >= scale:
            return f"{b / scale:.2f} {unit}"
    return f"{b:.0f} B"


def fmt_params(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def plot_accuracy(acc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    markers = {"ours": "o", "higher": "s", "torchopt": "^", "Betty": "D"}
    for ax, (name, res) in zip(axes, acc.items()):
        for r in res["rows"]:
            ax.scatter(r["time_s"] * 1e3, max(r["err_true"], 1e-16), marker=markers[r["family"]], s=28)
            ax.annotate(r["solver"].replace(" it.", "").replace("K-step ", ""), (r["time_s"] * 1e3,
                        max(r["err_true"], 1e-16)), fontsize=6, xytext=(3, 2), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("wall time per hypergradient (ms)")
        ax.set_ylabel("relative error vs true bilevel hypergradient")
        ax.set_title(f"{name} (float64; o ours, s higher, ^ torchopt, D Betty)")
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_speed(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if "median_s" in r and r["group"] != "one-step"]
    kmax = max(r["K"] for r in ok)
    hmax = max(r["hidden"] for r in ok)
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    for ax in axes.flat:  # > 10 lines: tab10 would repeat colours
        ax.set_prop_cycle(color=plt.get_cmap("tab20").colors)
    methods = sorted({r["method"] for r in ok})
    for method in methods:
        style = "-" if any(r["library"] == "ours" for r in ok if r["method"] == method) else "--"
        by_n = sorted((r for r in ok if r["method"] == method and r["K"] == kmax), key=lambda r: r["params"])
        by_k = sorted((r for r in ok if r["method"] == method and r["hidden"] == hmax), key=lambda r: r["K"])
        for ax, pts, key, x in ((axes[0, 0], by_n, "median_s", "params"), (axes[0, 1], by_n, "peak_bytes", "params"),
                                (axes[1, 0], by_k, "median_s", "K"), (axes[1, 1], by_k, "peak_bytes", "K")):
            if pts:
                ax.plot([r[x] for r in pts], [r[key] * (1e3 if key == "median_s" else 2**-20) for r in pts],
                        style, marker="o", label=method)
    for ax, title in ((axes[0, 0], f"time vs inner params (K={kmax})"), (axes[0, 1], f"peak memory vs params (K={kmax})"),
                      (axes[1, 0], f"time vs K (h={hmax})"), (axes[1, 1], f"peak memory vs K (h={hmax})")):
        ax.set_title(title)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.set_ylabel("ms" if "time" in title else "MiB")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(res: dict[str, Any]) -> str:
    meta = res["meta"]
    L: list[str] = []
    L.append(f"## Hypergradients ({meta['preset']} preset, {meta['device']}, {meta['dtype']})\n")
    L.append(f"Command: `{meta['command']}` (git {meta['git']}, {meta['date']}, total {meta['wall_s']:.0f} s)  ")
    L.append(f"Machine: {meta['machine']}  ")
    L.append(f"Raw numbers: `docs/data/hypergradients-{report_tag(meta)}.json`. Betty: {meta['betty']}.\n")

    # ---- accuracy
    L.append("### Accuracy (float64)\n")
    L.append("Every solver starts at the exact inner optimum theta*. *err vs true* is the relative error "
             "against the true hypergradient of the bilevel problem, dG/dlambda with G = g(theta*(lambda)). "
             "One-step and K-step differentiate the K-step SGD map from theta* (lr = 1/L), which is a "
             "different function; their *err vs own* is against central finite differences of that "
             "unrolled map (an independent unroll), so it measures implementation error only, while "
             "*err vs true* measures the bias of the approximation (from theta*, K-step SGD unrolling "
             "equals a K-term Neumann series with step 1/L). Implicit rows use inner_steps=0 (theta is "
             "already theta*), so their error is the linear solve's; Neumann / fixed point estimate their "
             "step by 10 power iterations (included in the time). Times are median wall time of one "
             "`hypergradient` call.\n")
    for name, r in res["accuracy"].items():
        extra = "" if r["reference_vs_fd"] is None else (
            f"; reference agrees with finite differences of the re-solved optimum to {r['reference_vs_fd']:.1e}")
        L.append(f"**{name}** (true hypergradient: {r['reference']}{extra}; |true| = {r['true_norm']:.3g})\n")
        L.append("| solver | err vs true | err vs own target | time (ms) |")
        L.append("|---|---:|---:|---:|")
        for row in r["rows"]:
            own = "-" if row["err_own"] is None or row["family"] != "ours" and "K=" not in row["solver"] else (
                f"{row['err_own']:.1e}")
            if row["err_own"] is not None and row["solver"].startswith(("implicit", "torchopt custom", "Betty")):
                own = "(= true)"
            L.append(f"| {row['solver']} | {row['err_true']:.2e} | {own} | {row['time_s'] * 1e3:.2f} |")
        L.append("")
    L.append(f"![accuracy vs time](img/hypergradients_{report_tag(meta)}_accuracy.png)\n")

    # ---- speed
    L.append("### Speed and peak memory per hypergradient\n")
    L.append("MLP 64-h-h-10 (tanh), cross-entropy, batch "
             f"{meta['batch']}, outer variables = log weight decay of the 3 weight matrices, inner "
             "optimiser SGD(lr=0.1) in every library. K inner steps from the same theta; implicit methods "
             "take K plain steps then 10 linear-solver iterations (Neumann / fixed point step = lr, no power "
             "iteration; torchopt CG without early stop). Time: min and median over repeats after warm-up "
             f"(cuda synchronised). Peak memory: {meta['memory_method']}. *x best peer* = ours / fastest "
             "(min time) or leanest non-ours method of the same group at the same size and K (>1 means we are slower).\n")
    speed = res["speed"]
    L.append("| group | method | params | K | time ms, min (median) | x best peer | peak mem | x best peer |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in speed:
        if "median_s" not in r:
            L.append(f"| {r['group']} | {r['method']} | {fmt_params(r['params'])} | {r['K']} | "
                     f"n/a: {r['error']} | | | |")
            continue
        tr = f"{r['time_ratio']:.2f}" if "time_ratio" in r and r["library"] == "ours" else ""
        mr = f"{r['mem_ratio']:.2f}" if "mem_ratio" in r and r["library"] == "ours" else ""
        L.append(f"| {r['group']} | {r['method']} | {fmt_params(r['params'])} | {r['K']} | "
                 f"{r['min_s'] * 1e3:.2f} ({r['median_s'] * 1e3:.2f}) | {tr} | {fmt_bytes(r['peak_bytes'])} | {mr} |")
    L.append(f"\n![speed and memory](img/hypergradients_{report_tag(meta)}_speed.png)\n")

    # ---- checkpointing
    L.append("### Would checkpointing the reverse unroll pay?\n")
    if any(r["method"].startswith("checkpoint every") for r in res["checkpoint"]):
        # Runs from before KStepSolver(checkpoint=) shipped timed a prototype of the same algorithm.
        L.append("The *checkpoint every s steps* rows were measured on a prototype of the same algorithm "
                 "(`hg_peers.checkpointed_unroll`, since removed) before `KStepSolver(checkpoint=)` shipped, and "
                 "have not been re-measured with the shipped solver; rerun the command above to replace them. "
                 "*err* is the relative difference to `KStepSolver(mode='reverse')`.\n")
    else:
        L.append("`KStepSolver(mode='reverse', checkpoint=s)` stores the unroll every s steps and recomputes each "
                 "segment in the backward pass (same RNG and buffers, so the result is the plain unroll's); "
                 "s = 1 and s = round(sqrt(K)). Same MLP, SGD inner steps. *err* is the relative difference to "
                 "`KStepSolver(mode='reverse')`.\n")
    rerun = res["meta"].get("checkpoint_rerun")
    if rerun:  # this table alone was measured again (``--sections checkpoint``), not the rest of the section
        L.append(f"This table alone was re-measured: `{rerun['command']}` (git {rerun['git']}, {rerun['date']}; "
                 f"{rerun['machine']}){'; ' + rerun['note'] if rerun.get('note') else ''}.\n")
    L.append("| K | method | params | time ms, min (median) | peak mem | err |")
    L.append("|---:|---|---:|---:|---:|---:|")
    for r in res["checkpoint"]:
        L.append(f"| {r['K']} | {r['method']} | {fmt_params(r['params'])} | {r['min_s'] * 1e3:.2f} ({r['median_s'] * 1e3:.2f}) | "
                 f"{fmt_bytes(r['peak_bytes'])} | {r['err_vs_reverse']:.1e} |")
    L.append("")

    # ---- reweighting
    rw = res["reweighting"]
    L.append("### Data reweighting (digits, 40% flipped training labels)\n")
    L.append(f"1000 training samples (40% labels flipped to another class), 100 clean validation, 697 test; MLP "
             f"64-64-10; SGD(lr 0.3, momentum 0.9), {rw['inner_steps']} full-batch inner steps for every method; "
             "one learnable logit per training sample (weight 2 sigmoid(w)), Adam(0.05) on the clean validation "
             "loss. AUC: how well the learned weights rank clean above flipped samples (0.5 = chance). "
             f"Mean +- std over {len(next(iter(rw['results'].values())))} seed(s).\n")
    L.append("| method | test accuracy | AUC clean vs flipped | time (s) |")
    L.append("|---|---:|---:|---:|")
    for m, runs in rw["results"].items():
        accs = torch.tensor([r["test_acc"] for r in runs])
        aucs = torch.tensor([r["auc"] for r in runs])
        times = torch.tensor([r["time_s"] for r in runs])
        sd = (lambda t: f" +- {t.std():.3f}" if len(t) > 1 else "")
        auc = "-" if torch.isnan(aucs).all() else f"{aucs.mean():.3f}{sd(aucs)}"
        L.append(f"| {m} | {accs.mean():.3f}{sd(accs)} | {auc} | {times.mean():.1f} |")
    L.append("")
    L.append("### Reading\n")
    L.append(res.get("reading", "(see the final report)"))
    return "\n".join(L)


# ============================================================================================ main
def report_tag(meta: dict[str, Any]) -> str:
    """Device and preset of a run: each (e.g. ``cuda-full``, ``cpu-quick``) has its own report section and
    plots, so a quick CPU re-run never overwrites the GPU table."""
    return f"{meta['device']}-{meta['preset']}"


def write_report(res: dict[str, Any]) -> None:
    tag = report_tag(res["meta"])
    IMG.mkdir(parents=True, exist_ok=True)
    plot_accuracy(res["accuracy"], IMG / f"hypergradients_{tag}_accuracy.png")
    plot_speed(res["speed"], IMG / f"hypergradients_{tag}_speed.png")
    from benchmarks.hg_reading import reading

    res["reading"] = reading(res)
    data = ROOT / "docs" / "data" / f"hypergradients-{tag}.json"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text(json.dumps({k: v for k, v in res.items() if k != "reading"}, indent=1, default=str))
    write_section(f"hypergradients-{tag}", markdown(res))
    print(f"wrote docs/benchmarks.md section 'hypergradients-{tag}'")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--quick", action="store_true", help="small sizes; a few minutes on one CPU core")
    ap.add_argument("--out", default="results/hypergradients")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1 on cpu, all on cuda)")
    ap.add_argument("--sections", default="accuracy,speed,checkpoint,reweighting")
    ap.add_argument("--no-report", action="store_true", help="do not write docs/benchmarks.md or plots")
    ap.add_argument("--from-json", default=None,
                    help="re-render the report from a saved hypergradients.json (e.g. a GPU run) instead of running")
    args = ap.parse_args(argv)
    if args.from_json:
        res = json.loads(Path(args.from_json).read_text())
        write_report(res)
        return res
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch.cuda.is_available() is False")
    if args.threads or args.device == "cpu":
        torch.set_num_threads(args.threads or 1)
    warnings.filterwarnings("ignore", category=FutureWarning)  # torchopt's functorch.vjp deprecation
    dtype = getattr(torch, args.dtype)
    preset = "quick" if args.quick else "full"
    p = PRESETS[preset]
    sections = set(args.sections.split(","))
    betty_reason = peers.betty_available()
    t_start = time.perf_counter()
    res: dict[str, Any] = {"meta": {
        "preset": preset, "device": args.device, "dtype": args.dtype, "command": command_line(),
        "machine": machine_description(args.device), "git": git_revision(), "date": dt.date.today().isoformat(),
        "betty": "betty-ml 0.2.1 (installed with --ignore-requires-python; it declares python<3.11)"
        if betty_reason is None else f"not usable: {betty_reason}", "batch": p["batch"], "out": args.out,
        "memory_method": "torch.cuda.max_memory_allocated minus memory allocated before the call"
        if args.device == "cuda" else "CPU proxy: peak total bytes of tensor storages created during the call "
        "and still alive (counted by a TorchDispatchMode, freed via tensor finalizers); the analogue of "
        "max_memory_allocated, excluding allocator caching and Python objects",
        "preset_params": p,
        # Our implicit rows do the same Hessian-vector products as the peers' (see speed_methods).
        "like_for_like": True}}
    if "accuracy" in sections:
        print("accuracy ...", flush=True)
        res["accuracy"] = run_accuracy(args.device, p["acc_repeats"])
    if "speed" in sections:
        print("speed ...", flush=True)
        res["speed"] = run_speed(args.device, dtype, p, betty_reason)
    if "checkpoint" in sections:
        print("checkpoint ...", flush=True)
        res["checkpoint"] = run_checkpoint(args.device, dtype, p)
    if "reweighting" in sections:
        print("reweighting ...", flush=True)
        res["reweighting"] = run_reweighting(args.device, dtype, p)
    res["meta"]["wall_s"] = time.perf_counter() - t_start
    out = ROOT / args.out if not Path(args.out).is_absolute() else Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "hypergradients.json").write_text(json.dumps(res, indent=1, default=str))
    print(f"wrote {out / 'hypergradients.json'} ({res['meta']['wall_s']:.0f} s)")
    if not args.no_report and sections >= {"accuracy", "speed", "checkpoint", "reweighting"}:
        write_report(res)
    return res


if __name__ == "__main__":
    main()
