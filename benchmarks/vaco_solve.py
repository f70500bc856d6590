"""Does VACO's implicit linear solve converge, and what does a converged one ask of the scorer? (docs/vaco.md, #25)

VACO's implicit solver (``--solver implicit``) applies ``(H + damping I)^-1`` to ``grad J_pi`` by a few conjugate
gradient (CG) iterations, H the Hessian of the weighted BC loss ``mean_b w_b ||pi_phi(s_b) - a_b||^2`` in the
policy's parameters. Its equal-preset cells report a CG residual of 2-4 (defaults: 5 iterations, damping 0.1):
the hypergradient that moved their weights is not the implicit-function one. This study takes a trained run's
policy, critic and scorer (its ``checkpoint.pt``) and, on a few of its batches, in float64:

* the extreme eigenvalues of H (Lanczos with full reorthogonalisation): is ``H + damping I`` positive definite?
* for each ``damping`` x ``iterations``: CG as the solver runs it (``bilevel``'s CG, which stops at negative
  curvature), its true relative residual ``||(H + d I) v - g|| / ||g||``, and the preference ``<v, grad l_b>``
  it gives each transition (``d J_pi / d w_b = -(1/B) <v, grad l_b>``: positive asks for more weight);
* the same for a reference solve at each damping: CG run through negative curvature, many iterations.

The preference statistics are those of ``benchmarks/vaco_signal.py``: the standardised difference between
%BC-10's trajectories (the 10% best by return) and the rest, and the Pearson r of a trajectory's mean
preference with its return.

    python -m benchmarks.vaco_solve RUN [RUN ...] --batches 4 --report

``--report`` writes docs/data/vaco_solve.json (default: results/vaco_solve/vaco_solve.json).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.func import functional_call, grad, jvp, vmap

from bilevel.solvers.linear import conjugate_gradient
from rl_adapters.algorithms.vaco.scorer import standardise
from rl_adapters.vaco_analysis import load_run, pearson

ROOT = Path(__file__).resolve().parent.parent


def lanczos_extremes(matvec: Any, n: int, steps: int, dtype: torch.dtype, seed: int = 0) -> tuple[float, float]:
    """Smallest and largest Ritz values of a symmetric operator after ``steps`` Lanczos steps (full
    reorthogonalisation: ``steps`` vectors of length ``n`` are kept)."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(n, generator=gen, dtype=dtype)
    q = q / q.norm()
    basis = [q]
    alphas: list[float] = []
    betas: list[float] = []
    for j in range(steps):
        w = matvec(basis[-1])
        a = float(w @ basis[-1])
        alphas.append(a)
        for b in basis:  # full reorthogonalisation: cheap at these sizes, and keeps the Ritz values honest
            w = w - (w @ b) * b
        beta = float(w.norm())
        if beta < 1e-12 or j == steps - 1:
            break
        betas.append(beta)
        basis.append(w / beta)
    t = np.diag(alphas) + np.diag(betas[: len(alphas) - 1], 1) + np.diag(betas[: len(alphas) - 1], -1)
    ev = np.linalg.eigvalsh(t)
    return float(ev[0]), float(ev[-1])


