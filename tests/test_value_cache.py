"""The value-phase cache: a VACO run that starts from another run's value phase is the run without it."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rl_adapters.training import TrainConfig, train
from rl_adapters.training.metrics import TIMING_FIELDS


def _cfg(dataset: str, out: Path, solver: str, cache: Path | None, **hp: object) -> TrainConfig:
    return TrainConfig(algo="vaco", dataset=dataset, steps=40, seed=3, device="cpu", out=str(out), eval_every=20,
                       eval_episodes=1, checkpoint_every=40, log_every=5, progress=False, plot=False,
                       value_cache=None if cache is None else str(cache),
                       hparams={"hidden_dim": 16, "scorer_hidden_dim": 8, "batch_size": 16, "value_fraction": 0.5,
                                "solver": solver, "k": 2, **hp})


def _rows(out: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items() if k not in TIMING_FIELDS}
            for x in (out / "metrics.jsonl").read_text().splitlines()]


def _params(out: Path) -> dict[str, torch.Tensor]:
    st = torch.load(out / "checkpoint.pt", weights_only=True)["algorithm"]
    return {f"{m}.{k}": v for m, sd in st["modules"].items() for k, v in sd.items()}


def test_a_run_from_the_cache_equals_the_run_without_it(tiny_dataset: str, tmp_path: Path) -> None:
    plain = train(_cfg(tiny_dataset, tmp_path / "plain", "one_step", None))
    # a K-step run fills the cache with its value phase (steps 1-20) ...
    first = train(_cfg(tiny_dataset, tmp_path / "kstep", "k_step", tmp_path / "cache"))
    assert first["value_phase_from"] is None
    entries = list((tmp_path / "cache").iterdir())
    assert len(entries) == 1 and (entries[0] / "checkpoint.pt").exists()
    # ... and a one-step run with another bi-level option starts from it
    cached = train(_cfg(tiny_dataset, tmp_path / "cached", "one_step", tmp_path / "cache"))
    assert cached["value_phase_from"] == str(entries[0])
    # the run says which updates it took over (the grid's ETA leaves them out of its rate); the others do not
    from benchmarks.grid import skipped_steps

    assert skipped_steps(tmp_path / "cached") == 20 and skipped_steps(tmp_path / "kstep") == 0
    assert _rows(tmp_path / "cached") == _rows(tmp_path / "plain")
    a, b = _params(tmp_path / "plain"), _params(tmp_path / "cached")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert cached["final_return"] == plain["final_return"]
    # the cached phase's rows are the K-step run's (the phase does not depend on the solver)
    phase = [r for r in _rows(tmp_path / "kstep") if r["step"] <= 20]
    assert [r for r in _rows(tmp_path / "cached") if r["step"] <= 20] == phase


def test_a_setting_the_phase_reads_gets_its_own_entry(tiny_dataset: str, tmp_path: Path) -> None:
    train(_cfg(tiny_dataset, tmp_path / "a", "one_step", tmp_path / "cache"))
    other = train(_cfg(tiny_dataset, tmp_path / "b", "one_step", tmp_path / "cache", expectile=0.8))
    assert other["value_phase_from"] is None and len(list((tmp_path / "cache").iterdir())) == 2
    # an option of the bi-level phase only (the scorer's learning rate) reuses the first entry
    same = train(_cfg(tiny_dataset, tmp_path / "c", "one_step", tmp_path / "cache", scorer_lr=1e-3))
    assert same["value_phase_from"] is not None and len(list((tmp_path / "cache").iterdir())) == 2
