"""Offline training loop: sample -> update -> log -> evaluate -> checkpoint, resumable bit for bit.

Reproducibility contract: a run interrupted after a checkpoint and resumed with ``resume=True``
reaches exactly the parameters of an uninterrupted run with the same seed (same device, same
thread count).  This holds because every source of randomness is saved in the checkpoint: the
algorithm's networks, optimizers, schedulers, step counter and noise generator, the batch-sampling
``torch.Generator``, the global torch (and CUDA) RNG, numpy's and Python's global RNGs.  Evaluation
uses its own env seeds and touches none of them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .algorithms import Algorithm, make_algorithm, make_config
from .data import OfflineData, load_dataset
from .evaluation import evaluate

__all__ = [
    "NonFiniteLossError",
    "TrainConfig",
    "load_checkpoint",
    "resolve_device",
    "save_checkpoint",
    "train",
]

CHECKPOINT = "checkpoint.pt"


class NonFiniteLossError(RuntimeError):
    """An update produced a NaN/inf diagnostic; the run stopped, the last good checkpoint is kept."""


@dataclass
class TrainConfig:
    algo: str
    dataset: str
    steps: int = 100_000
    seed: int = 0
    device: str = "auto"
    out: str = "runs/default"
    eval_every: int = 10_000
    eval_episodes: int = 10
    checkpoint_every: int = 10_000
    log_every: int = 1_000
    normalized_score: bool = True
    tensorboard: bool = False
    progress: bool = True
    plot: bool = True
    hparams: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> cuda if available else cpu; anything else is passed to ``torch.device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "--device cuda requested but torch.cuda.is_available() is False (CPU-only torch build?)"
        )
    return dev


def _atomic_write_bytes(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # readers see the old or the new file, never a torn one


def _atomic_write_json(path: Path, obj: Any) -> None:
    _atomic_write_bytes(path, lambda f: f.write(json.dumps(obj, indent=2).encode()))


def save_checkpoint(path: Path, algo: Algorithm, sampler: torch.Generator, extra: dict[str, Any]) -> None:
    """Atomically write algorithm state plus every RNG state to ``path``."""
    state = {
        "algorithm": algo.state_dict(),
        "sampler_rng": sampler.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy_rng": np.random.get_state(),
        "python_rng": random.getstate(),
        **extra,
    }
    _atomic_write_bytes(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path, algo: Algorithm, sampler: torch.Generator) -> dict[str, Any]:
    """Restore what :func:`save_checkpoint` wrote; returns the checkpoint dict (for ``step`` etc.)."""
    state = torch.load(path, map_location=algo.device, weights_only=False)
    algo.load_state_dict(state["algorithm"])
    sampler.set_state(state["sampler_rng"].cpu())
    torch.set_rng_state(state["torch_rng"].cpu())
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
    np.random.set_state(state["numpy_rng"])
    random.setstate(state["python_rng"])
    return state


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Drop metric lines written after the checkpoint we resume from (they will be written again)."""
    if not path.exists():
        return
    keep = [
        ln
        for ln in path.read_text().splitlines()
        if ln.strip() and json.loads(ln).get("step", 0) <= last_step
    ]
    path.write_text("".join(ln + "\n" for ln in keep))


