"""The kernelflow op -> ONNX mapping table: one converter per mappable op, a reason for every other.

A converter ``fn(b, n, xs, out)`` gets the `OnnxBuilder`, the kernelflow node, the ONNX value
names of its inputs and the value name its result must have; it appends ONNX nodes through
``b`` and must end with one that writes ``out`` (a multi-output op writes ``part(out, i)``
for each output instead; the control-flow ops and lstm_cell are in `onnx_control`).
Layouts: kernelflow convolutions are NHWC with HWIO filters and ONNX's are NCHW with OIHW,
so a conv or pool is wrapped in two Transposes (onnxruntime folds the ones on constant
filters). TensorFlow's ``SAME`` padding becomes explicit pads (the odd pixel at the end), or
``SAME_UPPER`` for unknown spatial dims.

Contents: CONVERTERS, NO_ONNX, onnx_form (the one-line description docs/onnx.md shows).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InvalidArgumentError
from ..graph.ir import Tensor

if TYPE_CHECKING:
    from .onnx_builder import OnnxBuilder

Converter = Callable[["OnnxBuilder", Tensor, list, str], None]
CONVERTERS: dict[str, Converter] = {}
FORMS: dict[str, str] = {}
INT64_MAX = np.iinfo(np.int64).max
INT64_MIN = np.iinfo(np.int64).min


def _conv(*names: str, form: str) -> Callable[[Converter], Converter]:
    def deco(fn: Converter) -> Converter:
        for name in names:
            CONVERTERS[name] = fn
            FORMS[name] = form
        return fn
    return deco


def _same(b: OnnxBuilder, n: Tensor, xs: list, dtypes: list | None = None) -> list:
    """Inputs cast to the node's dtype (kernelflow promotes mixed dtypes like numpy; ONNX does not)."""
    return [b.cast(x, t.dtype, n.dtype) for x, t in zip(xs, dtypes or n.inputs)]


def _promoted(b: OnnxBuilder, n: Tensor, xs: list) -> list:
    want = np.result_type(*[np.dtype(t.dtype) for t in n.inputs]).name
    return [b.cast(x, t.dtype, want) for x, t in zip(xs, n.inputs)]


# --------------------------------------------------------------------------- elementwise
_SIMPLE_BINARY = {"add": "Add", "subtract": "Sub", "multiply": "Mul", "divide": "Div", "pow": "Pow",
                  "maximum": "Max", "minimum": "Min"}
for _name, _onnx in _SIMPLE_BINARY.items():
    def _bin(b: OnnxBuilder, n: Tensor, xs: list, out: str, _op: str = _onnx) -> None:
        if _op == "Pow":  # ONNX Pow keeps the base's type; the exponent may stay as it is
            b.op("Pow", [b.cast(xs[0], n.inputs[0].dtype, n.dtype), xs[1]], out)
            return
        b.op(_op, _same(b, n, xs), out)
    _conv(_name, form=_onnx)(_bin)

_COMPARE = {"equal": "Equal", "less": "Less", "less_equal": "LessOrEqual", "greater": "Greater",
            "greater_equal": "GreaterOrEqual", "logical_and": "And", "logical_or": "Or"}
for _name, _onnx in _COMPARE.items():
    def _cmp(b: OnnxBuilder, n: Tensor, xs: list, out: str, _op: str = _onnx) -> None:
        b.op(_op, _promoted(b, n, xs), out)
    _conv(_name, form=_onnx)(_cmp)


@_conv("not_equal", form="Not(Equal)")
def _not_equal(b: OnnxBuilder, n: Tensor, xs: list, out: str) -> None:
    b.op("Not", [b.op("Equal", _promoted(b, n, xs))], out)


@_conv("floor_divide", form="Floor(Div) for floats; (x - Mod(x, y)) / y for integers")
def _floor_divide(b: OnnxBuilder, n: Tensor, xs: list, out: str) -> None:
    x, y = _same(b, n, xs)
    if np.dtype(n.dtype).kind == "f":
        b.op("Floor", [b.op("Div", [x, y])], out)
    else:  # ONNX Div truncates integers; numpy floors. x - mod(x, y) is an exact multiple of y.
        b.op("Div", [b.op("Sub", [x, b.op("Mod", [x, y], fmod=0)]), y], out)


