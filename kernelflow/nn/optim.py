"""Optimisers (``kf.optim``): SGD, Adam, AdamW, RMSProp, Adagrad, gradient clipping, schedules.

An optimiser builds its update into the graph: ``train = opt.minimize(loss)`` adds gradient
nodes, one fused in-place update op per variable (`kernelflow.graph.ops.training`), the
increment of ``global_step`` and the graph's ``"update_ops"`` (batch-norm statistics), all
in one `kf.group`. Running ``train`` is one training step, entirely on the runtime. Within
that run every plain read of a variable sees its value from before the step, so
``g.run([train, loss])`` reports the loss of the weights the step started from.

State lives in graph variables: slot variables named ``<optimiser>/<variable>/<slot>``
(``Adam/dense1/w/m``, not trainable) and the int64 ``global_step`` variable, shared by every
optimiser of the graph that is not given another one. A second optimiser of the same class
in one graph gets the scope ``Adam_1``.

The learning rate ``lr`` may be a number, a 0-d floating tensor or variable (change it
between steps with ``v.set(...)``), or a schedule (`kernelflow.nn.schedules`, re-exported
here), called with ``global_step`` as it was before the step (0 for the first update).

Example:
    >>> opt = kf.optim.Adam(lr=kf.optim.cosine_decay(1e-3, 10_000))
    >>> train = opt.minimize(loss)
    >>> for xb, yb in batches:
    ...     _, l = g.run([train, loss], feed={x: xb, y: yb})

Contents: Optimizer, SGD, Adam, AdamW, RMSProp, Adagrad, clip_by_global_norm, and the
schedules (Schedule, Constant, ExponentialDecay, CosineDecay, LinearWarmup, constant,
exponential_decay, cosine_decay, linear_warmup).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError
from ..graph.autodiff import gradients
from ..graph.ir import Graph, Tensor, Variable, current_graph
from ..graph.ops import training as T
from ..graph.ops.elementwise import cast, minimum, sqrt, square
from ..graph.ops.reduce import sum as reduce_sum
from ..graph.ops.state import assign_add, group, variable_op
from ..graph.shapes import FLOATING, INTEGER, format_shape
from .schedules import (
    Constant,
    CosineDecay,
    ExponentialDecay,
    LinearWarmup,
    Schedule,
    constant,
    cosine_decay,
    exponential_decay,
    linear_warmup,
)

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSProp", "Adagrad", "clip_by_global_norm", "Schedule",
           "Constant", "ExponentialDecay", "CosineDecay", "LinearWarmup", "constant", "exponential_decay",
           "cosine_decay", "linear_warmup"]

Scalar = Any  # a Python float or a 0-d float64 tensor


def _check_range(owner: str, what: str, value: Any, lo: float, hi: float = math.inf, hi_open: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as e:
        raise InvalidArgumentError(f"{owner}: {what} must be a number; got {value!r}") from e
    if not (lo <= v and (v < hi if hi_open else v <= hi)):
        bound = f"[{lo}, {hi}{')' if hi_open else ']'}"
        raise InvalidArgumentError(f"{owner}: {what} must be in {bound}; got {value!r}")
    return v


class Optimizer:
    """Base class: gradients, slot variables, the global step, and the update group.

    Subclasses give `_slot_specs` (slots and their initial values), `_prepare` (per-step
    scalars shared by all variables) and `_apply` (the fused update of one variable).

    Args:
        lr: learning rate: a number, a 0-d floating tensor/variable, or a schedule
            (any callable ``step tensor -> 0-d tensor``).
        name: the name scope of the optimiser's nodes and slot variables.
    """

    def __init__(self, lr: Any, name: str):
        owner = type(self).__name__
        if isinstance(lr, Tensor):
            if lr.shape != () or lr.dtype not in FLOATING:
                raise InvalidArgumentError(f"{owner}: lr must be a 0-d floating tensor; got {lr!r}")
        elif isinstance(lr, (int, float, np.integer, np.floating)) and not isinstance(lr, bool):
            lr = _check_range(owner, "lr", lr, 0.0)
        elif not callable(lr):
            raise InvalidArgumentError(f"{owner}: lr must be a number, a 0-d tensor or a schedule; got {lr!r}")
        if not isinstance(name, str) or not name or "/" in name:
            raise InvalidArgumentError(f"{owner}: name must be a non-empty string without '/'; got {name!r}")
        self.lr = lr
        self.name = name
        self._slots: dict[Variable, dict[str, Variable]] = {}
        self._scopes: dict[Graph, str] = {}

    def __repr__(self) -> str:
        return f"<kf.optim.{type(self).__name__} lr={self.lr!r}>"

    # ----------------------------------------------------------------- public API
    def compute_gradients(self, loss: Tensor, var_list: Sequence[Variable] | None = None
                          ) -> list[tuple[Tensor | None, Variable]]:
        """Gradients of ``loss`` for each variable.

        Args:
            loss: a floating tensor (non-scalar losses are summed).
            var_list: variables to differentiate; default: the graph's trainable variables.

        Returns:
            ``(grad, var)`` pairs; ``grad`` is None for a variable ``loss`` does not depend on.

        Raises:
            InvalidArgumentError: when ``loss`` is not a floating tensor or ``var_list`` holds
                something other than floating variables of the loss's graph.
        """
        owner = type(self).__name__
        if not isinstance(loss, Tensor) or loss.dtype not in FLOATING:
            raise InvalidArgumentError(f"{owner}: loss must be a floating tensor; got {loss!r}")
        var_list = loss.graph.trainable_variables() if var_list is None else list(var_list)
        if not var_list:
            raise InvalidArgumentError(f"{owner}: no variables to optimise (var_list is empty and graph "
                                       f"'{loss.graph.name}' has no trainable variables)")
        self._check_vars(var_list, loss.graph)
        grads = gradients(loss, var_list)
        return list(zip(grads, var_list))

    def apply_gradients(self, grads_and_vars: Sequence[tuple[Tensor | None, Variable]],
                        global_step: Variable | None = None, name: str | None = None) -> Tensor:
        """One op that applies the gradients and increments the global step.

        Args:
            grads_and_vars: ``(grad, var)`` pairs; pairs whose grad is None are skipped.
            global_step: the step counter to increment (an integer 0-d variable); default the
                graph's ``global_step`` variable, created if the graph has none.
            name: name of the returned op (default ``<scope>/train``).

        Returns:
            A `kf.group` op running every update.

        Raises:
            InvalidArgumentError: for malformed pairs, or when every grad is None.
        """
        return self._apply_all(grads_and_vars, global_step, name, ())

    def minimize(self, loss: Tensor, var_list: Sequence[Variable] | None = None,
                 global_step: Variable | None = None, name: str | None = None) -> Tensor:
        """`compute_gradients` then `apply_gradients`; also runs the graph's ``"update_ops"``.

        Args:
            loss: the floating tensor to minimise.
            var_list: variables to train; default: the graph's trainable variables.
            global_step: see `apply_gradients`.
            name: name of the returned op.

        Returns:
            The training op: running it performs one step.

        Raises:
            InvalidArgumentError: when ``loss`` is not a scalar (PyTorch's ``backward`` refuses one
                too: summing it silently scales the step with the batch), or depends on none of the
                variables.

        Example:
            >>> train = kf.optim.Adam(1e-3).minimize(loss)
            >>> _, l = g.run([train, loss], feed={x: xb, y: yb})
        """
        if isinstance(loss, Tensor) and loss.shape != ():
            raise InvalidArgumentError(
                f"{type(self).__name__}.minimize: the loss must be a scalar; got '{loss.name}' of shape "
                f"{format_shape(loss.shape)}. Reduce it first, e.g. minimize(kf.mean(loss)) "
                f"(or kf.sum(...)); compute_gradients sums a non-scalar loss if that is what you want")
        pairs = self.compute_gradients(loss, var_list)
        if all(gr is None for gr, _ in pairs):
            names = [v.name for _, v in pairs]
            raise InvalidArgumentError(f"{type(self).__name__}.minimize: loss '{loss.name}' depends on none of "
                                       f"the variables {names}")
        extra = tuple(loss.graph.collections.get("update_ops", ()))
        return self._apply_all(pairs, global_step, name, extra)

    def get_slot(self, var: Variable, slot: str) -> Variable:
        """The slot variable ``slot`` (e.g. ``"m"``) of ``var``.

        Raises:
            InvalidArgumentError: when this optimiser has no such slot for ``var`` yet.
        """
        slots = self._slots.get(var, {})
        if slot not in slots:
            raise InvalidArgumentError(f"{type(self).__name__}: no slot '{slot}' for variable "
                                       f"'{getattr(var, 'name', var)}'; slots: {sorted(slots)}")
        return slots[slot]

    def get_slot_names(self) -> list[str]:
        """Names of the slots this optimiser keeps per variable."""
        return [s for s, _ in self._slot_specs()]

    def variables(self) -> list[Variable]:
        """Every slot variable created so far."""
        return [v for slots in self._slots.values() for v in slots.values()]

    # ----------------------------------------------------------------- subclass hooks
    def _slot_specs(self) -> list[tuple[str, float]]:
        """``(slot name, initial value)`` per slot."""
        return []

    def _prepare(self, lr: Scalar, step: Tensor) -> dict[str, Scalar]:
        """Scalars shared by every variable's update this step (``lr`` included)."""
        return {"lr": lr}

    def _apply(self, grad: Tensor, var: Variable, slots: dict[str, Variable],
               hyper: Callable[[str], Any], name: str) -> Tensor:
        raise NotImplementedError

    # ----------------------------------------------------------------- machinery
    def _check_vars(self, var_list: Sequence[Any], graph: Graph) -> None:
        for v in var_list:
            if not isinstance(v, Variable):
                raise InvalidArgumentError(f"{type(self).__name__}: var_list must hold kf.Variables; got {v!r}")
            if v.graph is not graph:
                raise InvalidArgumentError(f"{type(self).__name__}: variable '{v.name}' belongs to graph "
                                           f"'{v.graph.name}', not '{graph.name}'")
            if v.dtype not in FLOATING:
                raise InvalidArgumentError(f"{type(self).__name__}: variable '{v.name}' has dtype {v.dtype}; only "
                                           "floating variables can be trained")

    def _apply_all(self, grads_and_vars: Sequence[tuple[Any, Any]], global_step: Variable | None,
                   name: str | None, extra: tuple[Tensor, ...]) -> Tensor:
        owner = type(self).__name__
        pairs = []
        for item in grads_and_vars:
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise InvalidArgumentError(f"{owner}.apply_gradients: expected (grad, var) pairs; got {item!r}")
            grad, var = item
            if grad is not None and not isinstance(grad, Tensor):
                raise InvalidArgumentError(f"{owner}.apply_gradients: grad for '{getattr(var, 'name', var)}' must "
                                           f"be a tensor or None; got {type(grad).__name__}")
            pairs.append((grad, var))
        if not pairs:
            raise InvalidArgumentError(f"{owner}.apply_gradients: no (grad, var) pairs given")
        graph = current_graph([v for _, v in pairs])
        self._check_vars([v for _, v in pairs], graph)
        live = [(gr, v) for gr, v in pairs if gr is not None]
        if not live:
            raise InvalidArgumentError(f"{owner}.apply_gradients: every gradient is None (variables "
                                       f"{[v.name for _, v in pairs]})")
        step = self._global_step(graph, global_step)
        scope = self._scope(graph)
        with graph.name_scope(scope):
            shared = self._prepare(self._lr(step), step)
            by_dtype: dict[tuple[str, str], Any] = {}
            updates = []
            for grad, var in live:
                hyper = _hyper_getter(graph, shared, var.dtype, by_dtype)
                slots = self._slots_for(var, scope)
                if grad.dtype != var.dtype:
                    grad = cast(grad, var.dtype)
                with graph.device(var.device):
                    updates.append(self._apply(grad, var, slots, hyper, f"update_{var.name}"))
            updates.append(assign_add(step, 1, name="increment_global_step"))
            return group(updates, list(extra), name=name or "train")

    def _lr(self, step: Tensor) -> Scalar:
        if isinstance(self.lr, Tensor):
            return cast(self.lr, "float64")
        if callable(self.lr):
            lr = self.lr(step)
            if not isinstance(lr, Tensor) or lr.shape != () or lr.dtype not in FLOATING:
                raise InvalidArgumentError(f"{type(self).__name__}: the lr schedule must return a 0-d floating "
                                           f"tensor; got {lr!r}")
            return cast(lr, "float64")
        return self.lr

    def _scope(self, graph: Graph) -> str:
        scope = self._scopes.get(graph)
        if scope is None:
            taken = {n.name.split("/", 1)[0] for n in graph.nodes()}
            scope, i = self.name, 0
            while scope in taken:
                i += 1
                scope = f"{self.name}_{i}"
            self._scopes[graph] = scope
        return scope

    def _slots_for(self, var: Variable, scope: str) -> dict[str, Variable]:
        slots = self._slots.get(var)
        if slots is None:
            slots = self._slots[var] = {}
            graph = var.graph
            with graph.control_dependencies(None):
                for slot, init in self._slot_specs():
                    value = np.full(var.shape, init, dtype=var.dtype)
                    node_name = graph.unique_name(f"{scope}/{var.name}/{slot}", scoped=False)
                    t = graph.add_node(variable_op, (), {"initial": value, "trainable": False}, node_name,
                                       device=var.device, exact_name=True)
                    assert isinstance(t, Variable)
                    slots[slot] = t
        return slots

    def _global_step(self, graph: Graph, given: Variable | None) -> Variable:
        if given is not None:
            if not isinstance(given, Variable) or given.graph is not graph or given.shape != () \
                    or given.dtype not in INTEGER + FLOATING:
                raise InvalidArgumentError(f"{type(self).__name__}: global_step must be a 0-d numeric variable of "
                                           f"graph '{graph.name}'; got {given!r}")
            return given
        if "global_step" in graph:
            found = graph["global_step"]
            if not isinstance(found, Variable) or found.shape != ():
                raise InvalidArgumentError(f"{type(self).__name__}: graph node 'global_step' is not a 0-d variable "
                                           f"({found!r}); pass global_step= explicitly")
            return found
        with graph.control_dependencies(None):
            t = graph.add_node(variable_op, (), {"initial": np.zeros((), np.int64), "trainable": False},
                               "global_step", exact_name=True)
        assert isinstance(t, Variable)
        return t


