"""The figure an ASPC run adds to its learning curve: the learned scale and the Q EMA over training."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["plot_scale_curve"]


def plot_scale_curve(metrics_path: Path, out_dir: Path, scale_name: str) -> None:
    """Write ``<scale_name>_curve.png`` into ``out_dir`` from the rows of ``metrics.jsonl`` that report the scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(ln) for ln in Path(metrics_path).read_text().splitlines() if ln.strip()]
    rows = [r for r in rows if scale_name in r]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    axes[0].plot([r["step"] for r in rows], [r[scale_name] for r in rows])
    axes[0].set_ylabel(scale_name)
    axes[0].set_title(f"{scale_name} = softplus(rho)")
    axes[1].plot([r["step"] for r in rows], [r["ema_q"] for r in rows])
    axes[1].set_title("EMA of mean Q(s, pi(s)) at outer updates")
    for ax in axes:
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(Path(out_dir) / f"{scale_name}_curve.png", dpi=100)
    plt.close(fig)