@_conv("mod", form="Mod(fmod=0) for integers; x - Floor(x / y) * y for floats")
def _mod(b: OnnxBuilder, n: Tensor, xs: list, out: str) -> None:
    x, y = _same(b, n, xs)
    if np.dtype(n.dtype).kind == "f":  # ONNX Mod needs fmod=1 (C's sign) on floats; numpy takes y's sign
        b.op("Sub", [x, b.op("Mul", [b.op("Floor", [b.op("Div", [x, y])]), y])], out)
    else:
        b.op("Mod", [x, y], out, fmod=0)


_UNARY = {"negative": "Neg", "abs": "Abs", "sign": "Sign", "exp": "Exp", "log": "Log", "sqrt": "Sqrt",
          "sin": "Sin", "cos": "Cos", "tanh": "Tanh", "logical_not": "Not", "sigmoid": "Sigmoid", "relu": "Relu",
          "erf": "Erf", "identity": "Identity", "stop_gradient": "Identity", "read_variable": "Identity"}
for _name, _onnx in _UNARY.items():
    def _un(b: OnnxBuilder, n: Tensor, xs: list, out: str, _op: str = _onnx) -> None:
        b.op(_op, xs[:1], out)
    _conv(_name, form=_onnx)(_un)
FORMS["read_variable"] = "Identity of the variable's initializer"


@_conv("summary", form="Identity (the logging is a job's, not the model's)")
def _summary(b: OnnxBuilder, n: Tensor, xs: list, out: str) -> None:
    b.op("Identity", xs, out)


@_conv("print", form="Identity (the printing is dropped)")
def _print(b: OnnxBuilder, n: Tensor, xs: list, out: str) -> None:
    b.op("Identity", xs, out)


@_conv("square", form="Mul(x, x)")
def _square(b: OnnxBuilder, n: Tensor, xs: list, out: str) -> None:
    b.op("Mul", [xs[0], xs[0]], out)


@_conv("rsqrt", form="Reciprocal(Sqrt)")
def _rsqrt(b: OnnxBuilder, n: Tensor, xs: list, out: str) -> None:
    b.op("Reciprocal", [b.op("Sqrt", xs)], out)


@_conv("log1p", form="Log(Add(x, 1)) (loses digits for |x| < 1e-7, where log1p ~ x)")
def _log1p(b: OnnxBuilder, n: Tensor, xs: list, out: str) -> None:
    b.op("Log", [b.op("Add", [xs[0], b.const(np.ones((), n.dtype))])], out)


@_conv("gelu", form="x * 0.5 * (1 + Erf(x / sqrt(2))) (exact gelu; Gelu itself needs opset 20)")
def _gelu(b: OnnxBuilder, n: Tensor, xs: list, out: str) -> None:
    x = xs[0]
    erf = b.op("Erf", [b.op("Mul", [x, b.const(np.asarray(2 ** -0.5, n.dtype))])])
    half = b.op("Mul", [b.op("Add", [erf, b.const(np.ones((), n.dtype))]), b.const(np.asarray(0.5, n.dtype))])
    b.op("Mul", [x, half], out)


@_conv("isfinite", form="Not(Or(IsNaN, IsInf))")
def _isfinite(b: OnnxBuilder, n: Tensor, xs: list, out: str) -> None:
    if np.dtype(n.inputs[0].dtype).kind != "f":
        b.op("Expand", [b.const(np.asarray(True)), b.op("Shape", xs)], out)
        return
    b.op("Not", [b.op("Or", [b.op("IsNaN", xs), b.op("IsInf", xs)])], out)


@_conv("where", form="Where")
def _where(b: OnnxBuilder, n: Tensor, xs: list, out: str) -> None:
    b.op("Where", [xs[0]] + _same(b, n, xs[1:], n.inputs[1:]), out)


@_conv("cast", form="Cast")
def _cast(b: OnnxBuilder, n: Tensor, xs: list, out: str) -> None:
    b.op("Cast", xs, out, to=b.onnx_dtype(n.dtype))


@_conv("relu_grad", form="Mul(g, Cast(Greater(out, 0)))")
def _relu_grad(b: OnnxBuilder, n: Tensor, xs: list, out: str) -> None:
    g, y = xs
    pos = b.op("Cast", [b.op("Greater", [y, b.const(np.zeros((), n.inputs[1].dtype))])], to=b.onnx_dtype(n.dtype))
    b.op("Mul", [g, pos], out)


