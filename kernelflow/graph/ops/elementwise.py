"""Elementwise ops with numpy broadcasting: schemas, shape/dtype rules and gradients.

Unary ops are made by `unary_op`, binary ops by `binary_op`; the autodiff engine reduces
broadcast cotangents, so the vjps here are written for equal shapes.
"""

from __future__ import annotations

import math
from typing import Any

from ...errors import InvalidArgumentError
from ..ir import Tensor
from ..registry import OpDef, define_op
from ..shapes import ALL_DTYPES, FLOATING, NUMERIC, broadcast_shapes, canonical_dtype, promote

__all__ = [
    "add", "subtract", "multiply", "divide", "floor_divide", "mod", "pow", "negative", "abs", "sign", "exp",
    "log", "log1p", "sqrt", "rsqrt", "square", "sin", "cos", "tanh", "sigmoid", "relu", "leaky_relu", "elu",
    "gelu", "softplus", "maximum", "minimum", "clip", "where", "equal", "not_equal", "less", "less_equal",
    "greater", "greater_equal", "logical_and", "logical_or", "logical_not", "cast", "isfinite",
]


def _check_dtype(op: str, aval: Any, allowed: tuple[str, ...]) -> None:
    if aval.dtype not in allowed:
        raise InvalidArgumentError(f"{op}: expected a dtype in {allowed}; got {aval.dtype}")


def unary_op(name: str, dtypes: tuple[str, ...] = NUMERIC, vjp: Any = None, out_dtype: str | None = None,
             **kwargs: Any) -> OpDef:
    """Define an elementwise op of one input; the output has the input's shape."""

    def dtype_rule(x: Any, **attrs: Any) -> str:
        _check_dtype(name, x, dtypes)
        return out_dtype or x.dtype

    if vjp is None:
        kwargs.setdefault("differentiable", False)
    return define_op(name, ("x",), shape_rule=lambda x, **a: x.shape, dtype_rule=dtype_rule, vjp=vjp, **kwargs)


def binary_op(name: str, dtypes: tuple[str, ...] = NUMERIC, vjp: Any = None, out_dtype: str | None = None,
              **kwargs: Any) -> OpDef:
    """Define a broadcasting elementwise op of two inputs."""

    def dtype_rule(x: Any, y: Any, **attrs: Any) -> str:
        _check_dtype(name, x, dtypes)
        _check_dtype(name, y, dtypes)
        return out_dtype or promote(name, x.dtype, y.dtype)

    if vjp is None:
        kwargs.setdefault("differentiable", False)
    return define_op(name, ("x", "y"), shape_rule=lambda x, y, **a: broadcast_shapes(name, x.shape, y.shape),
                     dtype_rule=dtype_rule, vjp=vjp, **kwargs)


# --------------------------------------------------------------------------- arithmetic
add_op = binary_op("add", vjp=lambda g, out, x, y: (g, g))
subtract_op = binary_op("subtract", vjp=lambda g, out, x, y: (g, -g))
multiply_op = binary_op("multiply", vjp=lambda g, out, x, y: (g * y, g * x))
divide_op = binary_op("divide", FLOATING, vjp=lambda g, out, x, y: (g / y, -g * out / y))
floor_divide_op = binary_op("floor_divide")
mod_op = binary_op("mod", vjp=lambda g, out, x, y: (g, -g * floor_divide(x, y)))
# d/dy x**y = log(x) x**y, defined as 0 where x == 0 (the limit used by JAX and TF).
pow_op = binary_op("pow", vjp=lambda g, out, x, y: (
    g * y * pow(x, y - 1),
    g * out * log(where(equal(x, 0), 1, x)) if y.dtype in FLOATING else None))
negative_op = unary_op("negative", vjp=lambda g, out, x: (-g,))
abs_op = unary_op("abs", vjp=lambda g, out, x: (g * sign(x),))
sign_op = unary_op("sign", vjp=lambda g, out, x: (None,))
exp_op = unary_op("exp", FLOATING, vjp=lambda g, out, x: (g * out,))
log_op = unary_op("log", FLOATING, vjp=lambda g, out, x: (g / x,))
log1p_op = unary_op("log1p", FLOATING, vjp=lambda g, out, x: (g / (x + 1),))
sqrt_op = unary_op("sqrt", FLOATING, vjp=lambda g, out, x: (g / (out * 2),))
rsqrt_op = unary_op("rsqrt", FLOATING, vjp=lambda g, out, x: (g * -0.5 * out / x,))
square_op = unary_op("square", vjp=lambda g, out, x: (g * (x * 2),))
sin_op = unary_op("sin", FLOATING, vjp=lambda g, out, x: (g * cos(x),))
cos_op = unary_op("cos", FLOATING, vjp=lambda g, out, x: (-g * sin(x),))
tanh_op = unary_op("tanh", FLOATING, vjp=lambda g, out, x: (g * (1 - out * out),))
# A primitive, not exp-based: 1/(1+exp(-x)) overflows for large negative x.
sigmoid_op = unary_op("sigmoid", FLOATING, vjp=lambda g, out, x: (g * out * (1 - out),))
# Primitive for speed: one pass forward, and the mask in the gradient reuses the output.
relu_op = unary_op("relu", NUMERIC, vjp=lambda g, out, x: (relu_grad(g, out),))
# A primitive for speed: g * (out > 0) in one multiply (np.where with a scalar branch is ~8x
# slower on a (256, 512) layer); NaN in g propagates, as in TF's ReluGrad.
relu_grad_op = define_op("relu_grad", ("g", "out"), shape_rule=lambda g, out: broadcast_shapes("relu_grad", g.shape,
                                                                                                 out.shape),
                         dtype_rule=lambda g, out: g.dtype, vjp=lambda gg, res, g, out: (relu_grad(gg, out), None))