def linear_system(actor: Any, critic: Any, scorer: Any, obs: torch.Tensor, act: torch.Tensor) -> dict[str, Any]:
    """The implicit solve of one batch, flattened: ``hvp(x) = H x`` (H the Hessian of the weighted BC loss in
    the policy's parameters), ``g = grad J_pi`` (sigma = 0, Q-normalised as VACO's ``outer_q_norm``) and ``J``,
    whose row b is ``grad l_b``, so that ``J v`` is the preference of every transition."""
    params = {k: v.detach() for k, v in actor.named_parameters()}
    names = list(params)
    shapes = [params[k].shape for k in names]
    sizes = [params[k].numel() for k in names]

    def unflat(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: t.reshape(s) for k, t, s in zip(names, torch.split(x, sizes), shapes)}

    def flat(d: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([d[k].reshape(-1) for k in names])

    with torch.no_grad():
        q_sa = critic.min_q(obs, act)
        w = scorer.normalise(scorer.raw(obs, act, standardise(q_sa)))

    def per_bc(p: dict[str, torch.Tensor], s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return (functional_call(actor, p, (s.unsqueeze(0),)).squeeze(0) - a).pow(2).sum()

    def inner(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return (w * vmap(per_bc, in_dims=(None, 0, 0))(p, obs, act)).mean()

    def outer(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return -critic.min_q(obs, functional_call(actor, p, (obs,))).mean() / q_sa.abs().mean()

    g_inner = grad(inner)

    def hvp(x: torch.Tensor) -> torch.Tensor:
        return flat(jvp(g_inner, (params,), (unflat(x),))[1])

    g_bc = vmap(grad(per_bc), in_dims=(None, 0, 0))(params, obs, act)
    j = torch.cat([g_bc[k].reshape(obs.shape[0], -1) for k in names], 1)
    return {"hvp": hvp, "g": flat(grad(outer)(params)), "j": j, "n": sum(sizes), "unflat": unflat}


def study(run_dir: Path, batches: int, dampings: list[float], iterations: list[int], lanczos: int,
          reference_iterations: int, seed: int = 0) -> dict[str, Any]:
    algo, data = load_run(run_dir)
    actor = algo.actor.double()
    critic = algo.critic_target.double()
    scorer = algo.scorer.double()
    gen = data.make_generator(seed)
    top = torch.zeros(data.num_episodes, dtype=torch.bool)
    top[data.top_trajectories(0.1).episode_ids.unique()] = True
    # per damping: the solver's CG at each budget, then a reference (CG through negative curvature, long)
    budgets = [k for k in iterations if k != reference_iterations] + [reference_iterations]
    settings = [(d, k, k == reference_iterations) for d in dampings for k in budgets]
    prefs: dict[str, list[np.ndarray]] = {str(s): [] for s in settings}
    rows: dict[str, dict[str, list[float]]] = {str(s): {"cg_residual": [], "true_residual": [], "done": [],
                                                         "cos_to_reference": [], "norm_ratio": []} for s in settings}
    eig: list[tuple[float, float]] = []
    ret: list[np.ndarray] = []
    ep: list[np.ndarray] = []
    is_top: list[np.ndarray] = []
    for _ in range(batches):
        b = data.sample(algo.config.batch_size, gen)
        system = linear_system(actor, critic, scorer, b.obs.double(), b.actions.double())
        hvp, g, j, n = system["hvp"], system["g"], system["j"], system["n"]
        eig.append(lanczos_extremes(hvp, n, lanczos, torch.float64))
        sols: dict[str, torch.Tensor] = {}
        for s in settings:
            damp, k, reference = s

            def mv(v: tuple[torch.Tensor, ...], damp: float = damp, hvp: Any = hvp) -> tuple[torch.Tensor, ...]:
                return (hvp(v[0]) + damp * v[0],)

            res = conjugate_gradient(mv, (g,), k, tol=1e-10, stop_on_negative_curvature=not reference)
            v = res.solution[0]
            sols[str(s)] = v
            r = rows[str(s)]
            r["cg_residual"].append(res.residual)
            r["true_residual"].append(float((hvp(v) + damp * v - g).norm() / g.norm()))
            r["done"].append(res.iterations)
            prefs[str(s)].append((j @ v).numpy())
        for s in settings:
            v = sols[str(s)]
            ref = sols[str((s[0], reference_iterations, True))]
            rows[str(s)]["cos_to_reference"].append(float(v @ ref / (v.norm() * ref.norm() + 1e-300)))
            rows[str(s)]["norm_ratio"].append(float(v.norm() / (ref.norm() + 1e-300)))
        ret.append(b.returns.numpy())
        ep.append(b.episode_ids.numpy())
        is_top.append(top[b.episode_ids.cpu()].numpy())
    rets, eps_, tops = np.concatenate(ret), np.concatenate(ep).astype(int), np.concatenate(is_top).astype(bool)
    out = []
    for s in settings:
        p = np.concatenate(prefs[str(s)])
        uniq = np.unique(eps_)
        ep_p = np.array([p[eps_ == e].mean() for e in uniq])
        ep_r = np.array([rets[eps_ == e][0] for e in uniq])
        r = rows[str(s)]
        out.append({
            "damping": s[0], "iterations": s[1], "reference": s[2],
            "cg_residual_median": float(np.median(r["cg_residual"])),
            "true_residual_median": float(np.median(r["true_residual"])),
            "iterations_done_median": float(np.median(r["done"])),
            "cos_to_reference_median": float(np.median(r["cos_to_reference"])),
            "norm_ratio_to_reference_median": float(np.median(r["norm_ratio"])),
            "top10_standardised_difference": float((p[tops].mean() - p[~tops].mean()) / p.std()),
            "pearson_trajectory_preference_return": pearson(ep_p, ep_r),
        })
    lo = [e[0] for e in eig]
    hi = [e[1] for e in eig]
    return {"run": str(run_dir), "dataset": data.name, "solver_of_run": algo.config.solver,
            "params": n, "batch_size": algo.config.batch_size, "batches": batches,
            "hessian_min_eig": [float(min(lo)), float(np.median(lo))], "hessian_max_eig": float(np.median(hi)),
            "settings": out}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="VACO run folders with a checkpoint.pt")
    p.add_argument("--batches", type=int, default=4, help="batches per run (of the run's batch size)")
    p.add_argument("--damping", default="0.1,1,10", help="comma-separated dampings")
    p.add_argument("--iterations", default="5,20,100", help="comma-separated CG iteration budgets")
    p.add_argument("--lanczos", type=int, default=80, help="Lanczos steps for H's extreme eigenvalues")
    p.add_argument("--reference-iterations", type=int, default=400,
                   help="CG iterations of each damping's reference solve (through negative curvature)")
    p.add_argument("--report", action="store_true", help="write docs/data/vaco_solve.json")
    p.add_argument("--json", default=None, help="where the summary goes (overrides --report)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    dampings = [float(x) for x in args.damping.split(",")]
    iterations = [int(x) for x in args.iterations.split(",")]
    path = Path(args.json or (ROOT / "docs" / "data" / "vaco_solve.json" if args.report
                              else ROOT / "results" / "vaco_solve" / "vaco_solve.json"))
    results = []
    for run in args.runs:
        t0 = time.time()
        r = study(Path(run), args.batches, dampings, iterations, args.lanczos, args.reference_iterations)
        r["seconds"] = round(time.time() - t0, 1)
        results.append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "settings"}))
        for s in r["settings"]:
            print("  ", json.dumps(s))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"command": "python -m benchmarks.vaco_solve " + " ".join(
        sys.argv[1:] if argv is None else argv), "results": results}, indent=1) + "\n")
    print(f"[vaco_solve] wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
