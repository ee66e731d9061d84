"""Fused optimiser updates: primitives that update a variable and its slots in place.

Why primitives and not compositions of ``assign`` ops: a composed Adam step allocates a
fresh array for every intermediate (about ten per variable per step), which at small batch
sizes costs more than the model's matmuls. Each op here is one kernel call that updates the
variable and its slot variables in place with a single reused scratch buffer.

Conventions shared by every op: inputs are the variable, its slot variables, the gradient,
then the scalar hyper-parameters that may change from step to step (learning rates, as
0-d tensors, so schedules and user-set variables work); constant hyper-parameters (betas,
epsilon, decay) are attrs. The variable and slots must be `kf.Variable` nodes (``mutates``);
the output is the updated variable (an alias of its storage). None are differentiable.

Contents: apply_gradient_descent, apply_momentum, apply_adam, apply_adamw, apply_rmsprop,
apply_centered_rmsprop, apply_adagrad.
"""

from __future__ import annotations

from typing import Any

from ...errors import InvalidArgumentError, ShapeError
from ..ir import Tensor, Variable
from ..registry import REQUIRED, OpDef, define_op
from ..shapes import FLOATING, format_shape

__all__ = ["apply_gradient_descent", "apply_momentum", "apply_adam", "apply_adamw", "apply_rmsprop",
           "apply_centered_rmsprop", "apply_adagrad"]


