"""``FusedAdam``'s lean step against ``torch.optim.Adam(fused=True)``: the same numbers, bit for bit."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from rl_adapters.algorithms.optim import FusedAdam, adam


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 2))


def _run(opt_factory, steps: int = 7, schedule: bool = False, freeze_after: int | None = None, device: str = "cpu"):
    net = _net(0).to(device)
    opt = opt_factory(net)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=5) if schedule else None
    gen = torch.Generator().manual_seed(1)
    for t in range(steps):
        x = torch.randn(32, 5, generator=gen).to(device)
        loss = net(x).pow(2).mean()
        params = list(net.parameters())
        if freeze_after is not None and t >= freeze_after:
            params = params[:2]  # the last layer gets no gradient from here on
        for p in net.parameters():
            p.grad = None
        for p, g in zip(params, torch.autograd.grad(loss, params)):
            p.grad = g
        opt.step()
        if sched is not None:
            sched.step()
    return net, opt


@pytest.mark.parametrize("kwargs", [{}, {"weight_decay": 1e-2}, {"betas": (0.5, 0.9), "eps": 1e-6}])
@pytest.mark.parametrize("schedule", [False, True])
def test_fused_adam_matches_torch_adam_bit_for_bit(kwargs, schedule):
    ref, ref_opt = _run(lambda n: torch.optim.Adam(n.parameters(), lr=1e-2, fused=True, **kwargs), schedule=schedule)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. a scheduler warning that the optimizer never stepped
        ours, ours_opt = _run(lambda n: FusedAdam(n.parameters(), lr=1e-2, **kwargs), schedule=schedule)
    for a, b in zip(ref.parameters(), ours.parameters()):
        assert torch.equal(a, b)
    for p_ref, p_ours in zip(ref.parameters(), ours.parameters()):
        s_ref, s_ours = ref_opt.state[p_ref], ours_opt.state[p_ours]
        assert int(s_ref["step"]) == int(s_ours["step"]) == 7
        assert torch.equal(s_ref["exp_avg"], s_ours["exp_avg"])
        assert torch.equal(s_ref["exp_avg_sq"], s_ours["exp_avg_sq"])
    # And it is Adam's update, independently of the fused kernel: torch's unfused loop lands within 1e-5.
    plain, _ = _run(lambda n: torch.optim.Adam(n.parameters(), lr=1e-2, foreach=False, **kwargs), schedule=schedule)
    assert torch.allclose(torch.cat([p.flatten() for p in plain.parameters()]),
                          torch.cat([p.flatten() for p in ours.parameters()]), atol=1e-5)


def test_params_without_gradient_are_left_alone_like_torch():
    ref, ref_opt = _run(lambda n: torch.optim.Adam(n.parameters(), lr=1e-2, fused=True), freeze_after=3)
    ours, ours_opt = _run(lambda n: FusedAdam(n.parameters(), lr=1e-2), freeze_after=3)
    for a, b in zip(ref.parameters(), ours.parameters()):
        assert torch.equal(a, b)
    last_ref, last = list(ref.parameters())[-1], list(ours.parameters())[-1]
    assert int(ours_opt.state[last]["step"]) == int(ref_opt.state[last_ref]["step"]) == 3  # only while it had a gradient


def test_state_dict_round_trip_continues_identically():
    net_a, opt_a = _run(lambda n: FusedAdam(n.parameters(), lr=1e-2), steps=4)
    net_b = _net(5)
    net_b.load_state_dict(net_a.state_dict())
    opt_b = FusedAdam(net_b.parameters(), lr=1e-2)
    # A copy: Optimizer.load_state_dict keeps same-device tensors by reference, the two would share moments.
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # replaces the state tensors the lean step reads
    x = torch.randn(8, 5, generator=torch.Generator().manual_seed(3))
    for net, opt in ((net_a, opt_a), (net_b, opt_b)):
        loss = net(x).pow(2).mean()
        for p, g in zip(net.parameters(), torch.autograd.grad(loss, list(net.parameters()))):
            p.grad = g
        opt.step()
    for a, b in zip(net_a.parameters(), net_b.parameters()):
        assert torch.equal(a, b)


def test_step_hooks_are_refused_not_ignored():
    opt = FusedAdam(_net(0).parameters(), lr=1e-2)
    for register in (opt.register_step_pre_hook, opt.register_step_post_hook):
        with pytest.raises(RuntimeError, match=r"use torch.optim.Adam\(fused=True\)"):
            register(lambda *a: None)


def test_a_scheduler_still_sees_the_steps_and_deepcopy_keeps_the_lean_step():
    net = _net(0)
    opt = FusedAdam(net.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for p in net.parameters():
        p.grad = torch.ones_like(p)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "lr_scheduler.step() before optimizer.step()" would raise here
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-3)
    twin = copy.deepcopy(opt)
    assert twin.step.__self__ is twin  # bound to the copy, not to the original


def test_adam_factory_picks_the_fused_optimizer_where_torch_has_the_kernel():
    assert isinstance(adam(_net(0).parameters(), lr=1e-3), FusedAdam)
    assert isinstance(adam(nn.Linear(2, 2).to(torch.float64).parameters(), lr=1e-3), FusedAdam)
    amsgrad = adam(_net(0).parameters(), lr=1e-3, amsgrad=True)
    assert type(amsgrad) is torch.optim.Adam and amsgrad.param_groups[0]["fused"]
    complex_ = adam([nn.Parameter(torch.zeros(2, dtype=torch.complex64))], lr=1e-3)
    assert type(complex_) is torch.optim.Adam and not complex_.param_groups[0]["fused"]


def test_unsupported_options_are_refused_naming_them():
    with pytest.raises(ValueError, match="amsgrad=True; use torch.optim.Adam"):
        FusedAdam(_net(0).parameters(), lr=1e-3, amsgrad=True)
    with pytest.raises(ValueError, match="maximize=True"):
        FusedAdam([{"params": _net(0).parameters(), "maximize": True}], lr=1e-3)
    with pytest.raises(ValueError, match="fused=False"):
        FusedAdam(_net(0).parameters(), lr=1e-3, fused=False)
    opt = FusedAdam(_net(0).parameters(), lr=1e-3)
    opt.param_groups[0]["maximize"] = True
    with pytest.raises(ValueError, match="maximize"):
        opt.step()


def test_closure_is_evaluated_with_gradients_on():
    net = _net(0)
    opt = FusedAdam(net.parameters(), lr=1e-2)
    before = [p.clone() for p in net.parameters()]

    def closure():
        loss = net(torch.ones(3, 5)).pow(2).mean()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss.requires_grad and loss.item() > 0
    assert all(not torch.equal(a, b) for a, b in zip(before, net.parameters()))


@pytest.mark.parametrize("unfused", [{"foreach": False}, {"foreach": True}, {}])
def test_state_of_an_unfused_adam_is_refused(unfused):
    """Only a fused Adam's state loads (its ``step`` counters are laid out for the fused kernel)."""
    net, opt = _run(lambda n: torch.optim.Adam(n.parameters(), lr=1e-2, **unfused), steps=3)
    fused = FusedAdam(net.parameters(), lr=1e-2)
    with pytest.raises(ValueError, match="saved by an unfused torch.optim.Adam"):
        fused.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert fused.state_dict()["state"] == {}  # nothing was loaded
    _, torch_fused = _run(lambda n: torch.optim.Adam(n.parameters(), lr=1e-2, fused=True), steps=3)
    fused.load_state_dict(copy.deepcopy(torch_fused.state_dict()))  # torch's own fused Adam's state does
    assert len(fused.state_dict()["state"]) == len(list(net.parameters()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fused_adam_on_cuda_matches_torch():
    ref, _ = _run(lambda n: torch.optim.Adam(n.parameters(), lr=1e-2, fused=True), device="cuda")
    ours, _ = _run(lambda n: FusedAdam(n.parameters(), lr=1e-2), device="cuda")
    for a, b in zip(ref.parameters(), ours.parameters()):
        assert a.is_cuda and torch.equal(a, b)
