"""Correctness of the hypergradient solvers in float64: against closed forms, central finite
differences of the unrolled map (with an independent hand-written unroll), and `higher`."""

from __future__ import annotations

import higher
import pytest
import torch
import torchopt
from torch import nn

import bilevel

DT = torch.float64


class LogReg(nn.Module):
    """Outer variables: per-feature log ridge strengths (a vector, so forward mode does >1 jvp)."""

    def __init__(self, d: int, init: float = -1.0) -> None:
        super().__init__()
        self.log_lam = nn.Parameter(torch.full((d,), init, dtype=DT))


def ridge_data(n: int = 40, d: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=DT)
    w = torch.randn(d, generator=g, dtype=DT)
    y = X @ w + 0.3 * torch.randn(n, generator=g, dtype=DT)
    Xv = torch.randn(n, d, generator=g, dtype=DT)
    yv = Xv @ w + 0.3 * torch.randn(n, generator=g, dtype=DT)
    return X, y, Xv, yv


def ridge_problem(d: int = 5, seed: int = 0):
    X, y, Xv, yv = ridge_data(d=d, seed=seed)
    model = nn.Linear(d, 1, bias=False).to(DT)
    hyper = LogReg(d)

    def f(inner, outer, batch):
        xb, yb = batch
        reg = (outer.log_lam.exp() * next(inner.parameters()).squeeze(0) ** 2).sum()
        return ((inner(xb).squeeze(-1) - yb) ** 2).mean() + reg

    def g(inner, outer, batch):
        return ((inner(Xv).squeeze(-1) - yv) ** 2).mean()

    return bilevel.Problem(model, hyper, f, g), model, hyper, (X, y), (Xv, yv)


def ridge_closed_form(X, y, log_lam):
    n = X.shape[0]
    return torch.linalg.solve(X.T @ X / n + torch.diag(log_lam.exp()), X.T @ y / n)


def analytic_ridge_hypergrad(X, y, Xv, yv, log_lam):
    lam = log_lam.detach().clone().requires_grad_()
    G = ((Xv @ ridge_closed_form(X, y, lam) - yv) ** 2).mean()
    return torch.autograd.grad(G, lam)[0]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def outer_sgd(hyper):
    return torch.optim.SGD(hyper.parameters(), lr=0.1)


# ------------------------------------------------------------------------------------------ implicit
@pytest.mark.parametrize("linear_solver,iterations,tol", [("cg", 10, 1e-6), ("neumann", 400, 1e-6),
                                                          ("fixed_point", 400, 1e-6)])
def test_implicit_matches_ridge_closed_form(linear_solver, iterations, tol):
    problem, model, hyper, (X, y), (Xv, yv) = ridge_problem()
    with torch.no_grad():
        model.weight.copy_(ridge_closed_form(X, y, hyper.log_lam)[None])
    s = bilevel.ImplicitSolver(problem, torchopt.sgd(lr=0.1), outer_sgd(hyper), inner_steps=0,
                               linear_solver=linear_solver, iterations=iterations)
    [h] = s.hypergradient((X, y))
    expected = analytic_ridge_hypergrad(X, y, Xv, yv, hyper.log_lam)
    assert rel_err(h, expected) < tol
    info = s.step((X, y))
    assert info.extras["residual"] < 1e-6


def test_implicit_after_inner_steps_approaches_analytic():
    problem, _model, hyper, (X, y), (Xv, yv) = ridge_problem()
    s = bilevel.ImplicitSolver(problem, torchopt.sgd(lr=0.3), outer_sgd(hyper), inner_steps=400,
                               linear_solver="cg", iterations=10)
    [h] = s.hypergradient((X, y))
    expected = analytic_ridge_hypergrad(X, y, Xv, yv, hyper.log_lam)
    assert rel_err(h, expected) < 1e-6
    # too few inner steps: far from theta*, the IFT hypergradient is visibly off
    few = bilevel.ImplicitSolver(problem, torchopt.sgd(lr=0.3), outer_sgd(hyper), inner_steps=2)
    assert rel_err(few.hypergradient((X, y))[0], expected) > 1e-2


