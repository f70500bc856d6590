"""Losses written the ways people write them must give the right hypergradient or one clear error, on every
solver path (issue #27, section 1).

Every value is checked in float64 against a reference computed on the real ``nn.Module`` without ``bilevel``:

* unrolled solvers (one-step, K-step reverse / forward / checkpointed): central finite differences of the
  unrolled SGD map ``lambda -> g(theta_K(lambda), lambda)``, run on a deep copy of the real module with the
  user's own loss (the real module passes ``isinstance`` checks, keeps its ties, runs its hooks);
* implicit (CG, Neumann, fixed point, warm-started CG): the implicit-function formula
  ``d_lambda g - (d2 f / d lambda d theta)^T H^-1 grad_theta g`` at theta_K, with H and the mixed block taken
  by central differences of first derivatives (no double backward, so torch's own second-derivative bugs
  cannot leak into the reference);
* SOBA: ``d_lambda g - (d2 f / d lambda d theta)^T v`` at the current theta with a given v, same blocks;
* F2SA: the K first-order steps on z and y replayed on copies of the real module, then
  ``d_lambda [g(y) + mu (f(y) - f(z))]``.

The inner problems are linear in theta with a ridge term, so the inner Hessian is positive definite and
every implicit linear solver converges. Each pattern fails without its fix: tied submodules corrupted the
modules (``functional_call``), views failed ``isinstance``, forward mode dropped captured routes (zeros),
hook-based weight norm read a stale weight, and a loss reading the real module went unnoticed.
"""

from __future__ import annotations

import copy
import re
import warnings

import pytest
import torch
import torchopt
from torch import nn
from torch.nn.utils.weight_norm import WeightNorm

import bilevel

DT = torch.float64
LR = 0.1
K = 3
EPS = 1e-6

UNROLLED = ["one_step", "k_reverse", "k_forward", "k_checkpoint"]
IMPLICIT = ["implicit_cg", "implicit_neumann", "implicit_fixed_point", "implicit_warm"]
PATHS = UNROLLED + IMPLICIT + ["soba", "f2sa"]


# --------------------------------------------------------------------------- problems
def _batch(seed: int = 0, n: int = 12, d: int = 3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=DT), torch.randn(n, 1, generator=g, dtype=DT)


class TwoLinear(nn.Module):
    """Linear in its parameters (so the ridge inner problem is strongly convex): two ``nn.Linear`` layers on
    x and x^2, and a plain parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 1).to(DT)
        self.quad = nn.Linear(3, 1, bias=False).to(DT)
        self.shift = nn.Parameter(torch.tensor([0.2], dtype=DT))

    def forward(self, x):
        return self.lin(x) + self.quad(x ** 2) + self.shift


class TiedModule(nn.Module):
    """One ``nn.Linear`` registered twice (``m.dec = m.enc``): ``torch.func.functional_call`` left graph
    tensors in its slots and the next call failed with "`weight` is not an nn.Parameter"."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(3, 1).to(DT)
        self.dec = self.enc

    def forward(self, x):
        return self.enc(x) + 0.5 * self.dec(x ** 2)


class TiedParameter(nn.Module):
    """The same ``nn.Parameter`` under two names (``m.b = m.a``)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor([[0.3], [-0.2], [0.1]], dtype=DT))
        self.b = self.a
        self.c = nn.Parameter(torch.tensor([0.05], dtype=DT))

    def forward(self, x):
        return x @ self.a + (x ** 2) @ self.b * 0.5 + self.c


class Hyper(nn.Module):
    def __init__(self, n: int = 2) -> None:
        super().__init__()
        self.log_wd = nn.Parameter(torch.linspace(-1.0, -0.5, n, dtype=DT))


class TiedHyperModule(nn.Module):
    """Outer module with a submodule registered twice; the losses read both names."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Linear(1, 1, bias=False).to(DT)
        with torch.no_grad():
            self.scale.weight.fill_(-1.0)
        self.alias = self.scale
        self.bias = nn.Parameter(torch.tensor([0.3], dtype=DT))


