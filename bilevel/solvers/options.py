"""The words the solvers' options are spelled in, and the forward-mode size rule, in one place."""

from __future__ import annotations

import warnings

#: ``KStepSolver(mode=...)``: backpropagate through the stored unroll, push tangents forward, or backpropagate
#: from the stored iterates with forward-over-reverse Hessian-vector products.
MODES = ("reverse", "forward", "mixed")
#: ``KStepSolver(mode="mixed", hvp=...)``: Hessian-vector products of the backward sweep by forward-over-reverse
#: or by a double backward through one step's gradient.
HVPS = ("forward", "reverse")
#: ``ImplicitSolver(linear_solver=...)``: how ``(H + delta I) v = grad_theta g`` is solved.
LINEAR_SOLVERS = ("cg", "neumann", "fixed_point")
#: Forward mode costs one unroll per outer scalar. Above ``FORWARD_MODE_WARN`` scalars reverse mode is almost
#: surely faster (``KStepSolver`` warns); above ``FORWARD_MODE_MAX`` a run would never finish
#: (:func:`bilevel.make_solver` refuses).
FORWARD_MODE_WARN = 64
FORWARD_MODE_MAX = 4096


def check_forward_size(mode: str, n_outer: int, refuse: bool = False) -> None:
    """Warn (or, with ``refuse``, raise ``ValueError``) when forward mode meets a large outer module."""
    if mode != "forward":
        return
    if refuse:
        if n_outer > FORWARD_MODE_MAX:
            raise ValueError(
                f"k_step mode='forward' needs one unrolled pass per outer parameter and the outer module has "
                f"{n_outer}; use mode='reverse', or shrink the outer module below {FORWARD_MODE_MAX} parameters")
    elif n_outer > FORWARD_MODE_WARN:
        warnings.warn(
            f"KStepSolver(mode='forward') costs one unroll per outer scalar and the outer module has "
            f"{n_outer}; mode='reverse' is likely much faster here", stacklevel=3)
