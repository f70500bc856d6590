"""examples/gallery.py: the shared pieces of the example gallery."""

from __future__ import annotations

import json

import gallery
import pytest
import torch
import torchopt
from torch import nn

import bilevel


def _problem() -> tuple[bilevel.Problem, nn.Module]:
    torch.manual_seed(0)
    X, y = torch.randn(20, 3, dtype=torch.float64), torch.randn(20, dtype=torch.float64)
    model = nn.Linear(3, 1).double()
    hyper = nn.Linear(3, 1, bias=False).double()  # any module: its weight is the per-feature log strength

    def f(inner, outer, batch):
        return ((inner(X).squeeze(-1) - y) ** 2).mean() + (outer.weight[0].exp() * inner.weight[0] ** 2).sum()

    def g(inner, outer, batch):
        return ((inner(X[:10]).squeeze(-1) - y[:10]) ** 2).mean()

    return bilevel.Problem(model, hyper, f, g), hyper


EXPECTED = {
    "one-step": (bilevel.OneStepSolver, {}),
    "k-step-reverse": (bilevel.KStepSolver, {"steps": 4, "mode": "reverse"}),
    "k-step-forward": (bilevel.KStepSolver, {"steps": 4, "mode": "forward"}),
    "k-step-mixed": (bilevel.KStepSolver, {"steps": 4, "mode": "mixed"}),
    "implicit-cg": (bilevel.ImplicitSolver, {"inner_steps": 4, "linear_solver": "cg", "warm_start": False}),
    "implicit-neumann": (bilevel.ImplicitSolver, {"inner_steps": 4, "linear_solver": "neumann"}),
    "implicit-fixed-point": (bilevel.ImplicitSolver, {"inner_steps": 4, "linear_solver": "fixed_point"}),
    "implicit-warm": (bilevel.ImplicitSolver, {"inner_steps": 4, "warm_start": True}),
    "soba": (bilevel.SOBASolver, {}),
    "f2sa": (bilevel.F2SASolver, {"inner_steps": 4}),
}


def test_build_solver_builds_every_label():
    assert gallery.SOLVER_NAMES == list(EXPECTED)
    problem, hyper = _problem()
    reference = None
    for name, (cls, attrs) in EXPECTED.items():
        s = gallery.build_solver(name, problem, torchopt.sgd(lr=0.05), torch.optim.SGD(hyper.parameters(), lr=0.0),
                                 steps=4)
        assert type(s) is cls, name
        for key, value in attrs.items():
            assert getattr(s, key) == value, (name, key)
        [hg] = s.hypergradient(None)
        assert torch.isfinite(hg).all()
        if name == "k-step-reverse":
            reference = hg
        if name in ("k-step-forward", "k-step-mixed"):  # the same map, differentiated three ways
            assert torch.allclose(hg, reference, rtol=1e-9, atol=1e-14), name


def test_build_solver_overrides_and_refusals():
    problem, hyper = _problem()
    s = gallery.build_solver("implicit-cg", problem, torchopt.sgd(lr=0.05), torch.optim.SGD(hyper.parameters(), 0.0),
                             steps=0, iterations=7, damping=0.5)
    assert (s.inner_steps, s.iterations, s.damping) == (0, 7, 0.5)
    with pytest.raises(ValueError, match="unknown gallery solver"):
        gallery.build_solver("newton", problem, torchopt.sgd(lr=0.05), torch.optim.SGD(hyper.parameters(), 0.0))
    with pytest.raises(SystemExit, match="not applicable"):
        gallery.select_solvers("one-step,k-step-forward", ["one-step", "implicit-cg"])
    assert gallery.select_solvers(None, ["a", "b"]) == ["a", "b"]
    assert gallery.select_solvers(" b ,a", ["a", "b"]) == ["b", "a"]


def test_measure_step_counts_saved_tensors_and_times():
    w = torch.randn(256, 256, requires_grad=True)

    def with_graph():
        (w @ w).tanh().sum().backward()

    def without_graph():
        with torch.no_grad():
            (w @ w).tanh().sum()

    m = gallery.measure_step(with_graph, repeats=3)
    assert set(m) == {"time_s", "wall_s", "saved_bytes"} and m["time_s"] > 0 and m["wall_s"] > 0
    assert m["saved_bytes"] >= 2 * 256 * 256 * 4  # w (saved once, however often) and the tanh output
    assert gallery.measure_step(without_graph, repeats=1)["saved_bytes"] == 0


def test_markdown_table():
    text = gallery.markdown_table([{"a": "x", "b": 0.123456, "c": 3}, {"a": "y", "b": float("nan")}],
                                  ["a", "b", "c"])
    assert text.splitlines() == ["| a | b | c |", "|---|---|---|", "| x | 0.1235 | 3 |", "| y | n/a |  |"]


def test_outputs_go_where_asked(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = gallery.common_args("demo")
    args = p.parse_args(["--quick", "--seed", "3", "--solvers", "one-step"])
    assert (args.quick, args.seed, args.solvers, args.out) == (True, 3, "one-step", None)
    assert gallery.write_outputs("demo", args, {"x": 1}, plt.figure()) == {}  # quick, no --out: nothing written
    args = p.parse_args(["--quick", "--out", str(tmp_path / "r.json")])
    paths = gallery.write_outputs("demo", args, {"x": 1.5}, plt.figure())
    assert json.loads(paths["json"].read_text()) == {"x": 1.5}
    assert paths["figure"] == tmp_path / "examples_demo.png" and paths["figure"].stat().st_size > 0