class TiedHyperParameter(nn.Module):
    """Outer module with the same parameter under two names."""

    def __init__(self) -> None:
        super().__init__()
        self.log_wd = nn.Parameter(torch.tensor([-1.0, -0.7], dtype=DT))
        self.also = self.log_wd


def _mse(out, y):
    return ((out - y) ** 2).mean()


def _ridge(params, log_wd):
    """sum_i exp(log_wd[i mod n]) ||p_i||^2 over the trainable parameters given."""
    return sum(log_wd[i % log_wd.numel()].exp() * (p ** 2).sum() for i, p in enumerate(params))


def _outer(inner, outer, batch):
    xv, yv = _batch(1)
    return _mse(inner(xv), yv)


# --------------------------------------------------------------------------- solvers
def _solver(path: str, problem: bilevel.Problem, inner_opt=None, damping: float = 0.0):
    inner_opt = inner_opt if inner_opt is not None else torchopt.sgd(lr=LR)
    outer_opt = torch.optim.SGD(problem.outer.parameters(), lr=1e-3)
    if path == "one_step":
        return bilevel.OneStepSolver(problem, inner_opt, outer_opt)
    if path == "k_reverse":
        return bilevel.KStepSolver(problem, inner_opt, outer_opt, steps=K)
    if path == "k_forward":
        return bilevel.KStepSolver(problem, inner_opt, outer_opt, steps=K, mode="forward")
    if path == "k_checkpoint":
        return bilevel.KStepSolver(problem, inner_opt, outer_opt, steps=K, checkpoint=2)
    if path == "implicit_cg":
        return bilevel.ImplicitSolver(problem, inner_opt, outer_opt, inner_steps=K, iterations=60, damping=damping)
    if path in ("implicit_neumann", "implicit_fixed_point"):
        return bilevel.ImplicitSolver(problem, inner_opt, outer_opt, inner_steps=K, iterations=300,
                                      linear_solver=path.removeprefix("implicit_"), power_iterations=100,
                                      damping=damping)
    if path == "implicit_warm":
        return bilevel.ImplicitSolver(problem, inner_opt, outer_opt, inner_steps=K, iterations=60,
                                      warm_start=True, damping=damping)
    if path == "soba":
        return bilevel.SOBASolver(problem, inner_opt, outer_opt, v_lr=LR)
    if path == "f2sa":
        return bilevel.F2SASolver(problem, inner_opt, outer_opt, inner_steps=K, penalty=2.0)
    raise AssertionError(path)


# --------------------------------------------------------------------------- references (no bilevel)
def _copy(model: nn.Module) -> nn.Module:
    """``copy.deepcopy``, also of a module with a hook-based weight norm (whose computed ``weight``, a
    non-leaf tensor, cannot be deep-copied: it is recomputed by the copy's next forward anyway)."""
    cached = [(m, h.name, m.__dict__[h.name]) for m in model.modules() for h in m._forward_pre_hooks.values()
              if isinstance(h, WeightNorm) and h.name in m.__dict__]
    try:
        for m, name, w in cached:
            m.__dict__[name] = w.detach()
        return copy.deepcopy(model)
    finally:
        for m, name, w in cached:
            m.__dict__[name] = w


def _trainable(m: nn.Module) -> list[nn.Parameter]:
    return [p for p in m.parameters() if p.requires_grad]


def _flat(ts):
    return torch.cat([t.reshape(-1) for t in ts])


def _sgd(m, loss_fn, steps, lr_of):
    """``steps`` plain SGD steps on the real module ``m`` in place."""
    for _ in range(steps):
        ps = _trainable(m)
        grads = torch.autograd.grad(loss_fn(m), ps, allow_unused=True)
        lr = float(lr_of())
        with torch.no_grad():
            for p, gr in zip(ps, grads):
                if gr is not None:
                    p -= lr * gr


def _central(fn, tensors):
    """Central differences of ``fn()`` (a tensor) along every entry of ``tensors``, one column per entry. The
    entries are perturbed in place, so closures and tied registrations see the change."""
    cols = []
    for q in tensors:
        for j in range(q.numel()):
            with torch.no_grad():
                q.view(-1)[j] += EPS
            hi = fn()
            with torch.no_grad():
                q.view(-1)[j] -= 2 * EPS
            lo = fn()
            with torch.no_grad():
                q.view(-1)[j] += EPS
            cols.append((hi - lo) / (2 * EPS))
    return cols


