"""``metrics.jsonl``: the logging window that averages an algorithm's diagnostics, and reading the file back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .checkpoint import atomic_write_bytes

__all__ = ["TIMING_FIELDS", "MetricsWindow", "loss_series", "read_metrics", "truncate_metrics"]

#: Metrics that measure time, not training: the only fields in which a resumed run's
#: ``metrics.jsonl`` may differ from an uninterrupted one.
TIMING_FIELDS = ("updates_per_s",)


class MetricsWindow:
    """Per-key running sums of the diagnostics since the last logged row.

    Counts are per key: some metrics exist only on some steps (TD3+BC's actor loss, VACO's bi-level phase),
    and a mean over the whole window would shrink them. :meth:`state` is saved in checkpoints, so a resumed
    run logs the rows an uninterrupted one does.
    """

    def __init__(self, state: dict[str, Any] | None = None, train_time: float = 0.0) -> None:
        state = state or {}
        self.sums: dict[str, float] = dict(state.get("sums", {}))
        self.counts: dict[str, int] = dict(state.get("counts", {}))
        self.n: int = state.get("n", 0)
        self.start_time = train_time  # training seconds when the window (or this session) began

    def add(self, info: dict[str, float]) -> None:
        for k, v in info.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
            self.counts[k] = self.counts.get(k, 0) + 1
        self.n += 1

    def flush(self, step: int, train_time: float) -> dict[str, Any]:
        """The row for ``step`` (per-key means and ``updates_per_s``); starts a new window."""
        row = {
            "step": step,
            **{k: v / self.counts[k] for k, v in self.sums.items()},
            "updates_per_s": self.n / max(train_time - self.start_time, 1e-9),
        }
        self.sums, self.counts, self.n, self.start_time = {}, {}, 0, train_time
        return row

    def state(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "counts": dict(self.counts), "n": self.n}


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of ``metrics.jsonl``; a torn last line (a kill mid-write) is skipped."""
    rows = []
    for ln in path.read_text().splitlines():
        if ln.strip():
            try:
                rows.append(json.loads(ln))
            except json.JSONDecodeError:
                continue
    return rows


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop metric lines written after the checkpoint we resume from (they will be written again)."""
    if not path.exists():
        return
    keep = [json.dumps(r) for r in read_metrics(path) if r.get("step", 0) <= last_step]
    atomic_write_bytes(path, lambda f: f.write("".join(ln + "\n" for ln in keep).encode()))


def loss_series(rows: list[dict[str, Any]]) -> dict[str, tuple[list[int], list[float]]]:
    """``{name: (steps, values)}`` for every ``*loss`` metric of the training rows of ``metrics.jsonl``.

    Each series covers only the rows that report it: VACO's bi-level losses start at its second phase,
    TD3+BC's actor loss is absent from windows without an actor update.
    """
    series: dict[str, tuple[list[int], list[float]]] = {}
    for r in rows:
        if "eval_return" in r:
            continue
        for k, v in r.items():
            if k.endswith("loss") and isinstance(v, (int, float)) and not isinstance(v, bool):
                steps, values = series.setdefault(k, ([], []))
                steps.append(int(r["step"]))
                values.append(float(v))
    return dict(sorted(series.items()))