def test_implicit_damping_matches_damped_system():
    problem, model, hyper, (X, y), (Xv, yv) = ridge_problem()
    with torch.no_grad():
        model.weight.copy_(ridge_closed_form(X, y, hyper.log_lam)[None])
    delta = 0.5
    s = bilevel.ImplicitSolver(problem, torchopt.sgd(lr=0.1), outer_sgd(hyper), inner_steps=0, damping=delta)
    [h] = s.hypergradient((X, y))
    n = X.shape[0]
    theta = model.weight.detach().squeeze(0)
    H = 2 * (X.T @ X / n + torch.diag(hyper.log_lam.detach().exp())) + delta * torch.eye(5, dtype=DT)
    dg = 2 * Xv.T @ (Xv @ theta - yv) / n
    v = torch.linalg.solve(H, dg)
    mixed = 2 * hyper.log_lam.detach().exp() * theta * v  # d/dlambda_j of (grad_theta f . v)
    assert rel_err(h, -mixed) < 1e-8


# ------------------------------------------------------------------------------------------ K-step
def hand_unroll(theta0, log_lam, X, y, steps, opt, lr, betas=(0.9, 0.999), eps=1e-8, momentum=0.9):
    """Independent plain-tensor unroll of SGD / SGD+momentum / Adam (torch's conventions)."""
    n = X.shape[0]
    theta = theta0.clone()
    m = torch.zeros_like(theta)
    v = torch.zeros_like(theta)
    for t in range(1, steps + 1):
        grad = 2 * X.T @ (X @ theta - y) / n + 2 * log_lam.exp() * theta
        if opt == "sgd":
            theta = theta - lr * grad
        elif opt == "momentum":
            m = momentum * m + grad
            theta = theta - lr * m
        else:
            m = betas[0] * m + (1 - betas[0]) * grad
            v = betas[1] * v + (1 - betas[1]) * grad ** 2
            mh, vh = m / (1 - betas[0] ** t), v / (1 - betas[1] ** t)
            theta = theta - lr * mh / (vh.sqrt() + eps)
    return theta


def torchopt_unroll(theta0, log_lam, X, y, steps, optimizer):
    """Plain (no autograd) unroll with torchopt's functional API: the map the solver differentiates.
    Note torchopt's Adam computes its bias correction ``1 - beta**t`` in float32 even for float64
    parameters, so it differs from the float64 hand-written Adam in the 7th digit."""
    n = X.shape[0]
    theta = (theta0.clone(),)
    state = optimizer.init(theta)
    for _ in range(steps):
        grad = (2 * X.T @ (X @ theta[0] - y) / n + 2 * log_lam.exp() * theta[0],)
        updates, state = optimizer.update(grad, state, params=theta, inplace=False)
        theta = tuple(torchopt.apply_updates(theta, updates, inplace=False))
    return theta[0]


def central_fd(fn, x, h=1e-5):
    out = torch.zeros_like(x)
    for j in range(x.numel()):
        e = torch.zeros_like(x)
        e.view(-1)[j] = h
        out.view(-1)[j] = (fn(x + e) - fn(x - e)) / (2 * h)
    return out


OPTS = {"sgd": (lambda: torchopt.sgd(lr=0.05), 0.05),
        "momentum": (lambda: torchopt.sgd(lr=0.02, momentum=0.9), 0.02),
        "adam": (lambda: torchopt.adam(lr=0.05), 0.05)}


@pytest.mark.parametrize("mode", ["reverse", "forward"])
@pytest.mark.parametrize("opt", ["sgd", "momentum", "adam"])
def test_kstep_matches_finite_differences_of_unrolled_map(mode, opt):
    K = 6
    problem, model, hyper, (X, y), (Xv, yv) = ridge_problem()
    theta0 = torch.linspace(-1, 1, 5, dtype=DT)
    with torch.no_grad():
        model.weight.copy_(theta0[None])
    make, lr = OPTS[opt]
    s = bilevel.KStepSolver(problem, make(), outer_sgd(hyper), steps=K, mode=mode)
    [h] = s.hypergradient((X, y))

    def G(log_lam):
        th = torchopt_unroll(theta0, log_lam, X, y, K, make())
        return ((Xv @ th - yv) ** 2).mean()

    lam0 = hyper.log_lam.detach().clone()
    fd = central_fd(G, lam0)
    assert rel_err(h, fd) < 1e-6
    # the map is the optimiser it claims to be (torch conventions), up to torchopt's float32 bias correction
    hand = hand_unroll(theta0, lam0, X, y, K, opt, lr)
    assert rel_err(torchopt_unroll(theta0, lam0, X, y, K, make()), hand) < (1e-5 if opt == "adam" else 1e-12)


