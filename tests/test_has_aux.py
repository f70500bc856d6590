"""``Problem(has_aux=True)``: losses return ``(loss, aux)``; every solver path gives the same hypergradient as
without aux, and ``StepInfo`` carries the inner aux of the last inner evaluation before the outer loss and the
outer aux of that evaluation, detached, also out of forward mode's ``torch.func`` transforms."""

from __future__ import annotations

import pytest
import torch
import torchopt
from torch import nn

import bilevel

DT = torch.float64

# (label, solver name, options): every solver path of the library.
PATHS = [
    ("one_step", "one_step", {}),
    ("k_step", "k_step", {"steps": 4}),
    ("k_step truncated", "k_step", {"steps": 4, "truncate": 2}),
    ("k_step checkpointed", "k_step", {"steps": 4, "checkpoint": 2}),
    ("k_step mixed", "k_step", {"steps": 4, "mode": "mixed"}),
    ("k_step mixed hvp=reverse", "k_step", {"steps": 4, "mode": "mixed", "hvp": "reverse"}),
    ("k_step forward", "k_step", {"steps": 4, "mode": "forward"}),
    ("implicit cg", "implicit", {"inner_steps": 2, "iterations": 5}),
    ("implicit neumann", "implicit", {"inner_steps": 2, "linear_solver": "neumann", "iterations": 5}),
    ("implicit fixed point", "implicit", {"inner_steps": 2, "linear_solver": "fixed_point", "iterations": 5}),
    ("implicit warm", "implicit", {"inner_steps": 2, "iterations": 5, "warm_start": True}),
    ("soba", "soba", {}),
    ("f2sa", "f2sa", {"inner_steps": 2}),
]


class Weights(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.linspace(-0.5, 0.5, n, dtype=DT))
        self.scale = nn.Parameter(torch.tensor(1.0, dtype=DT))


def data(n: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 3, generator=g, dtype=DT), torch.randn(n, 2, generator=g, dtype=DT)
    xv, yv = torch.randn(6, 3, generator=g, dtype=DT), torch.randn(6, 2, generator=g, dtype=DT)
    return (x, y), (xv, yv)