def _same_shape(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(x is None or y is None or x == y for x, y in zip(a, b))


def update_op(name: str, slots: tuple[str, ...], scalars: tuple[str, ...], attrs: dict[str, Any], doc: str) -> OpDef:
    """Define a fused update op with inputs ``(var, *slots, grad, *scalars)``.

    The shape rule checks that slots and grad have the variable's shape and dtype (a
    floating one) and that every scalar is a 0-d floating tensor.
    """
    inputs = ("var",) + slots + ("grad",) + scalars
    n_tensors = 2 + len(slots)

    def shape_rule(*avals: Any, **kw: Any) -> tuple:
        var = avals[0]
        for label, a in zip(inputs[1:n_tensors], avals[1:n_tensors]):
            if not _same_shape(a.shape, var.shape):
                raise ShapeError(f"{name}: {label} must have the variable's shape; got var.shape="
                                 f"{format_shape(var.shape)}, {label}.shape={format_shape(a.shape)}")
        for label, a in zip(scalars, avals[n_tensors:]):
            if a.shape != ():
                raise ShapeError(f"{name}: {label} must be a scalar (0-d); got {label}.shape={format_shape(a.shape)}")
        return var.shape

    def dtype_rule(*avals: Any, **kw: Any) -> str:
        var = avals[0]
        if var.dtype not in FLOATING:
            raise InvalidArgumentError(f"{name}: the variable must be floating; got var.dtype={var.dtype}")
        for label, a in zip(inputs[1:n_tensors], avals[1:n_tensors]):
            if a.dtype != var.dtype:
                raise InvalidArgumentError(f"{name}: {label} must have the variable's dtype; got var.dtype="
                                           f"{var.dtype}, {label}.dtype={a.dtype}; cast it with kf.cast")
        for label, a in zip(scalars, avals[n_tensors:]):
            if a.dtype not in FLOATING:
                raise InvalidArgumentError(f"{name}: {label} must be floating; got {label}.dtype={a.dtype}")
        return var.dtype

    return define_op(name, inputs, attrs=attrs, shape_rule=shape_rule, dtype_rule=dtype_rule, differentiable=False,
                     stateful=True, alias=True, mutates=tuple(range(n_tensors - 1)), doc=doc)


apply_gradient_descent_op = update_op(
    "apply_gradient_descent", (), ("lr",), {"weight_decay": 0.0},
    "var -= lr * (grad + weight_decay * var)")
apply_momentum_op = update_op(
    "apply_momentum", ("accum",), ("lr",), {"momentum": REQUIRED, "nesterov": False, "weight_decay": 0.0},
    "accum = momentum * accum + g; var -= lr * accum (or lr * (g + momentum * accum) with nesterov)")
apply_adam_op = update_op(
    "apply_adam", ("m", "v"), ("lr_t",), {"beta1": 0.9, "beta2": 0.999, "epsilon": 1e-7},
    "m, v = moments of grad; var -= lr_t * m / (sqrt(v) + epsilon)")
apply_adamw_op = update_op(
    "apply_adamw", ("m", "v"), ("lr", "lr_t", "eps_t"), {"beta1": 0.9, "beta2": 0.999, "weight_decay": 0.01},
    "var *= 1 - lr * weight_decay; m, v = moments of grad; var -= lr_t * m / (sqrt(v) + eps_t)")
apply_rmsprop_op = update_op(
    "apply_rmsprop", ("ms", "mom"), ("lr",), {"rho": 0.9, "momentum": 0.0, "epsilon": 1e-7},
    "ms = rho * ms + (1 - rho) * g^2; mom = momentum * mom + lr * g / sqrt(ms + epsilon); var -= mom")
apply_centered_rmsprop_op = update_op(
    "apply_centered_rmsprop", ("mg", "ms", "mom"), ("lr",), {"rho": 0.9, "momentum": 0.0, "epsilon": 1e-7},
    "as apply_rmsprop with ms - mg^2 (mg = mean gradient) in place of ms")
apply_adagrad_op = update_op(
    "apply_adagrad", ("accum",), ("lr",), {"epsilon": 1e-7},
    "accum += g^2; var -= lr * g / (sqrt(accum) + epsilon)")


# --------------------------------------------------------------------------- builders
def _vars(op: OpDef, refs: tuple[Any, ...]) -> None:
    for label, ref in zip(op.inputs, refs):
        if not isinstance(ref, Variable):
            raise InvalidArgumentError(f"{op.name}: '{label}' must be a kf.Variable (it is updated in place); "
                                       f"got {ref!r}")


def apply_gradient_descent(var: Variable, grad: Tensor, lr: Any, weight_decay: float = 0.0,
                           name: str | None = None) -> Tensor:
    """Plain SGD in place: ``var -= lr * (grad + weight_decay * var)``.

    Args:
        var: the variable to update (floating).
        grad: its gradient, same shape and dtype.
        lr: 0-d floating tensor or Python float.
        weight_decay: L2 penalty coefficient folded into the gradient (PyTorch SGD's).
        name: node name.

    Returns:
        The updated variable (the op's output aliases its storage).
    """
    _vars(apply_gradient_descent_op, (var,))
    return apply_gradient_descent_op.bind(var, grad, lr, weight_decay=float(weight_decay), name=name)


def apply_momentum(var: Variable, accum: Variable, grad: Tensor, lr: Any, momentum: float, nesterov: bool = False,
                   weight_decay: float = 0.0, name: str | None = None) -> Tensor:
    """Momentum SGD in place, TF's ``ApplyMomentum`` (the same as PyTorch's SGD with momentum).

    ``g = grad + weight_decay * var; accum = momentum * accum + g``; then
    ``var -= lr * accum``, or with ``nesterov`` ``var -= lr * (g + momentum * accum)``.

    Args:
        var: the variable (floating).
        accum: its velocity slot, same shape and dtype.
        grad: its gradient.
        lr: 0-d floating tensor or Python float.
        momentum: the momentum coefficient.
        nesterov: use Nesterov momentum.
        weight_decay: L2 penalty coefficient folded into the gradient.
        name: node name.

    Returns:
        The updated variable.
    """
    _vars(apply_momentum_op, (var, accum))
    return apply_momentum_op.bind(var, accum, grad, lr, momentum=float(momentum), nesterov=bool(nesterov),
                                  weight_decay=float(weight_decay), name=name)


def apply_adam(var: Variable, m: Variable, v: Variable, grad: Tensor, lr_t: Any, beta1: float = 0.9,
               beta2: float = 0.999, epsilon: float = 1e-7, name: str | None = None) -> Tensor:
    """Adam in place, TF's ``ApplyAdam`` with the bias correction folded into ``lr_t``.

    ``m = beta1 * m + (1 - beta1) * grad; v = beta2 * v + (1 - beta2) * grad^2;
    var -= lr_t * m / (sqrt(v) + epsilon)``, where the caller passes
    ``lr_t = lr * sqrt(1 - beta2^t) / (1 - beta1^t)``.

    Args:
        var: the variable (floating).
        m: first-moment slot.
        v: second-moment slot.
        grad: the gradient.
        lr_t: 0-d floating tensor: the bias-corrected learning rate of this step.
        beta1: decay of the first moment.
        beta2: decay of the second moment.
        epsilon: added to ``sqrt(v)``.
        name: node name.

    Returns:
        The updated variable.
    """
    _vars(apply_adam_op, (var, m, v))
    return apply_adam_op.bind(var, m, v, grad, lr_t, beta1=float(beta1), beta2=float(beta2),
                              epsilon=float(epsilon), name=name)


def apply_adamw(var: Variable, m: Variable, v: Variable, grad: Tensor, lr: Any, lr_t: Any, eps_t: Any,
                beta1: float = 0.9, beta2: float = 0.999, weight_decay: float = 0.01,
                name: str | None = None) -> Tensor:
    """AdamW in place (PyTorch's ``AdamW``): decoupled weight decay, then an Adam step.

    ``var *= 1 - lr * weight_decay``; moments as in `apply_adam`;
    ``var -= lr_t * m / (sqrt(v) + eps_t)``. PyTorch's step
    ``lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)`` (``bc_i = 1 - beta_i^t``) is this with
    ``lr_t = lr * sqrt(bc2) / bc1`` and ``eps_t = eps * sqrt(bc2)``, which saves a pass.

    Args:
        var: the variable (floating).
        m: first-moment slot.
        v: second-moment slot.
        grad: the gradient.
        lr: 0-d floating tensor: the learning rate (scales the decay).
        lr_t: 0-d floating tensor: ``lr * sqrt(bc2) / bc1``.
        eps_t: 0-d floating tensor: ``epsilon * sqrt(bc2)``.
        beta1: decay of the first moment.
        beta2: decay of the second moment.
        weight_decay: the decoupled decay coefficient.
        name: node name.

    Returns:
        The updated variable.
    """
    _vars(apply_adamw_op, (var, m, v))
    return apply_adamw_op.bind(var, m, v, grad, lr, lr_t, eps_t, beta1=float(beta1), beta2=float(beta2),
                               weight_decay=float(weight_decay), name=name)


def apply_rmsprop(var: Variable, ms: Variable, mom: Variable, grad: Tensor, lr: Any, rho: float = 0.9,
                  momentum: float = 0.0, epsilon: float = 1e-7, name: str | None = None) -> Tensor:
    """RMSProp in place, TF's ``ApplyRMSProp``.

    ``ms = rho * ms + (1 - rho) * grad^2; mom = momentum * mom + lr * grad / sqrt(ms + epsilon);
    var -= mom``. With ``momentum == 0`` the ``mom`` slot is left untouched and
    ``var -= lr * grad / sqrt(ms + epsilon)``.

    Args:
        var: the variable (floating).
        ms: mean-square slot.
        mom: momentum slot.
        grad: the gradient.
        lr: 0-d floating tensor or Python float.
        rho: decay of the mean square.
        momentum: momentum coefficient.
        epsilon: added under the square root.
        name: node name.

    Returns:
        The updated variable.
    """
    _vars(apply_rmsprop_op, (var, ms, mom))
    return apply_rmsprop_op.bind(var, ms, mom, grad, lr, rho=float(rho), momentum=float(momentum),
                                 epsilon=float(epsilon), name=name)


def apply_centered_rmsprop(var: Variable, mg: Variable, ms: Variable, mom: Variable, grad: Tensor, lr: Any,
                           rho: float = 0.9, momentum: float = 0.0, epsilon: float = 1e-7,
                           name: str | None = None) -> Tensor:
    """Centered RMSProp in place, TF's ``ApplyCenteredRMSProp``.

    As `apply_rmsprop`, with ``mg = rho * mg + (1 - rho) * grad`` and ``ms - mg^2`` in place of
    ``ms`` under the square root.

    Args:
        var: the variable (floating).
        mg: mean-gradient slot.
        ms: mean-square slot.
        mom: momentum slot.
        grad: the gradient.
        lr: 0-d floating tensor or Python float.
        rho: decay of the averages.
        momentum: momentum coefficient.
        epsilon: added under the square root.
        name: node name.

    Returns:
        The updated variable.
    """
    _vars(apply_centered_rmsprop_op, (var, mg, ms, mom))
    return apply_centered_rmsprop_op.bind(var, mg, ms, mom, grad, lr, rho=float(rho), momentum=float(momentum),
                                          epsilon=float(epsilon), name=name)


def apply_adagrad(var: Variable, accum: Variable, grad: Tensor, lr: Any, epsilon: float = 1e-7,
                  name: str | None = None) -> Tensor:
    """Adagrad in place, TF's ``ApplyAdagradV2``: ``accum += grad^2;
    var -= lr * grad / (sqrt(accum) + epsilon)``.

    Args:
        var: the variable (floating).
        accum: the accumulator slot.
        grad: the gradient.
        lr: 0-d floating tensor or Python float.
        epsilon: added to ``sqrt(accum)``.
        name: node name.

    Returns:
        The updated variable.
    """
    _vars(apply_adagrad_op, (var, accum))
    return apply_adagrad_op.bind(var, accum, grad, lr, epsilon=float(epsilon), name=name)
