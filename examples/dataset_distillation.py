"""Dataset distillation (Wang et al. 2018) on scikit-learn's 8x8 digits: ten learned images, one per class.

The outer variables are ten synthetic images with fixed labels 0..9 and a learned inner step size; the inner
problem trains a linear softmax classifier on those ten images for K SGD steps from a *fresh random
initialisation* every outer step; the outer loss is the cross-entropy of the trained classifier on the real
training set. So the images are learned to be what K steps of SGD from any random start should see.

* inner variable theta: the classifier (``nn.Linear(64, 10)``), re-drawn from ``nn.Linear``'s default
  distribution before every outer step;
* outer variable lambda: ``Distilled`` (images (10, 64) and log of the inner step size). The step size enters
  the inner loss as a factor, f = exp(log_lr) * CE(theta; images), with SGD of step 1, so it reaches the
  solvers as an ordinary ``outer.<attr>`` (forward mode takes tangents only through those);
* outer loss g: CE of theta_K on the real training set.

Long unrolls are the point: the hypergradient differentiates all K steps, so reverse mode stores K steps'
graphs, truncation (the last T steps only) is cheaper and biased, checkpointing stores every s-th iterate and
recomputes, mixed mode stores only the iterates. Forward mode costs one unroll per outer scalar (641 here):
its time is measured, it is not trained. The implicit solvers do not apply: the inner problem restarts from a
random initialisation and is stopped after K steps on purpose (the images are learned for that trajectory);
on ten separable images the unregularised cross-entropy has no minimiser at all, so there is no stationary
point whose implicit derivative would mean anything.

Reported: test accuracy of classifiers trained on the distilled images (K steps with the learned step size,
mean over random initialisations) against classifiers trained on one and on ten random real images per class
and on the full training set (full-batch gradient descent, step size picked on a validation split); time and
CPU time and saved-for-backward KiB per outer step for each solver, also at other K.

Run:  python examples/dataset_distillation.py [--quick] [--seed 0] [--solvers k-step-reverse,k-step-mixed]
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
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

NAME = "dataset_distillation"
CLASSES, PIXELS = 10, 64


@dataclass(frozen=True)
class Config:
    steps: int = 50             # K: inner SGD steps on the distilled images, differentiated in full
    outer_steps: int = 300      # outer Adam steps per solver
    outer_lr: float = 0.01      # Adam on the images and the log step size
    init_lr: float = 0.1        # the inner step size before it is learned
    batch: int = 256            # real training images per outer loss
    truncate: int = 10          # the truncated row differentiates the last T steps
    checkpoint: int = 7         # the checkpointed row's segment length, about sqrt(K)
    eval_every: int = 25        # outer steps between test-accuracy points of the curve
    eval_inits: int = 20        # random initialisations averaged in every accuracy
    baseline_draws: int = 10    # random draws of the real-image baselines
    baseline_steps: int = 300   # full-batch GD steps of the baselines
    baselines: tuple[int | None, ...] = (1, 10, None)  # real images per class of the baselines (None: all)
    memory_ks: tuple[int, ...] = (20, 100)  # other K at which time and saved bytes are measured per solver
    forward_ks: tuple[int, ...] = (20,)         # ... and forward mode's (one unroll per outer scalar: slow)
    repeats: int = 3            # calls timed per measurement and round
    rounds: int = 2             # rounds of timing over all solvers (the fastest counts)


QUICK = Config(steps=10, outer_steps=60, outer_lr=0.05, truncate=3, checkpoint=3, eval_every=20, eval_inits=10,
               baseline_draws=5, baseline_steps=100, memory_ks=(), forward_ks=(), repeats=1, rounds=1)


@dataclass(frozen=True)
class Method:
    """One row: a gallery solver label with options."""

    row: str
    solver: str
    options: tuple[tuple[str, Any], ...] = ()
    steps: int | None = None        # inner steps, if not cfg.steps


def methods(cfg: Config) -> list[Method]:
    """Every solver row, in table order."""
    k = cfg.steps
    return [
        Method("one-step (K=1)", "one-step", steps=1),
        Method(f"k-step-reverse K={k}", "k-step-reverse"),
        Method(f"k-step-reverse K={k}, truncate={cfg.truncate}", "k-step-reverse", (("truncate", cfg.truncate),)),
        Method(f"k-step-reverse K={k}, checkpoint={cfg.checkpoint}", "k-step-reverse",
               (("checkpoint", cfg.checkpoint),)),
        Method(f"k-step-mixed K={k}", "k-step-mixed"),
    ]


# ----------------------------------------------------------------------------------------------- data, model
@dataclass
class Data:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_digits_split(seed: int) -> Data:
    """scikit-learn digits, pixels scaled to [0, 1], split 1000 train / 297 validation / 500 test (shuffled
    with ``seed``)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    return Data(x[:1000], y[:1000], x[1000:1297], y[1000:1297], x[1297:], y[1297:])