def test_forward_and_reverse_agree_on_mlp_with_truncation():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)).to(DT)
    weights = WeightNet(12)
    x, yb = torch.randn(12, 3, dtype=DT), torch.randn(12, 1, dtype=DT)
    problem = bilevel.Problem(net, weights, weighted_mse, clean_mse(x[:6], yb[:6]))
    grads = {}
    for mode in ("reverse", "forward"):
        for trunc in (None, 2):
            s = bilevel.KStepSolver(problem, torchopt.adam(lr=0.01), outer_sgd(weights), steps=4,
                                    truncate=trunc, mode=mode)
            grads[mode, trunc] = s.hypergradient((x, yb))[0]
    assert rel_err(grads["forward", None], grads["reverse", None]) < 1e-10
    assert rel_err(grads["forward", 2], grads["reverse", 2]) < 1e-10
    assert rel_err(grads["reverse", 2], grads["reverse", None]) > 1e-6  # truncation really drops terms


def test_truncation_equals_fd_of_last_steps():
    K, T = 6, 2
    problem, model, hyper, (X, y), (Xv, yv) = ridge_problem()
    theta0 = torch.linspace(-1, 1, 5, dtype=DT)
    with torch.no_grad():
        model.weight.copy_(theta0[None])
    s = bilevel.KStepSolver(problem, torchopt.sgd(lr=0.05), outer_sgd(hyper), steps=K, truncate=T)
    [h] = s.hypergradient((X, y))
    lam0 = hyper.log_lam.detach().clone()
    theta_frozen = hand_unroll(theta0, lam0, X, y, K - T, "sgd", 0.05)  # constant w.r.t. lambda

    def G(log_lam):
        th = hand_unroll(theta_frozen, log_lam, X, y, T, "sgd", 0.05)
        return ((Xv @ th - yv) ** 2).mean()

    assert rel_err(h, central_fd(G, lam0)) < 1e-6


def test_kstep_sequence_of_batches():
    problem, model, hyper, (X, y), (Xv, yv) = ridge_problem()
    batches = [(X[i::3], y[i::3]) for i in range(3)]
    theta0 = torch.linspace(-1, 1, 5, dtype=DT)
    with torch.no_grad():
        model.weight.copy_(theta0[None])
    s = bilevel.KStepSolver(problem, torchopt.sgd(lr=0.05), outer_sgd(hyper), steps=3)
    [h] = s.hypergradient(batches)

    def G(log_lam):
        th = theta0
        for xb, yb in batches:
            th = hand_unroll(th, log_lam, xb, yb, 1, "sgd", 0.05)
        return ((Xv @ th - yv) ** 2).mean()

    assert rel_err(h, central_fd(G, hyper.log_lam.detach().clone())) < 1e-6