maximum_op = binary_op("maximum", vjp=lambda g, out, x, y: (
    g * greater_equal(x, y).astype(g.dtype), g * less(x, y).astype(g.dtype)))
minimum_op = binary_op("minimum", vjp=lambda g, out, x, y: (
    g * less_equal(x, y).astype(g.dtype), g * greater(x, y).astype(g.dtype)))

# --------------------------------------------------------------------------- comparisons and logic
_compare = dict(dtypes=ALL_DTYPES, out_dtype="bool")
equal_op = binary_op("equal", **_compare)
not_equal_op = binary_op("not_equal", **_compare)
less_op = binary_op("less", **_compare)
less_equal_op = binary_op("less_equal", **_compare)
greater_op = binary_op("greater", **_compare)
greater_equal_op = binary_op("greater_equal", **_compare)
logical_and_op = binary_op("logical_and", ("bool",))
logical_or_op = binary_op("logical_or", ("bool",))
logical_not_op = unary_op("logical_not", ("bool",))
isfinite_op = unary_op("isfinite", NUMERIC, out_dtype="bool")


def _where_shape(c: Any, x: Any, y: Any) -> tuple:
    if c.dtype != "bool":
        raise InvalidArgumentError(f"where: condition must be bool; got {c.dtype}")
    return broadcast_shapes("where", c.shape, x.shape, y.shape)


where_op = define_op("where", ("condition", "x", "y"), shape_rule=_where_shape,
                     dtype_rule=lambda c, x, y: promote("where", x.dtype, y.dtype),
                     vjp=lambda g, out, c, x, y: (None, where(c, g, 0), where(c, 0, g)))


def _cast_vjp(g: Tensor, out: Tensor, x: Tensor, dtype: str) -> tuple:
    return (cast(g, x.dtype) if x.dtype in FLOATING and dtype in FLOATING else None,)


cast_op = define_op("cast", ("x",), attrs={"dtype": "float32"}, shape_rule=lambda x, **a: x.shape,
                    dtype_rule=lambda x, dtype: canonical_dtype(dtype, "cast"), vjp=_cast_vjp)


# --------------------------------------------------------------------------- builders
def _b(op: OpDef):  # builder of a plain op with no attrs
    def build(*args: Any, name: str | None = None) -> Tensor:
        return op.bind(*args, name=name)

    build.__name__ = op.name
    build.__doc__ = f"Elementwise ``{op.name}`` with numpy broadcasting."
    return build


add, subtract, multiply, divide, floor_divide, mod, pow = map(
    _b, (add_op, subtract_op, multiply_op, divide_op, floor_divide_op, mod_op, pow_op))
negative, abs, sign, exp, log, log1p, sqrt, rsqrt, square = map(
    _b, (negative_op, abs_op, sign_op, exp_op, log_op, log1p_op, sqrt_op, rsqrt_op, square_op))
sin, cos, tanh, sigmoid, relu, maximum, minimum = map(
    _b, (sin_op, cos_op, tanh_op, sigmoid_op, relu_op, maximum_op, minimum_op))
equal, not_equal, less, less_equal, greater, greater_equal = map(
    _b, (equal_op, not_equal_op, less_op, less_equal_op, greater_op, greater_equal_op))
logical_and, logical_or, logical_not, isfinite = map(_b, (logical_and_op, logical_or_op, logical_not_op, isfinite_op))
relu_grad = _b(relu_grad_op)


def where(condition: Any, x: Any, y: Any, name: str | None = None) -> Tensor:
    """``x`` where ``condition`` else ``y`` (numpy broadcasting).

    Args:
        condition: bool tensor.
        x: values taken where ``condition`` is True.
        y: values taken elsewhere.
        name: optional node name.

    Returns:
        A tensor of the broadcast shape of all three and the promoted dtype of ``x`` and ``y``.
    """
    return where_op.bind(condition, x, y, name=name)


