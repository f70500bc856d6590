"""examples/hpo_l2.py: per-feature L2 found by hypergradient descent beats the best shared strength, and the
implicit hypergradient it follows is the true one (float64 closed form and finite differences)."""

from __future__ import annotations

import hpo_l2
import torch
import torch.nn.functional as F
import torchopt
from gallery import build_solver


def test_quick_per_feature_l2_beats_best_shared_strength():
    torch.set_num_threads(1)
    result = hpo_l2.run(quick=True)
    [row] = result["rows"]
    assert row["solver"] == "implicit-cg"
    # Both at the exact inner solution for their strengths, on the same validation split.
    assert row["val_loss"] < 0.95 * result["grid"]["val_loss"], (row["val_loss"], result["grid"]["val_loss"])
    assert row["val_loss"] < result["start"]["val_loss"]


def _val_at_optimum(log_alpha: torch.Tensor, data: hpo_l2.Data) -> torch.Tensor:
    theta = hpo_l2.exact_inner(log_alpha, data.train)
    return F.binary_cross_entropy_with_logits(hpo_l2._augment(data.val.X) @ theta, data.val.y)


def test_implicit_hypergradient_matches_closed_form_and_finite_differences():
    torch.set_num_threads(1)
    data = hpo_l2.load_data(0)
    d = data.train.X.shape[1]
    g = torch.Generator().manual_seed(1)
    log_alpha = -3.0 + 0.5 * torch.randn(d, generator=g, dtype=hpo_l2.DT)
    problem, model, hyper = hpo_l2.make_problem(data, start=0.0)
    with torch.no_grad():
        hyper.log_alpha.copy_(log_alpha)
        theta = hpo_l2.exact_inner(log_alpha, data.train)
        model.weight.copy_(theta[:-1][None])
        model.bias.copy_(theta[-1:])
    solver = build_solver("implicit-cg", problem, torchopt.sgd(lr=0.1), torch.optim.SGD(hyper.parameters(), lr=0.0),
                          steps=0, iterations=100)
    [hg] = solver.hypergradient(data.train, data.val)

    # Implicit function theorem by hand: dG/da_j = -e^{a_j} w_j [H^-1 grad_theta g]_j (the bias is unpenalised).
    Xa, Xv = hpo_l2._augment(data.train.X), hpo_l2._augment(data.val.X)
    p = torch.sigmoid(Xa @ theta)
    diag = torch.cat([log_alpha.exp(), torch.zeros(1, dtype=hpo_l2.DT)])
    hess = Xa.T @ (Xa * (p * (1 - p))[:, None]) / len(Xa) + torch.diag(diag)
    grad_g = Xv.T @ (torch.sigmoid(Xv @ theta) - data.val.y) / len(Xv)
    closed = -(log_alpha.exp() * theta[:-1] * torch.linalg.solve(hess, grad_g)[:-1])
    assert torch.allclose(hg, closed, rtol=1e-7, atol=1e-12 * closed.abs().max())

    # Central differences of G(a) = g(theta*(a)) on the coordinates with the largest hypergradients.
    h = 1e-5
    for j in closed.abs().argsort(descending=True)[:3].tolist():
        e = torch.zeros(d, dtype=hpo_l2.DT)
        e[j] = h
        fd = (_val_at_optimum(log_alpha + e, data) - _val_at_optimum(log_alpha - e, data)) / (2 * h)
        assert abs(float(fd) - float(hg[j])) < 1e-6 * abs(float(hg[j])) + 1e-12, (j, float(fd), float(hg[j]))
