"""The ONNX op -> kernelflow builder table of `import_onnx`: the ops the exporter writes, and a few neighbours.

An importer ``fn(env, node, args, attrs) -> [values]`` gets the `Env`, the ONNX node, its input
values (tensors, static arrays, `ShapeOf`, None for an omitted optional input) and its
attributes; it returns one value per ONNX output. Layouts: ONNX convolutions and pools are
NCHW (filters OIHW), kernelflow's NHWC (HWIO), so each is a Transpose pair around kernelflow's
op; padding must be VALID or TensorFlow's SAME (what the exporter writes).

Contents: IMPORTERS.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ..graph import control_flow as cf
from ..graph import ops as K
from ..graph.ir import Tensor
from ..graph.ops.control_flow import tuple_get
from ..graph.ops.conv import window_geometry
from ..graph.ops.movement import reshape_like
from .onnx_import import ShapeOf
from .onnx_recurrent import gate_order

if TYPE_CHECKING:
    from .onnx_import import Env

Importer = Callable[["Env", Any, list, dict], list]
IMPORTERS: dict[str, Importer] = {}
_BIG = 2 ** 62  # Slice bounds at or beyond this mean "to the end"


def _imp(*names: str) -> Callable[[Importer], Importer]:
    def deco(fn: Importer) -> Importer:
        for name in names:
            IMPORTERS[name] = fn
        return fn
    return deco


def _ts(env: Env, args: list) -> list:
    return [env.tensor(a) for a in args]


# --------------------------------------------------------------------------- elementwise
_SIMPLE = {"Add": K.add, "Sub": K.subtract, "Mul": K.multiply, "Pow": K.pow, "Equal": K.equal, "Less": K.less,
           "LessOrEqual": K.less_equal, "Greater": K.greater, "GreaterOrEqual": K.greater_equal,
           "And": K.logical_and, "Or": K.logical_or, "Not": K.logical_not, "Neg": K.negative, "Abs": K.abs,
           "Sign": K.sign, "Exp": K.exp, "Log": K.log, "Sqrt": K.sqrt, "Sin": K.sin, "Cos": K.cos, "Tanh": K.tanh,
           "Sigmoid": K.sigmoid, "Relu": K.relu, "Erf": K.erf, "MatMul": K.matmul, "Where": K.where}
for _name, _fn in _SIMPLE.items():
    def _simple(env: Env, node: Any, args: list, attrs: dict, _f: Callable = _fn) -> list:
        return [_f(*_ts(env, args))]
    _imp(_name)(_simple)


@_imp("Max", "Min")
def _max_min(env: Env, node: Any, args: list, attrs: dict) -> list:
    f = K.maximum if node.op_type == "Max" else K.minimum
    ts = _ts(env, args)
    y = ts[0]
    for t in ts[1:]:
        y = f(y, t)
    return [y]


@_imp("Div")
def _div(env: Env, node: Any, args: list, attrs: dict) -> list:
    a, b = _ts(env, args)
    # ONNX truncates integers; the exporter divides integers only by exact multiples, where floor = trunc.
    return [K.divide(a, b) if np.dtype(a.dtype).kind == "f" else K.floor_divide(a, b)]


@_imp("Floor")
def _floor(env: Env, node: Any, args: list, attrs: dict) -> list:
    x = env.tensor(args[0])
    return [K.floor_divide(x, np.ones((), x.dtype))]


@_imp("Mod")
def _mod(env: Env, node: Any, args: list, attrs: dict) -> list:
    a, b = _ts(env, args)
    if attrs.get("fmod", 0):
        raise env.fail("fmod=1 (C's remainder) has no kernelflow op; kernelflow's mod is numpy's")
    return [K.mod(a, b)]


@_imp("Reciprocal")
def _reciprocal(env: Env, node: Any, args: list, attrs: dict) -> list:
    x = env.tensor(args[0])
    return [K.divide(np.ones((), x.dtype), x)]


@_imp("IsNaN")
def _isnan(env: Env, node: Any, args: list, attrs: dict) -> list:
    x = env.tensor(args[0])
    return [K.not_equal(x, x)]


@_imp("IsInf")
def _isinf(env: Env, node: Any, args: list, attrs: dict) -> list:
    x = env.tensor(args[0])
    return [K.equal(K.abs(x), np.asarray(np.inf, x.dtype))]


@_imp("Identity")
def _identity(env: Env, node: Any, args: list, attrs: dict) -> list:
    return [args[0]]


@_imp("Constant")
def _constant(env: Env, node: Any, args: list, attrs: dict) -> list:
    if "value" not in attrs:
        raise env.fail(f"only Constant(value=tensor) is imported; got attributes {sorted(attrs)}")
    return [env.onnx.numpy_helper.to_array(attrs["value"])]


@_imp("Cast")
def _cast(env: Env, node: Any, args: list, attrs: dict) -> list:
    return [K.cast(env.tensor(args[0]), env.dtype(attrs["to"]))]


# --------------------------------------------------------------------------- reductions
_REDUCE = {"ReduceSum": K.sum, "ReduceMean": K.mean, "ReduceMax": K.max, "ReduceMin": K.min, "ReduceProd": K.prod,
           "ReduceLogSumExp": K.logsumexp}
for _name, _fn in _REDUCE.items():
    def _red(env: Env, node: Any, args: list, attrs: dict, _f: Callable = _fn) -> list:
        x = env.tensor(args[0])
        axes = env.static(args[1], "axes") if len(args) > 1 and args[1] is not None else None
        if axes is not None and axes.size == 0:
            axes = None if not attrs.get("noop_with_empty_axes", 0) else axes
            if axes is not None:
                return [x]
        axis = None if axes is None else tuple(int(a) for a in axes.reshape(-1))
        return [_f(x, axis=axis, keepdims=bool(attrs.get("keepdims", 1)))]
    _imp(_name)(_red)


@_imp("ArgMax", "ArgMin")
def _arg(env: Env, node: Any, args: list, attrs: dict) -> list:
    if attrs.get("select_last_index", 0):
        raise env.fail("select_last_index=1 is not imported (kernelflow picks the first of ties)")
    f = K.argmax if node.op_type == "ArgMax" else K.argmin
    return [f(env.tensor(args[0]), axis=int(attrs.get("axis", 0)), keepdims=bool(attrs.get("keepdims", 1)))]


@_imp("LogSoftmax", "Softmax")
def _softmax(env: Env, node: Any, args: list, attrs: dict) -> list:
    f = K.log_softmax if node.op_type == "LogSoftmax" else K.softmax
    return [f(env.tensor(args[0]), axis=int(attrs.get("axis", -1)))]


@_imp("Einsum")
def _einsum(env: Env, node: Any, args: list, attrs: dict) -> list:
    eq = attrs["equation"]
    return [K.einsum(eq.decode() if isinstance(eq, bytes) else eq, *_ts(env, args))]


# --------------------------------------------------------------------------- movement
@_imp("Shape")
def _shape(env: Env, node: Any, args: list, attrs: dict) -> list:
    if "start" in attrs or "end" in attrs:
        raise env.fail("Shape with start/end is not imported")
    return [ShapeOf(env.tensor(args[0]))]


@_imp("Reshape")
def _reshape(env: Env, node: Any, args: list, attrs: dict) -> list:
    x = env.tensor(args[0])
    if isinstance(args[1], ShapeOf):
        return [reshape_like(x, args[1].of)]
    shape = [int(d) for d in env.static(args[1], "shape").reshape(-1)]
    if 0 in shape and not attrs.get("allowzero", 0):  # 0 copies the input's dim
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
        if None in shape:
            raise env.fail("a 0 in the shape copies an input dim that is unknown until run time")
    return [K.reshape(x, tuple(shape))]


@_imp("Expand")
def _expand(env: Env, node: Any, args: list, attrs: dict) -> list:
    x = env.tensor(args[0])
    if isinstance(args[1], ShapeOf):
        return [K.broadcast_like(x, args[1].of)]
    return [K.broadcast_to(x, tuple(int(d) for d in env.static(args[1], "shape").reshape(-1)))]


@_imp("Size")
def _size(env: Env, node: Any, args: list, attrs: dict) -> list:
    return [K.size(env.tensor(args[0]), dtype="int64")]


@_imp("Unsqueeze")
def _unsqueeze(env: Env, node: Any, args: list, attrs: dict) -> list:
    y = env.tensor(args[0])
    rank = y.ndim + int(env.static(args[1], "axes").size)
    for a in sorted(int(a) % rank for a in env.static(args[1], "axes").reshape(-1)):
        y = K.expand_dims(y, a)
    return [y]


@_imp("Squeeze")
def _squeeze(env: Env, node: Any, args: list, attrs: dict) -> list:
    x = env.tensor(args[0])
    if len(args) < 2 or args[1] is None:
        return [K.squeeze(x)]
    return [K.squeeze(x, axis=tuple(int(a) for a in env.static(args[1], "axes").reshape(-1)))]


@_imp("Transpose")
def _transpose(env: Env, node: Any, args: list, attrs: dict) -> list:
    perm = attrs.get("perm")
    return [K.transpose(env.tensor(args[0]), None if perm is None else tuple(int(p) for p in perm))]


@_imp("Concat")
def _concat(env: Env, node: Any, args: list, attrs: dict) -> list:
    return [K.concat(_ts(env, args), axis=int(attrs["axis"]))]


@_imp("Split")
def _split(env: Env, node: Any, args: list, attrs: dict) -> list:
    x, axis = env.tensor(args[0]), int(attrs.get("axis", 0))
    if len(args) > 1 and args[1] is not None:
        parts = K.split(x, [int(s) for s in env.static(args[1], "split sizes")], axis=axis)
    else:
        parts = K.split(x, int(attrs.get("num_outputs", len(node.output))), axis=axis)
    return list(parts)


def _bound(v: int) -> int | None:
    return None if v >= _BIG or v <= -_BIG else v


@_imp("Slice")
def _slice(env: Env, node: Any, args: list, attrs: dict) -> list:
    x = env.tensor(args[0])
    starts, ends = (env.static(a, w).reshape(-1) for a, w in ((args[1], "starts"), (args[2], "ends")))
    axes = env.static(args[3], "axes").reshape(-1) if len(args) > 3 and args[3] is not None else range(len(starts))
    steps = env.static(args[4], "steps").reshape(-1) if len(args) > 4 and args[4] is not None else [1] * len(starts)
    index: list[Any] = [slice(None)] * x.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        index[int(a) % x.ndim] = slice(_bound(int(s)), _bound(int(e)), int(st))
    return [x[tuple(index)]]


@_imp("Tile")
def _tile(env: Env, node: Any, args: list, attrs: dict) -> list:
    return [K.tile(env.tensor(args[0]), tuple(int(r) for r in env.static(args[1], "repeats")))]


_PAD = {b"constant": "constant", b"edge": "edge", b"reflect": "reflect"}


@_imp("Pad")
def _pad(env: Env, node: Any, args: list, attrs: dict) -> list:
    x = env.tensor(args[0])
    mode = attrs.get("mode", b"constant")
    mode = mode if isinstance(mode, bytes) else mode.encode()
    if mode not in _PAD or (len(args) > 3 and args[3] is not None):
        raise env.fail(f"mode {mode.decode()!r} or an axes input is not imported (kernelflow pads "
                       f"{sorted(m.decode() for m in _PAD)} over all axes)")
    pads = [int(p) for p in env.static(args[1], "pads")]
    value = env.static(args[2], "constant value").item() if len(args) > 2 and args[2] is not None else 0
    r = x.ndim
    return [K.pad(x, [(pads[i], pads[i + r]) for i in range(r)], mode=_PAD[mode], constant_values=value)]


@_imp("Gather")
def _gather(env: Env, node: Any, args: list, attrs: dict) -> list:
    x, ids = _ts(env, args)
    return [K.take(x, ids, axis=int(attrs.get("axis", 0)))]


@_imp("GatherElements")
def _gather_elements(env: Env, node: Any, args: list, attrs: dict) -> list:
    x, ids = _ts(env, args)
    if int(attrs.get("axis", 0)) % x.ndim != x.ndim - 1:
        raise env.fail("only GatherElements along the last axis is imported (kernelflow's take_along_axis)")
    return [K.take_along_axis(x, ids)]


@_imp("ScatterND")
def _scatter_nd(env: Env, node: Any, args: list, attrs: dict) -> list:
    data, idx, upd = _ts(env, args)
    red = attrs.get("reduction", b"none")
    if (red.decode() if isinstance(red, bytes) else red) != "add" or idx.shape[-1] != 1:
        raise env.fail("only ScatterND(reduction='add') with indices of last dim 1 is imported (kernelflow's "
                       "scatter_add along axis 0)")
    ids = K.squeeze(K.cast(idx, "int64"), axis=-1)
    return [data + K.scatter_add(upd, ids, data, axis=0)]


@_imp("TopK")
def _top_k(env: Env, node: Any, args: list, attrs: dict) -> list:
    x = env.tensor(args[0])
    if int(attrs.get("axis", -1)) % x.ndim != x.ndim - 1 or not attrs.get("largest", 1) or not attrs.get("sorted", 1):
        raise env.fail("only TopK along the last axis, largest and sorted, is imported")
    idx = K.top_k(x, int(env.static(args[1], "k").reshape(-1)[0]))
    return [K.take_along_axis(x, idx), idx]


@_imp("Range")
def _range(env: Env, node: Any, args: list, attrs: dict) -> list:
    start, delta = env.static(args[0], "start"), env.static(args[2], "delta")
    if float(start) != 0 or float(delta) != 1:
        raise env.fail(f"only Range(0, n, 1) is imported (kernelflow's arange); got start {start}, delta {delta}")
    n = env.tensor(args[1])
    dtype = n.dtype
    if np.dtype(dtype).kind == "f":  # ONNX counts ceil(limit) steps; kernelflow's arange takes an integer count
        n = K.cast(K.negative(K.floor_divide(K.negative(n), np.ones((), dtype))), "int64")
    return [K.arange(n, dtype=dtype)]


# --------------------------------------------------------------------------- convolutions and pools
def _nhwc(x: Any) -> Any:
    return K.transpose(x, (0, 2, 3, 1))


def _nchw(y: Any) -> Any:
    return K.transpose(y, (0, 3, 1, 2))


def _padding(env: Env, attrs: dict, hw: tuple, k: tuple, strides: tuple, dil: tuple) -> str:
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "VALID"):
        return "SAME" if auto == "SAME_UPPER" else "VALID"
    pads = [int(p) for p in attrs.get("pads", [0, 0, 0, 0])]
    if not any(pads):
        return "VALID"
    if None not in hw:
        geo = [window_geometry(int(s), int(kk), int(st), int(d), "SAME") for s, kk, st, d in zip(hw, k, strides, dil)]
        if pads == [geo[0][1], geo[1][1], geo[0][2], geo[1][2]]:
            return "SAME"
    raise env.fail(f"pads {pads} are neither VALID nor TensorFlow's SAME for input {hw} (kernelflow pads one of "
                   "these ways)")


def _window(attrs: dict, key: str, default: int = 1) -> tuple:
    return tuple(int(v) for v in attrs.get(key, [default, default]))


@_imp("Conv")
def _conv(env: Env, node: Any, args: list, attrs: dict) -> list:
    x, w = env.tensor(args[0]), env.tensor(args[1])
    if int(attrs.get("group", 1)) != 1 or x.ndim != 4:
        raise env.fail("only 2-D convolutions with group=1 are imported")
    strides, dil = _window(attrs, "strides"), _window(attrs, "dilations")
    pad = _padding(env, attrs, (x.shape[2], x.shape[3]), tuple(w.shape[2:]), strides, dil)
    y = K.conv2d(_nhwc(x), K.transpose(w, (2, 3, 1, 0)), strides=strides, padding=pad, dilations=dil)
    if len(args) > 2 and args[2] is not None:
        y = y + env.tensor(args[2])
    return [_nchw(y)]


@_imp("ConvTranspose")
def _conv_transpose(env: Env, node: Any, args: list, attrs: dict) -> list:
    x, w = env.tensor(args[0]), env.tensor(args[1])
    strides, dil = _window(attrs, "strides"), _window(attrs, "dilations")
    pads, opad = [int(p) for p in attrs.get("pads", [0] * 4)], _window(attrs, "output_padding", 0)
    if None in x.shape[2:] or None in w.shape[2:] or int(attrs.get("group", 1)) != 1 or "output_shape" in attrs:
        raise env.fail("ConvTranspose needs static spatial dims, group=1 and no output_shape attribute")
    hw = [st * (int(i) - 1) + op + (int(k) - 1) * d + 1 - pads[a] - pads[a + 2]
          for a, (i, k, st, d, op) in enumerate(zip(x.shape[2:], w.shape[2:], strides, dil, opad))]
    mode = next((m for m in ("SAME", "VALID") if all(
        window_geometry(hw[a], int(w.shape[2 + a]), strides[a], dil[a], m)[1:] == (pads[a], pads[a + 2])
        for a in range(2))), None)
    if mode is None:
        raise env.fail(f"pads {pads} are neither VALID nor TensorFlow's SAME for output {hw}")
    y = K.conv2d_transpose(_nhwc(x), K.transpose(w, (2, 3, 1, 0)), tuple(hw), strides=strides, padding=mode,
                           dilations=dil)
    if len(args) > 2 and args[2] is not None:
        y = y + env.tensor(args[2])
    return [_nchw(y)]


@_imp("MaxPool", "AveragePool")
def _pool(env: Env, node: Any, args: list, attrs: dict) -> list:
    x = env.tensor(args[0])
    k, strides = _window(attrs, "kernel_shape"), _window(attrs, "strides")
    if x.ndim != 4 or _window(attrs, "dilations") != (1, 1) or attrs.get("ceil_mode", 0) \
            or attrs.get("count_include_pad", 0) or len(node.output) > 1 and node.output[1]:
        raise env.fail("only 2-D pools without dilations, ceil_mode, count_include_pad or indices are imported")
    pad = _padding(env, attrs, (x.shape[2], x.shape[3]), k, strides, (1, 1))
    f = K.max_pool2d if node.op_type == "MaxPool" else K.avg_pool2d
    return [_nchw(f(_nhwc(x), k, strides, padding=pad))]


# --------------------------------------------------------------------------- control flow
@_imp("If")
def _if(env: Env, node: Any, args: list, attrs: dict) -> list:
    pred = args[0]
    if isinstance(pred, np.ndarray):  # known now: build only the branch taken
        return env.body(attrs["then_branch" if bool(pred) else "else_branch"], [])
    pred = env.tensor(pred)
    if pred.ndim:
        pred = K.reshape(pred, ())
    outs = cf.cond(pred, lambda: tuple(env.body(attrs["then_branch"], [])),
                   lambda: tuple(env.body(attrs["else_branch"], [])))
    return list(outs) if isinstance(outs, (tuple, list)) else [outs]


@_imp("Loop")
def _loop(env: Env, node: Any, args: list, attrs: dict) -> list:
    body = attrs["body"]
    n_vars = len(args) - 2
    if len(body.output) != 1 + n_vars:
        return _counted_loop(env, body, args, n_vars)
    limit = env.tensor(args[0]) if args[0] is not None else None
    keep = env.tensor(args[1]) if args[1] is not None else env.tensor(np.asarray(True))
    init = (env.tensor(np.asarray(0, np.int64)), K.reshape(keep, ()), *_ts(env, args[2:]))

    def step(i: Any, go: Any, *vs: Any) -> tuple:
        outs = env.body(body, [i, go, *vs])
        return (i + np.int64(1), K.reshape(outs[0], ()), *outs[1:])

    res = cf.while_loop(lambda i, go, *vs: go, step, init,
                        maximum_iterations=None if limit is None else K.reshape(limit, ()))
    return list(res[2:])


def _passes_condition_through(body: Any) -> bool:
    """True when a Loop body's condition output is its condition input (through Identities)."""
    made = {o: n for n in body.node for o in n.output}
    name = body.output[0].name
    while name in made and made[name].op_type == "Identity":
        name = made[name].input[0]
    return name == body.input[1].name


