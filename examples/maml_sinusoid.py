"""MAML and iMAML on sinusoid regression (Finn et al. 2017; Rajeswaran et al. 2019), with every solver that applies.

A task is y = A sin(x + phi), A ~ U[0.1, 5], phi ~ U[0, pi], x ~ U[-5, 5]; the learner sees a K-shot support set,
takes a few SGD steps on it from a shared initialisation theta_0 and is scored on a query set of the same task.
Meta-learning theta_0 is a bilevel problem:

* outer variable lambda = theta_0 (the `Init` module: a 1-40-40-1 ReLU MLP's weights);
* inner variable delta = theta - theta_0, one offset per task of the meta-batch (the `Offsets` module), starting
  at zero every outer step, so that the adapted weights theta_0 + delta_k are exactly MAML's inner SGD iterates
  and d theta_k / d theta_0 flows through the inner loss, where lambda appears;
* inner loss f = sum over tasks of the support MSE (a sum, so each task's offset gets its own task's gradient
  and the meta-batch runs as one batched unroll), plus (prox/2) ||delta||^2 for iMAML, which is exactly iMAML's
  proximal term (prox/2) ||theta - theta_0||^2;
* outer loss g = mean over tasks of the query MSE at theta_0 + delta_K.

With the K-step solver this is MAML (second order, through K inner steps); with the one-step solver MAML with one
inner step; with lambda detached inside f the same solvers give first-order MAML (only the direct term
d g / d theta_0 survives); with the implicit solver and prox > 0 it is iMAML (the hypergradient
prox (H + prox I)^{-1} grad g at the approximately solved proximal problem). Forward mode does not apply: it
costs one unroll per outer scalar (1761 here).

iMAML meets a limit here: its runs tend to stop with ``NonFiniteError`` (the inner SGD diverged) after a few
hundred outer steps. Observed in a run with Neumann's default step size (outer lr 3e-3): the top eigenvalue of
the inner Hessian grew from 66 to 236 within 150 outer steps, past the 2 / lr = 200 at which SGD with lr 0.01
diverges. A likely reason: the proximal solution (H + prox I)^{-1} grad adapts further along directions of high
curvature, so the implicit meta-gradient rewards sharpness and, unlike MAML's unroll, does not see SGD's
stability limit. Such a stop is reported as a result, and every method is scored at its best theta_0 on validation tasks
(``BestOnValidation``).

Baseline: the same MLP pretrained by regression on data pooled over tasks, then fine-tuned like the others.
Reported: query MSE on held-out tasks after 1 and 5 SGD adaptation steps (lr ``inner_lr``, support MSE only),
CPU time and saved-for-backward KiB per outer step.

Run:  python examples/maml_sinusoid.py [--quick] [--seed 0] [--solvers k-step-reverse,implicit-cg]
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torchopt
from gallery import (
    build_solver,
    common_args,
    markdown_table,
    measure_step,
    select_solvers,
    setup_torch,
    write_outputs,
)
from torch import nn

import bilevel

NAME = "maml_sinusoid"
HIDDEN = 40
#: name -> shape of the MLP's parameters (nn.Linear layout: weight (out, in)).
SHAPES: dict[str, tuple[int, ...]] = {
    "w1": (HIDDEN, 1), "b1": (HIDDEN,), "w2": (HIDDEN, HIDDEN), "b2": (HIDDEN,), "w3": (1, HIDDEN), "b3": (1,),
}
_FAN_IN = {"w1": 1, "b1": 1, "w2": HIDDEN, "b2": HIDDEN, "w3": HIDDEN, "b3": HIDDEN}
Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Config:
    meta_batch: int = 25        # tasks per outer step
    shots: int = 10             # support points per task (the query set has as many during meta-training)
    inner_lr: float = 0.01      # SGD step of the adaptation, in meta-training and at evaluation (MAML's alpha)
    steps: int = 5              # K: inner SGD steps differentiated in meta-training
    outer_steps: int = 500      # meta-training steps per method (the pretrained baseline takes as many)
    outer_lr: float = 2e-3      # Adam (Finn et al. use 1e-3 for 70k steps; this budget is 500)
    prox: float = 10.0          # iMAML's proximal strength (smaller ones leave CG facing negative curvature)
    imaml_steps: int = 10       # plain inner SGD steps on the proximal problem before the implicit hypergradient
    cg_iterations: int = 5      # linear-solver iterations of the implicit solvers
    eval_tasks: int = 200       # held-out tasks
    val_tasks: int = 100        # validation tasks for model selection (BestOnValidation)
    val_every: int = 25         # outer steps between validation checks
    eval_query: int = 100       # query points per held-out task
    eval_steps: int = 10        # adaptation steps shown in the figure
    truncate: int = 1           # the truncated K-step row
    checkpoint: int = 2         # the checkpointed K-step row (about sqrt(K))
    repeats: int = 5            # calls timed per method and round
    rounds: int = 3             # rounds of timing over all methods (the fastest counts)


QUICK = Config(meta_batch=10, outer_steps=100, outer_lr=3e-3, eval_tasks=50, eval_query=50, val_tasks=50,
               repeats=1, rounds=1)


@dataclass(frozen=True)
class Method:
    """One row of the table: a gallery solver label with options, on the MAML or the iMAML problem."""

    row: str
    solver: str | None              # gallery label; None for the pretrained baseline
    options: tuple[tuple[str, Any], ...] = ()
    first_order: bool = False       # lambda detached inside the inner loss (FOMAML)
    imaml: bool = False             # proximal inner problem
    same_map: str | None = None     # row whose unrolled map this one differentiates (not trained again)


def methods(cfg: Config) -> list[Method]:
    """Every row this example can run, in table order."""
    maml = f"MAML K={cfg.steps} (k-step-reverse)"
    implicit = (("iterations", cfg.cg_iterations),)
    # Neumann / fixed point with the inner SGD's own step: the series is then the K -> infinity limit of the
    # unrolled SGD derivative at the solution, and it needs no power iterations (it fails where that SGD does).
    series = (*implicit, ("step_size", cfg.inner_lr))
    return [
        Method("pretrained + fine-tune", None),
        Method(f"FOMAML (k-step-reverse K={cfg.steps}, lambda detached in f)", "k-step-reverse", first_order=True),
        Method("MAML K=1 (one-step)", "one-step"),
        Method(maml, "k-step-reverse"),
        Method(f"MAML K={cfg.steps} (k-step-reverse, truncate={cfg.truncate})", "k-step-reverse",
               (("truncate", cfg.truncate),)),
        Method(f"MAML K={cfg.steps} (k-step-reverse, checkpoint={cfg.checkpoint})", "k-step-reverse",
               (("checkpoint", cfg.checkpoint),), same_map=maml),
        Method(f"MAML K={cfg.steps} (k-step-mixed)", "k-step-mixed", same_map=maml),
        Method(f"iMAML prox={cfg.prox:g} (implicit-cg)", "implicit-cg", implicit, imaml=True),
        Method(f"iMAML prox={cfg.prox:g} (implicit-neumann)", "implicit-neumann", series, imaml=True),
        Method(f"iMAML prox={cfg.prox:g} (implicit-fixed-point)", "implicit-fixed-point", series, imaml=True),
    ]


# ----------------------------------------------------------------------------------------------- the problem
def init_weights(generator: torch.Generator, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """nn.Linear's default initialisation, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), from ``generator``."""
    return {n: ((torch.rand(s, generator=generator, dtype=dtype) * 2 - 1) / math.sqrt(_FAN_IN[n]))
            for n, s in SHAPES.items()}