# ------------------------------------------------------------------------------------------ vs higher
class WeightNet(nn.Module):
    """Per-sample log-weights as the outer variables (data reweighting)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.linspace(-0.5, 0.5, n, dtype=DT))


def weighted_mse(inner, outer, batch):
    x, yb = batch
    per_sample = ((inner(x) - yb) ** 2).mean(-1)
    return (torch.sigmoid(outer.logits) * per_sample).mean()


def clean_mse(xv, yv):
    def g(inner, outer, batch):
        return ((inner(xv) - yv) ** 2).mean()
    return g


def test_kstep_momentum_matches_higher_on_mlp():
    torch.manual_seed(0)
    n, K, lr, mom = 16, 5, 0.1, 0.9
    net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2)).to(DT)
    weights = WeightNet(n)
    x, yb = torch.randn(n, 4, dtype=DT), torch.randn(n, 2, dtype=DT)
    xv, yv = torch.randn(8, 4, dtype=DT), torch.randn(8, 2, dtype=DT)
    problem = bilevel.Problem(net, weights, weighted_mse, clean_mse(xv, yv))
    s = bilevel.KStepSolver(problem, torchopt.sgd(lr=lr, momentum=mom), outer_sgd(weights), steps=K)
    [ours] = s.hypergradient((x, yb))

    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=mom)
    with higher.innerloop_ctx(net, opt, copy_initial_weights=True) as (fnet, diffopt):
        for _ in range(K):
            per = ((fnet(x) - yb) ** 2).mean(-1)
            diffopt.step((torch.sigmoid(weights.logits) * per).mean())
        val = ((fnet(xv) - yv) ** 2).mean()
        [ref] = torch.autograd.grad(val, weights.logits)
    assert rel_err(ours, ref) < 1e-10


# ------------------------------------------------------------------------------------------ one-step
def test_one_step_equals_kstep1_and_hand_derivative():
    problem, model, hyper, (X, y), (Xv, yv) = ridge_problem()
    theta0 = torch.linspace(-1, 1, 5, dtype=DT)
    with torch.no_grad():
        model.weight.copy_(theta0[None])
    lr = 0.05
    [one] = bilevel.OneStepSolver(problem, torchopt.sgd(lr=lr), outer_sgd(hyper)).hypergradient((X, y))
    [k1] = bilevel.KStepSolver(problem, torchopt.sgd(lr=lr), outer_sgd(hyper), steps=1).hypergradient((X, y))
    # theta1 = theta0 - lr (grad_mse + 2 e^lam * theta0)  =>  d theta1_j / d lam_j = -2 lr e^lam_j theta0_j
    n = X.shape[0]
    lam = hyper.log_lam.detach()
    theta1 = theta0 - lr * (2 * X.T @ (X @ theta0 - y) / n + 2 * lam.exp() * theta0)
    dg_dtheta1 = 2 * Xv.T @ (Xv @ theta1 - yv) / n
    hand = dg_dtheta1 * (-2 * lr * lam.exp() * theta0)
    assert rel_err(one, hand) < 1e-12
    assert rel_err(k1, hand) < 1e-12


def test_direct_outer_dependence_is_included():
    problem, model, hyper, (X, y), (_Xv, _yv) = ridge_problem()
    f = problem.inner_loss
    problem2 = bilevel.Problem(model, hyper, f,
                               lambda inner, outer, b: problem.outer_loss(inner, outer, b) + (outer.log_lam ** 2).sum())
    for make in (lambda p: bilevel.OneStepSolver(p, torchopt.sgd(lr=0.05), outer_sgd(hyper)),
                 lambda p: bilevel.KStepSolver(p, torchopt.sgd(lr=0.05), outer_sgd(hyper), steps=2, mode="forward"),
                 lambda p: bilevel.ImplicitSolver(p, torchopt.sgd(lr=0.05), outer_sgd(hyper), inner_steps=1)):
        diff = make(problem2).hypergradient((X, y))[0] - make(problem).hypergradient((X, y))[0]
        assert rel_err(diff, 2 * hyper.log_lam.detach()) < 1e-10


# ------------------------------------------------------------------------------------------ state
class BNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 8).to(DT)
        self.bn = nn.BatchNorm1d(8).to(DT)
        self.out = nn.Linear(8, 1).to(DT)

    def forward(self, x):
        return self.out(torch.relu(self.bn(self.lin(x))))


def _bn_problem():
    torch.manual_seed(0)
    net, weights = BNNet(), WeightNet(10)
    x, yb = torch.randn(10, 4, dtype=DT), torch.randn(10, 1, dtype=DT)

    def f(inner, outer, batch):
        reg = 1e-3 * sum((p ** 2).sum() for p in inner.parameters())
        return weighted_mse(inner, outer, batch) + reg

    return bilevel.Problem(net, weights, f, clean_mse(x[:5], yb[:5])), net, weights, (x, yb)


def _snapshot(net, weights, solver):
    return ([t.clone() for t in net.state_dict().values()], [p.clone() for p in weights.parameters()],
            [t.clone() for t in torchopt.pytree.tree_leaves(solver.inner_state) if isinstance(t, torch.Tensor)])


@pytest.mark.parametrize("name", ["one_step", "k_step", "k_step_fwd", "implicit"])
def test_hypergradient_mutates_nothing_and_step_moves_both(name):
    problem, net, weights, batch = _bn_problem()
    out_opt = torch.optim.Adam(weights.parameters(), 1e-2)
    inner = torchopt.adam(lr=1e-2)
    s = {"one_step": lambda: bilevel.OneStepSolver(problem, inner, out_opt),
         "k_step": lambda: bilevel.KStepSolver(problem, inner, out_opt, steps=3),
         "k_step_fwd": lambda: bilevel.KStepSolver(problem, inner, out_opt, steps=2, mode="forward"),
         "implicit": lambda: bilevel.ImplicitSolver(problem, inner, out_opt, inner_steps=2, damping=0.1)}[name]()
    if name == "k_step_fwd":
        net.eval()  # forward mode cannot run in-place buffer updates (see test below)
    s.step(batch)  # non-trivial optimiser state first (and a .grad on the outer parameters)
    before = _snapshot(net, weights, s)
    grad_before = weights.logits.grad.clone()
    h1 = s.hypergradient(batch)
    h2 = s.hypergradient(batch)
    after = _snapshot(net, weights, s)
    for a, b in zip(before, after):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert torch.equal(weights.logits.grad, grad_before)  # hypergradient leaves the outer .grad alone
    assert all(torch.equal(a, b) for a, b in zip(h1, h2))  # deterministic and state-free
    info = s.step(batch)
    moved = _snapshot(net, weights, s)
    assert not torch.equal(before[0][0], moved[0][0])  # inner weights moved
    assert not torch.equal(before[1][0], moved[1][0])  # outer weights moved
    assert info.hypergrad_norm > 0 and info.inner_loss > 0 and info.outer_loss > 0


def test_hypergradient_returns_outer_parameter_order():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Parameter(torch.tensor(0.1, dtype=DT))
            self.b = nn.Parameter(torch.ones(3, dtype=DT))

    model = nn.Linear(3, 1).to(DT)
    hyper = Two()
    x, yb = torch.randn(6, 3, dtype=DT), torch.randn(6, 1, dtype=DT)
    f = lambda inner, outer, b: (((inner(b[0] * outer.b) - b[1]) ** 2).mean() + outer.a.exp() *
                                 sum((p ** 2).sum() for p in inner.parameters()))
    g = lambda inner, outer, b: ((inner(b[0]) - b[1]) ** 2).mean()
    s = bilevel.OneStepSolver(bilevel.Problem(model, hyper, f, g), torchopt.sgd(lr=0.1), outer_sgd(hyper))
    hg = s.hypergradient((x, yb))
    assert [h.shape for h in hg] == [p.shape for p in hyper.parameters()]


# ------------------------------------------------------------------------------------------ errors
def test_errors_name_the_problem():
    problem, model, hyper, (X, y), _ = ridge_problem()
    with pytest.raises(TypeError, match="torchopt GradientTransformation"):
        bilevel.OneStepSolver(problem, torch.optim.SGD(model.parameters(), 0.1), outer_sgd(hyper))
    with pytest.raises(TypeError, match="outer_optimizer"):
        bilevel.OneStepSolver(problem, torchopt.sgd(lr=0.1), torchopt.sgd(lr=0.1))
    frozen = LogReg(5)
    frozen.log_lam.requires_grad_(False)
    with pytest.raises(ValueError, match="outer has no parameters"):
        bilevel.Problem(model, frozen, problem.inner_loss, problem.outer_loss)
    with pytest.raises(ValueError, match="inner has no parameters"):
        bilevel.Problem(nn.ReLU(), hyper, problem.inner_loss, problem.outer_loss)
    with pytest.raises(TypeError, match="callable"):
        bilevel.Problem(model, hyper, "f", problem.outer_loss)
    # loss not scalar
    bad = bilevel.Problem(model, hyper, lambda i, o, b: (i(b[0]).squeeze(-1) - b[1]) ** 2 * o.log_lam.sum(),
                          problem.outer_loss)
    with pytest.raises(ValueError, match=r"inner_loss must return a scalar tensor, got shape \(40,\).*mean"):
        bilevel.OneStepSolver(bad, torchopt.sgd(lr=0.1), outer_sgd(hyper)).hypergradient((X, y))
    # wrong number of batches
    s = bilevel.KStepSolver(problem, torchopt.sgd(lr=0.1), outer_sgd(hyper), steps=3)
    with pytest.raises(ValueError, match="3 inner steps but got a list of 2 batches"):
        s.hypergradient([(X, y), (X, y)])
    with pytest.raises(ValueError, match="truncate"):
        bilevel.KStepSolver(problem, torchopt.sgd(lr=0.1), outer_sgd(hyper), steps=3, truncate=5)
    with pytest.raises(ValueError, match="linear_solver"):
        bilevel.ImplicitSolver(problem, torchopt.sgd(lr=0.1), outer_sgd(hyper), linear_solver="lu")
    # outer loss that cannot see lambda
    blind = bilevel.Problem(model, hyper, lambda i, o, b: ((i(b[0]).squeeze(-1) - b[1]) ** 2).mean(),
                            problem.outer_loss)
    with pytest.raises(ValueError, match="does not depend on the outer parameters"):
        bilevel.OneStepSolver(blind, torchopt.sgd(lr=0.1), outer_sgd(hyper)).hypergradient((X, y))


def test_non_finite_errors_say_where():
    problem, model, hyper, (X, y), _ = ridge_problem()
    with torch.no_grad():
        model.weight.fill_(1.0)
    s = bilevel.KStepSolver(problem, torchopt.sgd(lr=1e3), outer_sgd(hyper), steps=120)
    with pytest.raises(bilevel.NonFiniteError, match="inner_loss was (nan|inf) at inner step"):
        s.step((X, y))
    nan_outer = bilevel.Problem(model, hyper, problem.inner_loss,
                                lambda i, o, b: problem.outer_loss(i, o, b) * torch.tensor(float("nan"), dtype=DT))
    with pytest.raises(bilevel.NonFiniteError, match="outer_loss was nan"):
        bilevel.OneStepSolver(nan_outer, torchopt.sgd(lr=0.01), outer_sgd(hyper)).step((X, y))
    sqrt_at_zero = bilevel.Problem(model, hyper, problem.inner_loss,
                                   lambda i, o, b: problem.outer_loss(i, o, b) + (o.log_lam - o.log_lam.detach()).abs().sqrt().sum())
    with pytest.raises(bilevel.NonFiniteError, match="hypergradient of outer parameter 'log_lam'"):
        bilevel.OneStepSolver(sqrt_at_zero, torchopt.sgd(lr=0.01), outer_sgd(hyper)).step((X, y))


def test_inner_view_binds_current_tensors_and_buffers():
    net = BNNet()
    names = [n for n, _ in net.named_parameters()]
    params = [torch.zeros_like(p) for p in net.parameters()]
    view = bilevel.InnerView(net, names, params)
    assert all(a is b for a, b in zip(view.parameters(), params))
    assert [n for n, _ in view.named_parameters()] == names
    net.eval()
    out = view(torch.randn(3, 4, dtype=DT))
    assert torch.equal(out, torch.zeros(3, 1, dtype=DT))  # zero weights, bias -> zero output


def test_forward_mode_explains_in_place_buffer_updates():
    problem, _net, weights, batch = _bn_problem()
    s = bilevel.KStepSolver(problem, torchopt.sgd(lr=0.1), outer_sgd(weights), steps=2, mode="forward")
    with pytest.raises(RuntimeError, match="mode='reverse'"):
        s.hypergradient(batch)


@pytest.mark.parametrize("opt", ["momentum", "adam"])
@pytest.mark.parametrize("segment", [1, 3])
def test_checkpointed_reverse_unroll_equals_stored_unroll(opt, segment):
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)).to(DT)
    weights = WeightNet(12)
    x, yb = torch.randn(12, 3, dtype=DT), torch.randn(12, 1, dtype=DT)

    def noisy_weighted_mse(inner, outer, batch):  # global-RNG noise: the recompute must replay it
        xb, yb_ = batch
        return weighted_mse(inner, outer, (xb + 0.1 * torch.randn_like(xb), yb_))

    problem = bilevel.Problem(net, weights, noisy_weighted_mse, clean_mse(x[:6], yb[:6]))
    make = OPTS[opt][0]
    out = {}
    for ckpt in (None, segment):
        for trunc in (None, 5):
            torch.manual_seed(7)
            s = bilevel.KStepSolver(problem, make(), outer_sgd(weights), steps=7, truncate=trunc, checkpoint=ckpt)
            out[ckpt, trunc] = s.hypergradient((x, yb))[0]
    assert rel_err(out[segment, None], out[None, None]) < 1e-12
    assert rel_err(out[segment, 5], out[None, 5]) < 1e-12
    torch.manual_seed(3)
    s = bilevel.KStepSolver(problem, make(), outer_sgd(weights), steps=7, checkpoint=segment)
    before = torch.get_rng_state()
    info = s.step((x, yb))
    assert info.hypergrad_norm > 0 and not torch.equal(before, torch.get_rng_state())


def test_forward_mode_allows_python_control_flow_on_losses():
    problem, model, hyper, (X, y), _ = ridge_problem()
    f = problem.inner_loss

    def branching(inner, outer, batch):  # only tangents are vmapped, so branching on primals is fine
        loss = f(inner, outer, batch)
        return loss * 2 if loss > 1e9 else loss

    theta0 = torch.linspace(-1, 1, 5, dtype=DT)
    with torch.no_grad():
        model.weight.copy_(theta0[None])
    plain = bilevel.KStepSolver(problem, torchopt.sgd(lr=0.05), outer_sgd(hyper), steps=3, mode="forward")
    branchy = bilevel.KStepSolver(bilevel.Problem(model, hyper, branching, problem.outer_loss),
                                  torchopt.sgd(lr=0.05), outer_sgd(hyper), steps=3, mode="forward")
    rev = bilevel.KStepSolver(problem, torchopt.sgd(lr=0.05), outer_sgd(hyper), steps=3)
    ref = rev.hypergradient((X, y))[0]
    assert rel_err(plain.hypergradient((X, y))[0], ref) < 1e-12
    assert rel_err(branchy.hypergradient((X, y))[0], ref) < 1e-12


def test_linear_solvers_on_explicit_matrices():
    g = torch.Generator().manual_seed(0)
    M = torch.randn(6, 6, generator=g, dtype=DT)
    A = M @ M.T + 0.5 * torch.eye(6, dtype=DT)
    b = (torch.randn(6, generator=g, dtype=DT),)
    exact = torch.linalg.solve(A, b[0])
    mv = lambda v: (A @ v[0],)
    cg = bilevel.linear.conjugate_gradient(mv, b, iterations=6)
    assert rel_err(cg.solution[0], exact) < 1e-10 and cg.residual < 1e-10
    lam_max = bilevel.linear.power_iteration(mv, b, iterations=200)
    assert abs(lam_max - torch.linalg.eigvalsh(A)[-1].item()) / lam_max < 1e-6
    for solve in (bilevel.linear.neumann, bilevel.linear.fixed_point):
        sol = solve(mv, b, 3000, 1.0 / lam_max)
        assert rel_err(sol.solution[0], exact) < 1e-8
        assert sol.residual == pytest.approx(float((A @ sol.solution[0] - b[0]).norm() / b[0].norm()))
    # indefinite A: CG stops moving instead of producing NaN, and says how far it got
    D = torch.diag(torch.tensor([1.0, -1.0], dtype=DT))
    bad = bilevel.linear.conjugate_gradient(lambda v: (D @ v[0],), (torch.ones(2, dtype=DT),), iterations=5)
    assert torch.isfinite(bad.solution[0]).all() and bad.residual == pytest.approx(1.0)


def test_forward_mode_float32_with_python_scalar_times_zero_dim_parameter():
    """torch promotes `0.5 * rho` (rho 0-d, vmapped tangent) to float64; the solver must still return a
    float32 hypergradient equal to reverse mode's, and `step` must be able to use it."""

    class Scale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rho = nn.Parameter(torch.tensor(1.0))

    torch.manual_seed(0)
    net, scale = nn.Linear(3, 1), Scale()
    x, yb = torch.randn(16, 3), torch.randn(16, 1)

    def f(inner, outer, batch):
        return 0.995 * ((inner(batch[0]) - batch[1]) ** 2).mean() + 0.5 * outer.rho * sum(
            (p ** 2).sum() for p in inner.parameters())

    def g(inner, outer, batch):
        return 0.3 * ((inner(batch[0]) - batch[1]) ** 2).mean()

    problem = bilevel.Problem(net, scale, f, g)
    fwd = bilevel.KStepSolver(problem, torchopt.adam(1e-2), torch.optim.Adam(scale.parameters()), steps=2,
                              mode="forward")
    rev = bilevel.KStepSolver(problem, torchopt.adam(1e-2), torch.optim.Adam(scale.parameters()), steps=2)
    [h] = fwd.hypergradient((x, yb))
    assert h.dtype == torch.float32
    assert rel_err(h.double(), rev.hypergradient((x, yb))[0].double()) < 1e-4  # float32 round-off
    fwd.step((x, yb))