def _plot_curve(metrics_path: Path, png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(ln) for ln in metrics_path.read_text().splitlines() if ln.strip()]
    evals = [r for r in rows if "eval_return" in r]
    losses = [r for r in rows if "eval_return" not in r]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    if evals:
        key = "eval_normalized_score" if evals[0].get("eval_normalized_score") is not None else "eval_return"
        axes[0].plot([r["step"] for r in evals], [r[key] for r in evals], marker="o")
        axes[0].set_ylabel(key)
    axes[0].set_xlabel("step")
    axes[0].set_title("evaluation")
    if losses:
        for k in sorted(k for k in losses[0] if k.endswith("loss")):
            axes[1].plot([r["step"] for r in losses], [r.get(k, math.nan) for r in losses], label=k)
        axes[1].set_yscale("symlog")
        axes[1].legend(fontsize=7)
    axes[1].set_xlabel("step")
    axes[1].set_title("training losses")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def _evaluate(algo: Algorithm, data: OfflineData, cfg: TrainConfig, step: int) -> dict[str, Any]:
    res = evaluate(
        algo, data, episodes=cfg.eval_episodes, seed=cfg.seed * 10_000, normalized=cfg.normalized_score
    )
    return {
        "step": step,
        "eval_return": res.mean_return,
        "eval_return_std": res.std_return,
        "eval_normalized_score": res.normalized_score,
        "eval_episode_length": float(res.lengths.mean()),
    }