def _grad_theta(m, loss):
    ps = _trainable(m)
    return _flat([torch.zeros_like(p) if g is None else g
                  for p, g in zip(ps, torch.autograd.grad(loss, ps, allow_unused=True))])


def _blocks(m, hyper, f, g, batch):
    """At the real module's current theta: H = d2 f / d theta2 and M = d2 f / d theta d lambda (central
    differences of grad_theta f), grad_theta g and d_lambda g."""
    ps, lam = _trainable(m), _trainable(hyper)
    grad_f = lambda: _grad_theta(m, f(m, hyper, batch))
    H = torch.stack(_central(grad_f, ps), 1)
    M = torch.stack(_central(grad_f, lam), 1)
    gval = g(m, hyper, batch)
    grads = torch.autograd.grad(gval, ps + lam, allow_unused=True)
    dg = [torch.zeros_like(t) if gr is None else gr for t, gr in zip(ps + lam, grads)]
    return H, M, _flat(dg[:len(ps)]), _flat(dg[len(ps):])


def _unflatten(vec, like):
    out, i = [], 0
    for t in like:
        out.append(vec[i:i + t.numel()].reshape(t.shape))
        i += t.numel()
    return out


def reference(path, model, hyper, f, g, batch, lr_of=lambda: LR, soba_v=None, f2sa_mu=2.0, damping=0.0):
    """The hypergradient each solver path should return, computed on the real modules without bilevel."""
    lam = _trainable(hyper)
    if path in UNROLLED:
        steps = 1 if path == "one_step" else K

        def G():
            m = _copy(model)
            _sgd(m, lambda mm: f(mm, hyper, batch), steps, lr_of)
            return g(m, hyper, batch).detach()

        return _unflatten(torch.stack(_central(G, lam)), lam)
    if path in IMPLICIT:
        m = _copy(model)
        _sgd(m, lambda mm: f(mm, hyper, batch), K, lr_of)
        H, M, dg_theta, dg_lam = _blocks(m, hyper, f, g, batch)
        v = torch.linalg.solve(0.5 * (H + H.T) + damping * torch.eye(len(H), dtype=DT), dg_theta)
        return _unflatten(dg_lam - M.T @ v, lam)
    if path == "soba":
        H, M, dg_theta, dg_lam = _blocks(model, hyper, f, g, batch)
        return _unflatten(dg_lam - M.T @ soba_v, lam)
    if path == "f2sa":
        z, y = _copy(model), _copy(model)
        for _ in range(K):
            _sgd(z, lambda mm: f(mm, hyper, batch), 1, lr_of)
            _sgd(y, lambda mm: f(mm, hyper, batch) + g(mm, hyper, batch) / f2sa_mu, 1, lr_of)
        total = g(y, hyper, batch) + f2sa_mu * (f(y, hyper, batch) - f(z, hyper, batch))
        grads = torch.autograd.grad(total, lam, allow_unused=True)
        return [torch.zeros_like(q) if gr is None else gr for q, gr in zip(lam, grads)]
    raise AssertionError(path)


def _slots(*modules):
    """Every parameter slot of the modules with the object it holds (identity), to check nothing was swapped."""
    return [(id(d), k, id(v), type(v)) for mod in modules for m in mod.modules() for d in (m._parameters,)
            for k, v in d.items()]


def _rel(a, b):
    a, b = _flat(a), _flat(b)
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def solver_hypergradient(path, problem, batch, inner_opt=None, soba_v=None, damping=0.0):
    """The solver's hypergradient, with the path-specific set-up (warm start: one ``step`` first, whose
    state the reference then starts from; SOBA: a given v)."""
    solver = _solver(path, problem, inner_opt, damping)
    if path == "implicit_warm":
        solver.step(batch)
    if path == "soba":
        solver.load_state_dict({**solver.state_dict(), "v": _unflatten(soba_v, list(solver.theta()))})
    return solver.hypergradient(batch), solver


