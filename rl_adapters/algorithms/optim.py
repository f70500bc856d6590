"""The optimiser every algorithm here trains with: ``torch.optim.Adam`` on torch's fused kernel, stepped leanly.

``adam(params, lr)`` returns a :class:`FusedAdam` where torch has a fused Adam kernel for the parameters (CPU and
CUDA floating-point tensors) and a plain ``torch.optim.Adam`` otherwise.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.adam import adam as adam_functional

__all__ = ["FusedAdam", "adam"]


class FusedAdam(torch.optim.Adam):
    """``torch.optim.Adam(fused=True)`` whose :meth:`step` goes straight to torch's functional Adam.

    The update is torch's own, bit for bit (the same ``torch.optim.adam.adam`` call ``Adam.step`` ends in;
    ``tests/test_optim.py`` compares parameters and moments). What :meth:`step` leaves out is the Python in
    front of it: the differentiable-mode wrapper, the per-parameter checks, and the profiling wrapper torch puts
    around every optimizer class's ``step`` (which also runs step hooks). Measured in place against
    ``torch.optim.Adam(fused=True)``, paired in one process on one CPU thread: updates/s +9% for BC, +3.6% for
    IQL, +0.7-3.0% for TD3+BC (``benchmarks/notes/throughput.md``); a subclass that kept torch's wrapper gained
    nothing measurable. So this optimizer does not run step hooks: the
    ``register_step_*_hook`` methods refuse (use ``torch.optim.Adam(fused=True)`` for hooks), and global hooks
    registered with ``torch.optim.optimizer.register_optimizer_step_*_hook`` are not called for it. Everything
    else is ``torch.optim.Adam``'s: ``state_dict`` / ``load_state_dict``, parameter groups, learning-rate
    schedulers. Only plain Adam (with L2 ``weight_decay``) is covered: ``amsgrad``, ``maximize``,
    ``capturable``, ``differentiable``, ``foreach`` and decoupled weight decay are refused (use
    ``torch.optim.Adam`` for those), and so is a gradient scaler.

    Gradients must be laid out like their parameters: torch 2.13's fused CPU kernel applies a gradient with
    permuted strides to the wrong elements (pytorch/pytorch#106951); ``Algorithm.optimize`` ensures it.
    """

    _UNSUPPORTED = ("amsgrad", "maximize", "capturable", "differentiable", "foreach", "decoupled_weight_decay")

    _NO_HOOKS = "FusedAdam runs no step hooks (it skips torch's hook wrapper for speed); use torch.optim.Adam(fused=True)"

    @classmethod
    def _refuse_unsupported(cls, group: dict[str, Any], ignore: tuple[str, ...] = ()) -> None:
        bad = [name for name in cls._UNSUPPORTED if name not in ignore and group.get(name)]
        if bad:
            raise ValueError(f"FusedAdam does not support {bad[0]}={group[bad[0]]!r}; use torch.optim.Adam")

    def __init__(self, params: Any, lr: float, **kwargs: Any) -> None:
        if kwargs.pop("fused", True) is False:
            raise ValueError("FusedAdam is torch's fused Adam: fused=False is torch.optim.Adam")
        super().__init__(params, lr=lr, fused=True, **kwargs)
        for group in self.param_groups:  # the keyword defaults and per-group options alike
            self._refuse_unsupported(group)
        # torch wraps every Optimizer subclass's ``step`` in a profiling/hook wrapper at construction; the
        # instance attribute is looked up first, so ``opt.step()`` runs the lean step directly (learning-rate
        # schedulers wrap this attribute, as they wrap any optimizer's).
        self.step = self._lean_step  # type: ignore[method-assign]

    def register_step_pre_hook(self, hook: Any) -> Any:
        raise RuntimeError(self._NO_HOOKS)  # refused, not silently never called

    def register_step_post_hook(self, hook: Any) -> Any:
        raise RuntimeError(self._NO_HOOKS)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """``Adam.load_state_dict`` of a fused Adam's state (a ``FusedAdam``'s or ``torch.optim.Adam(fused=True)``'s);
        the state of an unfused Adam is refused (its ``step`` counters are not laid out for the fused kernel)."""
        if not all(group.get("fused") for group in state_dict["param_groups"]):
            raise ValueError("FusedAdam loads the state of a fused Adam only; this one was saved by an unfused "
                             "torch.optim.Adam (load it into one)")
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            self._refuse_unsupported(group)

    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        """The lean step (what ``opt.step()`` runs; this class-level method is only reached through the class)."""
        return self._lean_step(closure)

    @torch.no_grad()
    def _lean_step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if getattr(self, "grad_scale", None) is not None or getattr(self, "found_inf", None) is not None:
            raise RuntimeError("FusedAdam does not take a gradient scaler's grad_scale; use torch.optim.Adam")
        for group in self.param_groups:
            self._refuse_unsupported(group)  # a group edited after construction
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            states = [self.state[p] for p in params]
            for p, state in zip(params, states):
                if not state:  # the state Adam.step creates on a parameter's first step (fused layout)
                    state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            beta1, beta2 = group["betas"]
            adam_functional(
                params, [p.grad for p in params], [s["exp_avg"] for s in states],
                [s["exp_avg_sq"] for s in states], [], [s["step"] for s in states],
                foreach=False, capturable=False, differentiable=False, fused=True, grad_scale=None, found_inf=None,
                has_complex=False, amsgrad=False, beta1=beta1, beta2=beta2, lr=group["lr"],
                weight_decay=group["weight_decay"], eps=group["eps"], maximize=False,
            )
        return loss


def adam(params: Any, lr: float, **kwargs: Any) -> torch.optim.Adam:
    """:class:`FusedAdam` where torch's fused kernel covers the parameters (CPU and CUDA float tensors),
    else ``torch.optim.Adam``.

    The default CPU implementation loops over the parameters in Python; the fused one is a single kernel with
    the same arithmetic (one step over six 256x256 weights and their biases: 1.1 ms -> 0.41 ms on one CPU thread
    here). Its CPU kernel needs gradients laid out like their parameters, which :meth:`Algorithm.optimize`
    ensures (a permuted layout is applied to the wrong elements; only size-1 dimensions may differ).
    """
    params = list(params)
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    if fused and not any(kwargs.get(name) for name in FusedAdam._UNSUPPORTED):
        return FusedAdam(params, lr=lr, **kwargs)
    return torch.optim.Adam(params, lr=lr, fused=fused or None, **kwargs)