def test_cg_through_negative_curvature_solves_indefinite_system():
    """'continue' is textbook CG: on a symmetric indefinite, non-singular A it still solves A v = b in
    dim(A) products; 'stop' (the default) freezes at the first direction with p^T A p <= 0."""
    g = torch.Generator().manual_seed(1)
    Q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=DT))
    A = Q @ torch.diag(torch.tensor([3.0, 2.0, 1.5, -0.7, -1.0, -2.0], dtype=DT)) @ Q.T
    b = (torch.randn(6, generator=g, dtype=DT),)
    exact = torch.linalg.solve(A, b[0])
    mv = lambda v: (A @ v[0],)
    cont = bilevel.linear.conjugate_gradient(mv, b, iterations=6, stop_on_negative_curvature=False)
    assert rel_err(cont.solution[0], exact) < 1e-8 and cont.residual < 1e-8
    stop = bilevel.linear.conjugate_gradient(mv, b, iterations=6, check_every=1)
    assert stop.iterations < 6 and stop.residual > 1e-3


def test_implicit_negative_curvature_option_on_mlp():
    """An MLP's inner Hessian away from a minimum is indefinite: 'stop' ends CG early, 'continue' spends
    every iteration; both hypergradients are finite, and a bad value is refused with the choices."""
    torch.manual_seed(0)
    X, y = torch.randn(32, 4, dtype=DT), 3 * torch.randn(32, 1, dtype=DT)
    out = {}
    for mode in ("stop", "continue"):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1)).to(DT)
        hyper = LogReg(1, init=-8.0)
        problem = bilevel.Problem(
            net, hyper,
            lambda inner, outer, batch: ((inner(batch[0]) - batch[1]) ** 2).mean()
            + outer.log_lam.exp().sum() * sum((p ** 2).sum() for p in inner.parameters()),
            lambda inner, outer, batch: ((inner(batch[0]) - batch[1]) ** 2).mean())
        solver = bilevel.ImplicitSolver(problem, torchopt.sgd(lr=0.1), outer_sgd(hyper), inner_steps=1,
                                        iterations=12, negative_curvature=mode)
        info = solver.step((X, y), (X, y))
        out[mode] = info.extras["iterations"]
        assert all(torch.isfinite(p.grad).all() for p in hyper.parameters())
    assert out["continue"] == 12 and out["stop"] < 12
    with pytest.raises(ValueError, match="negative_curvature must be 'stop' or 'continue'"):
        bilevel.ImplicitSolver(problem, torchopt.sgd(lr=0.1), outer_sgd(hyper), negative_curvature="ignore")
