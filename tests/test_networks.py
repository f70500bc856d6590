"""The fused Q ensemble (:class:`EnsembleMLP`, :class:`TwinCritic`) against separate :func:`mlp` critics.

Everything that must agree exactly is checked in float64 at 1e-12: forward, ``q1_only``, ``min_q`` and the
gradients, with and without LayerNorm; the initialisation law (the same draws as two ``nn.Sequential`` s
``q1``/``q2``); the state dict round trip; and ``torch.func.vmap`` over stacked per-seed parameters.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.func import functional_call, stack_module_state, vmap

from rl_adapters.networks import EnsembleLinear, EnsembleMLP, TwinCritic, aspc_init_, mlp

OBS, ACT, HID = 5, 3, (16, 16)
TOL = 1e-12


def _pair(layer_norm: bool, seed: int = 0, hidden=HID) -> tuple[TwinCritic, torch.nn.Sequential, torch.nn.Sequential]:
    """A float64 TwinCritic and two separate mlp critics holding the same weights (copied, perturbed LN affine)."""
    torch.manual_seed(seed)
    q1 = mlp(OBS + ACT, 1, hidden, layer_norm).double()
    q2 = mlp(OBS + ACT, 1, hidden, layer_norm).double()
    with torch.no_grad():  # non-trivial LayerNorm affine parameters, different per member
        for net in (q1, q2):
            for m in net:
                if isinstance(m, torch.nn.LayerNorm):
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.5, 0.5)
    critic = TwinCritic(OBS, ACT, hidden, layer_norm).double()
    with torch.no_grad():
        lins = [[m for m in q if isinstance(m, torch.nn.Linear)] for q in (q1, q2)]
        lns = [[m for m in q if isinstance(m, torch.nn.LayerNorm)] for q in (q1, q2)]
        for e in range(2):
            for i, lin in enumerate(critic.net.linears):
                lin.weight[e].copy_(lins[e][i].weight.T)
                lin.bias[e].copy_(lins[e][i].bias)
            if layer_norm:
                for i, ln in enumerate(critic.net.norms):
                    ln.weight[e].copy_(lns[e][i].weight)
                    ln.bias[e].copy_(lns[e][i].bias)
    return critic, q1, q2


def _inputs(n: int = 32, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, OBS, generator=g, dtype=torch.float64),
            torch.randn(n, ACT, generator=g, dtype=torch.float64))


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    torch.testing.assert_close(a, b, rtol=0.0, atol=TOL)


@pytest.mark.parametrize("layer_norm", [False, True])
def test_twin_critic_computes_what_two_mlps_compute(layer_norm: bool) -> None:
    critic, q1, q2 = _pair(layer_norm)
    obs, act = _inputs()
    x = torch.cat([obs, act], -1)
    r1, r2 = q1(x).squeeze(-1), q2(x).squeeze(-1)
    c1, c2 = critic(obs, act)
    assert c1.shape == (32,) and c2.shape == (32,)
    _close(c1, r1)
    _close(c2, r2)
    _close(critic.q1_only(obs, act), r1)
    _close(critic.min_q(obs, act), torch.minimum(r1, r2))
    # Extra leading batch dimensions.
    o3, a3 = obs.reshape(4, 8, OBS), act.reshape(4, 8, ACT)
    e1, e2 = critic(o3, a3)
    assert e1.shape == (4, 8)
    _close(e1.reshape(-1), r1)
    _close(e2.reshape(-1), r2)
    _close(critic.q1_only(o3, a3).reshape(-1), r1)
    _close(critic.min_q(o3, a3).reshape(-1), torch.minimum(r1, r2))


@pytest.mark.parametrize("layer_norm", [False, True])
def test_twin_critic_gradients_match_two_mlps(layer_norm: bool) -> None:
    critic, q1, q2 = _pair(layer_norm)
    obs, act = _inputs()
    act_c, act_r = act.clone().requires_grad_(True), act.clone().requires_grad_(True)
    y = torch.randn(32, dtype=torch.float64, generator=torch.Generator().manual_seed(3))

    # The critic loss (both members) and an actor-style loss (member 0 only, gradient w.r.t. the action).
    c1, c2 = critic(obs, act)
    loss_c = ((c1 - y) ** 2).mean() + ((c2 - y) ** 2).mean() - critic.q1_only(obs, act_c).mean() \
        + critic.min_q(obs, act).pow(2).mean()
    loss_c.backward()
    x, xr = torch.cat([obs, act], -1), torch.cat([obs, act_r], -1)
    r1, r2 = q1(x).squeeze(-1), q2(x).squeeze(-1)
    loss_r = ((r1 - y) ** 2).mean() + ((r2 - y) ** 2).mean() - q1(xr).squeeze(-1).mean() \
        + torch.minimum(r1, r2).pow(2).mean()
    loss_r.backward()
    _close(loss_c.detach(), loss_r.detach())
    _close(act_c.grad, act_r.grad)
    lins = [[m for m in q if isinstance(m, torch.nn.Linear)] for q in (q1, q2)]
    lns = [[m for m in q if isinstance(m, torch.nn.LayerNorm)] for q in (q1, q2)]
    for e in range(2):
        for i, lin in enumerate(critic.net.linears):
            _close(lin.weight.grad[e], lins[e][i].weight.grad.T)
            _close(lin.bias.grad[e], lins[e][i].bias.grad)
        if layer_norm:
            for i, ln in enumerate(critic.net.norms):
                _close(ln.weight.grad[e], lns[e][i].weight.grad)
                _close(ln.bias.grad[e], lns[e][i].bias.grad)


def test_q1_only_leaves_member_1_untouched() -> None:
    critic, _, _ = _pair(True)
    obs, act = _inputs()
    critic.q1_only(obs, act).sum().backward()
    for p in critic.parameters():
        assert torch.count_nonzero(p.grad[1]) == 0
        assert torch.count_nonzero(p.grad[0]) > 0


@pytest.mark.parametrize("layer_norm", [False, True])
@pytest.mark.parametrize("init", ["torch", "aspc"])
def test_same_rng_state_draws_two_mlp_critics(layer_norm: bool, init: str) -> None:
    """At one RNG state the fused critic holds exactly what two mlp critics (+ aspc_init_) drew."""
    torch.manual_seed(123)
    critic = TwinCritic(OBS, ACT, HID, layer_norm, init)
    after_fused = torch.rand(1)
    torch.manual_seed(123)
    q1, q2 = mlp(OBS + ACT, 1, HID, layer_norm), mlp(OBS + ACT, 1, HID, layer_norm)
    if init == "aspc":
        aspc_init_(q1)
        aspc_init_(q2)
    after_mlps = torch.rand(1)
    assert torch.equal(after_fused, after_mlps)  # same number of draws
    for e, q in enumerate((q1, q2)):
        lins = [m for m in q if isinstance(m, torch.nn.Linear)]
        lns = [m for m in q if isinstance(m, torch.nn.LayerNorm)]
        assert len(lins) == len(critic.net.linears) and len(lns) == (len(HID) if layer_norm else 0)
        for i, lin in enumerate(critic.net.linears):
            assert torch.equal(lin.weight.detach()[e], lins[i].weight.detach().T), (e, i)
            assert torch.equal(lin.bias.detach()[e], lins[i].bias.detach()), (e, i)
        for i, ln in enumerate(lns):
            assert torch.equal(critic.net.norms[i].weight.detach()[e], ln.weight.detach()), (e, i)
            assert torch.equal(critic.net.norms[i].bias.detach()[e], ln.bias.detach()), (e, i)


def test_init_law_on_a_big_layer() -> None:
    torch.manual_seed(0)
    fan_in, out = 400, 300
    lin = EnsembleLinear(3, fan_in, out)
    bound = 1.0 / math.sqrt(fan_in)
    for p in (lin.weight, lin.bias):
        p = p.detach()
        assert float(p.abs().max()) <= bound
        assert float(p.abs().max()) > 0.99 * bound
        assert abs(float(p.mean())) < 0.05 * bound
        # U(-b, b) has variance b^2 / 3.
        assert float(p.var()) == pytest.approx(bound**2 / 3, rel=0.05 if p.numel() > 1000 else 0.3)
    # Independent members.
    assert not torch.equal(lin.weight[0], lin.weight[1])


def test_aspc_init_constants() -> None:
    torch.manual_seed(0)
    net = aspc_init_(EnsembleMLP(2, 20, 1, (300, 300, 300), layer_norm=True))
    for lin in net.linears[:-1]:
        assert torch.all(lin.bias == 0.1)
        w = lin.weight.detach()
        bound = 1.0 / math.sqrt(lin.in_features)
        assert float(w.abs().max()) <= bound and float(w.abs().max()) > 0.99 * bound
        assert abs(float(w.mean())) < 0.05 * bound
    last = net.linears[-1]
    for p in (last.weight, last.bias):
        assert float(p.detach().abs().max()) <= 3e-3
    assert float(last.weight.detach().abs().max()) > 0.95 * 3e-3
    for ln in net.norms:
        assert torch.all(ln.weight == 1) and torch.all(ln.bias == 0)


@pytest.mark.parametrize("layer_norm", [False, True])
def test_state_dict_round_trips(layer_norm: bool) -> None:
    critic, _, _ = _pair(layer_norm)
    obs, act = _inputs()
    torch.manual_seed(99)
    again = TwinCritic(OBS, ACT, HID, layer_norm).double()
    again.load_state_dict(critic.state_dict())
    assert again.state_dict().keys() == critic.state_dict().keys()
    for a, b in zip(again(obs, act), critic(obs, act)):
        _close(a, b)


@pytest.mark.parametrize("layer_norm", [False, True])
def test_vmap_over_stacked_parameters(layer_norm: bool) -> None:
    torch.manual_seed(0)
    critics = [TwinCritic(OBS, ACT, HID, layer_norm).double() for _ in range(3)]
    params, buffers = stack_module_state(critics)
    base = copy.deepcopy(critics[0]).to("meta")
    g = torch.Generator().manual_seed(5)
    obs = torch.randn(3, 10, OBS, generator=g, dtype=torch.float64)
    act = torch.randn(3, 10, ACT, generator=g, dtype=torch.float64)

    class Q1(torch.nn.Module):
        def __init__(self, c: TwinCritic) -> None:
            super().__init__()
            self.c = c

        def forward(self, o: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
            return self.c.q1_only(o, a)

    q1, q2 = vmap(lambda p, b, o, a: functional_call(base, (p, b), (o, a)))(params, buffers, obs, act)
    q1o = vmap(lambda p, o, a: functional_call(Q1(base), {f"c.{k}": v for k, v in p.items()}, (o, a)))(params, obs, act)

    def loss(p: dict, o: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        c1, c2 = functional_call(base, p, (o, a))
        return (c1 - 1.0).pow(2).mean() + (c2 + 1.0).pow(2).mean()

    grads = vmap(torch.func.grad(loss))(params, obs, act)
    for k, c in enumerate(critics):
        r1, r2 = c(obs[k], act[k])
        _close(q1[k], r1)
        _close(q2[k], r2)
        _close(q1o[k], c.q1_only(obs[k], act[k]))
        c.zero_grad()
        loss(dict(c.named_parameters()), obs[k], act[k]).backward()
        for name, p in c.named_parameters():
            _close(grads[name][k], p.grad)


def test_ensemble_mlp_general_members_and_forward_each() -> None:
    torch.manual_seed(0)
    ens = EnsembleMLP(5, 7, 2, (12, 9), layer_norm=True).double()
    torch.manual_seed(0)
    nets = [mlp(7, 2, (12, 9), layer_norm=True).double() for _ in range(5)]
    x = torch.randn(4, 6, 7, dtype=torch.float64)
    y = ens(x)
    assert y.shape == (5, 4, 6, 2)
    xe = torch.randn(5, 6, 7, dtype=torch.float64)
    ye = ens.forward_each(xe)
    for e, net in enumerate(nets):
        _close(y[e], net(x))
        _close(ye[e], net(xe[e]))
        _close(ens.member(x, e), net(x))


def test_ensemble_layer_norm_paths_agree() -> None:
    """The per-member path (CPU) and the batched one (other devices) compute the same, values and gradients."""
    torch.manual_seed(0)
    ln = EnsembleMLP(3, 4, 1, (16,), layer_norm=True).double().norms[0]
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5)
        ln.bias.uniform_(-0.5, 0.5)
    x = torch.randn(3, 9, 16, dtype=torch.float64)
    g = torch.randn(3, 9, 16, dtype=torch.float64)
    outs = []
    for path in (ln.forward_per_member, ln.forward_batched):
        xr = x.clone().requires_grad_(True)
        y = path(xr)
        grads = torch.autograd.grad(y, (xr, ln.weight, ln.bias), g)
        outs.append((y.detach(), *grads))
    for a, b in zip(*outs):
        _close(a, b)