class Distilled(nn.Module):
    """The outer variables: ten images (labels 0..9, fixed) and the log of the inner step size."""

    def __init__(self, generator: torch.Generator, init_lr: float) -> None:
        super().__init__()
        self.images = nn.Parameter(torch.rand(CLASSES, PIXELS, generator=generator))
        self.log_lr = nn.Parameter(torch.tensor(math.log(init_lr)))


LABELS = torch.arange(CLASSES)


def random_linear(generator: torch.Generator, n: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` draws of nn.Linear(64, 10)'s default initialisation, U(-1/8, 1/8) for weight and bias."""
    bound = 1 / math.sqrt(PIXELS)
    w = (torch.rand(n, CLASSES, PIXELS, generator=generator) * 2 - 1) * bound
    b = (torch.rand(n, CLASSES, generator=generator) * 2 - 1) * bound
    return w, b


def make_problem(model: nn.Linear, distilled: Distilled) -> bilevel.Problem:
    """The distillation problem. The inner batch is unused (the distilled images live in ``outer``); the outer
    batch is a minibatch of real training images and labels."""

    def inner_loss(inner: Any, outer: nn.Module, batch: Any) -> torch.Tensor:
        # The step size as a factor of the loss (SGD with step 1): an ordinary outer.<attr> route to lambda.
        return outer.log_lr.exp() * F.cross_entropy(inner(outer.images), LABELS)

    def outer_loss(inner: Any, outer: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(inner(x), y)

    return bilevel.Problem(inner=model, outer=distilled, inner_loss=inner_loss, outer_loss=outer_loss)


# ---------------------------------------------------------------------------------------------- evaluation
def train_linear(x: torch.Tensor, y: torch.Tensor, lr: float, steps: int, w: torch.Tensor, b: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-batch gradient descent on the cross-entropy for a batch of n linear classifiers (weights (n, 10, 64),
    biases (n, 10)) at once, each on its own data (x (n, m, 64), y (n, m)) or all on the same (x (m, 64), y (m,)).
    Written without the library: it is the evaluation protocol."""
    n = w.shape[0]
    x, y = x.expand(n, *x.shape[-2:]), y.expand(n, y.shape[-1])
    w, b = w.clone().requires_grad_(), b.clone().requires_grad_()
    for _ in range(steps):
        logits = torch.einsum("nkp,nip->nik", w, x) + b[:, None]
        # summed over classifiers, so that each one's gradient is that of its own mean loss
        loss = F.cross_entropy(logits.reshape(-1, CLASSES), y.reshape(-1), reduction="sum") / y.shape[-1]
        gw, gb = torch.autograd.grad(loss, (w, b))
        w, b = (w - lr * gw).detach().requires_grad_(), (b - lr * gb).detach().requires_grad_()
    return w.detach(), b.detach()


def accuracies(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Accuracy of each classifier of the batch on ``(x, y)``."""
    with torch.no_grad():
        pred = (torch.einsum("nkp,ip->nik", w, x) + b[:, None]).argmax(-1)
        return (pred == y).float().mean(-1)


def distilled_accuracy(distilled: Distilled, steps: int, data: Data, inits: tuple[torch.Tensor, torch.Tensor]
                       ) -> tuple[float, float]:
    """Validation and test accuracy, averaged over the initialisations ``inits``, of classifiers trained on the
    distilled images exactly as in meta-training (``steps`` SGD steps with the learned step size)."""
    with torch.enable_grad():
        w, b = train_linear(distilled.images.detach(), LABELS, distilled.log_lr.exp().item(), steps, *inits)
    return (accuracies(w, b, data.x_val, data.y_val).mean().item(),
            accuracies(w, b, data.x_test, data.y_test).mean().item())


def baseline(data: Data, per_class: int | None, cfg: Config, generator: torch.Generator) -> dict[str, float]:
    """Classifiers trained on ``per_class`` random real training images per class (``None``: all of them) by
    full-batch GD, the step size picked on the validation split; test accuracy mean and std over random draws
    of the images (each with its own initialisation)."""
    if per_class is None:
        x, y, draws = data.x_train, data.y_train, 1
    else:
        draws = cfg.baseline_draws
        idx = torch.stack([torch.cat([
            torch.nonzero(data.y_train == c).flatten()[
                torch.randperm(int((data.y_train == c).sum()), generator=generator)[:per_class]]
            for c in range(CLASSES)]) for _ in range(draws)])
        x, y = data.x_train[idx], data.y_train[idx]
    inits = random_linear(generator, draws)
    best: tuple[float, float, torch.Tensor] | None = None
    for lr in (0.1, 0.3, 1.0, 3.0, 10.0):
        with torch.enable_grad():
            w, b = train_linear(x, y, lr, cfg.baseline_steps, *inits)
        val = accuracies(w, b, data.x_val, data.y_val).mean().item()
        if best is None or val > best[0]:
            best = (val, lr, accuracies(w, b, data.x_test, data.y_test))
    assert best is not None
    tests = best[2]
    return {"accuracy": tests.mean().item(), "std": tests.std().item() if draws > 1 else 0.0, "lr": best[1]}


# ---------------------------------------------------------------------------------------------- training
def build(method: Method, cfg: Config, distilled: Distilled, steps: int | None = None
          ) -> tuple[bilevel.Solver, nn.Linear]:
    model = nn.Linear(PIXELS, CLASSES)
    problem = make_problem(model, distilled)
    outer_opt = torch.optim.Adam(distilled.parameters(), lr=cfg.outer_lr)
    with warnings.catch_warnings():  # forward mode warns above 64 outer scalars: measuring that cost is the point
        warnings.simplefilter("ignore")
        solver = build_solver(method.solver, problem, torchopt.sgd(lr=1.0), outer_opt,
                              steps=steps or method.steps or cfg.steps, **dict(method.options))
    return solver, model


def minibatch(data: Data, cfg: Config, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A random minibatch of real training images for the outer loss (a fresh one every outer step)."""
    idx = torch.randperm(len(data.y_train), generator=generator)[:cfg.batch]
    return data.x_train[idx], data.y_train[idx]


def reinitialise(model: nn.Linear, generator: torch.Generator) -> None:
    """A fresh random classifier: every outer step distils for a new initialisation."""
    w, b = random_linear(generator)
    with torch.no_grad():
        model.weight.copy_(w[0])
        model.bias.copy_(b[0])


def distil(method: Method, cfg: Config, data: Data, seed: int, eval_inits: tuple[torch.Tensor, torch.Tensor]
           ) -> dict[str, Any]:
    """Learn the images with ``method``'s solver. Every ``cfg.eval_every`` outer steps the images are scored on
    the validation and the test split; the images with the best validation accuracy are kept (model selection,
    the same for every solver: long unrolls push the learned step size to the edge of stability, where the
    accuracy swings). Returns those images, the curve (outer step, test accuracy), the final and the selected
    test accuracy, and the CPU time of the outer steps alone."""
    distilled = Distilled(torch.Generator().manual_seed(seed), cfg.init_lr)
    solver, model = build(method, cfg, distilled)
    generator = torch.Generator().manual_seed(seed + 1)
    steps = method.steps or cfg.steps
    curve: list[tuple[int, float]] = []
    best = (-1.0, 0, 0.0, distilled.state_dict())
    elapsed = 0.0
    for step in range(cfg.outer_steps + 1):
        if step:
            reinitialise(model, generator)
            batch = minibatch(data, cfg, generator)
            t0 = time.process_time()
            solver.step(None, batch)
            elapsed += time.process_time() - t0
        if step % cfg.eval_every == 0 or step == cfg.outer_steps:
            val, test = distilled_accuracy(distilled, steps, data, eval_inits)
            curve.append((step, test))
            if val > best[0]:
                best = (val, step, test, {k: v.clone() for k, v in distilled.state_dict().items()})
    distilled.load_state_dict(best[3])
    return {"distilled": distilled, "curve": curve, "final": curve[-1][1], "selected": best[2],
            "selected_step": best[1], "elapsed": elapsed}


def hypergradient_probe(method: Method, cfg: Config, data: Data, seed: int, steps: int | None = None
                        ) -> Callable[[], list[torch.Tensor]]:
    """One outer step's hypergradient at the initial images, a fixed random classifier and a fixed minibatch,
    as a closure that mutates nothing (the outer Adam step is negligible next to it)."""
    distilled = Distilled(torch.Generator().manual_seed(seed), cfg.init_lr)
    solver, model = build(method, cfg, distilled, steps)
    generator = torch.Generator().manual_seed(seed + 2)
    reinitialise(model, generator)
    batch = minibatch(data, cfg, generator)
    return lambda: solver.hypergradient(None, batch)


def measure_interleaved(probes: list[tuple[dict[str, Any], Callable[[], object]]], rounds: int,
                        repeats: int) -> None:
    """Time and saved bytes of every probe, written into its row: ``rounds`` rounds over all probes, each
    ``measure_step`` (median CPU time of ``repeats`` calls); the fastest round counts. Round-robin: CPU time does
    not count waiting for a core, but it still grows with the cache and memory-bandwidth contention of other
    processes on a shared machine, and a change in that load then hits every solver alike."""
    for _ in range(rounds):
        for row, probe in probes:
            m = measure_step(probe, repeats=repeats)
            row["ms / outer step"] = min(row.get("ms / outer step", math.inf), 1e3 * m["time_s"])
            row["saved KiB / step"] = m["saved_bytes"] / 1024


def relative_difference(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """max |a - b| / max |b| over all outer parameters."""
    return max((x - y).abs().max().item() for x, y in zip(a, b)) / max(y.abs().max().item() for y in b)


def scaled(method: Method, k: int) -> Method:
    """``method`` at K = ``k``: truncation capped at K, checkpoint segments of about sqrt(K)."""
    options = dict(method.options)
    if "truncate" in options:
        options["truncate"] = min(options["truncate"], k)
    if "checkpoint" in options:
        options["checkpoint"] = max(1, round(math.sqrt(k)))
    return replace(method, options=tuple(options.items()), steps=k)


def run(cfg: Config = Config(), seed: int = 0, solvers: Collection[str] | None = None,
        only: Collection[str] | None = None) -> dict[str, Any]:
    """Baselines, then each solver's distillation (those whose gallery label is in ``solvers`` and, if given,
    whose row label is in ``only``) and its cost; then the cost of each solver at the K of ``cfg.memory_ks``
    (forward mode at ``cfg.forward_ks`` only: it costs one unroll per outer scalar)."""
    setup_torch(seed)
    data = load_digits_split(seed)
    generator = torch.Generator().manual_seed(seed + 3)
    baselines = {}
    for per_class in cfg.baselines:
        name = (f"full training set ({len(data.y_train)} images)" if per_class is None else
                f"{per_class} random real image{'s' if per_class > 1 else ''} per class")
        baselines[name] = baseline(data, per_class, cfg, generator)
        print(f"  {name:40s} test accuracy {baselines[name]['accuracy']:.3f} +- {baselines[name]['std']:.3f} "
              f"(GD lr {baselines[name]['lr']})", flush=True)
    eval_inits = random_linear(torch.Generator().manual_seed(seed + 4), cfg.eval_inits)
    chosen = [m for m in methods(cfg) if (solvers is None or m.solver in solvers) and (only is None or m.row in only)]
    rows, curves, images, probes, reference = [], {}, {}, [], None
    for method in chosen:
        probe = hypergradient_probe(method, cfg, data, seed)
        row: dict[str, Any] = {"method": method.row}
        grads = probe()
        if method.solver == "k-step-reverse" and not method.options:
            reference = grads
        elif reference is not None and method.steps is None and "truncate" not in dict(method.options):
            row["hypergradient rel. diff. vs reverse"] = relative_difference(grads, reference)
        res = distil(method, cfg, data, seed, eval_inits)
        row.update({"test accuracy (final)": res["final"], "test accuracy (val-selected)": res["selected"],
                    "selected step": res["selected_step"], "learned lr": res["distilled"].log_lr.exp().item(),
                    "train s": res["elapsed"]})
        curves[method.row] = res["curve"]
        images[method.row] = res["distilled"].images.detach().tolist()
        rows.append(row)
        probes.append((row, probe))
        print(f"  {method.row:40s} test accuracy final {res['final']:.3f}, val-selected {res['selected']:.3f} "
              f"(step {res['selected_step']}), lr {row['learned lr']:.3g}, {res['elapsed']:.1f} s", flush=True)
    scaling: list[dict[str, Any]] = []
    for k in cfg.memory_ks:
        for method in chosen:
            if method.steps is None and k != cfg.steps:  # at K = cfg.steps the table's own rows are measured
                scaling.append({"solver": method.solver, "options": ", ".join(
                    f"{a}={b}" for a, b in scaled(method, k).options), "K": k})
                probes.append((scaling[-1], hypergradient_probe(scaled(method, k), cfg, data, seed)))
    measure_interleaved(probes, cfg.rounds, cfg.repeats)
    for method, row in zip(chosen, rows):
        if method.steps is None and cfg.memory_ks:
            scaling.append({"solver": method.solver, "options": ", ".join(f"{a}={b}" for a, b in method.options),
                            "K": cfg.steps, "ms / outer step": row["ms / outer step"],
                            "saved KiB / step": row["saved KiB / step"]})
    scaling.sort(key=lambda e: e["K"])
    if solvers is None or "k-step-forward" in solvers:
        for k in cfg.forward_ks:
            # Timed by hand (CPU time of one call) and its saved bytes left out: in float32 forward mode falls back
            # to one torch.autograd.forward_ad unroll per outer scalar (641), and under saved_tensors_hooks that
            # path ran ~28x slower (75 s instead of 2.7 s per call at K=20).
            probe = hypergradient_probe(Method(f"k-step-forward K={k}", "k-step-forward", steps=k), cfg, data, seed)
            t0 = time.process_time()
            probe()
            scaling.append({"solver": "k-step-forward", "options": "", "K": k,
                            "ms / outer step": 1e3 * (time.process_time() - t0),
                            "saved KiB / step": math.nan})
    for entry in scaling:
        print(f"  K={entry['K']:3d} {entry['solver']} {entry['options']}: {entry['ms / outer step']:.1f} ms, "
              f"{entry['saved KiB / step']:.1f} saved KiB", flush=True)
    return {"config": asdict(cfg), "seed": seed, "baselines": baselines, "rows": rows, "curves": curves,
            "images": images, "scaling": scaling}


COLUMNS = ["method", "test accuracy (final)", "test accuracy (val-selected)", "learned lr", "ms / outer step",
           "saved KiB / step", "hypergradient rel. diff. vs reverse"]


def figure(results: dict[str, Any]) -> Any:
    """Top: the ten images learned by K-step reverse; bottom: test accuracy against outer step per solver (the
    baselines as horizontal lines), and saved KiB against K."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(13, 5.8))
    grid = fig.add_gridspec(2, 10, height_ratios=[1, 3.2], hspace=0.25)
    key = next((r for r in results["images"] if r.startswith("k-step-reverse") and "," not in r),
               next(iter(results["images"]), None))
    if key is not None:
        for c, img in enumerate(results["images"][key]):
            ax = fig.add_subplot(grid[0, c])
            ax.imshow(torch.tensor(img).reshape(8, 8), cmap="gray_r")  # as digits are drawn: dark = ink
            ax.set(xticks=[], yticks=[], title=str(c))
        fig.text(0.5, 0.93, f"distilled images ({key}), one per class", ha="center")
    ax = fig.add_subplot(grid[1, :6])
    for i, (row, curve) in enumerate(results["curves"].items()):  # thinning lines: coinciding curves stay visible
        ax.plot(*zip(*curve), marker="o", ms=3, lw=max(3.5 - 0.7 * i, 0.8), label=row)
    for (name, res), ls in zip(results["baselines"].items(), (":", "--", "-.")):
        ax.axhline(res["accuracy"], color="gray", ls=ls, label=name)
    ax.set(xlabel="outer step", ylabel="test accuracy (trained on the distilled images)")
    ax.legend(fontsize=7)
    ax = fig.add_subplot(grid[1, 7:])
    lines: dict[str, list[tuple[int, int]]] = {}
    for entry in results["scaling"]:
        label = entry["solver"] + ("" if not entry["options"] else " " + entry["options"])
        if "checkpoint" in label:
            label = f"{entry['solver']} checkpoint=sqrt(K)"
        if entry["saved KiB / step"] == entry["saved KiB / step"]:  # not NaN (forward: not measured)
            lines.setdefault(label, []).append((entry["K"], entry["saved KiB / step"]))
    for label, points in lines.items():
        ax.plot(*zip(*points), marker="o", label=label)
    ax.set(xlabel="K (inner steps)", ylabel="saved for backward per outer step (KiB)", yscale="log",
           xticks=sorted({e["K"] for e in results["scaling"]}))
    if lines:
        ax.legend(fontsize=7)
    return fig


def main(argv: list[str] | None = None) -> int:
    p = common_args(__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=None, help="K, inner steps per outer step")
    p.add_argument("--outer-steps", type=int, default=None, help="outer steps per solver")
    args = p.parse_args(argv)
    cfg = QUICK if args.quick else Config()
    if args.steps is not None:
        cfg = replace(cfg, steps=args.steps)
    if args.outer_steps is not None:
        cfg = replace(cfg, outer_steps=args.outer_steps)
    solvers = select_solvers(args.solvers, sorted({m.solver for m in methods(cfg)} | {"k-step-forward"}))
    t0, c0 = time.perf_counter(), time.process_time()
    results = run(cfg, args.seed, solvers)
    print()
    print(markdown_table([{"method": name, "test accuracy (final)": res["accuracy"]}
                          for name, res in results["baselines"].items()] + results["rows"], COLUMNS))
    if results["scaling"]:
        print()
        print(markdown_table(results["scaling"], ["solver", "options", "K", "ms / outer step",
                                                  "saved KiB / step"]))
    paths = write_outputs(NAME, args, results, figure(results))
    print(f"\n{time.process_time() - c0:.0f} s CPU, {time.perf_counter() - t0:.0f} s wall"
          + "".join(f"; {k}: {v}" for k, v in paths.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
