"""ONNX export op by op: each mapped kernelflow op, exported and run by onnxruntime, equals g.run."""

from __future__ import annotations

import numpy as np
import pytest

import kernelflow as kf
from kernelflow.graph import all_ops
from kernelflow.graph.ops import movement as M
from kernelflow.interop.onnx_ops import CONVERTERS, GRAPH_IO, NO_ONNX

from .conftest import onnx_matches_run

R = np.random.default_rng(7)


def _f(*shape: int) -> np.ndarray:
    return R.standard_normal(shape).astype("float32")


def _i(lo: int, hi: int, *shape: int, dtype: str = "int64") -> np.ndarray:
    return R.integers(lo, hi, shape).astype(dtype)


# Each case: name -> (input specs {key: (shape, dtype, sample)}, build(*placeholders) -> {output: tensor}).
# Samples vary the batch dim to show it stays free.
CASES = {
    "arith": ({"a": ((None, 3), "float32", _f), "b": ((3,), "float32", _f)},
              lambda a, b: {"add": a + b, "sub": a - b, "mul": a * b, "div": a / (kf.abs(b) + 1.0),
                            "max": kf.maximum(a, b), "min": kf.minimum(a, b), "pow": kf.pow(kf.abs(a) + 0.5, b)}),
    "unary": ({"a": ((None, 4), "float32", _f)},
              lambda a: {"neg": -a, "abs": kf.abs(a), "sign": kf.sign(a), "exp": kf.exp(a),
                         "log": kf.log(kf.abs(a) + 1e-3), "sqrt": kf.sqrt(kf.abs(a)), "square": kf.square(a),
                         "sin": kf.sin(a), "cos": kf.cos(a),
                         "tanh": kf.tanh(a), "sigmoid": kf.sigmoid(a * 10.0), "relu": kf.relu(a), "erf": kf.erf(a),
                         "gelu": kf.gelu(a), "rsqrt": kf.rsqrt(kf.abs(a) + 0.1), "log1p": kf.log1p(kf.abs(a)),
                         "softmax": kf.softmax(a), "log_softmax": kf.log_softmax(a), "ident": kf.stop_gradient(a)}),
    "floor_mod_float": ({"a": ((None, 5), "float32", _f), "b": ((None, 5), "float32", _f)},
                        lambda a, b: {"fd": kf.floor_divide(a, b), "mod": kf.mod(a, b)}),
    "floor_mod_int": ({"a": ((None, 6), "int64", lambda *s: _i(-9, 9, *s)),
                       "b": ((6,), "int64", lambda *s: np.array([3, -3, 4, -4, 7, 2], "int64"))},
                      lambda a, b: {"fd": a // b, "mod": a % b, "mul": a * b, "neg": -a}),
    "compare": ({"a": ((None, 3), "float32", _f), "b": ((None, 3), "float32", _f)},
                lambda a, b: {"eq": kf.equal(a, a), "ne": kf.not_equal(a, b), "lt": a < b, "le": a <= b, "gt": a > b,
                              "ge": a >= b, "and": kf.logical_and(a > 0, b > 0), "or": kf.logical_or(a > 0, b > 0),
                              "not": kf.logical_not(a > b), "where": kf.where(a > b, a, b),
                              "fin": kf.isfinite(a / (b * 0.0))}),
    "cast_promote": ({"a": ((None, 3), "int32", lambda *s: _i(-5, 5, *s, dtype="int32")),
                      "b": ((None, 3), "float32", _f)},
                     lambda a, b: {"cast": kf.cast(a, "float32") * b, "sum_i": kf.sum(a, axis=1),
                                   "mixed": a + kf.cast(b, "int64")}),
    "reduce": ({"a": ((None, 3, 4), "float32", _f)},
               lambda a: {"sum": kf.sum(a, axis=1), "sum_all": kf.sum(a),
                          "mean": kf.mean(a, axis=(1, 2), keepdims=True), "max": kf.max(a, axis=-1),
                          "min": kf.min(a, axis=0), "prod": kf.prod(a, axis=2),
                          "lse": kf.logsumexp(a, axis=1), "argmax": kf.argmax(a, axis=2),
                          "argmin": kf.argmin(a, axis=1), "argmax_flat": kf.argmax(a),
                          "any": kf.any(a > 1.0, axis=1), "all": kf.all(a > -1.0, axis=2),
                          "nz": kf.count_nonzero(kf.relu(a), axis=1), "bool_sum": kf.sum(a > 0, axis=1)}),
    "linalg": ({"a": ((None, 3, 4), "float32", _f), "w": ((4, 5), "float32", _f)},
               lambda a, w: {"mm": a @ w, "ein": kf.einsum("bij,jk->bik", a, w),
                             "bmm": kf.matmul(a, kf.transpose(a, (0, 2, 1)))}),
    "movement": ({"a": ((None, 2, 3), "float32", _f)},
                 lambda a: {"reshape": kf.reshape(a, (-1, 6)), "expand": kf.expand_dims(a, 1),
                            "squeeze": kf.squeeze(kf.expand_dims(a, -1), axis=-1), "T": kf.transpose(a),
                            "perm": kf.transpose(a, (1, 0, 2)), "bcast": kf.broadcast_to(a[0], (4, 2, 3)),
                            "bcast_like": kf.broadcast_like(a[:, :1, :], a), "size": kf.size(a),
                            "concat": kf.concat([a, a * 2.0], axis=2), "stack": kf.stack([a, a], axis=1),
                            "split0": kf.split(a, 3, axis=2)[1], "split1": kf.split(a, [1, 2], axis=2)[1],
                            "tile": kf.tile(a, (1, 2, 2)), "tile_up": kf.tile(a[0], (2, 1, 1)),
                            "flatten": kf.flatten(a), "reshape_like": M.reshape_like(kf.flatten(a), a)}),
    "pad": ({"a": ((None, 3, 4), "float32", _f)},
            lambda a: {"const": kf.pad(a, ((0, 0), (1, 2), (0, 1)), constant_values=1.5),
                       "edge": kf.pad(a, ((0, 0), (1, 1), (2, 0)), mode="edge"),
                       "reflect": kf.pad(a, ((0, 0), (1, 1), (2, 1)), mode="reflect")}),
    "slicing": ({"a": ((None, 4, 5), "float32", _f)},
                lambda a: {"s1": a[:, 1:3], "s2": a[:, ::-1, ::2], "s3": a[0], "s4": a[:, -1, None, 1:-1],
                           "s5": a[..., 3:0:-2], "s6": a[:, None, 2, :], "s7": a[-1:, :, -1]}),
    "gather": ({"a": ((None, 5), "float32", _f), "ids": ((None,), "int64", lambda *s: _i(0, 5, *s))},
               lambda a, ids: {"take": kf.take(a, ids, axis=1), "rows": kf.take(kf.transpose(a), ids),
                               "emb": kf.embedding(kf.transpose(a), ids),
                               "onehot": kf.one_hot(ids, 5, on_value=2.0, off_value=-1.0),
                               "sce": kf.softmax_cross_entropy(a, ids)}),
    "search": ({"a": ((None, 7), "float32", lambda *s: np.round(_f(*s), 1)), "n": ((), "int64", lambda: np.array(5))},
               lambda a, n: {"top3": kf.top_k(a, 3), "along": kf.take_along_axis(a, kf.top_k(a, 2)),
                             "range": kf.arange(n), "frange": kf.arange(n, dtype="float32")}),
    "scatter": ({"u": ((None, 3), "float32", _f), "ids": ((None,), "int64", lambda *s: _i(0, 4, *s))},
                lambda u, ids: {"axis0": kf.scatter_add(u, ids, u.graph.constant(np.zeros((4, 3), "float32"))),
                                "axis1": kf.scatter_add(kf.transpose(u), ids,
                                                        u.graph.constant(np.zeros((3, 4), "float32")), axis=1)}),
}


def _build(rt, name, specs, fn, batch_sizes=(1, 5)):
    g = rt.graph(f"onnx_{name}")
    phs = {k: g.placeholder(shape, dtype, name=k) for k, (shape, dtype, _) in specs.items()}
    outs = fn(*phs.values())
    feeds = []
    for n in batch_sizes:
        feed = {}
        for k, (shape, _dtype, make) in specs.items():
            feed[k] = make(*[n if d is None else d for d in shape])
        feeds.append(feed)
    return g, phs, outs, feeds


@pytest.mark.parametrize("case", sorted(CASES))
def test_op_case_onnxruntime_equals_run(rt, tmp_path, case):
    specs, fn = CASES[case]
    g, phs, outs, feeds = _build(rt, case, specs, fn)
    if case == "scatter":  # one index per row of updates
        for f in feeds:
            f["ids"] = _i(0, 4, f["u"].shape[0])
    onnx_matches_run(g, tmp_path / f"{case}.onnx", phs, outs, feeds)


def test_conv_and_pool_variants_equal_run(rt, tmp_path):
    g = rt.graph("onnx_conv")
    x = g.placeholder((None, 9, 8, 3), "float32", name="x")
    w = g.constant(_f(3, 3, 3, 4))
    wt = g.constant(_f(3, 3, 2, 4))  # conv2d_transpose filters: (kh, kw, out, in)
    outs = {
        "same": kf.conv2d(x, w, padding="SAME"),
        "valid_s2": kf.conv2d(x, w, strides=2, padding="VALID"),
        "same_s2_dil": kf.conv2d(x, w, strides=(2, 1), padding="SAME"),
        "dilated": kf.conv2d(x, w, dilations=2, padding="SAME"),
        "maxpool": kf.max_pool2d(x, 2, 2, padding="SAME"),
        "maxpool_valid": kf.max_pool2d(x, 3, 2, padding="VALID"),
        "avgpool_same": kf.avg_pool2d(x, 3, 2, padding="SAME"),
        "avgpool": kf.avg_pool2d(x, 2, 2),
        "tconv": kf.conv2d_transpose(kf.conv2d(x, w, padding="SAME"), wt, (18, 16), strides=2, padding="SAME"),
        "tconv_valid": kf.conv2d_transpose(kf.conv2d(x, w, padding="SAME"), wt, (11, 10), padding="VALID"),
    }
    feeds = [{"x": _f(n, 9, 8, 3)} for n in (1, 3)]
    onnx_matches_run(g, tmp_path / "conv.onnx", {"x": x}, outs, feeds, rtol=1e-4, atol=1e-5)


def test_every_op_has_an_onnx_form_or_a_reason():
    missing = sorted(set(all_ops()) - set(CONVERTERS) - set(GRAPH_IO) - set(NO_ONNX))
    assert not missing, f"ops with neither an ONNX converter nor a reason in NO_ONNX: {missing}"
    assert not set(CONVERTERS) & set(NO_ONNX)


def test_docs_table_lists_every_op():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "onnx.md").read_text()
    rows = {line.split("|")[1].strip().strip("`") for line in doc.splitlines() if line.startswith("| `")}
    assert set(all_ops()) <= rows, sorted(set(all_ops()) - rows)
