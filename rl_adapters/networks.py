"""Network builders shared by every algorithm (BC, TD3+BC, IQL, VACO, ASPC).

All networks are plain ``nn.Module``s of linear layers with ReLU, so they work with
``torch.func.functional_call`` (the ``bilevel`` solvers bind parameters that way) and ``torch.func.vmap``.
Q ensembles (:class:`TwinCritic`, :class:`EnsembleMLP`) keep every member's weights in one
``(members, in, out)`` tensor per layer and evaluate all members with one batched matmul.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CRITIC_INITS",
    "DeterministicActor",
    "EnsembleLayerNorm",
    "EnsembleLinear",
    "EnsembleMLP",
    "TwinCritic",
    "ValueNet",
    "aspc_init_",
    "mlp",
    "soft_update",
]


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


# ---------------------------------------------------------------------------------------------- ensembles
class EnsembleLinear(nn.Module):
    """``members`` independent ``Linear(in_features, out_features)`` layers evaluated by one batched matmul.

    ``weight`` is ``(members, in, out)`` (already transposed, so ``y_e = x_e @ W_e + b_e`` is one
    ``baddbmm``), ``bias`` is ``(members, out)``. Each member is initialised like ``nn.Linear``
    (weight and bias ``U(-1/sqrt(in), 1/sqrt(in))``), drawing from the global torch RNG in the same order
    ``nn.Linear`` does, so member ``e`` equals the ``nn.Linear`` one would have built at that RNG state.

    ``forward(x)``: ``x`` is ``(members, N, in)`` (one input per member) or ``(N, in)`` (shared by all
    members); the result is ``(members, N, out)``.
    """

    def __init__(self, members: int, in_features: int, out_features: int, *, reset: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.members, self.in_features, self.out_features = int(members), int(in_features), int(out_features)
        kw = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(self.members, self.in_features, self.out_features, **kw))
        self.bias = nn.Parameter(torch.empty(self.members, self.out_features, **kw))
        if reset:
            self.reset_parameters()

    def reset_parameters(self) -> None:
        for e in range(self.members):
            self.reset_member_(e)

    @torch.no_grad()
    def reset_member_(self, e: int) -> None:
        """Member ``e`` as ``nn.Linear.reset_parameters`` draws it: weight (on an ``(out, in)`` tensor), then bias."""
        w = torch.empty(self.out_features, self.in_features, device=self.weight.device, dtype=self.weight.dtype)
        nn.init.kaiming_uniform_(w, a=math.sqrt(5))  # = U(-1/sqrt(in), 1/sqrt(in))
        self.weight[e].copy_(w.T)
        bound = 1.0 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
        nn.init.uniform_(self.bias[e], -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.expand(self.members, *x.shape)  # a stride-0 view: no copy
        if self.out_features == 1:
            # A Q head: bmm with one output column is a batched matrix-vector product, which CPU BLAS runs
            # ~5x slower than this multiply-and-sum (forward and backward; measured at 2 x 256 x 256).
            return (x * self.weight.transpose(-1, -2)).sum(-1, keepdim=True) + self.bias.unsqueeze(1)
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight)

    def member(self, x: torch.Tensor, e: int) -> torch.Tensor:
        """Member ``e`` alone on ``x`` ``(N, in)``: ``(N, out)``, one ``addmm`` (no work for the others)."""
        return torch.addmm(self.bias[e], x, self.weight[e])

    def extra_repr(self) -> str:
        return f"members={self.members}, in_features={self.in_features}, out_features={self.out_features}"


class EnsembleLayerNorm(nn.Module):
    """``members`` independent ``nn.LayerNorm(dim)`` (per-member affine ``weight``/``bias``, ``(members, dim)``)."""

    def __init__(self, members: int, dim: int, eps: float = 1e-5, *,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.members, self.dim, self.eps = int(members), int(dim), float(eps)
        self.weight = nn.Parameter(torch.ones(self.members, self.dim, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(self.members, self.dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(members, N, dim)``.

        On CPU each member runs ``F.layer_norm`` with its own affine (one fused kernel forward and backward,
        as ``nn.LayerNorm``); normalising all members at once and applying the per-member affine separately
        (:meth:`forward_batched`, used on other devices) costs ~2x as much on CPU, forward and backward.
        """
        if x.device.type != "cpu":
            return self.forward_batched(x)
        return self.forward_per_member(x)

    def forward_per_member(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([
            F.layer_norm(xe, (self.dim,), we, be, self.eps)
            for xe, we, be in zip(x.unbind(0), self.weight.unbind(0), self.bias.unbind(0))
        ])

    def forward_batched(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x, (self.dim,), eps=self.eps)
        return torch.addcmul(self.bias.unsqueeze(1), y, self.weight.unsqueeze(1))

    def member(self, x: torch.Tensor, e: int) -> torch.Tensor:
        return F.layer_norm(x, (self.dim,), self.weight[e], self.bias[e], self.eps)

    def extra_repr(self) -> str:
        return f"members={self.members}, dim={self.dim}, eps={self.eps}"


class EnsembleMLP(nn.Module):
    """``members`` independent :func:`mlp` s (``Linear -> ReLU [-> LayerNorm]`` per hidden width, then ``Linear``),
    evaluated together: one batched matmul per layer for all members.

    Member ``e`` is initialised as ``mlp(in_dim, out_dim, hidden, layer_norm)`` would be at the same global RNG
    state, and the members are drawn one after the other (member 0's layers, then member 1's, ...), so an
    ensemble built after ``torch.manual_seed(s)`` holds exactly the networks that building ``members`` ``mlp`` s
    in a row would. Only plain parameters and ``torch`` ops: works under ``torch.func.functional_call`` and
    ``torch.func.vmap``.

    ``forward(x)``: ``x`` ``(..., in_dim)`` shared by every member -> ``(members, ..., out_dim)``;
    :meth:`forward_each` takes one input per member ``(members, ..., in_dim)``; :meth:`member` evaluates one
    member only.
    """

    def __init__(self, members: int, in_dim: int, out_dim: int, hidden: Sequence[int] = (256, 256),
                 layer_norm: bool = False, *, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.members, self.in_dim, self.out_dim = int(members), int(in_dim), int(out_dim)
        self.hidden, self.layer_norm = tuple(int(h) for h in hidden), bool(layer_norm)
        dims = (self.in_dim, *self.hidden, self.out_dim)
        kw = {"device": device, "dtype": dtype}
        self.linears = nn.ModuleList(
            EnsembleLinear(self.members, d_in, d_out, reset=False, **kw) for d_in, d_out in itertools.pairwise(dims)
        )
        self.norms = nn.ModuleList(EnsembleLayerNorm(self.members, h, **kw) for h in self.hidden) if layer_norm else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for e in range(self.members):
            for lin in self.linears:
                lin.reset_member_(e)
        if self.norms is not None:
            with torch.no_grad():
                for ln in self.norms:
                    ln.weight.fill_(1.0)
                    ln.bias.zero_()

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, in) shared or (members, N, in); returns (members, N, out).
        for i, lin in enumerate(self.linears):
            x = lin(x)
            if i < len(self.hidden):
                x = torch.relu(x)
                if self.norms is not None:
                    x = self.norms[i](x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        y = self._run(x.reshape(-1, x.shape[-1]))
        return y.reshape(self.members, *lead, self.out_dim)

    def forward_each(self, x: torch.Tensor) -> torch.Tensor:
        """Member ``e`` on ``x[e]``: ``x`` ``(members, ..., in_dim)`` -> ``(members, ..., out_dim)``."""
        lead = x.shape[1:-1]
        y = self._run(x.reshape(self.members, -1, x.shape[-1]))
        return y.reshape(self.members, *lead, self.out_dim)

    def member(self, x: torch.Tensor, e: int) -> torch.Tensor:
        """Member ``e`` alone: ``(..., in_dim)`` -> ``(..., out_dim)``; the other members cost nothing."""
        lead = x.shape[:-1]
        x = x.reshape(-1, x.shape[-1])
        for i, lin in enumerate(self.linears):
            x = lin.member(x, e)
            if i < len(self.hidden):
                x = torch.relu(x)
                if self.norms is not None:
                    x = self.norms[i].member(x, e)
        return x.reshape(*lead, self.out_dim)


@torch.no_grad()
def aspc_init_(net: nn.Sequential | EnsembleMLP) -> nn.Sequential | EnsembleMLP:
    """The ASPC authors' critic initialisation, in place.

    Hidden ``Linear`` layers: weights ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (PyTorch's law too) but
    biases constant 0.1; the output layer: weights and bias ``U(-3e-3, 3e-3)``, so that the initial Q is
    near 0 everywhere. Draws from the global torch RNG, like PyTorch's own initialisers. An
    :class:`EnsembleMLP` is re-initialised member after member, drawing what ``aspc_init_`` of each member's
    :func:`mlp` would.
    """
    if isinstance(net, EnsembleMLP):
        for e in range(net.members):
            for k, lin in enumerate(net.linears):
                w = torch.empty(lin.out_features, lin.in_features, device=lin.weight.device, dtype=lin.weight.dtype)
                if k < len(net.linears) - 1:
                    bound = 1.0 / float(np.sqrt(lin.in_features))
                    w.uniform_(-bound, bound)
                    lin.weight[e].copy_(w.T)
                    lin.bias[e].fill_(0.1)
                else:
                    w.uniform_(-3e-3, 3e-3)
                    lin.weight[e].copy_(w.T)
                    lin.bias[e].uniform_(-3e-3, 3e-3)
        return net
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

    The two are one fused :class:`EnsembleMLP` (``self.net``, 2 members): one batched matmul per layer for
    both. ``init="aspc"`` re-initialises both with :func:`aspc_init_` (the ASPC reference critic).
    At a given RNG state the two members hold what two separate :func:`mlp` s (``q1`` then ``q2``) would draw.
    Inputs may carry extra leading batch dimensions: ``obs (..., obs_dim)``, ``action (..., act_dim)``.
    """

    members = 2

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
        self.obs_dim, self.act_dim = int(obs_dim), int(act_dim)
        self.hidden, self.layer_norm = tuple(int(h) for h in hidden), bool(layer_norm)
        self.net = EnsembleMLP(self.members, self.obs_dim + self.act_dim, 1, self.hidden, self.layer_norm)
        if init == "aspc":
            aspc_init_(self.net)

    def q_all(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Both Q values stacked: ``(2, ...)``."""
        return self.net(torch.cat([obs, action], dim=-1)).squeeze(-1)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.q_all(obs, action)
        return q[0], q[1]

    def q1_only(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net.member(torch.cat([obs, action], dim=-1), 0).squeeze(-1)

    def min_q(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        q = self.q_all(obs, action)
        return torch.minimum(q[0], q[1])


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