# --------------------------------------------------------------------------- reductions
def _axes(n: Tensor) -> list | None:
    axis = n.attrs.get("axis")
    if axis is None:
        return None
    return [int(a) for a in axis] if isinstance(axis, (tuple, list)) else [int(axis)]


def _reduce(b: OnnxBuilder, op: str, x: str, axes: list | None, keepdims: bool, out: str | None) -> str:
    ins = [x] if axes is None else [x, b.ints(axes)]
    return b.op(op, ins, out, keepdims=int(bool(keepdims)))


_REDUCE = {"sum": "ReduceSum", "mean": "ReduceMean", "max": "ReduceMax", "min": "ReduceMin", "prod": "ReduceProd",
           "logsumexp": "ReduceLogSumExp"}
for _name, _onnx in _REDUCE.items():
    def _red(b: OnnxBuilder, n: Tensor, xs: list, out: str, _op: str = _onnx) -> None:
        x = b.cast(xs[0], n.inputs[0].dtype, n.dtype)  # a sum of bools counts the Trues (int64)
        _reduce(b, _op, x, _axes(n), n.attrs["keepdims"], out)
    _conv(_name, form=_onnx)(_red)


@_conv("any", "all", form="ReduceMax / ReduceMin of Cast(x, int32), Cast back to bool")
def _any_all(b: OnnxBuilder, n: Tensor, xs: list, out: str) -> None:
    x = b.op("Cast", xs, to=b.onnx_dtype("int32"))
    r = _reduce(b, "ReduceMax" if n.op.name == "any" else "ReduceMin", x, _axes(n), n.attrs["keepdims"], None)
    b.op("Cast", [r], out, to=b.onnx_dtype("bool"))


@_conv("count_nonzero", form="ReduceSum(Cast(Not(Equal(x, 0)), int64))")
def _count_nonzero(b: OnnxBuilder, n: Tensor, xs: list, out: str) -> None:
    zero = b.const(np.zeros((), n.inputs[0].dtype))
    nz = b.op("Cast", [b.op("Not", [b.op("Equal", [xs[0], zero])])], to=b.onnx_dtype("int64"))
    _reduce(b, "ReduceSum", nz, _axes(n), n.attrs["keepdims"], out)


@_conv("argmax", "argmin", form="ArgMax / ArgMin (axis None: of the flattened input, as numpy)")
def _argmax(b: OnnxBuilder, n: Tensor, xs: list, out: str) -> None:
    op = "ArgMax" if n.op.name == "argmax" else "ArgMin"
    axis, keep = n.attrs["axis"], bool(n.attrs["keepdims"])
    if axis is None:
        flat = b.op(op, [b.op("Reshape", [xs[0], b.ints([-1])])], axis=0, keepdims=0)
        b.op("Reshape", [flat, b.ints([1] * n.inputs[0].ndim if keep else [])], out)
    else:
        b.op(op, xs, out, axis=int(axis), keepdims=int(keep))


@_conv("sum_to", form="ReduceSum over the broadcast axes, Reshape to like's shape (static ranks)")
def _sum_to(b: OnnxBuilder, n: Tensor, xs: list, out: str) -> None:
    x, like = n.inputs
    lead = x.ndim - like.ndim
    axes = list(range(lead))
    for i, d in enumerate(like.shape):
        xd = x.shape[i + lead]
        if d == 1 and xd != 1:
            axes.append(i + lead)
        elif d is None or xd is None:
            if d != xd:
                raise InvalidArgumentError(f"export_onnx: node '{n.name}' (sum_to) needs static dims to know which "
                                           f"axes it sums; got x {x.shape}, like {like.shape}", node=n.name)
    y = _reduce(b, "ReduceSum", xs[0], axes, True, None) if axes else xs[0]
    b.op("Reshape", [y, b.op("Shape", [xs[1]])], out)


# --------------------------------------------------------------------------- linalg
@_conv("matmul", form="MatMul")
def _matmul(b: OnnxBuilder, n: Tensor, xs: list, out: str) -> None:
    b.op("MatMul", _same(b, n, xs), out)