def assert_matches(path, model, hyper, f, g, batch, inner_opt=None, lr_of=lambda: LR, tol=None, after_solver=None,
                   damping=0.0):
    """Solver path == reference, and the modules hold exactly the parameter objects they held before."""
    if path in ("implicit_neumann", "implicit_fixed_point"):
        # Neumann / Richardson converge like (1 - lambda_min / lambda_max)^n: damping (the reference uses the
        # same H + delta I) keeps them to a few hundred products
        damping = max(damping, 1.0)
    n_theta = sum(p.numel() for p in _trainable(model))
    soba_v = torch.linspace(-1.0, 1.0, n_theta, dtype=DT)
    problem = bilevel.Problem(model, hyper, f, g)
    before = _slots(model, hyper)
    hg, solver = solver_hypergradient(path, problem, batch, inner_opt, soba_v, damping)
    assert _slots(model, hyper) == before, "the solver call changed which objects the modules hold"
    if after_solver is not None:
        after_solver()
    for m in (model, hyper):
        assert all(v is None or type(v) is nn.Parameter for mm in m.modules() for v in mm._parameters.values())
    ref = reference(path, model, hyper, f, g, batch, lr_of=lr_of, soba_v=soba_v, damping=damping)
    err = _rel(hg, ref)
    tol = 1e-6 if tol is None else tol  # measured: <= 3e-8 on every path (central differences in float64)
    assert err < tol, f"{path}: relative error {err:.2e} against the reference"
    assert _flat(ref).abs().max() > 1e-6, "a vacuous reference"
    return solver


# --------------------------------------------------------------------------- (a) tied weights
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("model_cls", [TiedModule, TiedParameter], ids=["tied_module", "tied_parameter"])
def test_tied_inner_weights_value_and_modules_untouched(path, model_cls):
    torch.manual_seed(0)
    model, hyper = model_cls(), Hyper()
    params_before = list(model.parameters())
    f = lambda inner, outer, b: _mse(inner(b[0]), b[1]) + _ridge(list(inner.parameters()), outer.log_wd)
    solver = assert_matches(path, model, hyper, f, _outer, _batch())
    # step too: the modules keep exactly their Parameter objects (the user's optimisers stay valid)
    solver.step(_batch())
    assert [id(p) for p in model.parameters()] == [id(p) for p in params_before]
    assert all(v is None or type(v) is nn.Parameter for m in model.modules() for v in m._parameters.values())
    if model_cls is TiedModule:
        assert model.enc is model.dec
    else:
        assert model.a is model.b


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("hyper_cls", [TiedHyperModule, TiedHyperParameter], ids=["tied_module", "tied_parameter"])
def test_tied_outer_module_every_entry(path, hyper_cls):
    """Forward mode swaps the outer module's slots; with ties, every entry must still get its tangent."""
    torch.manual_seed(0)
    model, hyper = TwoLinear(), hyper_cls()
    if hyper_cls is TiedHyperModule:
        def f(inner, outer, b):
            wd = torch.cat([outer.scale.weight.reshape(-1), outer.alias.weight.reshape(-1) + outer.bias])
            return _mse(inner(b[0]), b[1]) + _ridge(list(inner.parameters()), wd)
    else:
        def f(inner, outer, b):
            return _mse(inner(b[0]), b[1]) + _ridge(list(inner.parameters()), outer.log_wd + 0.5 * outer.also)
    assert_matches(path, model, hyper, f, _outer, _batch())


def test_view_of_a_module_registered_twice_puts_the_parameters_back():
    """The binding itself: after ``inner(x)`` on a module holding one ``nn.Linear`` under two names, both
    names hold the original ``nn.Parameter`` objects (``torch.func.functional_call`` in torch 2.13 left a
    graph tensor there, and the next solver call failed with "`weight` is not an nn.Parameter")."""
    model = TiedModule()
    w, b = model.enc.weight, model.enc.bias
    bound = [w.detach() * 2, b.detach() + 1]
    view = bilevel.InnerView(model, ["enc.weight", "enc.bias"], bound)
    x = torch.randn(4, 3, dtype=DT)
    expected = x @ bound[0].T + bound[1] + 0.5 * ((x ** 2) @ bound[0].T + bound[1])
    assert torch.allclose(view(x), expected, rtol=0, atol=1e-15)
    assert model.enc._parameters["weight"] is w and model.dec._parameters["bias"] is b


