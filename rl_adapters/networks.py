"""Network builders shared by every algorithm (BC, TD3+BC, IQL, VACO, ASPC).

All networks are plain ``nn.Module``s of ``nn.Linear`` layers with ReLU, so they work with
``torch.func.functional_call`` (the ``bilevel`` solvers bind parameters that way).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["CRITIC_INITS", "DeterministicActor", "TwinCritic", "ValueNet", "aspc_init_", "mlp", "soft_update"]


def mlp(
    in_dim: int,
    out_dim: int,
    hidden: Sequence[int] = (256, 256),
    layer_norm: bool = False,
    activation: type[nn.Module] = nn.ReLU,
    output_activation: nn.Module | None = None,
) -> nn.Sequential:
    """``Linear -> ReLU [-> LayerNorm]`` per hidden width, then a final ``Linear``.

    LayerNorm goes *after* the activation (the ASPC / ReBRAC critic layout).
    """
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        layers += [nn.Linear(d, h), activation()]
        if layer_norm:
            layers.append(nn.LayerNorm(h))
        d = h
    layers.append(nn.Linear(d, out_dim))
    if output_activation is not None:
        layers.append(output_activation)
    return nn.Sequential(*layers)


class DeterministicActor(nn.Module):
    """``pi(s) = c + h * tanh(f(s))`` with ``c = (high + low) / 2``, ``h = (high - low) / 2``.

    For the usual symmetric bounds ``[-m, m]`` this is ``m * tanh(f(s))``.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        action_low: np.ndarray | Sequence[float],
        action_high: np.ndarray | Sequence[float],
        hidden: Sequence[int] = (256, 256),
        layer_norm: bool = False,
    ) -> None:
        super().__init__()
        self.net = mlp(obs_dim, act_dim, hidden, layer_norm)
        low = torch.as_tensor(np.asarray(action_low, dtype=np.float32))
        high = torch.as_tensor(np.asarray(action_high, dtype=np.float32))
        # Buffers (not parameters): they move with .to(device) and are saved, but are never optimised.
        self.register_buffer("action_center", (high + low) / 2)
        self.register_buffer("action_scale", (high - low) / 2)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.action_center + self.action_scale * torch.tanh(self.net(obs))


#: Critic initialisations: ``torch`` (PyTorch's Linear default) or ``aspc`` (:func:`aspc_init_`).
CRITIC_INITS = ("torch", "aspc")


@torch.no_grad()
def aspc_init_(net: nn.Sequential) -> nn.Sequential:
    """The ASPC authors' critic initialisation, in place.

    Hidden ``Linear`` layers: weights ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (PyTorch's law too) but
    biases constant 0.1; the output layer: weights and bias ``U(-3e-3, 3e-3)``, so that the initial Q is
    near 0 everywhere. Draws from the global torch RNG, like PyTorch's own initialisers.
    """
    linears = [m for m in net if isinstance(m, nn.Linear)]
    for lin in linears[:-1]:
        bound = 1.0 / float(np.sqrt(lin.in_features))
        lin.weight.uniform_(-bound, bound)
        lin.bias.fill_(0.1)
    linears[-1].weight.uniform_(-3e-3, 3e-3)
    linears[-1].bias.uniform_(-3e-3, 3e-3)
    return net


class TwinCritic(nn.Module):
    """Two independent Q networks ``Q_i(s, a) = f_i([s, a])``; ``forward`` returns ``(Q1, Q2)``, each ``(B,)``.

    ``init="aspc"`` re-initialises both with :func:`aspc_init_` (the ASPC reference critic).
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: Sequence[int] = (256, 256),
        layer_norm: bool = False,
        init: str = "torch",
    ) -> None:
        super().__init__()
        if init not in CRITIC_INITS:
            raise ValueError(f"critic init must be one of {CRITIC_INITS}, got {init!r}")
        self.q1 = mlp(obs_dim + act_dim, 1, hidden, layer_norm)
        self.q2 = mlp(obs_dim + act_dim, 1, hidden, layer_norm)
        if init == "aspc":
            aspc_init_(self.q1)
            aspc_init_(self.q2)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([obs, action], dim=-1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)

    def q1_only(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.q1(torch.cat([obs, action], dim=-1)).squeeze(-1)

    def min_q(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        q1, q2 = self(obs, action)
        return torch.minimum(q1, q2)


class ValueNet(nn.Module):
    """State value ``V(s)``, output ``(B,)``."""

    def __init__(self, obs_dim: int, hidden: Sequence[int] = (256, 256), layer_norm: bool = False) -> None:
        super().__init__()
        self.net = mlp(obs_dim, 1, hidden, layer_norm)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs).squeeze(-1)


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """Polyak averaging ``theta_target <- (1 - tau) theta_target + tau theta``."""
    for tp, sp in zip(target.parameters(), source.parameters()):
        tp.lerp_(sp, tau)