def cast(x: Tensor, dtype: Any, name: str | None = None) -> Tensor:
    """``x`` converted to ``dtype``; returns ``x`` itself when it has that dtype already.

    Args:
        x: tensor of any supported dtype.
        dtype: target dtype (``"float32"``, ``np.int64``...).
        name: optional node name.

    Returns:
        A tensor of ``x``'s shape; float to int truncates toward zero, as numpy's ``astype``.
    """
    dtype = canonical_dtype(dtype, "cast")
    if isinstance(x, Tensor) and x.dtype == dtype:
        return x
    return cast_op.bind(x, dtype=dtype, name=name)


# --------------------------------------------------------------------------- composites
def _require_floating(op: str, x: Any) -> None:
    # Composites would otherwise fail deep inside (in exp) or silently promote ints to float.
    if isinstance(x, Tensor) and x.dtype not in FLOATING:
        raise InvalidArgumentError(f"{op}: expected a dtype in {FLOATING}; got {x.dtype} (tensor '{x.name}'); "
                                   "cast it with kf.cast")


def leaky_relu(x: Tensor, alpha: float = 0.2, name: str | None = None) -> Tensor:
    """``x`` if ``x > 0`` else ``alpha * x`` (TF's default alpha 0.2).

    Args:
        x: floating tensor.
        alpha: slope for negative inputs.
        name: optional node name.

    Returns:
        A tensor of ``x``'s shape and dtype.
    """
    _require_floating("leaky_relu", x)
    return where(greater(x, 0), x, x * alpha, name=name)


def elu(x: Tensor, alpha: float = 1.0, name: str | None = None) -> Tensor:
    """``x`` if ``x > 0`` else ``alpha * (exp(x) - 1)``.

    Args:
        x: floating tensor.
        alpha: scale of the negative branch.
        name: optional node name.

    Returns:
        A tensor of ``x``'s shape and dtype.
    """
    _require_floating("elu", x)
    # exp of the clamped value keeps the unused branch finite, so its gradient is not NaN.
    return where(greater(x, 0), x, (exp(minimum(x, 0)) - 1) * alpha, name=name)


def softplus(x: Tensor, name: str | None = None) -> Tensor:
    """``log(1 + exp(x))``, computed stably as ``max(x, 0) + log1p(exp(-|x|))``.

    Args:
        x: floating tensor.
        name: optional node name.

    Returns:
        A tensor of ``x``'s shape and dtype.
    """
    _require_floating("softplus", x)
    return add(maximum(x, 0), log1p(exp(-abs(x))), name=name)


def clip(x: Tensor, min: Any = None, max: Any = None, name: str | None = None) -> Tensor:  # noqa: A002
    """``x`` limited to ``[min, max]`` (either bound may be None); ``max`` wins if ``min > max``.

    Args:
        x: numeric tensor.
        min: lower bound (scalar or tensor broadcasting against ``x``), or None.
        max: upper bound, or None.
        name: optional node name.

    Returns:
        A tensor of the broadcast shape; the dtype promotes with the bounds' dtypes.
    """
    if min is not None:
        x = maximum(x, min)
    if max is not None:
        x = minimum(x, max)
    return identity_named(x, name)


def identity_named(x: Tensor, name: str | None) -> Tensor:
    """``x`` itself when ``name`` is None, else an identity node called ``name`` (for composites)."""
    if name is None:
        return x
    from .state import identity

    return identity(x, name=name)


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def gelu(x: Tensor, approximate: bool = False, name: str | None = None) -> Tensor:
    """Gaussian error linear unit: ``x * Phi(x)``, the exact erf form unless ``approximate``.

    Args:
        x: floating tensor.
        approximate: use the tanh approximation ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``.
        name: optional node name.

    Returns:
        A tensor of ``x``'s shape and dtype.
    """
    _require_floating("gelu", x)
    if approximate:
        inner = (x + x * x * x * 0.044715) * _SQRT_2_OVER_PI
        return multiply(x * 0.5, tanh(inner) + 1, name=name)
    return gelu_op.bind(x, name=name)


def _gelu_vjp(g: Tensor, out: Tensor, x: Tensor) -> tuple:
    # d/dx x*Phi(x) = Phi(x) + x*phi(x), with Phi(x) = out / x expressed without dividing by x.
    phi = exp(-(x * x) * 0.5) * (1.0 / math.sqrt(2.0 * math.pi))
    cdf = (erf(x * (1.0 / math.sqrt(2.0))) + 1) * 0.5
    return (g * (cdf + x * phi),)


# A primitive: the exact GELU needs erf, which numpy lacks; the kernel evaluates it.
gelu_op = unary_op("gelu", FLOATING, vjp=_gelu_vjp)
erf_op = unary_op("erf", FLOATING, vjp=lambda g, out, x: (
    g * exp(-(x * x)) * (2.0 / math.sqrt(math.pi)),))
erf = _b(erf_op)
__all__.append("erf")