def _counted_loop(env: Env, body: Any, args: list, n_vars: int) -> list:
    """A Loop with scan outputs that runs exactly M times: a scan over arange(M) (the iteration numbers)."""
    cond = args[1]
    always = cond is None or (not isinstance(cond, Tensor) and bool(env.static(cond, "condition")))
    if args[0] is None or not always or not _passes_condition_through(body):
        raise env.fail("a Loop with scan outputs is imported only when it runs exactly M times (condition "
                       "always true); kernelflow's while_loop stacks nothing")
    steps = K.arange(K.reshape(K.cast(env.tensor(args[0]), "int64"), ()))
    true = env.tensor(np.asarray(True))

    def fn2(carry: Any, i: Any) -> tuple:
        outs = env.body(body, [i[0], true, *carry])
        return tuple(outs[1:1 + n_vars]), tuple(outs[1 + n_vars:])

    node_, *_ = cf._scan("scan", fn2, tuple(_ts(env, args[2:])), (steps,), False, None, "the loop variables")
    return [tuple_get(node_, i) for i in range(len(body.output) - 1)]


@_imp("Scan")
def _scan(env: Env, node: Any, args: list, attrs: dict) -> list:
    body, nx = attrs["body"], int(attrs["num_scan_inputs"])
    nc = len(args) - nx
    ny = len(body.output) - nc
    dirs = {tuple(attrs.get(k, [])) for k in ("scan_input_directions", "scan_output_directions")} - {()}
    flat = {d for ds in dirs for d in ds}
    if len(flat) > 1 or any(attrs.get(k) and any(attrs[k]) for k in ("scan_input_axes", "scan_output_axes")):
        raise env.fail("only Scans with one direction for all inputs and outputs, along axis 0, are imported")
    reverse = flat == {1}
    carry, elems = tuple(_ts(env, args[:nc])), tuple(_ts(env, args[nc:]))

    def fn2(c: Any, x: Any) -> tuple:
        outs = env.body(body, [*c, *x])
        return tuple(outs[:nc]), tuple(outs[nc:])

    scan_node, *_ = cf._scan("scan", fn2, carry, elems, reverse, None, "the state")
    return [tuple_get(scan_node, i) for i in range(nc + ny)]