def _hyper_getter(graph: Graph, shared: dict[str, Scalar], dtype: str,
                  cache: dict[tuple[str, str], Any]) -> Callable[[str], Any]:
    """``hyper(name)``: shared scalar ``name`` as a 0-d tensor of ``dtype`` (made once per dtype)."""

    def hyper(key: str) -> Any:
        k = (key, dtype)
        if k not in cache:
            value = shared[key]
            cache[k] = cast(value, dtype) if isinstance(value, Tensor) else graph.constant(np.array(value, dtype))
        return cache[k]

    return hyper


def _bias_corrections(step: Tensor, beta1: float, beta2: float) -> tuple[Tensor, Tensor]:
    """``1 - beta1^t`` and ``1 - beta2^t`` with ``t = step + 1`` (the update's 1-based count), float64."""
    graph = step.graph
    t = cast(step, "float64") + 1.0
    bc1 = 1.0 - graph.constant(beta1, dtype="float64") ** t
    bc2 = 1.0 - graph.constant(beta2, dtype="float64") ** t
    return bc1, bc2


class SGD(Optimizer):
    """Stochastic gradient descent, with optional (Nesterov) momentum and L2 weight decay.

    The update is TF's ``ApplyMomentum`` (``tf.compat.v1.train.MomentumOptimizer``, the same
    as PyTorch's ``SGD``): ``g = grad + weight_decay * var; accum = momentum * accum + g;
    var -= lr * accum``, or with Nesterov ``var -= lr * (g + momentum * accum)``. Without
    momentum, ``var -= lr * g`` and no slot is made. ``weight_decay`` is PyTorch's (an L2
    term added to the gradient). Slot: ``momentum``.

    Args:
        lr: learning rate (number, 0-d tensor/variable, or schedule).
        momentum: momentum coefficient, >= 0.
        nesterov: Nesterov momentum (needs momentum > 0).
        weight_decay: L2 coefficient, >= 0.
        name: name scope.
    """

    def __init__(self, lr: Any = 0.01, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0,
                 name: str = "SGD"):
        super().__init__(lr, name)
        self.momentum = _check_range("SGD", "momentum", momentum, 0.0)
        self.nesterov = bool(nesterov)
        self.weight_decay = _check_range("SGD", "weight_decay", weight_decay, 0.0)
        if self.nesterov and not self.momentum:
            raise InvalidArgumentError("SGD: nesterov=True needs momentum > 0; got momentum=0.0")

    def _slot_specs(self) -> list[tuple[str, float]]:
        return [("momentum", 0.0)] if self.momentum else []

    def _apply(self, grad: Tensor, var: Variable, slots: dict[str, Variable], hyper: Any, name: str) -> Tensor:
        if not self.momentum:
            return T.apply_gradient_descent(var, grad, hyper("lr"), weight_decay=self.weight_decay, name=name)
        return T.apply_momentum(var, slots["momentum"], grad, hyper("lr"), self.momentum, nesterov=self.nesterov,
                                weight_decay=self.weight_decay, name=name)


