"""Which transitions VACO's outer loss asks the meta-scorer to up-weight (docs/vaco.md "What the outer loss prefers").

The scorer can learn only what the hypergradient tells it. For one inner step ``phi' = phi - eta/B sum_b w_b
grad l_b`` (the paper's Eq. 8), ``d J_pi / d w_b = -eta/B <grad J_pi(phi), grad l_b(phi)>``: the outer loss wants
more weight on transition ``b`` exactly when its behaviour-cloning gradient points along the policy-improvement
direction ``-grad J_pi``. This study computes that *preference* ``p_b = <-grad J_pi, -grad l_b>`` for every
transition of many batches at a trained VACO run's policy and critic, and asks whether it separates the
trajectories %BC-10 keeps (the best 10% by return) from the others, and how it relates to the IQL advantage
``min Q'(s, a) - V(s)``. No scorer is involved: if the preference does not separate them, no scorer, learning
rate or guard can make VACO's weights select those trajectories.

``--solver implicit`` asks the same of the implicit solver. There ``phi*(w)`` solves the inner problem, so
``d phi* / d w_b = -(1/B) H^-1 grad l_b`` and ``d J_pi / d w_b = -(1/B) <H^-1 grad J_pi, grad l_b>``, H the Hessian
of the (uniformly weighted) BC loss on the batch: the preference is ``<v, grad l_b>`` with ``v`` from the linear
solve VACO's implicit solver runs (``(H + damping I) v = grad J_pi`` by CG, the run's ``iterations`` and
``damping``, or the config defaults for a run of another solver).

    python -m benchmarks.vaco_signal results/vaco_tune/default_hopper_me_s0 [RUN ...] --batches 100 --report

The summary goes to results/vaco_signal/; ``--report`` writes it to docs/data/vaco_signal.json and the figure to
docs/img/vaco_signal.png, which docs/vaco.md cites.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.func import functional_call, grad, vmap

import bilevel
from rl_adapters.algorithms.vaco.config import VACOConfig
from rl_adapters.vaco_analysis import load_run, pearson

ROOT = Path(__file__).resolve().parent.parent


def preferences(run_dir: Path, batches: int, seed: int = 0, solver: str = "one_step") -> dict[str, Any]:
    """Per-transition preference (of ``solver``'s hypergradient), advantage and trajectory membership over
    ``batches`` batches of the run's size."""
    algo, data = load_run(run_dir)
    default = VACOConfig()
    iterations = algo.config.iterations if algo.config.solver == "implicit" else default.iterations
    damping = algo.config.damping if algo.config.solver == "implicit" else default.damping
    actor, critic = algo.actor, algo.critic_target
    params = {k: v.detach() for k, v in actor.named_parameters()}
    gen = data.make_generator(seed)
    top = torch.zeros(data.num_episodes, dtype=torch.bool)
    top[data.top_trajectories(0.1).episode_ids.unique()] = True
    out: dict[str, list[float]] = {"p": [], "adv": [], "q": [], "ret": [], "top": [], "ep": [], "bc": []}

    def bc_loss(p: dict[str, torch.Tensor], s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return (functional_call(actor, p, (s.unsqueeze(0),)).squeeze(0) - a).pow(2).sum()

    per_sample = vmap(grad(bc_loss), in_dims=(None, 0, 0))
    for _ in range(batches):
        b = data.sample(algo.config.batch_size, gen)
        with torch.no_grad():
            q_sa = critic.min_q(b.obs, b.actions)
            adv = q_sa - algo.value(b.obs).reshape(-1)
            bc = (actor(b.obs) - b.actions).pow(2).sum(-1)

        def outer(p: dict[str, torch.Tensor], obs: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
            # J_pi at sigma = 0, divided by mean |Q'(s, a)| as VACO's default (outer_q_norm) does
            return -critic.min_q(obs, functional_call(actor, p, (obs,))).mean() / scale

        g_out = grad(outer)(params, b.obs, q_sa.abs().mean())
        if solver == "implicit":
            g_out = implicit_direction(bc_loss, params, b.obs, b.actions, g_out, iterations, damping)
        g_bc = per_sample(params, b.obs, b.actions)
        pref = sum((g_bc[k] * g_out[k].unsqueeze(0)).flatten(1).sum(1) for k in params)  # <grad J_pi, grad l_b>
        out["p"] += pref.tolist()
        out["adv"] += adv.tolist()
        out["q"] += q_sa.tolist()
        out["ret"] += b.returns.tolist()
        out["top"] += top[b.episode_ids.cpu()].float().tolist()
        out["ep"] += b.episode_ids.tolist()
        out["bc"] += bc.tolist()
    return {k: np.asarray(v) for k, v in out.items()} | {"dataset": data.name, "run": str(run_dir), "solver": solver}


def implicit_direction(bc_loss: Any, params: dict[str, torch.Tensor], obs: torch.Tensor, actions: torch.Tensor,
                       g: dict[str, torch.Tensor], iterations: int, damping: float) -> dict[str, torch.Tensor]:
    """``v`` with ``(H + damping I) v = g`` by ``iterations`` CG products, H the Hessian of the mean BC loss."""
    names = list(params)

    def mean_bc(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return vmap(bc_loss, in_dims=(None, 0, 0))(p, obs, actions).mean()

    def matvec(v: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        _, hv = torch.func.jvp(grad(mean_bc), (params,), (dict(zip(names, v)),))
        return tuple(hv[n] + damping * x for n, x in zip(names, v))

    res = bilevel.linear.conjugate_gradient(matvec, tuple(g[n] for n in names), iterations)
    return dict(zip(names, res.solution))


def summarise(r: dict[str, Any]) -> dict[str, Any]:
    p, top = r["p"], r["top"].astype(bool)
    sd = float(p.std())
    ep = r["ep"].astype(int)
    eps = np.unique(ep)
    ep_p = np.array([p[ep == e].mean() for e in eps])
    ep_ret = np.array([r["ret"][ep == e][0] for e in eps])
    return {
        "dataset": r["dataset"],
        "run": r["run"],
        "solver": r["solver"],
        "transitions": int(p.size),
        "preference_mean": float(p.mean()),
        "preference_std": sd,
        # (mean preference on %BC-10's trajectories - elsewhere) / std: 0 = no preference for them
        "top10_standardised_difference": float((p[top].mean() - p[~top].mean()) / sd) if top.any() else None,
        "top10_share_of_samples": float(top.mean()),
        "top10_positive_fraction": float((p[top] > 0).mean()) if top.any() else None,
        "other_positive_fraction": float((p[~top] > 0).mean()),
        "pearson_preference_advantage": pearson(p, r["adv"]),
        "pearson_preference_return": pearson(p, r["ret"]),
        "pearson_trajectory_preference_return": pearson(ep_p, ep_ret),
        "pearson_advantage_return": pearson(r["adv"], r["ret"]),
        "advantage_top10_minus_other": float(r["adv"][top].mean() - r["adv"][~top].mean()) if top.any() else None,
        "bc_error_top10": float(r["bc"][top].mean()) if top.any() else None,
        "bc_error_other": float(r["bc"][~top].mean()),
        "abs_preference_top10": float(np.abs(p[top]).mean()) if top.any() else None,
        "abs_preference_other": float(np.abs(p[~top]).mean()),
        "q_top10_minus_other_in_std": float((r["q"][top].mean() - r["q"][~top].mean()) / r["q"].std()) if top.any() else None,
    }


def figure(results: list[dict[str, Any]], png: Path) -> None:
    from benchmarks._report import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(2, len(results), figsize=(4.2 * len(results), 6.4), squeeze=False)
    for j, r in enumerate(results):
        top = r["top"].astype(bool)
        lim = np.quantile(np.abs(r["p"]), 0.99)
        bins = np.linspace(-lim, lim, 60)
        ax = axes[0][j]
        ax.hist(r["p"][~top], bins=bins, density=True, alpha=0.5, label="other trajectories")
        ax.hist(r["p"][top], bins=bins, density=True, alpha=0.5, label="%BC-10's trajectories")
        ax.set_title(r["dataset"].replace("suite/", ""), fontsize=9)
        ax.set_xlabel("preference <grad J_pi, grad l_b> (> 0: wants more weight)" if r["solver"] == "one_step" else
                      "preference <H^-1 grad J_pi, grad l_b> (> 0: wants more weight)", fontsize=7)
        ax.legend(fontsize=6)
        ax = axes[1][j]
        ax.scatter(r["adv"], r["p"], s=1, alpha=0.2, c=np.where(top, "C1", "C0"))
        ax.set_ylim(-lim, lim)
        ax.set_xlabel("IQL advantage min Q'(s,a) - V(s)", fontsize=7)
        ax.set_ylabel("preference", fontsize=7)
    fig.tight_layout()
    save_figure(fig, png)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="VACO run folders (bilevel-rl train --algo vaco --out ...)")
    p.add_argument("--batches", type=int, default=100, help="batches per run (of the run's batch size)")
    p.add_argument("--solver", default="one_step", choices=["one_step", "implicit"],
                   help="whose hypergradient: one inner step's, or the implicit solver's (H^-1 applied)")
    p.add_argument("--report", action="store_true",
                   help="write docs/data/vaco_signal.json and docs/img/vaco_signal.png (default: results/vaco_signal/)")
    p.add_argument("--json", default=None, help="where the summary goes (overrides the default and --report)")
    p.add_argument("--png", default=None, help="where the figure goes (overrides the default and --report)")
    args = p.parse_args(argv)
    out = (ROOT / "docs") if args.report else (ROOT / "results" / "vaco_signal")
    name = "vaco_signal" + ("" if args.solver == "one_step" else f"_{args.solver}")
    args.json = args.json or str(out / "data" / f"{name}.json" if args.report else out / f"{name}.json")
    args.png = args.png or str(out / "img" / f"{name}.png" if args.report else out / f"{name}.png")
    torch.set_num_threads(1)
    results = [preferences(Path(r), args.batches, solver=args.solver) for r in args.runs]
    rows = [summarise(r) for r in results]
    for row in rows:
        print(json.dumps(row))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"command": "python -m benchmarks.vaco_signal " + " ".join(
        sys.argv[1:] if argv is None else argv), "results": rows}, indent=1) + "\n")
    figure(results, Path(args.png))
    print(f"[vaco_signal] wrote {args.json} and {args.png}" + ("" if args.report else " (--report: into docs/)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
