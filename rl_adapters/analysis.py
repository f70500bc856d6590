"""The VACO weight analysis under its first name: ``rl_adapters.analysis`` is :mod:`rl_adapters.vaco_analysis`
(kept so that scripts written against ``rl_adapters.analysis.analyze_weights`` keep working)."""

from .vaco_analysis import *
from .vaco_analysis import __all__  # noqa: F401