@_conv("einsum", form="Einsum")
def _einsum(b: OnnxBuilder, n: Tensor, xs: list, out: str) -> None:
    b.op("Einsum", _same(b, n, xs), out, equation=str(n.attrs["subscripts"]).replace(" ", ""))


# --------------------------------------------------------------------------- movement
@_conv("reshape", form="Reshape")
def _reshape(b: OnnxBuilder, n: Tensor, xs: list, out: str) -> None:
    shape = [int(d) for d in n.attrs["shape"]]
    b.op("Reshape", [xs[0], b.ints(shape)], out, allowzero=int(0 in shape))


@_conv("reshape_like", form="Reshape(x, Shape(like))")
def _reshape_like(b: OnnxBuilder, n: Tensor, xs: list, out: str) -> None:
    b.op("Reshape", [xs[0], b.op("Shape", [xs[1]])], out)


@_conv("expand_dims", form="Unsqueeze")
def _expand_dims(b: OnnxBuilder, n: Tensor, xs: list, out: str) -> None:
    b.op("Unsqueeze", [xs[0], b.ints([int(n.attrs["axis"])])], out)


@_conv("squeeze", form="Squeeze")
def _squeeze(b: OnnxBuilder, n: Tensor, xs: list, out: str) -> None:
    axes = _axes(n)
    b.op("Squeeze", xs if axes is None else [xs[0], b.ints(axes)], out)


@_conv("transpose", form="Transpose")
def _transpose(b: OnnxBuilder, n: Tensor, xs: list, out: str) -> None:
    axes = n.attrs["axes"]
    perm = list(range(n.ndim))[::-1] if axes is None else [int(a) % n.ndim for a in axes]
    b.op("Transpose", xs, out, perm=perm)


@_conv("broadcast_to", form="Expand")
def _broadcast_to(b: OnnxBuilder, n: Tensor, xs: list, out: str) -> None:
    b.op("Expand", [xs[0], b.ints([int(d) for d in n.attrs["shape"]])], out)


@_conv("broadcast_like", form="Expand(x, Shape(like)) (Expand broadcasts both ways, as broadcast_like does)")
def _broadcast_like(b: OnnxBuilder, n: Tensor, xs: list, out: str) -> None:
    b.op("Expand", [xs[0], b.op("Shape", [xs[1]])], out)


@_conv("size", form="Cast(Size)")
def _size(b: OnnxBuilder, n: Tensor, xs: list, out: str) -> None:
    b.op("Cast", [b.op("Size", xs[:1])], out, to=b.onnx_dtype(n.dtype))


@_conv("concat", form="Concat")
def _concat(b: OnnxBuilder, n: Tensor, xs: list, out: str) -> None:
    b.op("Concat", _same(b, n, xs), out, axis=int(n.attrs["axis"]))