def setup(has_aux: bool, log: list | None = None, dtype: torch.dtype = DT):
    """A reweighting problem; with ``has_aux`` the losses return per-example values, a number and None; with
    ``log`` (no aux) they append what they computed, detached, to it (the stash pattern aux replaces).
    ``0.5 * outer.scale`` (a Python float times a 0-d outer tensor) sends float32 forward mode to its
    per-direction ``forward_ad`` fallback (a torch 2.13 jvp dtype quirk)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)).to(dtype)
    hyper = Weights(12).to(dtype)
    (x, y), (xv, yv) = data()
    x, y, xv, yv = (t.to(dtype) for t in (x, y, xv, yv))

    def f(inner, outer, batch):
        per = ((inner(batch[0]) - batch[1]) ** 2).mean(-1)
        w = torch.sigmoid(outer.logits)
        loss = 2 * (0.5 * outer.scale) * (w * per).mean()
        if log is not None:
            log.append(("inner", per.detach(), w.detach()))
        return (loss, {"per_example": per, "weights": w, "k": 3, "none": None}) if has_aux else loss

    def g(inner, outer, batch):
        err = ((inner(xv) - yv) ** 2).mean(-1)
        if log is not None:
            log.append(("outer", err.detach()))
        return (err.mean(), (err, 0.5)) if has_aux else err.mean()

    problem = bilevel.Problem(net, hyper, f, g, has_aux=has_aux)
    return problem, net, hyper, (x, y)


def build(name, options, problem, hyper):
    return bilevel.make_solver(name, problem, torchopt.sgd(lr=0.1), torch.optim.SGD(hyper.parameters(), lr=0.05),
                               **options)


@pytest.mark.parametrize("label,name,options", PATHS, ids=[p[0] for p in PATHS])
def test_aux_changes_no_hypergradient_and_reports_the_pair_the_outer_loss_saw(label, name, options):
    log: list = []
    ref_problem, ref_net, ref_hyper, batch = setup(False, log)
    ref = build(name, options, ref_problem, ref_hyper)
    problem, net, hyper, _ = setup(True)
    solver = build(name, options, problem, hyper)

    assert all(torch.equal(a, b) for a, b in zip(ref.hypergradient(batch), solver.hypergradient(batch)))
    log.clear()
    ref_info, info = ref.step(batch), solver.step(batch)
    assert (ref_info.inner_loss, ref_info.outer_loss, ref_info.hypergrad_norm) == (
        info.inner_loss, info.outer_loss, info.hypergrad_norm)
    for a, b in zip(ref_net.parameters(), net.parameters()):
        assert torch.equal(a, b)
    assert ref_info.inner_aux is None and ref_info.outer_aux is None

    # Non-tensor leaves survive; tensors come back detached.
    assert info.inner_aux["k"] == 3 and info.inner_aux["none"] is None and info.outer_aux[1] == 0.5
    assert not info.inner_aux["per_example"].requires_grad and not info.outer_aux[0].requires_grad
    if options.get("mode") == "forward":
        return  # the stash cannot be read out of torch.func.jvp: see the forward-mode test below
    last_outer = max(i for i, e in enumerate(log) if e[0] == "outer")
    last_inner = max(i for i, e in enumerate(log[:last_outer]) if e[0] == "inner")
    assert torch.equal(info.outer_aux[0], log[last_outer][1])
    assert torch.equal(info.inner_aux["per_example"], log[last_inner][1])
    assert torch.equal(info.inner_aux["weights"], log[last_inner][2])


@pytest.mark.parametrize("dtype", [DT, torch.float32], ids=["float64 (vmap of jvp)", "float32 (forward_ad loop)"])
def test_forward_mode_aux_leaves_the_transforms_with_reverse_modes_values(dtype):
    """Forward mode evaluates the losses under ``vmap(jvp(grad_and_value))`` (float32 falls back to one
    ``forward_ad`` pass per direction); the aux is the same pair reverse mode reports, as plain tensors."""
    out = {}
    for mode in ("reverse", "forward"):
        problem, _, hyper, batch = setup(True, dtype=dtype)
        solver = build("k_step", {"steps": 4, "mode": mode}, problem, hyper)
        out[mode] = solver.step(batch)
    rev, fwd = out["reverse"], out["forward"]
    for a, b in ((rev.inner_aux["per_example"], fwd.inner_aux["per_example"]),
                 (rev.inner_aux["weights"], fwd.inner_aux["weights"]), (rev.outer_aux[0], fwd.outer_aux[0])):
        assert type(b) is torch.Tensor and not b.requires_grad
        torch.testing.assert_close(b, a, rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=0)
    # A value inside the aux is readable (a functorch-wrapped tensor would raise here).
    assert float(fwd.inner_aux["per_example"].sum()) > 0


@pytest.mark.parametrize("dtype,fallback", [(torch.float32, True), (DT, False)], ids=["float32", "float64"])
def test_forward_mode_float32_takes_the_forward_ad_path(monkeypatch, dtype, fallback):
    """Pin that the float32 case above exercises the fallback, and float64 the vmap-of-jvp path."""
    from bilevel.solvers import forward_mode

    called = []
    real = forward_mode._forward_ad_loop
    monkeypatch.setattr(forward_mode, "_forward_ad_loop", lambda *a, **k: called.append(1) or real(*a, **k))
    problem, _, hyper, batch = setup(True, dtype=dtype)
    build("k_step", {"steps": 2, "mode": "forward"}, problem, hyper).step(batch)
    assert bool(called) is fallback


@pytest.mark.parametrize("which", ["inner_loss", "outer_loss"])
def test_a_loss_that_forgets_its_aux_gets_one_line_naming_has_aux(which):
    problem, _, hyper, batch = setup(True)
    plain = setup(False)[0]
    setattr(problem, which, getattr(plain, which))
    solver = build("one_step", {}, problem, hyper)
    with pytest.raises(TypeError, match=f"{which} must return a pair \\(loss, aux\\) because the Problem has "
                                        "has_aux=True"):
        solver.step(batch)


def test_has_aux_must_be_a_bool():
    problem, net, hyper, _ = setup(False)
    with pytest.raises(TypeError, match="has_aux must be True or False"):
        bilevel.Problem(net, hyper, problem.inner_loss, problem.outer_loss, has_aux="yes")