class Adam(Optimizer):
    """Adam (Kingma & Ba), as TF's ``ApplyAdam`` / ``tf.keras.optimizers.Adam``.

    With ``t = global_step + 1``: ``lr_t = lr * sqrt(1 - beta2^t) / (1 - beta1^t)``;
    ``m = beta1 * m + (1 - beta1) * g; v = beta2 * v + (1 - beta2) * g^2;
    var -= lr_t * m / (sqrt(v) + epsilon)`` (epsilon is TF's "epsilon hat"). Slots: ``m``, ``v``.

    Args:
        lr: learning rate (number, 0-d tensor/variable, or schedule).
        beta1: first-moment decay in [0, 1).
        beta2: second-moment decay in [0, 1).
        epsilon: numerical-stability term, >= 0.
        name: name scope.
    """

    def __init__(self, lr: Any = 1e-3, beta1: float = 0.9, beta2: float = 0.999, epsilon: float = 1e-7,
                 name: str = "Adam"):
        super().__init__(lr, name)
        owner = type(self).__name__
        self.beta1 = _check_range(owner, "beta1", beta1, 0.0, 1.0, hi_open=True)
        self.beta2 = _check_range(owner, "beta2", beta2, 0.0, 1.0, hi_open=True)
        self.epsilon = _check_range(owner, "epsilon", epsilon, 0.0)

    def _slot_specs(self) -> list[tuple[str, float]]:
        return [("m", 0.0), ("v", 0.0)]

    def _prepare(self, lr: Scalar, step: Tensor) -> dict[str, Scalar]:
        bc1, bc2 = _bias_corrections(step, self.beta1, self.beta2)
        return {"lr_t": sqrt(bc2) / bc1 * lr}

    def _apply(self, grad: Tensor, var: Variable, slots: dict[str, Variable], hyper: Any, name: str) -> Tensor:
        return T.apply_adam(var, slots["m"], slots["v"], grad, hyper("lr_t"), self.beta1, self.beta2, self.epsilon,
                            name=name)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), exactly PyTorch's ``AdamW``.

    ``var *= 1 - lr * weight_decay``, then with ``bc_i = 1 - beta_i^t`` (``t = global_step + 1``):
    moments as in `Adam`, ``var -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + epsilon)``. Note that
    epsilon is added to the bias-corrected ``sqrt(v_hat)`` here (PyTorch), not to ``sqrt(v)``
    as in `Adam` (TF). Slots: ``m``, ``v``.

    Args:
        lr: learning rate (number, 0-d tensor/variable, or schedule); also scales the decay.
        beta1: first-moment decay in [0, 1).
        beta2: second-moment decay in [0, 1).
        epsilon: numerical-stability term, >= 0.
        weight_decay: decoupled decay coefficient, >= 0.
        name: name scope.
    """

    def __init__(self, lr: Any = 1e-3, beta1: float = 0.9, beta2: float = 0.999, epsilon: float = 1e-7,
                 weight_decay: float = 0.01, name: str = "AdamW"):
        super().__init__(lr, beta1, beta2, epsilon, name)
        self.weight_decay = _check_range("AdamW", "weight_decay", weight_decay, 0.0)

    def _prepare(self, lr: Scalar, step: Tensor) -> dict[str, Scalar]:
        bc1, bc2 = _bias_corrections(step, self.beta1, self.beta2)
        root_bc2 = sqrt(bc2)
        return {"lr": lr, "lr_t": root_bc2 / bc1 * lr, "eps_t": root_bc2 * self.epsilon}

    def _apply(self, grad: Tensor, var: Variable, slots: dict[str, Variable], hyper: Any, name: str) -> Tensor:
        return T.apply_adamw(var, slots["m"], slots["v"], grad, hyper("lr"), hyper("lr_t"), hyper("eps_t"),
                             self.beta1, self.beta2, self.weight_decay, name=name)


class RMSProp(Optimizer):
    """RMSProp, as TF's ``ApplyRMSProp`` / ``ApplyCenteredRMSProp`` (``tf.compat.v1.train.RMSPropOptimizer``,
    and Keras's ``RMSprop`` formula, with zero-initialised accumulators as in Keras).

    ``ms = rho * ms + (1 - rho) * g^2``; centered: ``mg = rho * mg + (1 - rho) * g`` and
    ``denom = ms - mg^2``, else ``denom = ms``; ``mom = momentum * mom + lr * g / sqrt(denom + epsilon);
    var -= mom`` (with momentum 0, ``var -= lr * g / sqrt(denom + epsilon)``). Slots: ``rms``,
    ``momentum`` (as TF1, made even when momentum is 0, then unused), and ``mg`` if centered.

    Args:
        lr: learning rate (number, 0-d tensor/variable, or schedule).
        rho: decay of the averages in [0, 1).
        momentum: momentum coefficient, >= 0.
        epsilon: added under the square root, >= 0.
        centered: normalise by the variance estimate instead of the raw second moment.
        name: name scope.
    """

    def __init__(self, lr: Any = 1e-3, rho: float = 0.9, momentum: float = 0.0, epsilon: float = 1e-7,
                 centered: bool = False, name: str = "RMSProp"):
        super().__init__(lr, name)
        self.rho = _check_range("RMSProp", "rho", rho, 0.0, 1.0, hi_open=True)
        self.momentum = _check_range("RMSProp", "momentum", momentum, 0.0)
        self.epsilon = _check_range("RMSProp", "epsilon", epsilon, 0.0)
        self.centered = bool(centered)

    def _slot_specs(self) -> list[tuple[str, float]]:
        return [("rms", 0.0), ("momentum", 0.0)] + ([("mg", 0.0)] if self.centered else [])

    def _apply(self, grad: Tensor, var: Variable, slots: dict[str, Variable], hyper: Any, name: str) -> Tensor:
        if self.centered:
            return T.apply_centered_rmsprop(var, slots["mg"], slots["rms"], slots["momentum"], grad, hyper("lr"),
                                            self.rho, self.momentum, self.epsilon, name=name)
        return T.apply_rmsprop(var, slots["rms"], slots["momentum"], grad, hyper("lr"), self.rho, self.momentum,
                               self.epsilon, name=name)


class Adagrad(Optimizer):
    """Adagrad, as TF's ``ApplyAdagradV2`` (``tf.keras.optimizers.Adagrad`` of TF 2.x).

    ``accum += g^2; var -= lr * g / (sqrt(accum) + epsilon)``. Slot: ``accumulator``, starting at
    ``initial_accumulator_value``.

    Args:
        lr: learning rate (number, 0-d tensor/variable, or schedule).
        initial_accumulator_value: starting value of the accumulator, >= 0.
        epsilon: added to ``sqrt(accum)``, >= 0.
        name: name scope.
    """

    def __init__(self, lr: Any = 1e-2, initial_accumulator_value: float = 0.1, epsilon: float = 1e-7,
                 name: str = "Adagrad"):
        super().__init__(lr, name)
        self.initial_accumulator_value = _check_range("Adagrad", "initial_accumulator_value",
                                                      initial_accumulator_value, 0.0)
        self.epsilon = _check_range("Adagrad", "epsilon", epsilon, 0.0)

    def _slot_specs(self) -> list[tuple[str, float]]:
        return [("accumulator", self.initial_accumulator_value)]

    def _apply(self, grad: Tensor, var: Variable, slots: dict[str, Variable], hyper: Any, name: str) -> Tensor:
        return T.apply_adagrad(var, slots["accumulator"], grad, hyper("lr"), self.epsilon, name=name)


def clip_by_global_norm(grads: Sequence[Tensor | None], clip_norm: Any, name: str | None = None
                        ) -> tuple[list[Tensor | None], Tensor]:
    """Scale gradients so their joint L2 norm is at most ``clip_norm`` (TF's ``clip_by_global_norm``).

    ``global_norm = sqrt(sum_i sum(g_i^2))``; each ``g_i`` becomes
    ``g_i * clip_norm * min(1 / global_norm, 1 / clip_norm)``, so nothing changes when the norm
    is already small enough; a NaN or infinite norm makes every gradient NaN, as in TF.

    Args:
        grads: gradient tensors; None entries are passed through.
        clip_norm: the maximum norm: a number > 0 or a 0-d floating tensor.
        name: name scope (default ``clip_by_global_norm``).

    Returns:
        ``(clipped, global_norm)``: the list of clipped gradients (None where the input was
        None) and the 0-d norm before clipping, in the widest floating dtype among ``grads``.

    Raises:
        InvalidArgumentError: when every gradient is None, or ``clip_norm`` is not positive.

    Example:
        >>> grads, norm = kf.optim.clip_by_global_norm([gw, gb], 5.0)
    """
    grads = list(grads)
    tensors = [t for t in grads if t is not None]
    if not tensors:
        raise InvalidArgumentError("clip_by_global_norm: every gradient is None")
    for t in tensors:
        if not isinstance(t, Tensor) or t.dtype not in FLOATING:
            raise InvalidArgumentError(f"clip_by_global_norm: gradients must be floating tensors or None; got {t!r}")
    if isinstance(clip_norm, Tensor):
        if clip_norm.shape != () or clip_norm.dtype not in FLOATING:
            raise InvalidArgumentError(
                f"clip_by_global_norm: clip_norm must be a 0-d floating tensor; got {clip_norm!r}")
    else:
        clip_norm = _check_range("clip_by_global_norm", "clip_norm", clip_norm, 0.0)
        if clip_norm == 0.0:
            raise InvalidArgumentError("clip_by_global_norm: clip_norm must be > 0; got 0.0")
    graph = current_graph(tensors)
    dtype = max((t.dtype for t in tensors), key=FLOATING.index)
    with graph.name_scope(name or "clip_by_global_norm"):
        total = None
        for t in tensors:
            part = cast(reduce_sum(square(t)), dtype)
            total = part if total is None else total + part
        norm = sqrt(total)
        clip = cast(clip_norm, dtype) if isinstance(clip_norm, Tensor) else graph.constant(np.array(clip_norm, dtype))
        scale = clip * minimum(1.0 / norm, 1.0 / clip)
        scale = scale + (norm - norm)  # propagates a NaN/Inf norm into every gradient, as TF does
        clipped = [None if t is None else t * cast(scale, t.dtype) for t in grads]
    return clipped, norm