def test_a_replaced_parameter_is_put_back_and_named():
    """The check after every call: a loss that re-registers a parameter (here of the outer module) leaves the
    user's optimiser holding a tensor the module no longer has; the solver puts the original back and says so."""
    torch.manual_seed(0)
    model, hyper = TwoLinear(), Hyper()
    original = hyper.log_wd

    def f(inner, outer, b):
        if outer.log_wd is original:
            outer.log_wd = nn.Parameter(original.detach().clone())
        return _mse(inner(b[0]), b[1]) + _ridge(list(inner.parameters()), outer.log_wd)

    solver = _solver("k_reverse", bilevel.Problem(model, hyper, f, _outer))
    with pytest.raises(RuntimeError, match=re.escape(
            "the solver call left parameter slot(s) ['problem.outer.log_wd'] holding other objects than before "
            "(the original parameters are back now)")):
        solver.hypergradient(_batch())
    assert hyper.log_wd is original


# --------------------------------------------------------------------------- (b) loss reads the real module
STORED_MSG = "reads the inner module itself instead of the `inner` it was given"


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("where", ["outer", "inner"])
def test_loss_reading_the_real_module_raises(path, where):
    torch.manual_seed(0)
    model, hyper = TwoLinear(), Hyper()

    def f(inner, outer, b):
        net = model if where == "inner" else inner  # the bug: the real module, not the view
        return _mse(net(b[0]), b[1]) + _ridge(list(inner.parameters()), outer.log_wd)

    def g(inner, outer, b):
        net = model if where == "outer" else inner
        return _mse(net(b[0]), b[1]) + 0.1 * outer.log_wd.sum() * (where == "inner")

    problem = bilevel.Problem(model, hyper, f, g)
    before = _slots(model, hyper)
    solver = _solver(path, problem)
    with pytest.raises(bilevel.StoredParameterError) as info:
        solver.hypergradient(_batch())
    msg = str(info.value)
    assert msg.startswith(f"{where}_loss {STORED_MSG}: it used the module's stored parameter(s) 'lin.bias', "
                          "'lin.weight'")
    assert "Inside the loss use its first argument: `inner(x)`" in msg
    assert _slots(model, hyper) == before


@pytest.mark.parametrize("path", PATHS)
def test_loss_reading_a_parameter_taken_from_the_module_raises(path):
    """A tensor taken from the module before the solver ran (``w = model.lin.weight``) is caught by the
    graph: the backward the solver runs anyway is asked whether it reaches the stored parameters."""
    torch.manual_seed(0)
    model, hyper = TwoLinear(), Hyper()
    w = model.lin.weight

    def f(inner, outer, b):
        return _mse(inner(b[0]), b[1]) + _ridge(list(inner.parameters()), outer.log_wd)

    def g(inner, outer, b):
        return _mse(b[0] @ w.T + inner.lin.bias, b[1]) + _mse(inner(b[0]), b[1])

    solver = _solver(path, bilevel.Problem(model, hyper, f, g))
    with pytest.raises(bilevel.StoredParameterError, match=re.escape(STORED_MSG + ": it used the module's "
                                                                     "stored parameter(s) 'lin.weight'")):
        solver.hypergradient(_batch())


def test_metadata_of_the_real_module_may_be_read():
    """``next(model.parameters()).device`` / ``.dtype`` / ``.shape`` in a loss is fine: only computing with
    the stored tensors raises."""
    torch.manual_seed(0)
    model, hyper = TwoLinear(), Hyper()

    def f(inner, outer, b):
        p = next(model.parameters())
        x = b[0].to(device=p.device, dtype=p.dtype)
        assert p.shape == (1,) and p.requires_grad  # `shift`, the first parameter
        return _mse(inner(x), b[1]) + _ridge(list(inner.parameters()), outer.log_wd)

    assert_matches("k_reverse", model, hyper, f, _outer, _batch())


