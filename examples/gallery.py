"""Shared pieces of the example gallery (docs/examples.md): solver labels, measurement, tables, figures, CLI.

Each gallery example (``examples/<name>.py``) imports this module from its own directory::

    from gallery import SOLVER_NAMES, build_solver, common_args, markdown_table, measure_step, save_figure

and builds every solver it compares from one label, so the tables of all examples use the same vocabulary.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torchopt

import bilevel
from bilevel import SavedBytes

ROOT = Path(__file__).resolve().parent.parent
IMG_DIR = ROOT / "docs" / "img"
DATA_DIR = ROOT / "docs" / "data"

# label -> (make_solver name, options). ``steps`` (see build_solver) is added where the solver takes a count
# of inner steps. Mixed mode takes its Hessian-vector products by double backward (hvp="reverse"): the same
# numbers as forward-over-reverse, about 2x faster in eager torch (docs/concepts.md).
_RECIPES: dict[str, tuple[str, dict[str, Any]]] = {
    "one-step": ("one_step", {}),
    "k-step-reverse": ("k_step", {"mode": "reverse"}),
    "k-step-forward": ("k_step", {"mode": "forward"}),
    "k-step-mixed": ("k_step", {"mode": "mixed", "hvp": "reverse"}),
    "implicit-cg": ("implicit", {"linear_solver": "cg", "iterations": 20}),
    "implicit-neumann": ("implicit", {"linear_solver": "neumann", "iterations": 50}),
    "implicit-fixed-point": ("implicit", {"linear_solver": "fixed_point", "iterations": 50}),
    "implicit-warm": ("implicit", {"linear_solver": "cg", "iterations": 5, "warm_start": True}),
    "soba": ("soba", {}),
    "f2sa": ("f2sa", {}),
}
#: The gallery's solver labels, in table order.
SOLVER_NAMES: list[str] = list(_RECIPES)
_STEP_OPTION = {"k_step": "steps", "implicit": "inner_steps", "f2sa": "inner_steps"}


def solver_options(name: str, *, steps: int = 5, **overrides: Any) -> tuple[str, dict[str, Any]]:
    """The ``make_solver`` name and options the label ``name`` stands for (``steps`` inner steps per call)."""
    if name not in _RECIPES:
        raise ValueError(f"unknown gallery solver {name!r}; one of {', '.join(SOLVER_NAMES)}")
    base, options = _RECIPES[name]
    options = dict(options)
    if base in _STEP_OPTION:
        options[_STEP_OPTION[base]] = steps
    options.update(overrides)
    return base, options


def build_solver(
    name: str,
    problem: bilevel.Problem,
    inner_optimizer: torchopt.base.GradientTransformation,
    outer_optimizer: torch.optim.Optimizer,
    *,
    steps: int = 5,
    **overrides: Any,
) -> bilevel.Solver:
    """The solver labelled ``name`` (one of :data:`SOLVER_NAMES`) through ``bilevel.make_solver``.

    ``steps`` is K for the K-step solvers and the number of plain inner steps per call for the implicit ones
    and F2SA (one-step and SOBA take one by definition); ``overrides`` replace any option of the recipe
    (``iterations=``, ``damping=``, ``v_lr=``, ...).
    """
    base, options = solver_options(name, steps=steps, **overrides)
    return bilevel.make_solver(base, problem, inner_optimizer, outer_optimizer, **options)


def measure_step(step: Callable[[], object], *, repeats: int = 5) -> dict[str, Any]:
    """Median time of ``step()`` over ``repeats`` calls and the peak bytes saved for backward in one call.

    ``time_s`` is CPU time of this process (``time.process_time``): with torch on one thread it is the step's
    compute, and unlike wall time (``wall_s``, also returned) it does not grow while the process waits for a
    core on a shared machine, where wall times of one step scatter by several times between runs.

    ``step`` is called ``repeats + 2`` times (a warm-up, one counted for memory, ``repeats`` timed), so pass a
    closure whose side effects (an outer step) are acceptable, or one that mutates nothing
    (``solver.hypergradient``).
    """
    step()  # warm-up: first-call costs (lazy initialisation, allocator growth) are not per-step costs
    gc.collect()
    with SavedBytes() as meter:  # a separate call: the hooks slow some paths (vmapped forward mode) 20x
        step()
    cpu, wall = [], []
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        step()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return {"time_s": statistics.median(cpu), "wall_s": statistics.median(wall), "saved_bytes": int(meter.peak)}


def solver_style(name: str) -> dict[str, Any]:
    """Matplotlib line style for a solver label, the same in every gallery figure. The K-step modes compute one
    hypergradient three ways, so forward and mixed are drawn dotted / dash-dotted over reverse, whose curve
    they usually hide."""
    style: dict[str, Any] = {"lw": 1.3}
    if name in SOLVER_NAMES:
        style["color"] = f"C{SOLVER_NAMES.index(name)}"
    if name == "k-step-forward":
        style.update(ls=":", lw=2.0)
    elif name == "k-step-mixed":
        style.update(ls="-.", lw=1.6)
    return style


def _cell(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):  # a metric that does not apply to this row
            return "n/a"
        if abs(value) >= 1e9 or (value != 0 and abs(value) < 1e-3):
            return f"{value:.3e}"
        return f"{value:.0f}" if abs(value) >= 1e4 else f"{value:.4g}"
    return str(value)


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A GitHub markdown table of ``rows`` restricted to ``columns`` (missing entries left blank; floats at
    four significant digits)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def save_figure(fig: Any, name: str, directory: Path | None = None) -> Path:
    """Write ``fig`` to ``docs/img/examples_<name>.png`` (or ``directory``), close it and return the path."""
    import matplotlib.pyplot as plt

    path = (IMG_DIR if directory is None else Path(directory)) / f"examples_{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def common_args(description: str) -> argparse.ArgumentParser:
    """The arguments every gallery example takes; an example adds its own before ``parse_args``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true",
                   help="the reduced run the tests use (seconds); writes nothing unless --out is given")
    p.add_argument("--seed", type=int, default=0, help="seed of the data split, corruption and initialisation")
    p.add_argument("--out", default=None,
                   help="JSON file for the results (default docs/data/examples_<name>.json; "
                        "with --quick, none); the figure goes beside it")
    p.add_argument("--solvers", default=None,
                   help=f"comma-separated labels among {','.join(SOLVER_NAMES)} (default: all that apply)")
    return p


