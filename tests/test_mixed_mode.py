"""KStepSolver(mode="mixed"): the same hypergradient as reverse mode, to float64 round-off, from the stored
iterates alone (forward-over-reverse, or hvp="reverse": a double backward through one step's gradient)."""

from __future__ import annotations

import pytest
import torch
import torchopt
from torch import nn

import bilevel
from tests.test_bilevel_solvers import (
    DT,
    OPTS,
    WeightNet,
    _bn_problem,
    central_fd,
    clean_mse,
    outer_sgd,
    rel_err,
    ridge_problem,
    torchopt_unroll,
    weighted_mse,
)

HVPS = [None, "reverse"]


def both(problem, hyper, make, batch, hvp=None, seed=None, **kw):
    out = {}
    for mode in ("reverse", "mixed"):
        if seed is not None:
            torch.manual_seed(seed)
        extra = {"hvp": hvp} if mode == "mixed" and hvp is not None else {}
        s = bilevel.KStepSolver(problem, make(), outer_sgd(hyper), mode=mode, **kw, **extra)
        out[mode] = s.hypergradient(batch)
    return out["reverse"], out["mixed"]


def max_rel(a, b):
    return max(rel_err(x, y) for x, y in zip(b, a))


def ridge_at(theta0=None):
    problem, model, hyper, (X, y), (Xv, yv) = ridge_problem()
    theta0 = torch.linspace(-1, 1, 5, dtype=DT) if theta0 is None else theta0
    with torch.no_grad():
        model.weight.copy_(theta0[None])
    return problem, model, hyper, (X, y), (Xv, yv), theta0


@pytest.mark.parametrize("hvp", HVPS)
@pytest.mark.parametrize("opt", ["sgd", "momentum", "adam"])
@pytest.mark.parametrize("steps,truncate", [(1, None), (10, None), (10, 3), (10, 1)])
def test_mixed_equals_reverse_on_ridge(opt, steps, truncate, hvp):
    problem, _, hyper, batch, _, _ = ridge_at()
    rev, mix = both(problem, hyper, OPTS[opt][0], batch, hvp=hvp, steps=steps, truncate=truncate)
    assert max_rel(rev, mix) < 1e-12


@pytest.mark.parametrize("hvp", HVPS)
@pytest.mark.parametrize("opt", ["sgd", "momentum", "adam"])
def test_mixed_equals_reverse_on_mlp_with_truncation(opt, hvp):
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)).to(DT)
    weights = WeightNet(12)
    x, yb = torch.randn(12, 3, dtype=DT), torch.randn(12, 1, dtype=DT)
    problem = bilevel.Problem(net, weights, weighted_mse, clean_mse(x[:6], yb[:6]))
    for steps, truncate in ((10, None), (10, 4), (1, None)):
        rev, mix = both(problem, weights, OPTS[opt][0], (x, yb), hvp=hvp, steps=steps, truncate=truncate)
        assert max_rel(rev, mix) < 1e-12


@pytest.mark.parametrize("hvp", HVPS)
def test_mixed_matches_finite_differences_and_hand_derivative(hvp):
    kw = {} if hvp is None else {"hvp": hvp}
    problem, _, hyper, (X, y), (Xv, yv), theta0 = ridge_at()
    for opt in ("sgd", "adam"):
        make = OPTS[opt][0]
        [h] = bilevel.KStepSolver(problem, make(), outer_sgd(hyper), steps=6, mode="mixed", **kw).hypergradient((X, y))
        fd = central_fd(lambda lam, make=make: ((Xv @ torchopt_unroll(theta0, lam, X, y, 6, make()) - yv) ** 2).mean(),
                        hyper.log_lam.detach().clone())
        assert rel_err(h, fd) < 1e-6
    # analytic: K=1 SGD, d theta1_j / d lam_j = -2 lr e^lam_j theta0_j
    lr, n, lam = 0.05, X.shape[0], hyper.log_lam.detach()
    [k1] = bilevel.KStepSolver(problem, torchopt.sgd(lr=lr), outer_sgd(hyper), steps=1, mode="mixed",
                               **kw).hypergradient((X, y))
    theta1 = theta0 - lr * (2 * X.T @ (X @ theta0 - y) / n + 2 * lam.exp() * theta0)
    hand = 2 * Xv.T @ (Xv @ theta1 - yv) / n * (-2 * lr * lam.exp() * theta0)
    assert rel_err(k1, hand) < 1e-12


@pytest.mark.parametrize("hvp", HVPS)
def test_outer_parameters_in_both_losses_and_in_the_optimiser(hvp):
    problem, model, hyper, batch, _, _ = ridge_at()
    both_losses = bilevel.Problem(model, hyper, problem.inner_loss,
                                  lambda inner, outer, b: problem.outer_loss(inner, outer, b)
                                  + (outer.log_lam ** 2).sum())
    rev, mix = both(both_losses, hyper, lambda: torchopt.adam(lr=0.05), batch, hvp=hvp, steps=5)
    assert max_rel(rev, mix) < 1e-12

    class Hyper(nn.Module):  # a learning rate as an outer parameter, read by the inner optimiser
        def __init__(self) -> None:
            super().__init__()
            self.log_lam = nn.Parameter(torch.full((5,), -1.0, dtype=DT))
            self.lr = nn.Parameter(torch.tensor(0.05, dtype=DT))

    h2 = Hyper()
    p2 = bilevel.Problem(model, h2, problem.inner_loss, problem.outer_loss)
    lam = h2.log_lam  # a captured outer tensor too
    p3 = bilevel.Problem(model, h2, lambda inner, outer, b: problem.inner_loss(inner, outer, b)
                         + 1e-2 * (lam.exp() * inner.weight.squeeze(0)).sum(), problem.outer_loss)
    for prob in (p2, p3):
        rev, mix = both(prob, h2, lambda: torchopt.sgd(lr=h2.lr, momentum=0.5), batch, hvp=hvp, steps=4)
        assert all(float(g.abs().sum()) > 0 for g in rev)
        assert max_rel(rev, mix) < 1e-12


