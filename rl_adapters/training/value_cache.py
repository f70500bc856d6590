"""Reusing a value-only first phase across runs that differ only after it (``--value-cache DIR``).

VACO's two-phase schedule trains IQL's value networks alone for its first ``value_steps`` updates; what it
does then does not depend on the solver or on any option of the bi-level phase. Three solvers x N seeds
therefore repeat the same value phase three times per seed. With a cache folder, the first run saves its state
at the end of that phase (the value networks and their optimisers, every RNG, the logging window and the
metrics rows so far) under a key made of everything the phase reads; a later run with the same key starts from
it at step ``value_steps``, with its own fresh actor, scorer and solver (built from the same seed, so equal to
the cached run's at that step). The result is bit for bit the run without the cache
(tests/test_value_cache.py), minus the phase's time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from ..algorithms import Algorithm
from .checkpoint import atomic_write_json, read_checkpoint, restore_checkpoint, save_checkpoint
from .config import TrainConfig
from .metrics import read_metrics

__all__ = ["ValueCache"]

# Run settings the cached phase's state and metrics depend on (the rest: --steps, --out, --checkpoint-every,
# progress, plots, TensorBoard, change nothing in it).
# No evaluation runs in a value-only phase (the policy is untouched), so the evaluation settings are not in it.
_RUN_FIELDS = ("algo", "dataset", "seed", "device", "threads", "log_every", "compile")


class ValueCache:
    """The cache entry of one run: ``DIR/<key>/`` with ``checkpoint.pt``, ``metrics.jsonl`` and ``key.json``."""

    def __init__(self, root: str | Path, cfg: TrainConfig, algo: Algorithm, device: torch.device) -> None:
        self.phase = algo.value_phase()
        assert self.phase is not None
        run = {k: getattr(cfg, k) for k in _RUN_FIELDS} | {"device": str(device)}
        hp = dataclasses.asdict(algo.config)
        self.key = {"run": run, "value_steps": self.phase.steps,
                    "hparams": {k: hp[k] for k in sorted(self.phase.fields)}, "torch": torch.__version__}
        digest = hashlib.sha256(json.dumps(self.key, sort_keys=True, default=str).encode()).hexdigest()[:16]
        name = f"{str(cfg.dataset).replace('/', '_')}__s{cfg.seed}__v{self.phase.steps}__{digest}"
        self.dir = Path(root) / name

    def exists(self) -> bool:
        return (self.dir / "key.json").exists()

    def save(self, algo: Algorithm, sampler: torch.Generator, metrics_path: Path, extra: dict[str, Any]) -> None:
        """Store the state at the end of the phase (first writer wins; a concurrent one is harmless)."""
        tmp = self.dir.with_name(self.dir.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_checkpoint(tmp / "checkpoint.pt", algo, sampler, extra)
        shutil.copyfile(metrics_path, tmp / "metrics.jsonl")
        atomic_write_json(tmp / "key.json", self.key)
        try:
            os.replace(tmp, self.dir)
        except OSError:  # another run saved the same entry first
            shutil.rmtree(tmp, ignore_errors=True)

    def restore(self, algo: Algorithm, sampler: torch.Generator, metrics_path: Path) -> dict[str, Any]:
        """Put the cached phase into a freshly built ``algo``: the phase's modules and optimisers and the RNGs
        from the cache, everything else as built. Writes the phase's metrics rows; returns the checkpoint."""
        state = read_checkpoint(self.dir / "checkpoint.pt", algo.device)
        fresh = algo.state_dict()
        cached = state["algorithm"]
        for part, names in (("modules", self.phase.modules), ("optimizers", self.phase.optimizers)):
            for n in names:
                fresh[part][n] = cached[part][n]
        fresh.update(step=cached["step"], generator=cached["generator"], attrs=cached["attrs"])
        state = state | {"algorithm": fresh}
        restore_checkpoint(state, algo, sampler)
        rows = read_metrics(self.dir / "metrics.jsonl")
        metrics_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return state
