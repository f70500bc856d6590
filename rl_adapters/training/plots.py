"""The learning-curve figure of a run (evaluation scores and training losses from ``metrics.jsonl``)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .metrics import loss_series, read_metrics

if TYPE_CHECKING:
    from ..algorithms import Algorithm

__all__ = ["decade_label", "plot_learning_curve", "symlog_decades", "write_run_figures"]


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


def atomic_savefig(fig: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, dpi=100, format=path.suffix.lstrip(".") or "png")
    os.replace(tmp, path)


def plot_learning_curve(metrics_path: Path, png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    evals = [r for r in rows if "eval_return" in r]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    if evals:
        key = "eval_normalized_score" if evals[0].get("eval_normalized_score") is not None else "eval_return"
        axes[0].plot([r["step"] for r in evals], [r[key] for r in evals], marker="o")
        axes[0].set_ylabel(key)
    axes[0].set_xlabel("step")
    axes[0].set_title(f"evaluation ({len(evals)} points)")
    series = loss_series(rows)
    if series:
        for k, (steps, values) in series.items():
            axes[1].plot(steps, values, label=k, marker="." if len(steps) < 3 else None)
        symlog_decades(axes[1], [v for _, values in series.values() for v in values])
        axes[1].legend(fontsize=7)
    axes[1].set_xlabel("step")
    axes[1].set_title("training losses")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    atomic_savefig(fig, png)
    plt.close(fig)


def write_run_figures(algo: Algorithm, metrics_path: Path, out: Path, title: str) -> None:
    """``learning_curve.png`` and the algorithm's own figures (:meth:`Algorithm.plot_metrics`, e.g. ASPC's
    ``alpha_curve.png``) into ``out``."""
    plot_learning_curve(metrics_path, out / "learning_curve.png", title)
    algo.plot_metrics(metrics_path, out)