class Init(nn.Module):
    """The outer variable: the initialisation theta_0 shared by all tasks."""

    def __init__(self, weights: dict[str, torch.Tensor]) -> None:
        super().__init__()
        for n in SHAPES:
            setattr(self, n, nn.Parameter(weights[n].clone()))


class Offsets(nn.Module):
    """The inner variable: delta_b = theta_b - theta_0 for each of the ``tasks`` tasks of a meta-batch."""

    def __init__(self, tasks: int, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        for n, s in SHAPES.items():
            setattr(self, n, nn.Parameter(torch.zeros(tasks, *s, dtype=dtype)))


def mlp(w: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The 1-40-40-1 ReLU MLP on ``x`` of shape (tasks, n, 1); weights either shared (no task dimension) or
    per task (leading task dimension): matmul broadcasts both."""
    h = torch.relu(x @ w["w1"].transpose(-1, -2) + w["b1"].unsqueeze(-2))
    h = torch.relu(h @ w["w2"].transpose(-1, -2) + w["b2"].unsqueeze(-2))
    return h @ w["w3"].transpose(-1, -2) + w["b3"].unsqueeze(-2)


def task_mse(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each task, shape (tasks,)."""
    return ((pred - y) ** 2).mean(dim=(1, 2))


def make_problem(cfg: Config, init: Init, offsets: Offsets, *, first_order: bool = False,
                 prox: float = 0.0) -> bilevel.Problem:
    """The meta-learning problem over ``init`` (lambda) and ``offsets`` (delta); see the module docstring."""

    def weights(inner: Any, outer: nn.Module, detach: bool) -> dict[str, torch.Tensor]:
        base = {n: getattr(outer, n) for n in SHAPES}
        if detach:  # FOMAML: the inner steps see theta_0 as a constant, so no second-order term reaches it
            base = {n: b.detach() for n, b in base.items()}
        return {n: base[n] + getattr(inner, n) for n in SHAPES}

    def inner_loss(inner: Any, outer: nn.Module, batch: Batch) -> torch.Tensor:
        x, y = batch
        loss = task_mse(mlp(weights(inner, outer, first_order), x), y).sum()
        if prox:
            loss = loss + 0.5 * prox * sum((d ** 2).sum() for d in inner.parameters())
        return loss

    def outer_loss(inner: Any, outer: nn.Module, batch: Batch) -> torch.Tensor:
        x, y = batch
        return task_mse(mlp(weights(inner, outer, False), x), y).mean()

    return bilevel.Problem(inner=offsets, outer=init, inner_loss=inner_loss, outer_loss=outer_loss)


def sample_tasks(generator: torch.Generator, tasks: int, support: int, query: int,
                 dtype: torch.dtype = torch.float32) -> tuple[Batch, Batch, torch.Tensor]:
    """Support and query sets of ``tasks`` sinusoid tasks, and their (amplitude, phase) of shape (tasks, 2)."""
    amp = 0.1 + 4.9 * torch.rand(tasks, 1, 1, generator=generator, dtype=dtype)
    phase = math.pi * torch.rand(tasks, 1, 1, generator=generator, dtype=dtype)
    x = -5 + 10 * torch.rand(tasks, support + query, 1, generator=generator, dtype=dtype)
    y = amp * torch.sin(x + phase)
    return ((x[:, :support], y[:, :support]), (x[:, support:], y[:, support:]),
            torch.cat([amp, phase], dim=-1).reshape(tasks, 2))


# ---------------------------------------------------------------------------------------------- evaluation
def adapt(init: dict[str, torch.Tensor], support: Batch, lr: float, steps: int) -> list[dict[str, torch.Tensor]]:
    """Plain per-task SGD on the support MSE from ``init``: the weights after 0, 1, ..., ``steps`` steps.

    Written without the library on purpose: it is the evaluation protocol, the same for every method."""
    x, y = support
    tasks = x.shape[0]
    w = {n: t.detach().expand(tasks, *t.shape).clone().requires_grad_() for n, t in init.items()}
    out = [{n: t.detach() for n, t in w.items()}]
    for _ in range(steps):
        grads = torch.autograd.grad(task_mse(mlp(w, x), y).sum(), list(w.values()))
        w = {n: (t - lr * g).detach().requires_grad_() for (n, t), g in zip(w.items(), grads)}
        out.append({n: t.detach() for n, t in w.items()})
    return out


def adaptation_curve(init: dict[str, torch.Tensor], support: Batch, query: Batch, cfg: Config) -> list[float]:
    """Mean query MSE over the held-out tasks after 0..``eval_steps`` adaptation steps."""
    with torch.enable_grad():
        trajectory = adapt(init, support, cfg.inner_lr, cfg.eval_steps)
    with torch.no_grad():
        return [task_mse(mlp(w, query[0]), query[1]).mean().item() for w in trajectory]


# ---------------------------------------------------------------------------------------------- training
class BestOnValidation:
    """Model selection, the same for every method: keeps the theta_0 with the lowest query MSE after
    ``cfg.steps`` adaptation steps on validation tasks (drawn apart from the training stream and the held-out
    test tasks), checked every ``cfg.val_every`` outer steps. Without it, a method whose meta-training
    destabilises (iMAML here, see the module docstring) would be scored at its last, worst iterate."""

    def __init__(self, cfg: Config, seed: int) -> None:
        self.cfg = cfg
        self.support, self.query, _ = sample_tasks(torch.Generator().manual_seed(20_000 + seed), cfg.val_tasks,
                                                   cfg.shots, cfg.eval_query)
        self.weights: dict[str, torch.Tensor] | None = None
        self.mse, self.step = math.inf, 0

    def __call__(self, weights: dict[str, torch.Tensor], step: int) -> None:
        with torch.enable_grad():
            adapted = adapt(weights, self.support, self.cfg.inner_lr, self.cfg.steps)[-1]
        with torch.no_grad():
            mse = task_mse(mlp(adapted, self.query[0]), self.query[1]).mean().item()
        if mse < self.mse:  # NaN never wins
            self.weights = {n: t.detach().clone() for n, t in weights.items()}
            self.mse, self.step = mse, step


def pretrain(cfg: Config, start: dict[str, torch.Tensor], generator: torch.Generator,
             select: BestOnValidation) -> None:
    """The baseline: one network regressed on data pooled over tasks (same number of Adam steps, same tasks
    per step, support and query points both used as training data)."""
    w = {n: t.clone().requires_grad_() for n, t in start.items()}
    opt = torch.optim.Adam(w.values(), lr=cfg.outer_lr)
    for step in range(1, cfg.outer_steps + 1):
        support, query, _ = sample_tasks(generator, cfg.meta_batch, cfg.shots, cfg.shots)
        x, y = torch.cat([support[0], query[0]], 1), torch.cat([support[1], query[1]], 1)
        opt.zero_grad()
        task_mse(mlp(w, x), y).mean().backward()
        opt.step()
        if step % cfg.val_every == 0 or step == cfg.outer_steps:
            select(w, step)


def build(method: Method, cfg: Config, weights: dict[str, torch.Tensor]) -> tuple[bilevel.Solver, Init, Offsets]:
    """The solver of ``method`` on a fresh problem whose theta_0 starts at ``weights``."""
    init, offsets = Init(weights), Offsets(cfg.meta_batch)
    problem = make_problem(cfg, init, offsets, first_order=method.first_order,
                           prox=cfg.prox if method.imaml else 0.0)
    outer_opt = torch.optim.Adam(init.parameters(), lr=cfg.outer_lr)
    inner_opt = torchopt.sgd(lr=cfg.inner_lr)
    solver = build_solver(method.solver, problem, inner_opt, outer_opt,
                          steps=cfg.imaml_steps if method.imaml else cfg.steps, **dict(method.options))
    return solver, init, offsets


def meta_train(method: Method, cfg: Config, start: dict[str, torch.Tensor], seed: int
               ) -> tuple[dict[str, torch.Tensor], str]:
    """Meta-train ``method`` from ``start`` on the task stream of ``seed``: the theta_0 selected on validation
    tasks and a note (which outer step it is from; where the run stopped if the inner SGD diverged, which
    raises ``NonFiniteError``: that is a result, not a crash)."""
    generator = torch.Generator().manual_seed(seed)
    select = BestOnValidation(cfg, seed)
    select(start, 0)
    note = ""
    if method.solver is None:
        pretrain(cfg, start, generator, select)
    else:
        solver, init, offsets = build(method, cfg, start)
        for step in range(1, cfg.outer_steps + 1):
            support, query, _ = sample_tasks(generator, cfg.meta_batch, cfg.shots, cfg.shots)
            with torch.no_grad():  # every outer step adapts fresh tasks from theta_0: the offsets restart at zero
                for d in offsets.parameters():
                    d.zero_()
            try:
                solver.step(support, query)
            except bilevel.NonFiniteError as err:  # theta_0 is left as it was before this step
                note = f"diverged at outer step {step} ({str(err).split(':')[0]}); "
                break
            if step % cfg.val_every == 0 or step == cfg.outer_steps:
                select(dict(init.named_parameters()), step)
    assert select.weights is not None, "the validation MSE was NaN at every check"
    return select.weights, note + f"theta_0 of outer step {select.step}"


def probe_batch(cfg: Config, seed: int) -> tuple[Batch, Batch]:
    """A fixed meta-batch on which each method's hypergradient is timed and its saved bytes counted."""
    support, query, _ = sample_tasks(torch.Generator().manual_seed(seed + 1), cfg.meta_batch, cfg.shots, cfg.shots)
    return support, query


def hypergradient_probe(method: Method, cfg: Config, weights: dict[str, torch.Tensor], seed: int
                       ) -> Callable[[], object]:
    """One outer step's hypergradient at ``weights`` on a fixed meta-batch, as a closure that mutates nothing
    (the outer Adam step is negligible next to it); for the baseline, one pretraining gradient."""
    support, query = probe_batch(cfg, seed)
    if method.solver is None:
        w = {n: t.clone().requires_grad_() for n, t in weights.items()}
        x, y = torch.cat([support[0], query[0]], 1), torch.cat([support[1], query[1]], 1)
        return lambda: torch.autograd.grad(task_mse(mlp(w, x), y).mean(), list(w.values()))
    solver, _, _ = build(method, cfg, weights)
    return lambda: solver.hypergradient(support, query)


def measure_interleaved(probes: list[tuple[dict[str, Any], Callable[[], object]]], cfg: Config) -> None:
    """Time and saved bytes of every probe, written into its row: ``cfg.rounds`` rounds over all probes, each
    ``measure_step`` (median CPU time of ``cfg.repeats`` calls); the fastest round counts. Round-robin: CPU time
    does not count waiting for a core, but it still grows with the cache and memory-bandwidth contention of other
    processes on a shared machine, and a change in that load then hits every method alike."""
    for _ in range(cfg.rounds):
        for row, probe in probes:
            m = measure_step(probe, repeats=cfg.repeats)
            row["ms / outer step"] = min(row.get("ms / outer step", math.inf), 1e3 * m["time_s"])
            row["saved KiB / step"] = m["saved_bytes"] / 1024


def relative_difference(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """max |a - b| / max |b| over all outer parameters."""
    return max((x - y).abs().max().item() for x, y in zip(a, b)) / max(y.abs().max().item() for y in b)


def run(cfg: Config = Config(), seed: int = 0, solvers: Collection[str] | None = None,
        only: Collection[str] | None = None) -> dict[str, Any]:
    """Meta-train every method (those whose gallery label is in ``solvers`` and, if given, whose row label is in
    ``only``; the baseline always) and evaluate on held-out tasks. Returns the table rows, the adaptation curves
    and one example task's fits.

    Rows with ``same_map`` (checkpointed and mixed-mode K-step) compute the derivative of the same unrolled map
    as K-step reverse: they are not trained again; their time and memory are measured at reverse's learned
    theta_0, with the largest relative difference of their hypergradient from reverse's there."""
    setup_torch(seed)
    start = init_weights(torch.Generator().manual_seed(seed))
    support, query, params = sample_tasks(torch.Generator().manual_seed(10_000 + seed), cfg.eval_tasks,
                                          cfg.shots, cfg.eval_query)
    grid = torch.linspace(-5, 5, 200).reshape(1, -1, 1)
    rows, curves, fits, learned, reference, probes = [], {}, {}, {}, {}, []
    for method in methods(cfg):
        if method.solver is not None and ((solvers is not None and method.solver not in solvers)
                                          or (only is not None and method.row not in only)):
            continue
        if method.same_map is not None:
            if method.same_map not in learned:
                continue
            probe = hypergradient_probe(method, cfg, learned[method.same_map], seed)
            diff = relative_difference(probe(), reference[method.same_map])
            rows.append({"method": method.row, "solver": method.solver,
                         "MSE 0 steps": f"= {method.same_map}", "MSE 1 step": "", "MSE 5 steps": "",
                         "note": f"hypergradient rel. diff. {diff:.1e}"})
            probes.append((rows[-1], probe))
            print(f"  {method.row:58s} {rows[-1]['note']}", flush=True)
            continue
        t0 = time.process_time()
        weights, note = meta_train(method, cfg, start, seed)
        train_s = time.process_time() - t0
        learned[method.row] = weights
        probe = hypergradient_probe(method, cfg, weights, seed)
        reference[method.row] = probe()
        curve = adaptation_curve(weights, support, query, cfg)
        rows.append({"method": method.row, "solver": method.solver or "-", "MSE 0 steps": curve[0],
                     "MSE 1 step": curve[1], "MSE 5 steps": curve[5], "train s": train_s, "note": note})
        probes.append((rows[-1], probe))
        curves[method.row] = curve
        with torch.enable_grad():
            adapted = adapt(weights, (support[0][:1], support[1][:1]), cfg.inner_lr, 5)[-1]
        with torch.no_grad():
            fits[method.row] = mlp(adapted, grid)[0, :, 0].tolist()
        print(f"  {method.row:58s} MSE after 1 / 5 steps {curve[1]:.3f} / {curve[5]:.3f}  "
              f"trained in {train_s:.1f} s CPU; {note}", flush=True)
    measure_interleaved(probes, cfg)
    amp, phase = params[0].tolist()
    example = {"x": grid[0, :, 0].tolist(), "truth": (amp * torch.sin(grid[0, :, 0] + phase)).tolist(),
               "support_x": support[0][0, :, 0].tolist(), "support_y": support[1][0, :, 0].tolist(), "fits": fits}
    return {"config": asdict(cfg), "seed": seed, "rows": rows, "curves": curves, "example": example}


COLUMNS = ["method", "MSE 0 steps", "MSE 1 step", "MSE 5 steps", "ms / outer step", "saved KiB / step",
           "note"]


def figure(results: dict[str, Any]) -> Any:
    """Left: query MSE against adaptation steps per method; right: one held-out task after 5 steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    for row, curve in results["curves"].items():
        ax1.plot(range(len(curve)), curve, marker="o", ms=3, label=row,
                 ls="--" if row.startswith("pretrained") else "-")
    ax1.set(xlabel="adaptation steps (SGD on the 10-shot support set)", ylabel="query MSE, held-out tasks",
            yscale="log", title="post-adaptation error")
    ax1.legend(fontsize=7)
    ex = results["example"]
    ax2.plot(ex["x"], ex["truth"], "k", lw=2, label="true task")
    ax2.scatter(ex["support_x"], ex["support_y"], c="k", marker="^", zorder=5, label="support set")
    for row, fit in ex["fits"].items():
        if "checkpoint" in row or "mixed" in row:  # the same map as k-step-reverse: it would draw over it
            continue
        ax2.plot(ex["x"], fit, lw=1, label=row, ls="--" if row.startswith("pretrained") else "-")
    ax2.set(xlabel="x", ylabel="y", title="one held-out task, after 5 adaptation steps")
    ax2.legend(fontsize=6)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    p = common_args(__doc__.split("\n")[0])
    p.add_argument("--outer-steps", type=int, default=None, help="meta-training steps per method")
    args = p.parse_args(argv)
    cfg = QUICK if args.quick else Config()
    if args.outer_steps is not None:
        cfg = replace(cfg, outer_steps=args.outer_steps)
    applicable = sorted({m.solver for m in methods(cfg) if m.solver is not None})
    solvers = select_solvers(args.solvers, applicable)
    t0, c0 = time.perf_counter(), time.process_time()
    results = run(cfg, args.seed, solvers)
    print()
    print(markdown_table(results["rows"], COLUMNS))
    paths = write_outputs(NAME, args, results, figure(results))
    print(f"\n{time.process_time() - c0:.0f} s CPU, {time.perf_counter() - t0:.0f} s wall"
          + "".join(f"; {k}: {v}" for k, v in paths.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
