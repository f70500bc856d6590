"""What every hypergradient solver shares: state, the differentiable inner step, and the checks."""

from __future__ import annotations

import abc
import contextlib
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torchopt

from ..functional import (
    InnerView,
    Layout,
    Params,
    StoredGuard,
    StoredParameterError,
    module_layout,
    parameter_slots,
    restore_slots,
    stored_parameter_message,
    trainable_named_parameters,
)
from ..problem import AuxRecord, NonFiniteError, Problem, check_scalar, split_aux


@dataclass
class StepInfo:
    """What one ``step`` did.

    Attributes:
        inner_loss: inner loss ``f`` at the parameters the last inner step started from.
        outer_loss: outer loss ``g`` at the parameters the hypergradient was taken at.
        hypergrad_norm: Euclidean norm of the hypergradient over all outer parameters.
        extras: solver-specific numbers (e.g. ``residual`` of the implicit linear solve).
        inner_aux: with ``Problem(has_aux=True)``, the inner loss's ``aux`` (detached) at its last evaluation
            before the outer loss; ``None`` otherwise.
        outer_aux: likewise the outer loss's ``aux``.
    """

    inner_loss: float
    outer_loss: float
    hypergrad_norm: float
    extras: dict[str, float] = field(default_factory=dict)
    inner_aux: Any = None
    outer_aux: Any = None

    def as_dict(self) -> dict[str, float]:
        return {"inner_loss": self.inner_loss, "outer_loss": self.outer_loss,
                "hypergrad_norm": self.hypergrad_norm, **self.extras}


@dataclass
class _Result:
    """A hypergradient together with the inner iterate and optimiser state it was taken at."""

    hypergrad: list[torch.Tensor]
    theta: Params
    state: Any
    inner_losses: list[torch.Tensor]
    outer_loss: torch.Tensor
    extras: dict[str, float] = field(default_factory=dict)
    summary: tuple[list[float], float, float] = ([], 0.0, 0.0)
    # Solver-specific state to keep when ``step`` (not ``hypergradient``) ran: see ``Solver._commit``.
    carry: Any = None


def _detach_tree(tree: Any) -> Any:
    return torchopt.pytree.tree_map(lambda t: t.detach() if isinstance(t, torch.Tensor) else t, tree)


def _zeros_for_none(grads: Sequence[torch.Tensor | None], like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.zeros_like(x) if g is None else g for g, x in zip(grads, like)]


def is_gradient_transformation(obj: Any) -> bool:
    return isinstance(obj, torchopt.base.GradientTransformation) or (
        callable(getattr(obj, "init", None)) and callable(getattr(obj, "update", None))
        and not isinstance(obj, torch.optim.Optimizer)
    )