@pytest.mark.parametrize("hvp", HVPS)
def test_noise_batch_lists_and_buffers_are_replayed(hvp):
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)).to(DT)
    weights = WeightNet(12)
    x, yb = torch.randn(12, 3, dtype=DT), torch.randn(12, 1, dtype=DT)

    def noisy(inner, outer, batch):  # global-RNG noise: the backward sweep must replay it step by step
        xb, yb_ = batch
        return weighted_mse(inner, outer, (xb + 0.1 * torch.randn_like(xb), yb_))

    problem = bilevel.Problem(net, weights, noisy, clean_mse(x[:6], yb[:6]))
    batches = [(x + 0.01 * i, yb) for i in range(6)]
    rev, mix = both(problem, weights, OPTS["adam"][0], batches, hvp=hvp, seed=7, steps=6, truncate=5)
    assert max_rel(rev, mix) < 1e-12
    problem, net, weights, batch = _bn_problem()  # BatchNorm in training mode: running stats updated per step
    rev, mix = both(problem, weights, lambda: torchopt.adam(1e-2), batch, hvp=hvp, steps=3)
    assert max_rel(rev, mix) < 1e-12


def test_mixed_step_matches_reverse_step_and_mutates_nothing_in_hypergradient():
    results = {}
    for mode in ("reverse", "mixed"):
        problem, net, weights, batch = _bn_problem()
        s = bilevel.KStepSolver(problem, torchopt.adam(1e-2), torch.optim.SGD(weights.parameters(), 0.1), steps=3,
                                mode=mode)
        before = [t.clone() for t in net.state_dict().values()]
        s.hypergradient(batch)
        assert all(torch.equal(a, b) for a, b in zip(before, net.state_dict().values()))
        s.step(batch)
        results[mode] = [t.clone() for t in net.state_dict().values()] + [p.clone() for p in weights.parameters()]
    assert all(torch.allclose(a, b, rtol=1e-12, atol=1e-14) for a, b in zip(results["reverse"], results["mixed"]))


def test_options_and_errors():
    assert "mixed" in bilevel.MODES
    problem, _, hyper, _, _, _ = ridge_at()
    with pytest.raises(ValueError, match="'mixed'"):
        bilevel.KStepSolver(problem, torchopt.sgd(lr=0.1), outer_sgd(hyper), mode="mixd")
    with pytest.raises(ValueError, match="checkpoint applies to mode='reverse'"):
        bilevel.KStepSolver(problem, torchopt.sgd(lr=0.1), outer_sgd(hyper), mode="mixed", checkpoint=2)
    with pytest.raises(ValueError, match="hvp applies to mode='mixed'"):
        bilevel.KStepSolver(problem, torchopt.sgd(lr=0.1), outer_sgd(hyper), hvp="reverse")
    with pytest.raises(ValueError, match="hvp must be"):
        bilevel.check_solver("k_step", mode="mixed", hvp="double")
    bilevel.check_solver("k_step", mode="mixed", steps=3, truncate=2, hvp="forward")


def test_stored_parameter_read_is_caught():
    problem, model, hyper, batch, _, _ = ridge_at()
    w = model.weight  # a tensor taken from the real module before the solver ran

    def bad(inner, outer, b):
        return problem.inner_loss(inner, outer, b) + 1e-3 * (w * inner.weight).sum()

    s = bilevel.KStepSolver(bilevel.Problem(model, hyper, bad, problem.outer_loss), torchopt.sgd(lr=0.05),
                            outer_sgd(hyper), steps=3, mode="mixed")
    with pytest.raises(bilevel.StoredParameterError):
        s.hypergradient(batch)


def _saved_peak(fn):
    live, peak = {}, [0, 0]

    class H:
        def __init__(self, key, t):
            self.key, self.t = key, t

        def __del__(self):
            live[self.key][1] -= 1
            if live[self.key][1] == 0:
                peak[0] -= live.pop(self.key)[0]

    def pack(t):
        try:
            key, nbytes = t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()
        except RuntimeError:  # no python-visible storage (an efficient zero tensor of forward AD)
            key, nbytes = ("tensor", id(t)), t.nelement() * t.element_size()
        if key in live:
            live[key][1] += 1
        else:
            live[key] = [nbytes, 1]
            peak[0] += live[key][0]
            peak[1] = max(peak)
        return H(key, t.detach())

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda h: h.t):
        fn()
    return peak[1]


def test_mixed_saves_less_than_reverse():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1)).to(DT)
    weights = WeightNet(256)
    x, yb = torch.randn(256, 8, dtype=DT), torch.randn(256, 1, dtype=DT)
    problem = bilevel.Problem(net, weights, weighted_mse, clean_mse(x[:32], yb[:32]))
    peaks = {}
    for mode in ("reverse", "mixed"):
        s = bilevel.KStepSolver(problem, torchopt.sgd(lr=0.1), outer_sgd(weights), steps=20, mode=mode)
        peaks[mode] = _saved_peak(lambda s=s: s.hypergradient((x, yb)))
    assert peaks["mixed"] < 0.25 * peaks["reverse"]
