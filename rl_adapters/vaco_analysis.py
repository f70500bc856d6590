"""What a trained VACO meta-scorer thinks of its dataset (paper appendices F and G).

:func:`analyze_weights` scores every transition ``(s, a)`` of a dataset with ``w_alpha(s, a, q)``,
``q = (Q'(s, a) - mu_Q) / (sigma_Q + 1e-6)`` where ``Q' = min(Q1', Q2')`` of the target critic and
``mu_Q, sigma_Q`` are taken over the *whole* dataset (training standardised per batch of 256 random
transitions, whose statistics estimate exactly these). With ``weight_norm="batch_mean"`` the weights
are divided by their dataset mean. It then reports

* per trajectory ``e``: the mean weight ``w_bar_e = mean_{t in e} w_t`` against the return ``R_e``, and
  the Pearson coefficient ``r(w_bar, R)`` (paper: 0.954 on hopper-medium-expert);
* per transition: ``w_t`` against ``Q'(s_t, a_t)`` and ``r(w, Q')`` (paper: 0.24);

as ``weights_vs_return.png``, ``weights_vs_q.png`` and ``weights.json`` in ``out_dir``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .algorithms import make_algorithm
from .algorithms.vaco import VACO
from .data import OfflineData, load_dataset

__all__ = ["add_arguments", "analyze_weights", "load_run", "pearson", "return_terciles", "run_from_args",
           "score_dataset", "scorer_untrained"]


def pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson correlation ``cov(x, y) / (std x std y)``; ``None`` when either side is constant or n < 2."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.size < 2 or x.std() == 0 or y.std() == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def return_terciles(ep_ret: np.ndarray) -> np.ndarray:
    """0 / 1 / 2 per trajectory: the lowest, middle and highest third of the trajectories ranked by return (equal
    counts, sizes differing by at most one; ties broken by trajectory order)."""
    order = np.argsort(np.asarray(ep_ret), kind="stable")
    groups = np.empty(len(order), np.int64)
    for g, idx in enumerate(np.array_split(order, 3)):
        groups[idx] = g
    return groups


def scorer_untrained(algo: VACO) -> bool:
    """Whether ``algo`` stopped in (or at the end of) its two-phase schedule's value-only phase 1: its meta-scorer
    has taken no step yet, so it gives every transition the same weight."""
    return algo.value_steps > 0 and algo.step <= algo.value_steps


def load_run(
    run_dir: str | Path, dataset: str | None = None, device: str = "cpu"
) -> tuple[VACO, OfflineData]:
    """Rebuild the VACO of a ``bilevel-rl train`` run directory from its ``config.json`` and ``checkpoint.pt``.

    ``dataset`` overrides the training dataset (e.g. score a different mix with the same scorer).
    """
    run = Path(run_dir)
    cfg_path, ckpt_path = run / "config.json", run / "checkpoint.pt"
    if not cfg_path.exists() or not ckpt_path.exists():
        raise FileNotFoundError(
            f"{run} is not a finished/checkpointed bilevel-rl run: need {cfg_path.name} and {ckpt_path.name}"
        )
    cfg = json.loads(cfg_path.read_text())
    if cfg["algo"] != "vaco":
        raise ValueError(f"{run} trained {cfg['algo']!r}; weight analysis needs a VACO run (--algo vaco)")
    train_data = load_dataset(cfg["dataset"], device)
    # The state normalisation is not in the checkpoint but derived from the training data, so that data is
    # loaded even when another dataset is scored (the scorer must see states normalised as in training).
    algo = make_algorithm(
        "vaco",
        train_data.obs_dim,
        train_data.act_dim,
        train_data.stats,
        device=device,
        seed=cfg.get("seed", 0),
        total_steps=cfg.get("steps", 1),
        **cfg.get("hparams", {}),
    )
    from .errors import CheckpointError
    from .training import read_checkpoint  # weights_only=True: a checkpoint cannot run code
    from .training.checkpoint import first_line

    try:
        algo.load_state_dict(read_checkpoint(ckpt_path, device)["algorithm"])
    except (KeyError, RuntimeError, TypeError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{ckpt_path}: does not fit the VACO of {cfg_path} ({type(e).__name__}: "
                              f"{first_line(e)}); train the run again") from e
    data = train_data if dataset is None else load_dataset(dataset, device)
    return algo, data


@torch.no_grad()
def score_dataset(algo: VACO, data: OfflineData, chunk: int = 65_536) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-transition meta-scorer weights and ``min Q'`` for all of ``data`` (CPU float64 tensors, length N)."""
    n = len(data)
    qs = []
    for start in range(0, n, chunk):
        idx = torch.arange(start, min(n, start + chunk), device=data.device)
        obs = algo.normalize(data.observations[idx].to(algo.device))
        qs.append(algo.critic_target.min_q(obs, data.actions[idx].to(algo.device)).double())
    q = torch.cat(qs)
    q_mean, q_std = float(q.mean()), float(q.std(unbiased=False))
    ws = []
    for start in range(0, n, chunk):
        idx = torch.arange(start, min(n, start + chunk), device=data.device)
        obs = algo.normalize(data.observations[idx].to(algo.device))
        w, _ = algo.score(obs, data.actions[idx].to(algo.device), q_mean, q_std)
        ws.append(w.double())
    w = torch.cat(ws)
    if algo.config.weight_norm == "batch_mean":
        w = w / w.mean()
    return w.cpu(), q.cpu()


