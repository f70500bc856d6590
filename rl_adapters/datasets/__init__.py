"""Generate Minari datasets: a D4RL-style suite from online TD3, or tiny scripted ones for tests.

Suite (``make_suite``), for any gymnasium MuJoCo (Box/Box) env id:

1. train a behaviour policy online with TD3 (Fujimoto et al. 2018; exploration noise 0.1,
   ``start_steps`` uniform-random warm-up), evaluating and snapshotting the actor periodically;
2. ``expert`` = best snapshot, ``medium`` = first snapshot whose deterministic return reaches
   ``medium_fraction`` (0.4) of the way from random to expert; both rolled out with Gaussian
   action noise 0.1; ``medium-replay`` = every episode the learner saw until the medium snapshot;
   ``random`` = uniform random actions;
3. reference scores: ``ref_min_score`` = mean return of the random policy, ``ref_max_score`` =
   deterministic return of the expert snapshot, stored in every dataset's metadata (``env=`` is
   passed to ``minari.create_dataset_from_buffers``, without which minari drops them).

Tiny datasets (``make_tiny_dataset``) roll given behaviour policies (default: a good PD controller
and a bad random one on ``InvertedPendulum-v5``) for a few short episodes, with no training.
"""

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
