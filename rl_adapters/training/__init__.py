"""Offline training: the loop (:func:`train`), its request (:class:`TrainConfig`), checkpoints, the
``metrics.jsonl`` window and the learning-curve plot, one module each."""

from .checkpoint import CHECKPOINT, load_checkpoint, read_checkpoint, restore_checkpoint, save_checkpoint
from .config import DEFAULT_THREADS, TrainConfig, default_eval_every, default_log_every, resolve_device
from .interrupts import Interrupted, StopOnSignals
from .loop import NonFiniteLossError, train
from .metrics import TIMING_FIELDS, loss_series

__all__ = [
    "CHECKPOINT",
    "DEFAULT_THREADS",
    "TIMING_FIELDS",
    "Interrupted",
    "NonFiniteLossError",
    "StopOnSignals",
    "TrainConfig",
    "default_eval_every",
    "default_log_every",
    "load_checkpoint",
    "loss_series",
    "read_checkpoint",
    "resolve_device",
    "restore_checkpoint",
    "save_checkpoint",
    "train",
]
