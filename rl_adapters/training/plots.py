"""The learning-curve figure of a run (evaluation scores and training losses from ``metrics.jsonl``)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .metrics import loss_series, read_metrics

if TYPE_CHECKING:
    from ..algorithms import Algorithm

__all__ = ["decade_label", "learning_curve_figure", "loss_axis", "plot_learning_curve", "symlog_decades", "write_run_figures"]


def decade_label(v: float, linthresh: float = 1.0, stride: int = 1) -> str:
    """``0``, ``10²``, ``-10⁻³`` for the decade ticks of a symlog axis; every ``stride``-th decade only
    (counted from ``linthresh``), and nothing for a tick that is not a decade."""
    if v == 0:
        return "0"
    exp = round(math.log10(abs(v)))
    if not math.isclose(abs(v), 10.0**exp, rel_tol=1e-6):
        return ""
    if (exp - round(math.log10(linthresh))) % stride:
        return ""
    return f"${'-' if v < 0 else ''}10^{{{exp}}}$"


def symlog_decades(ax: Any, values: list[float]) -> None:
    """Symlog y axis labelled at decades only, linear below the decade of the 5th percentile of |v|.

    Losses of one run span decades and may be negative (TD3+BC's actor loss): a log scale on both
    sides of 0.  matplotlib's default symlog labels put ``1.59708x10^-1``-style labels next to ``0``;
    here the linear part is as tall as a decade and at most ~10 decades carry a label.
    """
    from matplotlib.ticker import FuncFormatter, NullLocator, SymmetricalLogLocator

    magnitudes = sorted(abs(v) for v in values if v != 0 and math.isfinite(v))
    if not magnitudes:
        return
    linthresh = 10.0 ** math.floor(math.log10(magnitudes[len(magnitudes) // 20]))
    ax.set_yscale("symlog", linthresh=linthresh, linscale=1.0)
    ax.yaxis.set_major_locator(SymmetricalLogLocator(base=10, linthresh=linthresh, subs=[1.0]))
    ax.yaxis.set_minor_locator(NullLocator())
    lo, hi = ax.get_ylim()
    decades = sum(math.log10(max(abs(x), linthresh) / linthresh) + 1 for x in (lo, hi) if abs(x) > linthresh)
    stride = max(1, math.ceil(decades / 10))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: decade_label(v, linthresh, stride)))


def loss_axis(ax: Any, values: list[float]) -> None:
    """The y scale of one loss: linear when its values keep one sign within a factor of 30 (ordinary tick labels),
    log when they are positive and span more, :func:`symlog_decades` when they cross or touch 0 or are negative
    and span more."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return
    lo, hi = min(finite), max(finite)
    same_sign = lo > 0 or hi < 0
    magnitudes = [abs(v) for v in finite]
    if same_sign and max(magnitudes) <= 30 * min(magnitudes):
        return
    if lo > 0:
        ax.set_yscale("log")
        return
    symlog_decades(ax, finite)


def atomic_savefig(fig: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, dpi=100, format=path.suffix.lstrip(".") or "png")
    os.replace(tmp, path)


def learning_curve_figure(rows: list[dict[str, Any]], title: str) -> Any:
    """The figure of :func:`plot_learning_curve` for the rows of ``metrics.jsonl``: the evaluation scores in the
    first panel, then **one panel per loss** (a loss of its own scale on its own symlog axis, so no series hides
    under another, e.g. VACO's ``bc_loss`` under ``inner_loss`` or ASPC's ``actor_loss`` under ``outer_loss``).
    Each panel's title gives its number of points; series of up to 60 points are drawn with markers."""
    import matplotlib.pyplot as plt

    evals = [r for r in rows if "eval_return" in r]
    series = loss_series(rows)
    n = 1 + len(series)
    ncols = min(n, 3)
    nrows = -(-n // ncols)
    fig, grid = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 2.9 * nrows), squeeze=False)
    axes = list(grid.flat)
    ax = axes[0]
    if evals:
        key = "eval_normalized_score" if evals[0].get("eval_normalized_score") is not None else "eval_return"
        ax.plot([r["step"] for r in evals], [r[key] for r in evals], marker="o", markersize=4, color="black")
        ax.set_ylabel(key)
    ax.set_title(f"evaluation ({len(evals)} points)", fontsize=9)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, (steps, values)) in enumerate(series.items()):
        ax = axes[1 + i]
        ax.plot(steps, values, color=colours[i % len(colours)], linewidth=1.2,
                marker="." if len(steps) <= 60 else None, markersize=5)
        loss_axis(ax, values)
        ax.set_title(f"{name} ({len(steps)} points)", fontsize=9)
    for ax in axes[:n]:
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_learning_curve(metrics_path: Path, png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = learning_curve_figure(read_metrics(metrics_path), title)
    atomic_savefig(fig, png)
    plt.close(fig)


def write_run_figures(algo: Algorithm, metrics_path: Path, out: Path, title: str) -> None:
    """``learning_curve.png`` and the algorithm's own figures (:meth:`Algorithm.plot_metrics`, e.g. ASPC's
    ``alpha_curve.png``) into ``out``."""
    plot_learning_curve(metrics_path, out / "learning_curve.png", title)
    algo.plot_metrics(metrics_path, out)
