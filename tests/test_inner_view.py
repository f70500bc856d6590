"""Attribute access in a loss (``inner.weight``, ``inner.fc1.weight``, ``inner.fc1(x)``, methods,
indexing) reaches the *current* theta, never the stored leaf, under every solver and mode.

Each loss is written twice, once through attribute access and once through ``inner.parameters()``
with the same operations in the same order, so the hypergradients must agree exactly. A view that
fell through to the stored leaf gives a different number (theta_0 instead of theta_K, and no graph to
lambda), so every comparison here fails on the old ``__getattr__``."""

from __future__ import annotations

import pytest
import torch
import torchopt
from torch import nn

import bilevel

DT = torch.float64


class Net(nn.Module):
    """Two nested levels: ``body`` (a Sequential holding ``fc1``) and ``head``."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 4), nn.Tanh()).to(DT)
        self.head = nn.Linear(4, 1).to(DT)

    def forward(self, x):
        return self.head(self.body(x))

    def features(self, x):
        # A user method that reads parameters through ``self``: must see the bound tensors.
        return torch.tanh(x @ self.body[0].weight.T + self.body[0].bias)

    @property
    def head_norm(self):
        return self.head.weight.pow(2).sum()


class Hyper(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.log_lam = nn.Parameter(torch.tensor([-1.0, -0.5, 0.0, 0.5], dtype=DT))


def _data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(12, 3, generator=g, dtype=DT), torch.randn(12, 1, generator=g, dtype=DT)
    xv, yv = torch.randn(8, 3, generator=g, dtype=DT), torch.randn(8, 1, generator=g, dtype=DT)
    return (x, y), (xv, yv)


def _losses(style: str, val):
    """``f`` (weighted ridge on the head) and ``g`` (validation MSE + direct use of lambda), written
    with parameters() ("params"), with attribute access on tensors ("attr"), or through submodule /
    method / property calls ("modules")."""
    xv, yv = val

    def unpack(inner):
        if style == "params":
            w1, b1, w2, b2 = inner.parameters()
        else:
            w1, b1, w2, b2 = inner.body[0].weight, inner.body[0].bias, inner.head.weight, inner.head.bias
        return w1, b1, w2, b2

    def predict(inner, x):
        if style == "modules":
            return inner.head(inner.features(x))
        w1, b1, w2, b2 = unpack(inner)
        return torch.tanh(x @ w1.T + b1) @ w2.T + b2

    def reg(inner, outer):
        if style == "modules":
            return inner.head_norm * outer.log_lam.exp().mean()
        _, _, w2, _ = unpack(inner)
        return w2.pow(2).sum() * outer.log_lam.exp().mean()

    def f(inner, outer, batch):
        x, y = batch
        return ((predict(inner, x) - y) ** 2).mean() + reg(inner, outer)

    def g(inner, outer, batch):
        return ((predict(inner, xv) - yv) ** 2).mean() + 0.01 * outer.log_lam.pow(2).sum()

    return f, g


SOLVERS = {
    "one_step": lambda p, h: bilevel.OneStepSolver(p, torchopt.sgd(lr=0.1), _osgd(h)),
    "k_step_reverse": lambda p, h: bilevel.KStepSolver(p, torchopt.sgd(lr=0.1, momentum=0.9), _osgd(h), steps=3),
    "k_step_truncated": lambda p, h: bilevel.KStepSolver(p, torchopt.adam(lr=0.05), _osgd(h), steps=3, truncate=2),
    "k_step_forward": lambda p, h: bilevel.KStepSolver(p, torchopt.sgd(lr=0.1), _osgd(h), steps=3, mode="forward"),
    "k_step_checkpointed": lambda p, h: bilevel.KStepSolver(p, torchopt.adam(lr=0.05), _osgd(h), steps=4,
                                                            checkpoint=2),
    "implicit_cg": lambda p, h: bilevel.ImplicitSolver(p, torchopt.sgd(lr=0.1), _osgd(h), inner_steps=2,
                                                       linear_solver="cg", iterations=8, damping=0.1),
    "implicit_neumann": lambda p, h: bilevel.ImplicitSolver(p, torchopt.sgd(lr=0.1), _osgd(h), inner_steps=2,
                                                            linear_solver="neumann", iterations=8, damping=0.1),
    "implicit_fixed_point": lambda p, h: bilevel.ImplicitSolver(p, torchopt.sgd(lr=0.1), _osgd(h), inner_steps=2,
                                                                linear_solver="fixed_point", iterations=8,
                                                                damping=0.1),
}


def _osgd(h):
    return torch.optim.SGD(h.parameters(), lr=0.1)


def _hypergrads(name: str, style: str, steps: int = 2):
    """Hypergradient at the start, and after ``steps`` solver steps (so theta differs from its init
    and any solver state is in use)."""
    torch.manual_seed(0)
    net, hyper = Net(), Hyper()
    train, val = _data()
    f, g = _losses(style, val)
    solver = SOLVERS[name](bilevel.Problem(net, hyper, f, g), hyper)
    out = [solver.hypergradient(train)[0]]
    for _ in range(steps):
        solver.step(train)
    out.append(solver.hypergradient(train)[0])
    return torch.stack(out)


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_attribute_access_equals_parameters(name):
    by_params = _hypergrads(name, "params")
    assert torch.isfinite(by_params).all() and by_params.abs().max() > 1e-6
    # Same operations in the same order on the same tensors: bitwise equal.
    assert torch.equal(_hypergrads(name, "attr"), by_params)
    # nn.Linear's addmm, a user method and a property: the same maths by other kernels.
    torch.testing.assert_close(_hypergrads(name, "modules"), by_params, rtol=1e-10, atol=1e-13)


def test_readme_ten_line_example_with_attribute_access_equals_analytic():
    """The README's ten lines, filled in as a new user would: ``outer_loss`` reads ``inner.weight`` and
    also uses lambda directly. One SGD step w1 = w0 - eta (w0 - lam) on f = 1/2 (w - lam)^2 gives
    dG/dlam = eta (w1 - t) + c lam for g = 1/2 (w1 - t)^2 + c/2 lam^2."""
    model = nn.Linear(1, 1, bias=False).to(DT)
    hyper = nn.Linear(1, 1, bias=False).to(DT)  # lambda = hyper.weight
    with torch.no_grad():
        model.weight.fill_(0.3)
        hyper.weight.fill_(0.5)
    eta, t, c = 0.1, 2.0, 0.02
    problem = bilevel.Problem(inner=model, outer=hyper,
                              inner_loss=lambda inner, outer, batch: 0.5 * ((inner.weight - outer.weight) ** 2).sum(),
                              outer_loss=lambda inner, outer, batch: 0.5 * ((inner.weight - t) ** 2).sum()
                              + 0.5 * c * (outer.weight ** 2).sum())
    solver = bilevel.OneStepSolver(problem, inner_optimizer=torchopt.sgd(lr=eta),
                                   outer_optimizer=torch.optim.Adam(hyper.parameters(), 1e-3))
    [grad] = solver.hypergradient(None)
    w0, lam = 0.3, 0.5
    w1 = w0 - eta * (w0 - lam)
    assert float(grad) == pytest.approx(eta * (w1 - t) + c * lam, rel=1e-14, abs=0)

    # Implicit at the inner optimum w* = lam: dG/dlam = (lam - t) + c lam.
    with torch.no_grad():
        model.weight.fill_(lam)
    implicit = bilevel.ImplicitSolver(problem, torchopt.sgd(lr=eta), torch.optim.SGD(hyper.parameters(), 0.1),
                                      inner_steps=0)
    [grad] = implicit.hypergradient(None)
    assert float(grad) == pytest.approx((lam - t) + c * lam, rel=1e-14)


def test_view_navigation_binds_every_route():
    torch.manual_seed(0)
    net = Net()
    names = [n for n, _ in net.named_parameters()]
    params = [torch.randn_like(p) for p in net.parameters()]
    view = bilevel.InnerView(net, names, params)
    bound = dict(zip(names, params))
    assert view.head.weight is bound["head.weight"]
    assert view.body[0].bias is bound["body.0.bias"]
    assert view.get_submodule("body.0").weight is bound["body.0.weight"]
    assert view.get_parameter("head.bias") is bound["head.bias"]
    assert [t is bound[f"body.0.{n}"] for n, t in view.body[0].named_parameters()] == [True, True]
    assert [n for n, _ in view.head.named_parameters()] == ["weight", "bias"]
    assert [type(v.unbound_module) for v in view.body] == [nn.Linear, nn.Tanh]
    assert len(view.body) == 2
    sliced = view.body[:1]
    assert sliced[0].weight is bound["body.0.weight"]
    assert dict(view.named_children()).keys() == {"body", "head"}
    x = torch.randn(5, 3, dtype=DT)
    expected = torch.tanh(x @ params[0].T + params[1]) @ params[2].T + params[3]
    for out in (view(x), view.forward(x), view.head(view.body(x)), view.head(view.features(x))):
        torch.testing.assert_close(out, expected, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(view.head_norm, params[2].pow(2).sum(), rtol=0, atol=0)
    assert view.training is net.training


def test_frozen_parameters_and_buffers_read_as_stored_or_bound():
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).to(DT)
    net[0].bias.requires_grad_(False)
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    params = [torch.zeros_like(net.get_parameter(n)) for n in names]
    copies = {n: b.clone() + 1 for n, b in net.named_buffers()}
    view = bilevel.InnerView(net, names, params, copies)
    assert view[0].bias is net[0].bias  # frozen: a constant, the stored one is the current one
    assert view[1].running_mean is copies["1.running_mean"]
    assert dict(view[1].named_buffers())["running_var"] is copies["1.running_var"]


def test_state_dict_in_a_loss_raises_naming_the_fix():
    net = Net()
    view = bilevel.InnerView(net, [n for n, _ in net.named_parameters()], list(net.parameters()))
    with pytest.raises(TypeError, match="named_parameters"):
        view.state_dict()
    with pytest.raises(AttributeError):
        view.no_such_attribute  # noqa: B018 - the access is the test