def _recurrent(env: Env, args: list, attrs: dict, gates: int) -> list:
    """ONNX LSTM (gates 4) or GRU (3) as kernelflow's lstm_sequence / gru_sequence over ``X @ kernel``."""
    from ..graph.ops.recurrent import gru_sequence, lstm_sequence

    kind = "LSTM" if gates == 4 else "GRU"
    plain = {"hidden_size", "direction", "layout"} | ({"linear_before_reset"} if gates == 3 else set())
    if set(attrs) - plain or attrs.get("direction", b"forward") not in (b"forward", "forward") \
            or attrs.get("layout", 0) or (gates == 3 and attrs.get("linear_before_reset", 0) != 1):
        raise env.fail(f"only a forward {kind} with default activations and layout 0 (a GRU with "
                       f"linear_before_reset=1, Keras's reset_after), no clip or input_forget, is imported; "
                       f"got attributes {sorted(attrs)}")
    if gates == 4 and len(args) > 7 and args[7] is not None:
        raise env.fail("an LSTM with peephole weights (input P) is not imported: kernelflow's LSTM has none")
    x, w, r = _ts(env, args[:3])
    u = int(attrs["hidden_size"])
    back = np.argsort(gate_order(u, gates))  # ONNX's i, o, f, c -> Keras's i, f, c, o; GRU: z, r, h
    kernel = K.transpose(K.take(K.reshape(w, (gates * u, -1)), back, axis=0))  # (input, gates * u), Keras's layout
    recurrent = K.transpose(K.take(K.reshape(r, (gates * u, u)), back, axis=0))  # (u, gates * u)
    xk = K.matmul(x, kernel)
    given = [len(args) > i and args[i] is not None for i in range(7)]
    bias = None
    if given[3]:
        bb = K.reshape(env.tensor(args[3]), (2, gates * u))
        bias = K.take(bb[0] + bb[1], back) if gates == 4 else bb  # GRU: [Wb, Rb] is kernelflow's (2, 3u) bias
    zero = K.broadcast_like(env.tensor(np.zeros((), x.dtype)), xk[0][:, :u])
    h0, c0 = (K.reshape(env.tensor(args[i]), (-1, u)) if given[i] else zero for i in (5, 6))
    mask = lens = None
    if given[4]:  # row b runs its first sequence_lens[b] steps; Y is 0 after them
        lens = K.cast(env.tensor(args[4]), "int64")
        mask = K.less(K.expand_dims(K.arange(K.size(x[:, 0, 0])), 1), K.expand_dims(lens, 0))
    if gates == 4:
        hs, c = lstm_sequence(xk, h0, c0, recurrent, bias, mask)
    else:
        hs, c = gru_sequence(xk, h0, recurrent, bias, mask), None
    finals = [hs[-1]] + ([c] if c is not None else [])
    if mask is not None:  # as onnxruntime: Y zero past a row's length, the final states zero for a length 0
        hs = K.where(K.expand_dims(mask, 2), hs, 0)
        ran = K.expand_dims(K.greater(lens, 0), 1)
        finals = [K.where(ran, f, 0) for f in finals]
    return [K.expand_dims(hs, 1)] + [K.expand_dims(f, 0) for f in finals]


@_imp("LSTM")
def _lstm(env: Env, node: Any, args: list, attrs: dict) -> list:
    """ONNX LSTM (forward, default activations) as kernelflow's lstm_sequence, gates back in Keras's order."""
    return _recurrent(env, args, attrs, 4)


@_imp("GRU")
def _gru(env: Env, node: Any, args: list, attrs: dict) -> list:
    """ONNX GRU (forward, default activations, linear_before_reset=1) as kernelflow's gru_sequence."""
    return _recurrent(env, args, attrs, 3)
