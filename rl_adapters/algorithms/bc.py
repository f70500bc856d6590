"""Behaviour cloning: minimise ``E_(s,a)~D ||pi(s) - a||^2`` with a deterministic tanh actor.

With ``top_fraction < 1`` it is filtered BC ("%BC", Chen et al. 2021, Decision Transformer, section 5.3):
the same loss on the transitions of the best ``top_fraction`` of trajectories by return only, the ceiling
a learned reweighting of the data (VACO) should approach on mixed-quality data.
"""

from __future__ import annotations

import dataclasses

import torch

from ..data import Batch, OfflineData
from ..networks import DeterministicActor
from .base import Algorithm, BaseConfig, adam, register
from .options import learning_rate, option


@dataclasses.dataclass
class BCConfig(BaseConfig):
    actor_lr: float = learning_rate(3e-4, "Adam learning rate of the actor")
    top_fraction: float = option(
        1.0, "share of trajectories, best return first, that BC trains on: 1.0 is plain BC, 0.1 is %BC-10 (the whole "
        "dataset still sets the observation normalisation)", range=(0, 1, True, False), unit="fraction of trajectories")


@register
class BC(Algorithm):
    name = "bc"
    stackable = True
    Config = BCConfig
    config: BCConfig

    def build(self) -> None:
        c = self.config
        self.actor = DeterministicActor(
            self.obs_dim,
            self.act_dim,
            self.stats.action_low,
            self.stats.action_high,
            hidden=(c.hidden_dim, c.hidden_dim),
        )
        self.modules = {"actor": self.actor}

    def build_optimizers(self) -> None:
        self.actor_opt = adam(self.actor.parameters(), lr=self.config.actor_lr)
        self.optimizers = {"actor": self.actor_opt}

    def training_data(self, data: OfflineData) -> OfflineData:
        return data.top_trajectories(self.config.top_fraction)

    def update(self, batch: Batch) -> dict[str, float]:
        out = self.optimize("actor", self.actor_loss, batch)
        self.step += 1
        return self.metrics(out)

    def actor_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = (self.actor(batch.obs) - batch.actions).pow(2).sum(-1).mean()
        return loss, {"actor_loss": loss}