def select_solvers(arg: str | None, applicable: Iterable[str]) -> list[str]:
    """The labels ``--solvers`` asks for (``None``: every applicable one), refusing unknown or inapplicable ones."""
    applicable = list(applicable)
    if arg is None:
        return applicable
    chosen = [s.strip() for s in arg.split(",") if s.strip()]
    bad = [s for s in chosen if s not in applicable]
    if bad:
        raise SystemExit(f"--solvers: {', '.join(bad)} not applicable here; choose among {','.join(applicable)}")
    return chosen


def write_outputs(name: str, args: argparse.Namespace, results: dict[str, Any], fig: Any) -> dict[str, Path]:
    """Save the figure and the JSON results where ``args`` says: docs/ for a full run, beside ``--out`` if
    given, nowhere for a ``--quick`` run without ``--out`` (so tests and smoke runs leave docs/ alone)."""
    import matplotlib.pyplot as plt

    if args.out is None and args.quick:
        plt.close(fig)
        return {}
    out = Path(args.out) if args.out is not None else DATA_DIR / f"examples_{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=float) + "\n")
    fig_path = save_figure(fig, name, None if args.out is None else out.parent)
    return {"json": out, "figure": fig_path}


def setup_torch(seed: int) -> None:
    """One thread (bitwise reproducible on CPU, and the gallery's timings are per core) and a fixed seed."""
    torch.set_num_threads(1)
    torch.manual_seed(seed)


__all__ = ["SOLVER_NAMES", "SavedBytes", "build_solver", "common_args", "markdown_table", "measure_step",
           "save_figure", "select_solvers", "setup_torch", "solver_options", "solver_style", "write_outputs"]
