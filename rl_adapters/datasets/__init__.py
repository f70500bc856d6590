"""Making Minari datasets: a D4RL-style suite from online TD3 (:func:`make_suite`, see :mod:`.suite`), or tiny
scripted ones for tests (:func:`make_tiny_dataset`: a good PD controller and a bad random policy on
``InvertedPendulum-v5``, a few short episodes, no training)."""

from .online_td3 import OnlineTD3
from .rollout import make_tiny_dataset, pendulum_pd_policy, random_policy, rollout_episodes, write_dataset
from .suite import make_suite

__all__ = [
    "OnlineTD3",
    "make_suite",
    "make_tiny_dataset",
    "pendulum_pd_policy",
    "random_policy",
    "rollout_episodes",
    "write_dataset",
]
