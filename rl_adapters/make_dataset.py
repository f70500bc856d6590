"""Dataset generation under its first name: ``rl_adapters.make_dataset`` is :mod:`rl_adapters.datasets`
(kept so that scripts and docs written against ``rl_adapters.make_dataset.make_suite`` keep working)."""

from .datasets import *
from .datasets import __all__  # noqa: F401
