"""Checkpoints: the algorithm's state plus every RNG state, written atomically and read with
``torch.load(weights_only=True)`` (a checkpoint from elsewhere cannot run code when loaded)."""

from __future__ import annotations

import json
import os
import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..algorithms import Algorithm
from ..errors import CheckpointError

__all__ = ["CHECKPOINT", "atomic_write_bytes", "atomic_write_json", "first_line", "load_checkpoint",
           "read_checkpoint", "restore_checkpoint", "save_checkpoint"]

CHECKPOINT = "checkpoint.pt"


def atomic_write_bytes(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # readers see the old or the new file, never a torn one


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, lambda f: f.write(json.dumps(obj, indent=2).encode()))


def _global_rng_states() -> dict[str, Any]:
    """torch, CUDA, numpy and Python RNG states as tensors and plain values (``weights_only``-loadable)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy_rng": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python_rng": {
            "version": int(version),
            "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
    }


def _set_global_rng_states(state: dict[str, Any]) -> None:
    """Put back what :func:`_global_rng_states` saved."""
    torch.set_rng_state(state["torch_rng"].cpu())
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
    n, p = state["numpy_rng"], state["python_rng"]
    np.random.set_state((n["kind"], n["keys"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    random.setstate((p["version"], tuple(int(x) for x in p["internal"].tolist()), p["gauss_next"]))


def save_checkpoint(path: Path, algo: Algorithm, sampler: torch.Generator, extra: dict[str, Any]) -> None:
    """Atomically write algorithm state plus every RNG state to ``path`` (tensors and plain values only)."""
    state = {
        "algorithm": algo.state_dict(),
        "sampler_rng": sampler.get_state(),
        **_global_rng_states(),
        **extra,
    }
    atomic_write_bytes(path, lambda f: torch.save(state, f))


_CHECKPOINT_KEYS = ("algorithm", "sampler_rng", "torch_rng", "numpy_rng", "python_rng", "step")


def read_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load ``path`` with ``torch.load(weights_only=True)``; a :class:`~rl_adapters.errors.CheckpointError`
    (one line, naming the file) if it is missing, unreadable, holds a pickled object, or lacks a key."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"--resume {path.parent}: no {path.name} there (the run never reached a "
                              f"checkpoint); start it again without --resume")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = re.search(r"GLOBAL ([\w.]+)", str(e))
        if unsafe is None:  # garbage bytes the unpickler choked on
            raise CheckpointError(f"{path}: not a readable checkpoint (UnpicklingError); it is truncated or not "
                                  f"a torch file: restore it or start the run again without --resume") from e
        raise CheckpointError(
            f"{path}: refused: it holds a pickled Python object (GLOBAL {unsafe.group(1)}) that could run code "
            f"when loaded; bilevel-rl checkpoints hold only tensors and plain values, so this file was not "
            f"written by bilevel-rl train (use one that was, or start the run again without --resume)"
        ) from e
    except Exception as e:  # truncated zip (RuntimeError), empty file (EOFError), random bytes, ...
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({type(e).__name__}: {first_line(e) or 'empty file'}); it "
            f"is truncated or not a torch file: restore it or start the run again without --resume"
        ) from e
    missing = [k for k in _CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a bilevel-rl checkpoint (no {', '.join(missing)}); start the run "
                              f"again without --resume")
    return state


def first_line(e: BaseException) -> str:
    """The first sentence of an exception's message (library messages run to paragraphs)."""
    text = str(e).strip()
    return text.splitlines()[0].split(". ")[0][:160] if text else ""


def restore_checkpoint(state: dict[str, Any], algo: Algorithm, sampler: torch.Generator) -> None:
    """Put a :func:`read_checkpoint` dict back into ``algo``, ``sampler`` and the global RNGs."""
    algo.load_state_dict(state["algorithm"])
    sampler.set_state(state["sampler_rng"].cpu())
    _set_global_rng_states(state)


def load_checkpoint(path: Path, algo: Algorithm, sampler: torch.Generator) -> dict[str, Any]:
    """Restore what :func:`save_checkpoint` wrote; returns the checkpoint dict (for ``step`` etc.)."""
    state = read_checkpoint(path, algo.device)
    restore_checkpoint(state, algo, sampler)
    return state
