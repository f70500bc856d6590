"""The meta-scorer ``w_alpha(s, a, q)``, the batch the bi-level losses read, and statistics of its weights."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ...networks import mlp
from .config import Q_STD_EPS, WEIGHT_NORMS

__all__ = ["MetaScorer", "VACOBatch", "effective_sample_fraction", "standardise", "weight_kl_to_uniform"]


class MetaScorer(nn.Module):
    """``w_alpha(s, a, q) = sigmoid(f_alpha([s, a, q]))``, optionally divided by its batch mean.

    ``q`` is the standardised, detached ``min(Q1, Q2)`` of the pair. With ``weight_norm="batch_mean"``
    the weights of a batch average exactly 1 (the gradient flows through the mean too, so only the
    *relative* weights are learned).
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256, weight_norm: str = "none") -> None:
        super().__init__()
        if weight_norm not in WEIGHT_NORMS:
            raise ValueError(f"weight_norm must be one of {WEIGHT_NORMS}, got {weight_norm!r}")
        self.net = mlp(obs_dim + act_dim + 1, 1, (hidden, hidden))
        self.weight_norm = weight_norm

    def raw(self, obs: torch.Tensor, actions: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """``sigmoid(f_alpha([s, a, q]))`` per pair, shape ``(B,)``, before any normalisation."""
        return torch.sigmoid(self.net(torch.cat([obs, actions, q.unsqueeze(-1)], dim=-1)).squeeze(-1))

    def normalise(self, raw: torch.Tensor) -> torch.Tensor:
        """The weights from the raw sigmoids of one batch (divided by their mean with ``batch_mean``)."""
        return raw / raw.mean() if self.weight_norm == "batch_mean" else raw

    def forward(self, obs: torch.Tensor, actions: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return self.normalise(self.raw(obs, actions, q))


class VACOBatch(NamedTuple):
    """What the bi-level losses read (one object serves as inner and outer batch).

    ``q_in``: standardised detached ``min Q'(s, a)`` (meta-scorer input); ``noisy_obs``: ``s + sigma eps``
    (outer loss); ``q_scale``: ``mean |Q'(s, a)|`` (detached), used when ``outer_q_norm`` is on.
    """

    obs: torch.Tensor
    actions: torch.Tensor
    q_in: torch.Tensor
    noisy_obs: torch.Tensor
    q_scale: torch.Tensor


def weight_kl_to_uniform(w: torch.Tensor) -> torch.Tensor:
    """``KL(p || uniform) = sum_b p_b log(B p_b)`` with ``p = w / sum w``: 0 for equal weights, ``log B`` when
    one sample holds all the weight. Invariant to the weights' common scale, so it penalises only sharpening."""
    p = w / w.sum()
    return (p * torch.log(p * w.numel()).clamp_min(-1e4)).sum()


def effective_sample_fraction(w: torch.Tensor) -> torch.Tensor:
    """``(sum w)^2 / (B sum w^2)`` in ``(0, 1]``: 1 for equal weights, ``1/B`` when one sample holds them all."""
    return w.sum().pow(2) / (w.numel() * w.pow(2).sum())


def standardise(q: torch.Tensor) -> torch.Tensor:
    """``(q - mean(q)) / (std(q) + 1e-6)`` over the batch (population std)."""
    return (q - q.mean()) / (q.std(unbiased=False) + Q_STD_EPS)