def _plots(
    out: Path,
    ep_ret: np.ndarray,
    ep_w: np.ndarray,
    w: np.ndarray,
    q: np.ndarray,
    r_ret: float | None,
    r_q: float | None,
    title: str,
    scatter_points: int,
    seed: int,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fmt = lambda r: "n/a" if r is None else f"{r:.3f}"
    fig, ax = plt.subplots(figsize=(5.5, 4))
    groups = return_terciles(ep_ret)
    for g, (name, colour) in enumerate((("lowest", "tab:blue"), ("middle", "tab:orange"), ("highest", "tab:red"))):
        m = groups == g
        if m.any():
            ax.scatter(ep_w[m], ep_ret[m], s=8, alpha=0.6, color=colour,
                       label=f"{name} third of trajectories by return ({m.sum()})")
    ax.set_xlabel("mean meta-weight of the trajectory")
    ax.set_ylabel("trajectory return")
    ax.set_title(f"{title}\nPearson r = {fmt(r_ret)} over {len(ep_ret)} trajectories", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "weights_vs_return.png", dpi=110)
    plt.close(fig)

    rng = np.random.default_rng(seed)
    pick = rng.choice(len(w), size=min(scatter_points, len(w)), replace=False)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.scatter(q[pick], w[pick], s=2, alpha=0.3)
    ax.set_xlabel("min Q'(s, a)")
    ax.set_ylabel("meta-weight w(s, a, Q)")
    ax.set_title(f"{title}\nPearson r = {fmt(r_q)} over {len(w)} transitions ({len(pick)} drawn)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "weights_vs_q.png", dpi=110)
    plt.close(fig)


def analyze_weights(
    run_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    *,
    algo: VACO | None = None,
    data: OfflineData | None = None,
    dataset: str | None = None,
    device: str = "cpu",
    plot: bool = True,
    scatter_points: int = 20_000,
) -> dict[str, Any]:
    """Score a dataset with a trained meta-scorer; write plots and ``weights.json``; return the numbers.

    Either ``run_dir`` (a VACO run of ``bilevel-rl train``; ``dataset`` optionally overrides its data) or
    ``algo`` and ``data`` (in memory). ``out_dir`` defaults to ``run_dir/weights``; with neither ``run_dir``
    nor ``out_dir`` nothing is written. Keys of the result: ``pearson_traj_weight_return``,
    ``pearson_weight_q``, ``top10_weight_lift`` (mean weight in the top-10%-return trajectories over the mean
    weight; ``top10_transition_share`` is their share of transitions), ``ess_fraction`` (over the dataset), ``weight`` (mean/std/quantiles over transitions), ``return_thirds``
    (mean trajectory weight, count and return range of the low/middle/top third of the trajectories ranked by
    return: terciles of equal counts), ``scorer_trained`` (False for a run stopped in its value-only phase 1,
    whose scorer has not been trained: every weight is equal) with ``warning`` (a sentence saying so, else
    None), ``episodes`` (per trajectory return, length and mean weight).
    """
    if run_dir is not None:
        if algo is not None or data is not None:
            raise ValueError("pass either run_dir or algo+data, not both")
        algo, data = load_run(run_dir, dataset=dataset, device=device)
        out_dir = Path(run_dir) / "weights" if out_dir is None else out_dir
    elif algo is None or data is None:
        raise ValueError(
            "analyze_weights needs run_dir, or both algo (a trained VACO) and data (an OfflineData)"
        )
    if not isinstance(algo, VACO):
        raise TypeError(f"analyze_weights needs a VACO (it has the meta-scorer), got {type(algo).__name__}")
    w, q = score_dataset(algo, data)
    ep_ids = data.episode_ids.cpu().long()
    n_ep = data.num_episodes
    counts = torch.bincount(ep_ids, minlength=n_ep).double()
    ep_w = (torch.bincount(ep_ids, weights=w, minlength=n_ep) / counts.clamp_min(1)).numpy()
    ep_ret = data.episode_returns.cpu().double().numpy()
    w_np, q_np = w.numpy(), q.numpy()
    r_ret, r_q = pearson(ep_w, ep_ret), pearson(w_np, q_np)
    groups = return_terciles(ep_ret)
    thirds = {}
    for g, name in enumerate(("low", "middle", "top")):
        m = groups == g
        thirds[name] = {
            "episodes": int(m.sum()),
            "mean_weight": float(ep_w[m].mean()) if m.any() else None,
            "return_range": [float(ep_ret[m].min()), float(ep_ret[m].max())] if m.any() else None,
        }
    untrained = scorer_untrained(algo)
    # Lift: the mean weight of transitions in the best 10% of trajectories (the same selection as %BC-10,
    # OfflineData.top_trajectories) over the mean weight of all transitions; 1.0 is no preference and
    # 1 / top10_transition_share is %BC-10's own (all weight on those trajectories).
    top_rows = data.top_trajectories(0.1).episode_ids.cpu().long()
    top_mask = torch.zeros(n_ep, dtype=torch.bool)
    top_mask[top_rows.unique()] = True
    in_top = top_mask[ep_ids].numpy()
    lift = float(w_np[in_top].mean() / w_np.mean()) if w_np.mean() > 0 else None
    ess = float(w_np.sum() ** 2 / (len(w_np) * (w_np**2).sum())) if (w_np**2).sum() > 0 else None
    quant = np.quantile(w_np, [0.01, 0.1, 0.5, 0.9, 0.99])
    result: dict[str, Any] = {
        "dataset": data.name,
        "transitions": len(data),
        "trajectories": n_ep,
        "pearson_traj_weight_return": r_ret,
        "pearson_weight_q": r_q,
        "weight": {
            "mean": float(w_np.mean()),
            "std": float(w_np.std()),
            **{f"q{p:02d}": float(v) for p, v in zip((1, 10, 50, 90, 99), quant)},
        },
        "top10_weight_lift": lift,
        "top10_transition_share": float(in_top.mean()),
        "ess_fraction": ess,
        "weight_norm": algo.config.weight_norm,
        "return_thirds": thirds,
        "scorer_trained": not untrained,
        "warning": None if not untrained else (
            f"the run stopped at step {algo.step}, in its value-only phase 1 (steps 1-{algo.value_steps}), so the "
            f"meta-scorer has not been trained yet: every weight is {w_np[0]:.3g} and no correlation is defined; "
            f"train past step {algo.value_steps} first (bilevel-rl train --resume RUN_DIR)"),
        "episodes": {
            "return": ep_ret.tolist(),
            "length": counts.long().tolist(),
            "mean_weight": ep_w.tolist(),
        },
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "weights.json").write_text(json.dumps(result, indent=1))
        if plot:
            _plots(
                out,
                ep_ret,
                ep_w,
                w_np,
                q_np,
                r_ret,
                r_q,
                f"VACO meta-weights on {data.name}",
                scatter_points,
                algo.seed,
            )
    return result


# ---------------------------------------------------------------------- CLI (bilevel-rl analyze-weights)
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a VACO run directory written by `bilevel-rl train --algo vaco`")
    p.add_argument("--out", default=None, help="output folder (default RUN_DIR/weights)")
    p.add_argument("--dataset", default=None, help="score this dataset instead of the one trained on")
    p.add_argument("--device", default="cpu", help="cpu | cuda (default cpu)")
    p.add_argument("--no-plot", dest="plot", action="store_false", help="write weights.json only")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")


def check_args(args: argparse.Namespace) -> Path:
    """Refuse what cannot work before anything loads (one line naming the argument and a fix, as
    ``bilevel-rl train`` does); the output folder.  :class:`~rl_adapters.errors.UsageError` for a wrong
    argument (exit 2), :class:`~rl_adapters.errors.CheckpointError` / ``DatasetError`` for unusable files (1)."""
    from .data import DatasetError, DatasetNotFoundError, check_dataset_available
    from .errors import CheckpointError, UsageError
    from .training.config import check_out_dir, free_sibling, resolve_device

    run = Path(args.run_dir)
    fix = "pass the directory a `bilevel-rl train --algo vaco` run wrote"
    if not run.is_dir():
        raise UsageError(f"RUN_DIR {args.run_dir}: no such directory; {fix}")
    cfg_path = run / "config.json"
    if not cfg_path.is_file():
        raise UsageError(f"RUN_DIR {args.run_dir}: has no config.json, so it is not a bilevel-rl run directory; {fix}")
    try:
        cfg = json.loads(cfg_path.read_text())
        algo, dataset = cfg["algo"], cfg["dataset"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{cfg_path}: not a readable run configuration ({type(e).__name__}: {e}); "
                              f"{fix}") from None
    if algo != "vaco":
        raise UsageError(f"RUN_DIR {args.run_dir}: a {algo} run, but only VACO has a meta-scorer to analyze; "
                         f"{fix}")
    if not (run / "checkpoint.pt").is_file():
        raise UsageError(f"RUN_DIR {args.run_dir}: has no checkpoint.pt, so there is no trained scorer to read (the "
                         f"run stopped before its first checkpoint); train it again, or {fix}")
    args.device = str(resolve_device(args.device))  # "auto" -> cuda or cpu
    if args.dataset is not None:
        check_dataset_available(args.dataset)  # names --dataset: exit 2
    try:
        check_dataset_available(dataset)
    except DatasetNotFoundError as e:
        raise DatasetError(f"RUN_DIR {args.run_dir}: its training dataset {dataset} is needed (the scorer normalises "
                           f"states with its statistics) but not found; set MINARI_DATASETS_PATH to the folder "
                           f"holding it ({' '.join(str(e).split())})") from None
    out = Path(args.out) if args.out else run / "weights"
    if out.exists() and not out.is_dir():
        default = run / "weights"
        other = default if not default.is_file() else free_sibling(str(default))
        raise UsageError(f"--out {out}: is an existing file, not a directory; pass a directory, e.g. --out {other}")
    check_out_dir(str(out))
    return out


def run_from_args(args: argparse.Namespace) -> int:
    from .errors import UsageError

    out = check_args(args)
    try:
        res = analyze_weights(args.run_dir, out, dataset=args.dataset, device=args.device, plot=args.plot)
    except OSError as e:
        where = Path(e.filename).absolute() if e.filename is not None else None
        if where is None or not (where == out.absolute() or where in out.absolute().parents
                                 or out.absolute() in where.parents):
            raise  # not about writing --out
        raise UsageError(f"--out {out}: cannot be written ({type(e).__name__}: {e.strerror or e}); pass a "
                         f"directory you can write to, e.g. --out {Path(args.run_dir) / 'weights'}") from e
    summary = {
        k: res[k]
        for k in (
            "dataset",
            "transitions",
            "trajectories",
            "pearson_traj_weight_return",
            "pearson_weight_q",
            "weight",
        )
    }
    summary["scorer_trained"] = res["scorer_trained"]
    summary["out"] = str(out)
    if res["warning"]:
        import shlex
        import sys

        warning = res["warning"].replace("RUN_DIR", shlex.quote(str(args.run_dir)))
        print(f"bilevel-rl analyze-weights: warning: {warning}", file=sys.stderr)
    print(json.dumps(summary))
    return 0