@_conv("split_part", form="Slice (bounds from the parts' static sizes)")
def _split_part(b: OnnxBuilder, n: Tensor, xs: list, out: str) -> None:
    x, likes = n.inputs[0], n.inputs[1:]
    axis, index, num = int(n.attrs["axis"]) % x.ndim, int(n.attrs["index"]), int(n.attrs["num"])
    sizes = [t.shape[axis] for t in likes] if likes else [x.shape[axis] // num if x.shape[axis] else None] * num
    if any(s is None for s in sizes[:index + 1]):
        raise InvalidArgumentError(f"export_onnx: node '{n.name}' (split_part) needs static part sizes along "
                                   f"axis {axis}; got {sizes}", node=n.name)
    start = sum(sizes[:index])
    b.op("Slice", [xs[0], b.ints([start]), b.ints([start + sizes[index]]), b.ints([axis])], out)


@_conv("tile", form="Tile (Unsqueeze first when reps is longer than the rank, as numpy)")
def _tile(b: OnnxBuilder, n: Tensor, xs: list, out: str) -> None:
    reps, rank = [int(r) for r in n.attrs["reps"]], n.inputs[0].ndim
    x = xs[0]
    if len(reps) > rank:
        x = b.op("Unsqueeze", [x, b.ints(list(range(len(reps) - rank)))])
    reps = [1] * (rank - len(reps)) + reps
    b.op("Tile", [x, b.ints(reps)], out)


_PAD_MODES = {"constant": "constant", "edge": "edge", "reflect": "reflect"}


@_conv("pad", form="Pad (modes constant, edge, reflect; ONNX has no symmetric or wrap)")
def _pad(b: OnnxBuilder, n: Tensor, xs: list, out: str) -> None:
    mode = n.attrs["mode"]
    if mode not in _PAD_MODES:
        raise InvalidArgumentError(f"export_onnx: node '{n.name}' pads with mode '{mode}', which ONNX Pad lacks; "
                                   f"ONNX has {sorted(_PAD_MODES)}", node=n.name)
    pw = [tuple(int(v) for v in p) for p in n.attrs["pad_width"]]
    pads = [p[0] for p in pw] + [p[1] for p in pw]
    ins = [xs[0], b.ints(pads)]
    if mode == "constant":
        ins.append(b.const(np.asarray(n.attrs["constant_values"], n.dtype)))
    b.op("Pad", ins, out, mode=_PAD_MODES[mode])


@_conv("strided_slice", form="Slice, then Squeeze (int entries) and Unsqueeze (None entries)")
def _strided_slice(b: OnnxBuilder, n: Tensor, xs: list, out: str) -> None:
    starts, ends, axes, steps, drop, new = [], [], [], [], [], []
    axis = pos = 0
    for e in n.attrs["index"]:
        if e is None:
            new.append(pos)
            pos += 1
            continue
        if isinstance(e, (tuple, list)):
            start, stop, step = e
            step = 1 if step is None else int(step)
            if (start, stop, step) != (None, None, 1):
                starts.append(int(start) if start is not None else (0 if step > 0 else INT64_MAX))
                ends.append(int(stop) if stop is not None else (INT64_MAX if step > 0 else INT64_MIN))
                axes.append(axis)
                steps.append(step)
            pos += 1
        else:
            i = int(e)
            starts.append(i)
            ends.append(i + 1 if i != -1 else INT64_MAX)
            axes.append(axis)
            steps.append(1)
            drop.append(axis)
        axis += 1
    y = xs[0]
    if axes:
        y = b.op("Slice", [y, b.ints(starts), b.ints(ends), b.ints(axes), b.ints(steps)])
    if drop:
        y = b.op("Squeeze", [y, b.ints(drop)])
    if new:
        y = b.op("Unsqueeze", [y, b.ints(new)])
    b.op("Identity", [y], out)


@_conv("take", form="Gather")
def _take(b: OnnxBuilder, n: Tensor, xs: list, out: str) -> None:
    b.op("Gather", xs, out, axis=int(n.attrs["axis"]))


@_conv("embedding", form="Gather(params, ids, axis=0)")
def _embedding(b: OnnxBuilder, n: Tensor, xs: list, out: str) -> None:
    b.op("Gather", xs, out, axis=0)


@_conv("one_hot", form="Where(Equal(Unsqueeze(indices, -1), Range(depth)), on, off) (out-of-range ids give "
       "all off, as kernelflow; ONNX OneHot would wrap negative ids)")
def _one_hot(b: OnnxBuilder, n: Tensor, xs: list, out: str) -> None:
    idt = n.inputs[0].dtype
    ids = b.op("Unsqueeze", [xs[0], b.ints([-1])])
    hot = b.op("Equal", [ids, b.const(np.arange(int(n.attrs["depth"]), dtype=idt))])
    on, off = (b.const(np.asarray(n.attrs[k], n.dtype)) for k in ("on_value", "off_value"))
    b.op("Where", [hot, on, off], out)


@_conv("scatter_add", form="ScatterND(reduction='add') on zeros, the axis moved to the front by Transpose")
def _scatter_add(b: OnnxBuilder, n: Tensor, xs: list, out: str) -> None:
    updates, indices, like = n.inputs
    axis, k, r = int(n.attrs["axis"]) % like.ndim, indices.ndim, like.ndim
    upd, zeros_of = xs[0], xs[2]
    if axis:
        perm_like = [axis] + [i for i in range(r) if i != axis]
        perm_upd = list(range(axis, axis + k)) + [i for i in range(updates.ndim) if not axis <= i < axis + k]
        upd = b.op("Transpose", [upd], perm=perm_upd)
        zeros_of = b.op("Transpose", [zeros_of], perm=perm_like)
    zeros = b.op("Expand", [b.const(np.zeros((), n.dtype)), b.op("Shape", [zeros_of])])
    idx = b.op("Unsqueeze", [b.op("Cast", [xs[1]], to=b.onnx_dtype("int64")), b.ints([-1])])
    y = b.op("ScatterND", [zeros, idx, upd], reduction="add")
    if axis:
        inv = [0] * r
        for i, p in enumerate(perm_like):
            inv[p] = i
        y = b.op("Transpose", [y], perm=inv)
    b.op("Identity", [y], out)


@_conv("take_along_axis", form="GatherElements(axis=-1)")
def _take_along_axis(b: OnnxBuilder, n: Tensor, xs: list, out: str) -> None:
    b.op("GatherElements", [xs[0], b.cast(xs[1], n.inputs[1].dtype, "int64")], out, axis=-1)


@_conv("top_k", form="TopK(axis=-1, largest, sorted): its indices output (ties: the lower index first, as "
       "kernelflow)")
def _top_k(b: OnnxBuilder, n: Tensor, xs: list, out: str) -> None:
    b.ops("TopK", [xs[0], b.ints([int(n.attrs["k"])])], [None, out], axis=-1, largest=1, sorted=1)


@_conv("arange", form="Range(0, n, 1) in the output dtype")
def _arange(b: OnnxBuilder, n: Tensor, xs: list, out: str) -> None:
    dt = n.dtype
    b.op("Range", [b.const(np.zeros((), dt)), b.cast(xs[0], n.inputs[0].dtype, dt), b.const(np.ones((), dt))], out)


# --------------------------------------------------------------------------- nn
@_conv("softmax_cross_entropy", form="Neg(GatherElements(LogSoftmax(logits), labels))")
def _sce(b: OnnxBuilder, n: Tensor, xs: list, out: str) -> None:
    logp = b.op("LogSoftmax", [xs[0]], axis=-1)
    idx = b.op("Unsqueeze", [b.op("Cast", [xs[1]], to=b.onnx_dtype("int64")), b.ints([-1])])
    picked = b.op("Squeeze", [b.op("GatherElements", [logp, idx], axis=-1), b.ints([-1])])
    b.op("Neg", [picked], out)


def _nchw(b: OnnxBuilder, x: str) -> str:
    return b.op("Transpose", [x], perm=[0, 3, 1, 2])


def _nhwc(b: OnnxBuilder, y: str, out: str) -> None:
    b.op("Transpose", [y], out, perm=[0, 2, 3, 1])


def _pads(n: Tensor, k_hw: tuple) -> dict:
    """Explicit pads when the spatial dims are static; else ``SAME_UPPER`` (TF's SAME: the odd pixel last)."""
    from ..graph.ops.conv import window_geometry

    if n.attrs["padding"] != "SAME":
        return {"pads": [0, 0, 0, 0]}
    hw = n.inputs[0].shape[1:3]
    dil = tuple(n.attrs.get("dilations", (1, 1)))
    if None in hw:
        if dil != (1, 1):  # onnxruntime refuses auto_pad with dilations
            raise InvalidArgumentError(f"export_onnx: node '{n.name}' ({n.op.name}) is a dilated SAME convolution "
                                       f"on spatial dims unknown until run time {hw}; give the input static "
                                       "height and width", node=n.name)
        return {"auto_pad": "SAME_UPPER"}
    geo = [window_geometry(int(size), int(k), int(s), int(d), "SAME")
           for size, k, s, d in zip(hw, k_hw, n.attrs["strides"], dil)]
    return {"pads": [geo[0][1], geo[1][1], geo[0][2], geo[1][2]]}


@_conv("conv2d", form="Transpose(NHWC->NCHW), Conv (OIHW filters), Transpose back; SAME -> auto_pad SAME_UPPER")
def _conv2d(b: OnnxBuilder, n: Tensor, xs: list, out: str) -> None:
    w = b.op("Transpose", [xs[1]], perm=[3, 2, 0, 1])  # HWIO -> OIHW
    y = b.op("Conv", [_nchw(b, xs[0]), w], strides=list(n.attrs["strides"]), dilations=list(n.attrs["dilations"]),
             **_pads(n, n.inputs[1].shape[:2]))
    _nhwc(b, y, out)


@_conv("conv2d_transpose", form="ConvTranspose with explicit pads and output_padding (static output size)")
def _conv2d_transpose(b: OnnxBuilder, n: Tensor, xs: list, out: str) -> None:
    from ..graph.ops.conv import window_geometry

    x, f = n.inputs
    pads_lo, pads_hi, out_pad = [], [], []
    for i in range(2):
        size, k = int(n.attrs["output_hw"][i]), f.shape[i]
        s, d = int(n.attrs["strides"][i]), int(n.attrs["dilations"][i])
        o, lo, hi = window_geometry(size, k, s, d, n.attrs["padding"])
        pads_lo.append(lo)
        pads_hi.append(hi)
        out_pad.append(size - (s * (o - 1) + (k - 1) * d + 1 - lo - hi))
    w = b.op("Transpose", [xs[1]], perm=[3, 2, 0, 1])  # (kh, kw, out, in) -> (in, out, kh, kw)
    y = b.op("ConvTranspose", [_nchw(b, xs[0]), w], strides=list(n.attrs["strides"]),
             dilations=list(n.attrs["dilations"]), pads=pads_lo + pads_hi, output_padding=out_pad)
    _nhwc(b, y, out)


@_conv("max_pool2d", form="MaxPool between Transposes")
def _max_pool(b: OnnxBuilder, n: Tensor, xs: list, out: str) -> None:
    y = b.op("MaxPool", [_nchw(b, xs[0])], kernel_shape=list(n.attrs["ksize"]), strides=list(n.attrs["strides"]),
             **_pads(n, n.attrs["ksize"]))
    _nhwc(b, y, out)


@_conv("avg_pool2d", form="AveragePool(count_include_pad=0) between Transposes")
def _avg_pool(b: OnnxBuilder, n: Tensor, xs: list, out: str) -> None:
    y = b.op("AveragePool", [_nchw(b, xs[0])], kernel_shape=list(n.attrs["ksize"]),
             strides=list(n.attrs["strides"]), count_include_pad=0, **_pads(n, n.attrs["ksize"]))
    _nhwc(b, y, out)


# --------------------------------------------------------------------------- no ONNX form
_GRAD = "a gradient op: it appears in training graphs only, never in an inference subgraph"
_UPDATE = "updates a variable: an exported model only reads its variables"
NO_ONNX: dict[str, str] = {
    **{name: _GRAD for name in ("avg_pool2d_grad", "conv2d_backprop_filter", "conv2d_backprop_input",
                                "embedding_grad", "max_pool2d_grad", "max_pool2d_grad_grad", "pad_grad",
                                "softmax_cross_entropy_grad", "strided_slice_grad", "tile_grad")},
    **{name: _UPDATE + " (an optimiser step)" for name in (
        "apply_adagrad", "apply_adam", "apply_adamw", "apply_centered_rmsprop", "apply_gradient_descent",
        "apply_momentum", "apply_rmsprop")},
    **{name: _UPDATE for name in ("assign", "assign_add", "assign_sub")},
    **{name: "random: an exported model must answer the same each time (dropout is folded to its inference "
             "branch first)" for name in ("random_normal", "random_normal_like", "random_permutation",
                                          "random_shuffle", "random_uniform", "random_uniform_like")},
    "lstm_cell_grad": _GRAD,
    "lstm_sequence_grad": _GRAD,
    "gru_sequence_grad": _GRAD,
    "loop_grad": _GRAD,
    "group": "yields no value: it only orders other ops (control edges are not exported)",
    "no_op": "yields no value: a target for control dependencies (not exported)",
}
GRAPH_IO: dict[str, str] = {
    "placeholder": "a graph input (a dim that is None becomes a symbolic dim, e.g. 'batch')",
    "variable": "an initializer holding the variable's current value",
    "constant": "an initializer",
}


def onnx_form(op_name: str) -> tuple[bool, str]:
    """(whether ``op_name`` exports, its ONNX form or the reason it has none)."""
    if op_name in GRAPH_IO:
        return True, GRAPH_IO[op_name]
    if op_name in FORMS:
        return True, FORMS[op_name]
    if op_name in NO_ONNX:
        return False, NO_ONNX[op_name]
    return False, "no ONNX mapping yet"