# --------------------------------------------------------------------------- (c) isinstance on submodules
@pytest.mark.parametrize("path", PATHS)
def test_isinstance_checks_on_submodules(path):
    torch.manual_seed(0)
    model, hyper = TwoLinear(), Hyper()

    def f(inner, outer, b):
        reg = 0.0
        for i, m in enumerate(m for m in inner.modules() if isinstance(m, nn.Linear)):
            reg = reg + outer.log_wd[i].exp() * (m.weight ** 2).sum()
        assert isinstance(inner, TwoLinear) and isinstance(inner.lin, nn.Linear)
        return _mse(inner(b[0]), b[1]) + reg + 0.1 * (inner.shift ** 2).sum()

    assert_matches(path, model, hyper, f, _outer, _batch())


def test_view_isinstance_and_type():
    model = TwoLinear()
    names = [n for n, _ in model.named_parameters()]
    view = bilevel.InnerView(model, names, [p.detach() for p in model.parameters()])
    assert isinstance(view, TwoLinear) and isinstance(view, nn.Module) and isinstance(view, bilevel.InnerView)
    assert isinstance(view.lin, nn.Linear) and not isinstance(view.lin, nn.Conv1d)
    assert type(view) is bilevel.InnerView  # `type(m) is nn.Linear` checks still see the view (documented)
    assert [type(m).__name__ for m in view.modules()] == ["InnerView"] * 3
    assert [m.__class__ for m in view.modules()] == [TwoLinear, nn.Linear, nn.Linear]


