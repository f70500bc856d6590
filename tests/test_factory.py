"""bilevel.make_solver / check_solver: one vocabulary, validated once; Solver.inner_update and last_info."""

from __future__ import annotations

import pytest
import torch
import torchopt
from torch import nn

import bilevel

DT = torch.float64


def _problem(n_outer: int = 4):
    torch.manual_seed(0)
    inner, outer = nn.Linear(n_outer, 1).to(DT), nn.Linear(n_outer, 1).to(DT)
    x, y = torch.randn(16, n_outer, dtype=DT), torch.randn(16, 1, dtype=DT)

    def f(m, o, b):
        w = torch.sigmoid(o(b[0])).squeeze(-1)
        return (w * (m(b[0]) - b[1]).pow(2).squeeze(-1)).mean()

    def g(m, o, b):
        return (m(b[0]) - b[1]).pow(2).mean()

    return bilevel.Problem(inner, outer, f, g), (x, y)


def _opts(problem):
    return torchopt.adam(1e-2), torch.optim.Adam(problem.outer.parameters(), 1e-2)


@pytest.mark.parametrize(("name", "options", "build"), [
    ("one_step", {}, lambda p, i, o: bilevel.OneStepSolver(p, i, o)),
    ("k_step", {"steps": 3, "truncate": 2}, lambda p, i, o: bilevel.KStepSolver(p, i, o, steps=3, truncate=2)),
    ("k_step_forward", {"steps": 2}, lambda p, i, o: bilevel.KStepSolver(p, i, o, steps=2, mode="forward")),
    ("k_step_reverse", {"steps": 2, "checkpoint": 1},
     lambda p, i, o: bilevel.KStepSolver(p, i, o, steps=2, checkpoint=1)),
    ("implicit", {"inner_steps": 2, "linear_solver": "neumann", "iterations": 4},
     lambda p, i, o: bilevel.ImplicitSolver(p, i, o, inner_steps=2, linear_solver="neumann", iterations=4)),
    ("soba", {"v_lr": 0.1}, lambda p, i, o: bilevel.SOBASolver(p, i, o, v_lr=0.1)),
    ("f2sa", {"inner_steps": 2}, lambda p, i, o: bilevel.F2SASolver(p, i, o, inner_steps=2)),
])
def test_make_solver_is_the_class_with_those_options(name, options, build):
    p1, batch = _problem()
    p2, _ = _problem()
    made, direct = bilevel.make_solver(name, p1, *_opts(p1), **options), build(p2, *_opts(p2))
    assert type(made) is type(direct)
    for _ in range(2):
        made.step(batch)
        direct.step(batch)
    for a, b in zip(made.hypergradient(batch), direct.hypergradient(batch)):
        assert torch.equal(a, b)
    assert made.last_info is not None and made.last_info.outer_loss == direct.last_info.outer_loss


@pytest.mark.parametrize(("name", "options", "match"), [
    ("two_step", {}, "unknown solver 'two_step'"),
    ("k_step", {"mode": "sideways"}, "mode"),
    ("k_step", {"steps": 0}, "steps"),
    ("k_step", {"steps": 2, "truncate": 3}, "truncate"),
    ("k_step", {"iterations": 3}, r"no option\(s\) \['iterations'\]"),
    ("k_step_forward", {"mode": "reverse"}, "fixes"),
    ("k_step_forward", {"checkpoint": 2}, "checkpoint"),
    ("implicit", {"linear_solver": "qr"}, "linear_solver"),
    ("implicit", {"linear_solver": "neumann", "warm_start": True}, "warm_start"),
    ("soba", {"v_lr": -1.0}, "v_lr"),
    ("f2sa", {"penalty": 0.0}, "penalty"),
    ("one_step", {"steps": 2}, "no option"),
])
def test_check_solver_refuses_bad_choices_without_a_problem(name, options, match):
    with pytest.raises(ValueError, match=match):
        bilevel.check_solver(name, **options)
    p, _ = _problem()
    with pytest.raises(ValueError, match=match):
        bilevel.make_solver(name, p, *_opts(p), **options)


def test_vocabulary_lists_every_name_and_value():
    assert set(bilevel.solver_names()) == {"one_step", "k_step", "implicit", "soba", "f2sa", "k_step_forward",
                                           "k_step_reverse"}
    assert bilevel.MODES == ("reverse", "forward", "mixed")
    assert bilevel.LINEAR_SOLVERS == ("cg", "neumann", "fixed_point")


def test_forward_mode_warns_above_64_and_make_solver_refuses_above_4096():
    p, _ = _problem(n_outer=100)  # 101 outer scalars
    with pytest.warns(UserWarning, match="mode='reverse' is likely much faster"):
        bilevel.make_solver("k_step", p, *_opts(p), mode="forward")
    p, _ = _problem(n_outer=5000)
    with pytest.raises(ValueError, match="below 4096"):
        bilevel.make_solver("k_step", p, *_opts(p), mode="forward")
    bilevel.make_solver("k_step", p, *_opts(p), mode="reverse")  # reverse mode has no such limit


def test_inner_update_is_steps_plain_inner_step():
    p1, batch = _problem()
    p2, _ = _problem()
    a, b = bilevel.OneStepSolver(p1, *_opts(p1)), bilevel.OneStepSolver(p2, *_opts(p2))
    a.step(batch)
    b.step(batch)
    loss = a.inner_update(batch)
    theta, state, expected = b.inner_step(b.theta(), b.inner_state, batch, dict(p2.inner.named_buffers()),
                                          differentiable=False)
    assert torch.equal(loss, expected)
    for x, y in zip(a.theta(), theta):
        assert torch.equal(x, y)
    assert not torch.equal(a.theta()[0], b.theta()[0])  # b's module was not written: the step moved theta
    sa, sb = (torchopt.pytree.tree_leaves(s) for s in (a.inner_state, state))
    assert len(sa) == len(sb) > 0 and all(torch.equal(x, y) for x, y in zip(sa, sb))

