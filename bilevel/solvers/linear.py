"""Matrix-free solvers for ``A v = b`` where ``A`` is only available as a product ``v -> A v``.

Vectors are tuples of tensors (one per inner parameter), so no flattening copy is ever made.
``A`` is the damped inner Hessian ``d2 f / d theta2 + damping I``; it is symmetric, and positive
definite near a strict inner minimum, which is what conjugate gradients needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Vec = tuple[torch.Tensor, ...]
MatVec = Callable[[Vec], Vec]


def dot(a: Vec, b: Vec) -> torch.Tensor:
    return sum((x * y).sum() for x, y in zip(a, b))


def axpy(alpha: torch.Tensor | float, x: Vec, y: Vec) -> Vec:
    """``alpha * x + y``."""
    return tuple(alpha * xi + yi for xi, yi in zip(x, y))


def norm(a: Vec) -> torch.Tensor:
    return dot(a, a).sqrt()


@dataclass
class LinearSolveResult:
    solution: Vec
    iterations: int
    residual: float  # ||A v - b|| / ||b|| (CG: its recursive residual; NaN when not computed)
    step_size: float | None = None


def relative_residual(matvec: MatVec, v: Vec, b: Vec) -> float:
    r = axpy(-1.0, matvec(v), b)
    bn = norm(b)
    return float(norm(r) / bn) if float(bn) > 0 else float(norm(r))


def conjugate_gradient(
    matvec: MatVec, b: Vec, iterations: int, tol: float = 1e-12, check_every: int = 5,
    stop_on_negative_curvature: bool = True, init: Vec | None = None,
) -> LinearSolveResult:
    """Conjugate gradients from ``v0 = init`` (default 0); stops after ``iterations`` products or when
    ``||r|| <= tol ||b||``. Exact in at most dim(theta) steps for SPD ``A`` in exact arithmetic.

    A warm start ``init`` (the previous call's solution, when ``A`` and ``b`` move slowly) costs one
    extra product for ``r0 = b - A v0`` and starts CG with the residual it leaves, so a handful of
    iterations per call keeps refining one solution across calls (AmIGO, Arbel & Mairal 2022).

    The reported residual is CG's recursive one, ``||r_k|| / ||b||`` (equal to the true residual in exact
    arithmetic), so it costs no extra product. The stopping test reads a device scalar only every
    ``check_every`` iterations: on a GPU each read is a host sync that stalls the queue.
    If ``A`` turns out not to be positive definite along a search direction (``p^T A p <= 0``), CG's
    minimisation view breaks down. With ``stop_on_negative_curvature`` (default) the iterate freezes there
    (zero steps until the next check, then a stop) and the residual reports how far it got (``damping > 0``
    is the fix). With it off, the textbook recurrence continues through negative curvature (only
    ``p^T A p == 0`` is guarded), as torchopt's and Betty's CG do: on an indefinite but non-singular ``A``
    this still solves the system in the Krylov space, but nothing keeps it from stepping far.
    """
    if init is None:
        v = tuple(torch.zeros_like(x) for x in b)
        r = b
    else:
        v = init
        r = axpy(-1.0, matvec(v), b)
    p = r
    rs = dot(r, r)
    b_norm_sq = dot(b, b)
    stop = (tol ** 2) * b_norm_sq
    frozen = torch.zeros((), dtype=torch.bool, device=b[0].device)
    done = 0
    for done in range(1, iterations + 1):
        ap = matvec(p)
        pap = dot(p, ap)
        if stop_on_negative_curvature:
            frozen = frozen | (pap <= 0)
        # A zero step once frozen, without branching on a device value.
        alpha = torch.where(frozen, torch.zeros_like(rs), rs / torch.where(pap == 0, torch.ones_like(pap), pap))
        v = axpy(alpha, p, v)
        r = axpy(-alpha, ap, r)
        rs_new = dot(r, r)
        at_check = done % check_every == 0 or done == iterations
        if at_check and (bool(frozen) or bool(rs_new <= stop)):
            rs = rs_new
            break
        p = axpy(rs_new / torch.where(rs == 0, torch.ones_like(rs), rs), p, r)
        rs = rs_new
    bn = float(b_norm_sq.sqrt())
    residual = float(rs.sqrt()) / bn if bn > 0 else float(rs.sqrt())
    return LinearSolveResult(v, done, residual)


def power_iteration(matvec: MatVec, like: Vec, iterations: int = 10, seed: int = 0) -> float:
    """Estimate the largest |eigenvalue| of ``A`` (used to pick a safe Neumann / Richardson step)."""
    gen = torch.Generator(device=like[0].device).manual_seed(seed)
    v = tuple(torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype) for x in like)
    v = tuple(x / norm(v) for x in v)
    lam = torch.zeros((), dtype=like[0].dtype, device=like[0].device)
    for _ in range(iterations):
        av = matvec(v)
        lam = norm(av)
        if float(lam) == 0:
            break
        v = tuple(x / lam for x in av)
    return float(lam)


def neumann(matvec: MatVec, b: Vec, iterations: int, step_size: float, residual: bool = True) -> LinearSolveResult:
    """Truncated Neumann series ``A^{-1} b ~= a * sum_{i=0}^{n} (I - a A)^i b``.

    Converges when ``0 < a < 2 / lambda_max(A)`` and ``A`` is positive definite (Lorraine et al., 2020).
    """
    term = b
    acc = b
    for _ in range(iterations):
        term = axpy(-step_size, matvec(term), term)
        acc = tuple(a + t for a, t in zip(acc, term))
    v = tuple(step_size * a for a in acc)
    res = relative_residual(matvec, v, b) if residual else float("nan")
    return LinearSolveResult(v, iterations, res, step_size)


def fixed_point(
    matvec: MatVec, b: Vec, iterations: int, step_size: float, init: Vec | None = None, residual: bool = True
) -> LinearSolveResult:
    """Richardson iteration ``v <- v - a (A v - b)``: the fixed point of gradient descent on
    ``1/2 v^T A v - b^T v``. From ``v0 = 0`` its iterates equal the Neumann partial sums; unlike
    Neumann it can start from ``init`` (the previous step's solution), which is what warm starts use."""
    v = tuple(torch.zeros_like(x) for x in b) if init is None else init
    for _ in range(iterations):
        r = axpy(-1.0, matvec(v), b)
        v = axpy(step_size, r, v)
    res = relative_residual(matvec, v, b) if residual else float("nan")
    return LinearSolveResult(v, iterations, res, step_size)