# --------------------------------------------------------------------------- (d) routes other than outer.<attr>
class LrHyper(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lr = nn.Parameter(torch.tensor(LR, dtype=DT))
        self.log_wd = nn.Parameter(torch.tensor([-1.0, -0.5], dtype=DT))


@pytest.mark.parametrize("path", UNROLLED)
def test_inner_learning_rate_is_an_outer_parameter(path):
    """``torchopt.sgd(lr=hyper.lr)`` plus a captured outer tensor and ``outer.<attr>``: forward mode returned 0
    for d/dlr and d/dlog_wd; now every unrolled path matches the finite differences."""
    torch.manual_seed(0)
    model, hyper = TwoLinear(), LrHyper()
    captured = hyper.log_wd  # used through the closure, not through `outer`

    def f(inner, outer, b):
        return _mse(inner(b[0]), b[1]) + _ridge(list(inner.parameters()), captured)

    assert_matches(path, model, hyper, f, _outer, _batch(), inner_opt=torchopt.sgd(lr=hyper.lr),
                   lr_of=lambda: hyper.lr)


@pytest.mark.parametrize("path", PATHS)
def test_captured_outer_tensor_in_both_losses(path):
    torch.manual_seed(0)
    model, hyper = TwoLinear(), Hyper()
    lam = hyper.log_wd

    def f(inner, outer, b):
        return _mse(inner(b[0]), b[1]) + _ridge(list(inner.parameters()), lam)

    def g(inner, outer, b):
        return _outer(inner, outer, b) + 0.1 * (lam ** 2).sum()

    assert_matches(path, model, hyper, f, g, _batch())


def test_forward_mode_fallback_with_a_captured_route_raises():
    """In float32, ``0.5 * outer.rho`` sends forward mode to its per-direction ``forward_ad`` fallback, which
    re-roots every iterate and cannot see a captured route: it must raise, not return a partial answer."""

    class Scale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rho = nn.Parameter(torch.tensor(1.0))
            self.lr = nn.Parameter(torch.tensor(0.05))

    torch.manual_seed(0)
    net, scale = nn.Linear(3, 1), Scale()
    x, y = torch.randn(16, 3), torch.randn(16, 1)

    def f(inner, outer, batch):
        return _mse(inner(batch[0]), batch[1]) + 0.5 * outer.rho * sum((p ** 2).sum() for p in inner.parameters())

    problem = bilevel.Problem(net, scale, f, lambda inner, outer, b: _mse(inner(b[0]), b[1]))
    solver = bilevel.KStepSolver(problem, torchopt.sgd(lr=scale.lr), torch.optim.SGD(scale.parameters(), 0.1),
                                 steps=2, mode="forward")
    with pytest.raises(ValueError, match=re.escape(
            "KStepSolver(mode='forward') found a route to the outer parameter(s) ['lr'] other than `outer.<attr>` "
            "inside the losses")) as info:
        solver.hypergradient((x, y))
    assert "use mode='reverse'" in str(info.value)


# --------------------------------------------------------------------------- (e) weight norm
def _wn_model():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.nn.utils.weight_norm is deprecated
        return nn.utils.weight_norm(nn.Linear(3, 1).to(DT))


def _wn_f(inner, outer, b):
    w = inner.weight  # read *before* inner(x): the hook has not refreshed it yet
    return _mse(inner(b[0]), b[1]) + outer.log_wd[0].exp() * (w ** 2).sum() + outer.log_wd[1].exp() * (
        inner.bias ** 2).sum()


def _wn_g(inner, outer, b):
    xv, yv = _batch(1)
    w = inner.weight
    return _mse(xv @ w.T + inner.bias, yv)


def _refreshing(loss):
    """The same loss on the real module, with the weight refreshed first (what the user meant)."""
    def fn(inner, outer, b):
        if isinstance(inner, bilevel.InnerView):
            return loss(inner, outer, b)
        inner(b[0][:1])  # runs the weight-norm hook: weight = g v / ||v|| from the current g, v
        return loss(inner, outer, b)
    return fn


@pytest.mark.parametrize("path", PATHS)
def test_hook_weight_norm_reads_current_weight(path):
    model, hyper = _wn_model(), Hyper()
    weight_before = model.__dict__["weight"]

    def unchanged():  # the module keeps no tensor of the solver's graph
        assert model.__dict__["weight"] is weight_before

    # g v / ||v|| is invariant to the scale of v (a singular inner Hessian), and here H has an eigenvalue of
    # about -1: damp the implicit system so that it is positive definite (the reference uses the same H + 3 I)
    assert_matches(path, model, hyper, _refreshing(_wn_f), _refreshing(_wn_g), _batch(), after_solver=unchanged,
                   damping=3.0)


def test_parametrized_weight_norm_warns_where_the_hessian_is_used():
    torch.manual_seed(0)
    model, hyper = nn.utils.parametrizations.weight_norm(nn.Linear(3, 1).to(DT)), Hyper()
    f = lambda inner, outer, b: _mse(inner(b[0]), b[1]) + _ridge(list(inner.parameters()), outer.log_wd)
    problem = bilevel.Problem(model, hyper, f, _outer)
    with pytest.warns(UserWarning, match=re.escape("problem.inner uses torch.nn.utils.parametrizations.weight_norm "
                                                   "(['parametrizations.weight.0']); torch computes it with "
                                                   "torch._weight_norm, whose second derivative is wrong")):
        _solver("k_reverse", problem).hypergradient(_batch())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _solver("one_step", problem).hypergradient(_batch())  # first-order in theta: no warning
        _solver("f2sa", problem).hypergradient(_batch())


def test_parametrized_weight_norm_hessian_is_asymmetric_in_torch():
    """The reason for the warning (if torch fixes it, this test says the warning can go)."""
    torch.manual_seed(0)
    v = torch.randn(2, 3, dtype=DT, requires_grad=True)
    g = torch.randn(2, 1, dtype=DT, requires_grad=True)
    x, y = torch.randn(8, 3, dtype=DT), torch.randn(8, 2, dtype=DT)

    def hessian(weight):
        grads = _flat(torch.autograd.grad(_mse(x @ weight(v, g).T, y), (g, v), create_graph=True))
        return torch.stack([_flat(torch.autograd.grad(grads[i], (g, v), retain_graph=True))
                            for i in range(grads.numel())])

    torch_h = hessian(lambda v, g: torch._weight_norm(v, g, 0))
    plain_h = hessian(lambda v, g: v * (g / torch.norm_except_dim(v, 2, 0)))
    assert float((plain_h - plain_h.T).abs().max()) < 1e-12
    assert float((torch_h - torch_h.T).abs().max()) > 1e-3
