"""The training API under its first name: ``rl_adapters.trainer`` is :mod:`rl_adapters.training` (kept so that
scripts and docs written against ``rl_adapters.trainer.train`` keep working)."""

from .training import *
from .training import __all__  # noqa: F401
