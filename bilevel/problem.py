"""The bi-level problem: two modules and two losses.

.. math::

    \\min_\\lambda \\; G(\\lambda) = g(\\theta^*(\\lambda), \\lambda)
    \\quad \\text{s.t.} \\quad \\theta^*(\\lambda) \\approx \\arg\\min_\\theta f(\\theta, \\lambda)

``inner`` holds theta, ``outer`` holds lambda. The solvers differ in how they approximate
theta*(lambda) and d theta* / d lambda.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .functional import InnerView, trainable_named_parameters

Loss = Callable[[InnerView, nn.Module, Any], torch.Tensor]


class NonFiniteError(ValueError):
    """A loss or hypergradient became NaN or infinite; the message says which and where."""


@dataclass
class Problem:
    """A bi-level problem over two ``nn.Module`` s.

    Args:
        inner: the module whose trainable parameters are the inner variables theta.
        outer: the module whose trainable parameters are the outer variables lambda.
        inner_loss: ``f(inner, outer, batch) -> scalar``. ``inner`` is an :class:`InnerView`
            bound to the current theta; ``outer`` is the live module.
        outer_loss: ``g(inner, outer, batch) -> scalar``, same conventions.
        has_aux: both losses return ``(scalar, aux)`` instead of a scalar (jaxopt's ``has_aux``): ``aux`` is
            any pytree (tensors, numbers, ``None``) a loss computes on the side, e.g. per-example weights for
            the metrics. :meth:`Solver.step` returns it, detached, in ``StepInfo.inner_aux`` /
            ``StepInfo.outer_aux``: the inner loss's at the last evaluation before the outer loss, the outer
            loss's at that evaluation (values a solver recomputes during its backward sweep do not replace
            them). It is also the supported way to take a value out of a loss that a forward-mode solver runs
            under ``torch.func.jvp``: a tensor stashed from inside the transform stays a functorch wrapper.
    """

    inner: nn.Module
    outer: nn.Module
    inner_loss: Loss
    outer_loss: Loss
    has_aux: bool = False

    def __post_init__(self) -> None:
        for field, value in (("inner", self.inner), ("outer", self.outer)):
            if not isinstance(value, nn.Module):
                raise TypeError(
                    f"Problem.{field} must be a torch.nn.Module, got {type(value).__name__}; "
                    "wrap raw tensors in a module (e.g. an nn.Module holding nn.Parameter s)"
                )
        for field, value in (("inner_loss", self.inner_loss), ("outer_loss", self.outer_loss)):
            if not callable(value):
                raise TypeError(
                    f"Problem.{field} must be callable as {field}(inner, outer, batch) -> scalar tensor, "
                    f"got {type(value).__name__}"
                )
        if self.inner is self.outer:
            raise ValueError("Problem.inner and Problem.outer are the same module; the two levels need "
                             "disjoint parameters")
        if not trainable_named_parameters(self.inner):
            raise ValueError("Problem.inner has no parameters with requires_grad=True: there is nothing for "
                             "the inner optimiser to train")
        if not trainable_named_parameters(self.outer):
            raise ValueError("Problem.outer has no parameters with requires_grad=True: there is no outer "
                             "variable to take a hypergradient with respect to (make the hyperparameter an "
                             "nn.Parameter of the outer module)")
        if not isinstance(self.has_aux, bool):
            raise TypeError(f"Problem.has_aux must be True or False, got {self.has_aux!r}")
        inner_ids = {id(p) for _, p in trainable_named_parameters(self.inner)}
        shared = [n for n, p in trainable_named_parameters(self.outer) if id(p) in inner_ids]
        if shared:
            raise ValueError(f"Problem.outer shares parameters {shared} with Problem.inner; the levels must "
                             "be disjoint (freeze them in one of the modules)")


class AuxRecord:
    """The auxiliary outputs of one solver call (``Problem(has_aux=True)``).

    Every inner-loss evaluation replaces ``pending``; an outer-loss evaluation pairs the pending inner aux
    with its own. So recomputations a solver makes after the outer loss (checkpointed or mixed-mode backward
    sweeps) do not change what the call reports.
    """

    def __init__(self) -> None:
        self.pending: Any = None
        self.inner: Any = None
        self.outer: Any = None

    def reset(self) -> None:
        self.pending = self.inner = self.outer = None

    def seen_outer(self, aux: Any) -> None:
        self.inner, self.outer = self.pending, aux


def split_aux(value: Any, which: str) -> tuple[Any, Any]:
    """``(loss, aux)`` from what a ``has_aux`` loss returned, or raise naming the loss and the fix."""
    if not isinstance(value, tuple) or len(value) != 2:
        raise TypeError(
            f"{which} must return a pair (loss, aux) because the Problem has has_aux=True, got "
            f"{type(value).__name__}: return `loss, aux` (aux may be None), or build the Problem with has_aux=False"
        )
    return value


def check_scalar(value: Any, which: str) -> torch.Tensor:
    """Return ``value`` as a 0-d tensor, or raise naming the loss and the fix."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{which} must return a torch.Tensor, got {type(value).__name__}")
    if value.numel() != 1:
        raise ValueError(
            f"{which} must return a scalar tensor, got shape {tuple(value.shape)}; "
            "reduce it with .mean() or .sum()"
        )
    if not value.is_floating_point():
        raise TypeError(f"{which} must return a floating-point tensor, got {value.dtype}")
    return value if value.dim() == 0 else value.reshape(())
