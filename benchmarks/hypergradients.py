"""Hypergradient benchmark: accuracy, speed and memory against peers, checkpointing, data reweighting.

Sections (all in one run; the results go to ``--out`` as JSON, and with ``--report`` to the
``hypergradients-<device>-<preset>`` section of ``docs/benchmarks.md``, its plots and ``docs/data/``):

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

The problems are in ``hg_problems.py``, the peers' wrappers in ``hg_peers.py``, the section in ``hg_report.py``
(with the reading people wrote for the run, benchmarks/notes/hypergradients-<device>-<preset>.md).

Usage::

    python -m benchmarks.hypergradients --quick --report                        # CPU, a few minutes
    python -m benchmarks.hypergradients --device cuda --dtype float32 --report  # full preset (~minutes on a GPU)
    python -m benchmarks.hypergradients --report-only --from-json RUN.json --report  # re-render a saved run
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
from benchmarks._report import command_line, git_revision, machine_description
from benchmarks.hg_peers import FunctionalProblem, Hyper
from benchmarks.hg_problems import digits_split, logistic_problem, mlp_problem, rel_err, ridge_problem
from benchmarks.hg_report import markdown, write_report

ROOT = Path(__file__).resolve().parent.parent

# ============================================================================================ presets
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "hidden": [16, 128], "batch": 128, "ks": [1, 5, 20], "warmup": 2, "repeats": 11, "budget_s": 4.0,
        "ckpt_hidden": 128, "ckpt_ks": [20, 50], "rw_seeds": 1, "rw_inner_steps": 600, "acc_repeats": 3,
    },
    "full": {
        "hidden": [16, 128, 362, 1024], "batch": 256, "ks": [1, 5, 20], "warmup": 2, "repeats": 7,
        "budget_s": 1.0, "ckpt_hidden": 1024, "ckpt_ks": [20, 50], "rw_seeds": 3, "rw_inner_steps": 1000,
        "acc_repeats": 5,
    },
}


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
    """Per size and K, every method of every group timed side by side (``peers.time_interleaved``); the ratio
    to the best peer is of median thread CPU times on a CPU (another process's load disturbs them least) and of
    minimum wall times on a GPU."""
    rows: list[dict[str, Any]] = []
    basis = "min_s" if device.startswith("cuda") else "cpu_median_s"
    for hidden in p["hidden"]:
        for k in p["ks"]:
            config_rows, fns = [], []
            for group, lib, label, build in speed_methods(betty_reason is None):
                if group == "one-step" and k != 1 and lib != "Betty":
                    continue  # one-step is K-independent; Betty's darts is timed with K real inner steps
                if group == "one-step" and lib == "Betty" and k != 1:
                    continue
                fp = mlp_problem(hidden, p["batch"], device, dtype)
                n_params = sum(q.numel() for q in fp.model.parameters())
                row: dict[str, Any] = {"group": group, "library": lib, "method": label, "hidden": hidden,
                                       "params": n_params, "K": k}
                rows.append(row)
                if build is None:
                    row["error"] = f"Betty unavailable: {betty_reason}"
                    continue
                try:
                    with peers.quiet_warnings():
                        fn = build(fp, k, device)
                        fn()  # a peer that fails is reported, not timed
                        row.update(peers.peak_memory(fn, device))
                except Exception as err:  # noqa: BLE001 - a failing peer is reported, not fatal
                    row["error"] = f"{type(err).__name__}: {str(err)[:160]}"
                    continue
                config_rows.append(row)
                fns.append(fn)
            with peers.quiet_warnings():
                timings = peers.time_interleaved(fns, device, p["warmup"], p["repeats"], p["budget_s"])
            for row, t in zip(config_rows, timings):
                row.update(t)
                print(f"  speed h={hidden:5d} K={k:2d} {row['method']:36s} {row['median_s'] * 1e3:9.2f} ms "
                      f"(cpu {row['cpu_median_s'] * 1e3:9.2f} ms) {row['peak_bytes'] / 2**20:9.2f} MiB", flush=True)
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    for r in rows:  # ratio to the fastest / leanest peer (not ours) of the same group and config
        if "median_s" not in r:
            continue
        same = [q for q in rows if q["group"] == r["group"] and q["hidden"] == r["hidden"] and q["K"] == r["K"]
                and q["library"] != "ours" and "median_s" in q]
        if same:
            best_t = min(same, key=lambda q: q[basis])
            best_m = min(same, key=lambda q: q["peak_bytes"])
            r["time_ratio"] = r[basis] / best_t[basis]
            r["time_ratio_basis"] = basis
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



# ============================================================================================ main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--quick", action="store_true", help="small sizes; a few minutes on one CPU core")
    ap.add_argument("--out", default="results/hypergradients")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1 on cpu, all on cuda)")
    ap.add_argument("--sections", default="accuracy,speed,checkpoint,reweighting")
    ap.add_argument("--report", action="store_true",
                    help="write the docs/benchmarks.md section, its plots and docs/data/hypergradients-<tag>.json "
                         "(needs every section)")
    ap.add_argument("--report-only", action="store_true",
                    help="run nothing: render the section from --from-json (default OUT/hypergradients.json)")
    ap.add_argument("--from-json", default=None, help="a saved hypergradients.json (e.g. from a GPU machine)")
    args = ap.parse_args(argv)
    out = ROOT / args.out if not Path(args.out).is_absolute() else Path(args.out)
    if args.report_only:
        path = Path(args.from_json) if args.from_json else out / "hypergradients.json"
        if not path.exists():
            ap.error(f"--report-only: {path} does not exist; run without --report-only first (or give --from-json)")
        res = json.loads(path.read_text())
        print(markdown(res))
        if args.report:
            write_report(res)
        return 0
    if args.from_json:
        ap.error("--from-json goes with --report-only")
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
    out.mkdir(parents=True, exist_ok=True)
    (out / "hypergradients.json").write_text(json.dumps(res, indent=1, default=str))
    print(f"wrote {out / 'hypergradients.json'} ({res['meta']['wall_s']:.0f} s)")
    if args.report:
        if sections >= {"accuracy", "speed", "checkpoint", "reweighting"}:
            write_report(res)
        else:
            print("--report: the section needs every part (--sections accuracy,speed,checkpoint,reweighting); "
                  "not written")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