class Solver(abc.ABC):
    """Base class. Subclasses implement :meth:`_solve`; users call :meth:`step` or :meth:`hypergradient`.

    The solver owns the inner optimiser's state; the inner parameters live in ``problem.inner`` and
    are overwritten in place by ``step`` (so the user's model always holds the current theta).
    """

    def __init__(
        self,
        problem: Problem,
        inner_optimizer: torchopt.base.GradientTransformation,
        outer_optimizer: torch.optim.Optimizer,
    ) -> None:
        """Arguments every solver takes first.

        Args:
            problem: the :class:`bilevel.Problem` (inner / outer modules and losses).
            inner_optimizer: a torchopt ``GradientTransformation`` (``torchopt.sgd(lr=0.1)``,
                ``torchopt.adam(1e-3)``, ...); applied functionally so that the inner update can be
                differentiated. Its state lives in ``solver.inner_state``.
            outer_optimizer: a ``torch.optim.Optimizer`` over ``problem.outer.parameters()``; ``step``
                writes the hypergradient into ``.grad`` and calls its ``step()``.

        Raises:
            TypeError: ``problem`` is not a Problem, ``inner_optimizer`` is a ``torch.optim.Optimizer``
                (or not a GradientTransformation), ``outer_optimizer`` is not a ``torch.optim.Optimizer``.
            ValueError: ``outer_optimizer`` holds none of the outer module's parameters.
        """
        if not isinstance(problem, Problem):
            raise TypeError(f"problem must be a bilevel.Problem, got {type(problem).__name__}")
        if isinstance(inner_optimizer, torch.optim.Optimizer) or not is_gradient_transformation(inner_optimizer):
            raise TypeError(
                f"inner_optimizer must be a torchopt GradientTransformation such as torchopt.sgd(lr=0.1) or "
                f"torchopt.adam(lr=1e-3), got {type(inner_optimizer).__name__}: the inner update has to be "
                "applied functionally so that it can be differentiated"
            )
        if not isinstance(outer_optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"outer_optimizer must be a torch.optim.Optimizer over the outer module's parameters, e.g. "
                f"torch.optim.Adam(hyper.parameters(), 1e-3); got {type(outer_optimizer).__name__}"
            )
        self.problem = problem
        self.inner_optimizer = inner_optimizer
        self.outer_optimizer = outer_optimizer
        self._inner_names = [n for n, _ in trainable_named_parameters(problem.inner)]
        self._outer_names = [n for n, _ in trainable_named_parameters(problem.outer)]
        self._outer_params = [p for _, p in trainable_named_parameters(problem.outer)]
        held = {id(p) for group in outer_optimizer.param_groups for p in group["params"]}
        if not any(id(p) in held for p in self._outer_params):
            raise ValueError(
                "outer_optimizer holds none of the outer module's parameters; build it from "
                "problem.outer.parameters()"
            )
        self._guard = StoredGuard(problem.inner)
        # The inner module's layout during a call (one walk of its tree per call, not one per loss evaluation)
        # and the parameter objects the last call found (checked unchanged at its end).
        self._layout: Layout | None = None
        self._params_of_call: list[torch.Tensor] = []
        #: The losses' auxiliary outputs during the current call (``Problem(has_aux=True)`` only).
        self.aux = AuxRecord() if problem.has_aux else None
        self.inner_state = inner_optimizer.init(self.theta())
        #: What the last :meth:`step` did (``None`` before the first).
        self.last_info: StepInfo | None = None

    # ----------------------------------------------------------------- state
    def theta(self) -> Params:
        """The current inner parameters (detached), in ``inner.parameters()`` order."""
        return tuple(p.detach() for p in self._stored_inner())

    def _write_theta(self, values: Sequence[torch.Tensor]) -> None:
        """Copy ``values`` into the parameters the last call found, in place (optimisers holding them stay valid)."""
        with torch.no_grad():
            for p, v in zip(self._params_of_call, values):
                p.copy_(v)

    def reset_inner_state(self) -> None:
        """Re-initialise the inner optimiser state (e.g. after the user re-initialised the model)."""
        self.inner_state = self.inner_optimizer.init(self.theta())

    def state_dict(self) -> dict[str, Any]:
        """What the solver owns, as tensors (cloned) and numbers: the inner optimiser's state leaves and
        the solver's own state (the warm-start solution of :class:`ImplicitSolver`, SOBA's ``v``, F2SA's
        second inner copy and penalty). The modules and the outer optimiser are the user's: save
        ``problem.inner`` / ``problem.outer`` / ``outer_optimizer`` state dicts alongside."""
        leaves = torchopt.pytree.tree_leaves(self.inner_state)
        return {"inner_state": [t.detach().clone() if isinstance(t, torch.Tensor) else t for t in leaves],
                **self._extra_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (tensors are moved to the inner parameters' device)."""
        treedef = torchopt.pytree.tree_structure(self.inner_state)
        like = self.theta()[0]
        leaves = [t.detach().to(like.device).clone() if isinstance(t, torch.Tensor) else t
                  for t in state["inner_state"]]
        if len(leaves) != treedef.num_leaves:
            raise ValueError(f"state_dict holds {len(leaves)} inner optimiser leaves, this solver's inner optimiser "
                             f"has {treedef.num_leaves}: it was saved from a different model or optimiser")
        self.inner_state = torchopt.pytree.tree_unflatten(treedef, leaves)
        self._load_extra_state(state)

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def _commit(self, carry: Any) -> None:
        """Keep the solver-specific state a ``step`` produced (``hypergradient`` never calls this)."""

    def _vector(self, values: Any, what: str) -> tuple[torch.Tensor, ...] | None:
        """``values`` (one tensor per inner parameter, or None) checked against theta's shapes and moved
        to its device: for loading solver state that lives in theta's space."""
        if values is None:
            return None
        theta = self.theta()
        if len(values) != len(theta) or any(tuple(v.shape) != tuple(t.shape) for v, t in zip(values, theta)):
            raise ValueError(f"state_dict['{what}'] has shapes {[tuple(v.shape) for v in values]}, the inner "
                             f"parameters have {[tuple(t.shape) for t in theta]}")
        return tuple(v.detach().to(device=t.device, dtype=t.dtype).clone() for v, t in zip(values, theta))

    def _plain_update(self, theta: Params, grads: Sequence[torch.Tensor], state: Any) -> tuple[Params, Any]:
        """One inner-optimiser step from given gradients, with no graph: ``theta' = U(theta, grads, state)``."""
        with torch.no_grad():
            plain = tuple(t.detach() for t in theta)
            updates, state = self.inner_optimizer.update(tuple(g.detach() for g in grads), state, params=plain,
                                                         inplace=False)
            theta = tuple(torchopt.apply_updates(plain, updates, inplace=False))
        return theta, _detach_tree(state)

    # ----------------------------------------------------------------- pieces
    def _buffers(self, copy: bool) -> dict[str, torch.Tensor]:
        # ``hypergradient`` must not mutate e.g. BatchNorm running statistics, so it works on copies.
        return {n: (b.clone() if copy else b) for n, b in self.problem.inner.named_buffers()}

    def _view(self, theta: Sequence[torch.Tensor], buffers: dict[str, torch.Tensor]) -> InnerView:
        return InnerView(self.problem.inner, self._inner_names, theta, buffers, layout=self._layout)

    def inner_value(self, theta: Sequence[torch.Tensor], batch: Any, buffers: dict[str, torch.Tensor]) -> torch.Tensor:
        """``f(theta, lambda; batch)`` as a 0-d tensor."""
        with self._guard("inner_loss"):
            out = self.problem.inner_loss(self._view(theta, buffers), self.problem.outer, batch)
        if self.aux is not None:
            out, self.aux.pending = split_aux(out, "inner_loss")
        return check_scalar(out, "inner_loss")

    def outer_value(self, theta: Sequence[torch.Tensor], batch: Any, buffers: dict[str, torch.Tensor]) -> torch.Tensor:
        """``g(theta, lambda; batch)`` as a 0-d tensor."""
        with self._guard("outer_loss"):
            out = self.problem.outer_loss(self._view(theta, buffers), self.problem.outer, batch)
        if self.aux is not None:
            out, aux = split_aux(out, "outer_loss")
            self.aux.seen_outer(aux)
        return check_scalar(out, "outer_loss")

    def inner_step(
        self, theta: Params, state: Any, batch: Any, buffers: dict[str, torch.Tensor], differentiable: bool
    ) -> tuple[Params, Any, torch.Tensor]:
        """One inner-optimiser step ``theta' = U(theta, grad_theta f(theta, lambda), state)``.

        With ``differentiable=True`` the returned theta' keeps the graph back to lambda (and to
        ``theta`` if that carries one); otherwise everything is detached and no graph is built.
        """
        if differentiable:
            theta = tuple(t if t.requires_grad else t.detach().requires_grad_() for t in theta)
        else:
            theta = tuple(t.detach().requires_grad_() for t in theta)
        loss = self.inner_value(theta, batch, buffers)
        grads = torch.autograd.grad(loss, theta, create_graph=differentiable, allow_unused=True)
        grads = tuple(_zeros_for_none(grads, theta))
        if differentiable:
            updates, state = self.inner_optimizer.update(grads, state, params=theta, inplace=False)
            theta = tuple(torchopt.apply_updates(theta, updates, inplace=False))
        else:
            with torch.no_grad():
                plain = tuple(t.detach() for t in theta)
                updates, state = self.inner_optimizer.update(grads, state, params=plain, inplace=False)
                theta = tuple(torchopt.apply_updates(plain, updates, inplace=False))
            state = _detach_tree(state)
        return theta, state, loss.detach()

    def inner_update(self, batch: Any) -> torch.Tensor:
        """One plain inner-optimiser step on ``batch`` with no hypergradient and no graph:
        ``theta <- U(theta, grad_theta f(theta, lambda; batch), s)``, written into ``problem.inner`` with the
        solver's optimiser state advanced, exactly the step :meth:`step` takes but without differentiating it
        (for algorithms that update lambda only every few inner steps). Returns ``f`` before the step."""
        with self._slots_kept():
            theta, state, loss = self.inner_step(self.theta(), self.inner_state, batch, self._buffers(copy=False),
                                                 differentiable=False)
        self._write_theta(theta)
        self.inner_state = state
        return loss

    def _stored_inner(self) -> list[torch.Tensor]:
        """The inner module's stored trainable parameters (what a loss must *not* read)."""
        if self._layout is not None:
            return list(self._params_of_call)
        lookup = dict(self.problem.inner.named_parameters())
        return [lookup[n] for n in self._inner_names]

    def _lambda_grad(self, outputs: Any, lam: Sequence[torch.Tensor], where: str,
                     **grad_kwargs: Any) -> tuple[torch.Tensor | None, ...]:
        """``torch.autograd.grad(outputs, lam, allow_unused=True)``, asking in the same backward whether the
        outputs reach the inner module's stored parameters: if they do, a loss read the real module (or a
        tensor taken from it) instead of its ``inner`` argument, and :class:`StoredParameterError` says so."""
        stored = self._stored_inner()
        grads = torch.autograd.grad(outputs, list(lam) + stored, allow_unused=True, **grad_kwargs)
        hit = [n for n, g in zip(self._inner_names, grads[len(lam):]) if g is not None]
        if hit:
            raise StoredParameterError(stored_parameter_message(where, hit))
        return tuple(grads[:len(lam)])

    @contextlib.contextmanager
    def _slots_kept(self) -> Any:
        """Check, after the body, that the inner and outer modules hold exactly the parameter objects they held
        before (a loss or hook that re-registers a parameter would otherwise leave the user's modules and
        optimisers holding different tensors); put them back and raise if not."""
        self._layout = module_layout(self.problem.inner)
        self._params_of_call = [self._layout.by_name[n] for n in self._inner_names]
        self._guard.prepare(self._layout.param_dicts)
        snapshot = parameter_slots(self.problem.outer, param_dicts=self._layout.param_dicts)
        modules = {"problem.inner": self.problem.inner, "problem.outer": self.problem.outer}
        try:
            yield
        except BaseException as exc:
            changed = restore_slots(snapshot, **modules)
            if changed:  # the replaced parameter is the cause of whatever failed after it
                raise _replaced_error(changed) from exc
            raise
        finally:
            self._layout = None
            self._guard.release()
        changed = restore_slots(snapshot, **modules)
        if changed:
            raise _replaced_error(changed)

    def outer_grad(self, outer_loss: torch.Tensor, **grad_kwargs: Any) -> list[torch.Tensor]:
        grads = self._lambda_grad(outer_loss, self._outer_params, "outer_loss (or inner_loss)", **grad_kwargs)
        if all(g is None for g in grads):
            raise ValueError(
                "outer_loss does not depend on the outer parameters, neither directly nor through the inner "
                "step: make inner_loss (or outer_loss) use `outer`, e.g. a weight or regulariser from it"
            )
        return _zeros_for_none(grads, self._outer_params)

    # ----------------------------------------------------------------- checks
    @staticmethod
    def _as_batches(batches: Any, k: int, solver: str) -> list[Any]:
        """A ``list`` is K batches; anything else is one batch reused K times."""
        if isinstance(batches, list):
            if len(batches) != k:
                raise ValueError(
                    f"{solver} takes {k} inner steps but got a list of {len(batches)} batches: pass exactly {k} "
                    "batches, or a single batch (reused every step). A single batch that is itself a list "
                    "must be passed as a tuple"
                )
            return batches
        return [batches] * k

    def _summarise(self, res: _Result) -> tuple[list[float], float, float]:
        """Inner losses, outer loss and hypergradient norm as Python floats, raising
        :class:`NonFiniteError` if any of them (or any hypergradient entry) is NaN / inf.

        On CUDA everything is packed into one tensor, so that a call pays a single host sync (a CPU scalar is read
        directly: no sync to save there).
        """
        # The float64 norm is NaN / inf exactly when an entry is (finite entries overflow it only past ~1e308);
        # which parameter is not finite is worked out only on that (error) path.
        hg = res.hypergrad
        norm = (torch.linalg.vector_norm(hg[0], dtype=torch.float64) if len(hg) == 1 else
                torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g, dtype=torch.float64) for g in hg])))
        if res.outer_loss.device.type == "cpu":  # reading a CPU scalar costs no sync: skip the packing ops
            inner_vals = [float(x) for x in res.inner_losses]
            outer_val, norm_val = float(res.outer_loss), float(norm)
        else:
            packed = torch.stack([x.reshape(()).to(torch.float64) for x in (*res.inner_losses, res.outer_loss)]
                                 + [norm.to(res.outer_loss.device)]).cpu()
            k = len(res.inner_losses)
            inner_vals, outer_val, norm_val = packed[:k].tolist(), float(packed[k]), float(packed[k + 1])
        for i, v in enumerate(inner_vals):
            if not math.isfinite(v):
                raise NonFiniteError(
                    f"inner_loss was {v} at inner step {i}: lower the inner learning rate or check the loss for "
                    "log(0) / division by zero"
                )
        if not math.isfinite(outer_val):
            raise NonFiniteError(f"outer_loss was {outer_val} after the inner steps: the inner iterate diverged or "
                                 "the outer loss is ill-defined there")
        if math.isfinite(norm_val):
            return inner_vals, outer_val, norm_val
        for i, g in enumerate(res.hypergrad):
            if not bool(torch.isfinite(g).all()):
                raise NonFiniteError(
                    f"the hypergradient of outer parameter '{self._outer_names[i]}' is not finite although both "
                    "losses are: the unrolled derivative exploded (lower the inner lr or K, or truncate), the "
                    "implicit linear system is singular (add damping), or an inner Adam differentiates sqrt(v) at "
                    "v = 0 for a parameter whose gradient is exactly zero, e.g. a dead ReLU unit (use "
                    "torchopt.adam(..., eps_root=1e-16))"
                )
        return inner_vals, outer_val, norm_val

    # ----------------------------------------------------------------- API
    @abc.abstractmethod
    def _solve(self, inner_batch: Any, outer_batch: Any, buffers: dict[str, torch.Tensor]) -> _Result:
        """Compute the hypergradient and the inner iterate it belongs to (the solver's one method)."""

    #: Whether the hypergradient uses second derivatives in theta (a Hessian of the inner loss); see
    #: :meth:`_warn_weight_norm`.
    def _uses_inner_hessian(self) -> bool:
        return True

    def _warn_weight_norm(self) -> None:
        """Warn once when the inner module uses ``torch.nn.utils.parametrizations.weight_norm`` and this solver
        differentiates through its Hessian: torch's ``_weight_norm`` has a wrong second derivative (its autograd
        Hessian is not symmetric), so the hypergradient would be off by O(1)."""
        self._weight_norm_checked = True
        if not self._uses_inner_hessian():
            return
        found = [n for n, m in self.problem.inner.named_modules()
                 if type(m).__name__ == "_WeightNorm" and type(m).__module__ == "torch.nn.utils.parametrizations"]
        if found:
            warnings.warn(
                f"problem.inner uses torch.nn.utils.parametrizations.weight_norm ({found}); torch computes it with "
                "torch._weight_norm, whose second derivative is wrong (the autograd Hessian is not symmetric, "
                "O(1) off a finite-difference Hessian), and this solver differentiates through the Hessian of the "
                "inner loss. Write the weight norm in plain ops (e.g. a parametrization returning "
                "`v * (g / torch.norm_except_dim(v, 2, 0))`), or use the hook-based torch.nn.utils.weight_norm, which "
                "bilevel evaluates that way", stacklevel=4)

    def _run(self, inner_batch: Any, outer_batch: Any, copy_buffers: bool) -> _Result:
        if not getattr(self, "_weight_norm_checked", False):
            self._warn_weight_norm()
        if self.aux is not None:
            self.aux.reset()
        with self._slots_kept():
            res = self._solve(inner_batch, outer_batch, self._buffers(copy=copy_buffers))
        if self.aux is not None:  # keep no graph alive between calls
            self.aux.inner, self.aux.outer = _detach_tree(self.aux.inner), _detach_tree(self.aux.outer)
            self.aux.pending = None
        res.hypergrad = [g.detach() for g in res.hypergrad]
        res.summary = self._summarise(res)
        return res

    def hypergradient(self, inner_batch: Any, outer_batch: Any = None) -> list[torch.Tensor]:
        """``d outer_loss / d lambda`` under this solver's approximation, one tensor per outer parameter
        in ``outer.parameters()`` order (trainable ones). Mutates nothing: inner parameters, buffers,
        optimiser states, solver state (warm starts, SOBA's v, F2SA's y) and outer ``.grad`` s are left as
        they were, and both modules hold exactly the parameter objects they held (checked after every call).

        Raises:
            StoredParameterError: a loss read the real inner module (or a tensor taken from it) instead of
                its ``inner`` argument."""
        res = self._run(inner_batch, outer_batch, copy_buffers=True)
        return list(res.hypergrad)  # _outer_params is outer.parameters() with requires_grad, in that order

    def step(self, inner_batch: Any, outer_batch: Any = None) -> StepInfo:
        """Advance both levels: theta to the solver's inner iterate, the solver's own state (if any), and
        lambda by one outer-optimiser step on the hypergradient. Returns a :class:`StepInfo`.

        ``outer_batch=None`` evaluates the outer loss on the (last) inner batch; see each solver's
        docstring for what ``inner_batch`` may be (one batch, or a list of K)."""
        res = self._run(inner_batch, outer_batch, copy_buffers=False)
        self._write_theta(res.theta)
        self.inner_state = _detach_tree(res.state)
        self._commit(res.carry)
        for p, g in zip(self._outer_params, res.hypergrad):
            p.grad = g.clone()
        self.outer_optimizer.step()
        inner_vals, outer_val, norm_val = res.summary
        aux = (None, None) if self.aux is None else (self.aux.inner, self.aux.outer)
        self.last_info = StepInfo(inner_vals[-1] if inner_vals else float("nan"), outer_val, norm_val, res.extras,
                                  *aux)
        return self.last_info


def _replaced_error(changed: list[str]) -> RuntimeError:
    return RuntimeError(
        f"the solver call left parameter slot(s) {changed} holding other objects than before (the original "
        "parameters are back now): a loss or module hook replaced a parameter of the module, e.g. "
        "`model.weight = nn.Parameter(...)` or a torch.func.functional_call on the real module that did not "
        "restore it. Losses must read the `inner` view and `outer` and leave the modules as they are")


def resolve_outer_batch(inner_batches: list[Any], outer_batch: Any) -> Any:
    """``outer_batch=None`` means: evaluate the outer loss on the (last) inner batch."""
    return inner_batches[-1] if outer_batch is None else outer_batch