def train(
    cfg: TrainConfig,
    resume: bool = False,
    max_steps_this_session: int | None = None,
    data: OfflineData | None = None,
) -> dict[str, Any]:
    """Train ``cfg.algo`` on ``cfg.dataset`` for ``cfg.steps`` updates, writing into ``cfg.out``.

    Files: ``config.json``, ``metrics.jsonl`` (one JSON object per line: training means every
    ``log_every`` steps, evaluations every ``eval_every``), ``checkpoint.pt`` (every
    ``checkpoint_every`` steps and at the end), ``summary.json``, ``learning_curve.png``, ``tb/``.
    ``resume=True`` continues from ``checkpoint.pt``.  ``max_steps_this_session`` stops after that many
    updates in this call (checkpointing first), to simulate or schedule interruptions.  ``data`` skips
    loading when the caller already has the dataset on the right device.
    Returns the summary dict (``status`` is ``"finished"`` or ``"interrupted"``).
    """
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    make_config(cfg.algo, **cfg.hparams)  # validate hyper-parameters before the (slow) data load
    if data is None:
        data = load_dataset(cfg.dataset, device)
    elif data.device != device:
        data = data.to(device)
    if (
        cfg.normalized_score
        and cfg.eval_episodes > 0
        and (data.ref_min_score is None or data.ref_max_score is None)
    ):
        from .evaluation import normalized_score

        normalized_score(0.0, data.ref_min_score, data.ref_max_score, f"dataset {data.name!r}")  # raises

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    algo = make_algorithm(
        cfg.algo,
        data.obs_dim,
        data.act_dim,
        data.stats,
        device=device,
        seed=cfg.seed,
        total_steps=cfg.steps,
        **cfg.hparams,
    )
    sampler = data.make_generator(cfg.seed)
    batch_size = algo.config.batch_size
    metrics_path, ckpt_path = out / "metrics.jsonl", out / CHECKPOINT
    start, train_time, prev_wall, last_eval = 0, 0.0, 0.0, None
    if resume:
        if not ckpt_path.exists():
            raise FileNotFoundError(
                f"--resume {out}: no {CHECKPOINT} there (the run never reached a checkpoint); "
                f"start it again without --resume"
            )
        state = load_checkpoint(ckpt_path, algo, sampler)
        start, train_time, prev_wall = state["step"], state["train_time_s"], state["wall_time_s"]
        last_eval = state.get("last_eval")
        _truncate_metrics(metrics_path, start)
    else:
        metrics_path.write_text("")
        for stale in (out / "summary.json", ckpt_path):
            stale.unlink(missing_ok=True)
    _atomic_write_json(
        out / "config.json",
        dataclasses.asdict(cfg) | {"resolved_device": str(device), "dataset_size": len(data)},
    )

    writer = None
    if cfg.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tb"), purge_step=start + 1 if resume else None)

    from tqdm.auto import tqdm

    bar = tqdm(
        total=cfg.steps,
        initial=start,
        disable=not cfg.progress,
        desc=f"{cfg.algo} {cfg.dataset}",
        dynamic_ncols=True,
        file=sys.stderr,
    )
    session_start = time.perf_counter()
    # Per-key counts: some metrics exist only on some steps (TD3+BC's actor loss, VACO's bi-level phase),
    # and a mean over the whole window would shrink them.
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    n_sum = 0
    window_train = train_time

    def log(row: dict[str, Any]) -> None:
        with open(metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if writer is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and v is not None:
                    writer.add_scalar(k, v, row["step"])

    def checkpoint(step: int) -> None:
        save_checkpoint(
            ckpt_path,
            algo,
            sampler,
            {
                "step": step,
                "train_time_s": train_time,
                "last_eval": last_eval,
                "wall_time_s": prev_wall + time.perf_counter() - session_start,
                "config": dataclasses.asdict(cfg),
            },
        )

    step = start
    status = "finished"
    try:
        for step in range(start + 1, cfg.steps + 1):
            t0 = time.perf_counter()
            info = algo.update(data.sample(batch_size, sampler))
            train_time += time.perf_counter() - t0
            bad = [k for k, v in info.items() if not math.isfinite(v)]
            if bad:
                raise NonFiniteLossError(
                    f"step {step}: non-finite {', '.join(f'{k}={info[k]}' for k in bad)} for {cfg.algo} on "
                    f"{cfg.dataset}; stopped. Last good checkpoint kept at {ckpt_path} "
                    f"(lower the learning rates or check the data)."
                )
            for k, v in info.items():
                sums[k] = sums.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + 1
            n_sum += 1
            if step % cfg.log_every == 0 or step == cfg.steps:
                row = {
                    "step": step,
                    **{k: v / counts[k] for k, v in sums.items()},
                    "updates_per_s": n_sum / max(train_time - window_train, 1e-9),
                }
                log(row)
                bar.set_postfix(
                    {k: f"{row[k]:.3g}" for k in row if k.endswith("loss")}
                    | ({"score": f"{last_eval:.1f}"} if last_eval is not None else {}),
                    refresh=False,
                )
                sums, counts, n_sum, window_train = {}, {}, 0, train_time
            if (
                cfg.eval_episodes > 0
                and cfg.eval_every > 0
                and step % cfg.eval_every == 0
                and step != cfg.steps
            ):
                row = _evaluate(algo, data, cfg, step)
                last_eval = row["eval_normalized_score"] if cfg.normalized_score else row["eval_return"]
                log(row)
            if cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0 and step != cfg.steps:
                checkpoint(step)
            bar.update(1)
            if (
                max_steps_this_session is not None
                and step - start >= max_steps_this_session
                and step < cfg.steps
            ):
                checkpoint(step)
                status = "interrupted"
                break
    finally:
        bar.close()

    summary: dict[str, Any] = {
        "status": status,
        "algo": cfg.algo,
        "dataset": cfg.dataset,
        "seed": cfg.seed,
        "steps": step,
        "device": str(device),
        "updates_per_s": (step / train_time) if train_time > 0 else None,
    }
    if status == "finished":
        final = _evaluate(algo, data, cfg, step) if cfg.eval_episodes > 0 else {}
        if final:
            log(final)
            summary.update(
                final_normalized_score=final["eval_normalized_score"],
                final_return=final["eval_return"],
                final_return_std=final["eval_return_std"],
            )
            last_eval = final["eval_normalized_score"] if cfg.normalized_score else final["eval_return"]
        checkpoint(step)
    summary["wall_time_s"] = prev_wall + time.perf_counter() - session_start
    summary["hparams"] = dataclasses.asdict(algo.config)
    if writer is not None:
        writer.close()
    if status == "finished":
        _atomic_write_json(out / "summary.json", summary)
        if cfg.plot:
            _plot_curve(
                metrics_path, out / "learning_curve.png", f"{cfg.algo} on {cfg.dataset}, seed {cfg.seed}"
            )
            if hasattr(algo, "plot_metrics"):  # algorithm-specific figures, e.g. ASPC's alpha_curve.png
                algo.plot_metrics(metrics_path, out)
    return summary
