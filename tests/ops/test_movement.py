"""Shape and movement ops: forward vs numpy, gradients vs finite differences, shape errors.

Covers reshape, expand_dims, squeeze, transpose, broadcasting, size, flatten, concat,
stack, split, slicing and Tensor indexing, gather/take, scatter_add, one_hot, tile, pad,
and the adjoint ops their gradients use.
"""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

import kernelflow as kf
from kernelflow.graph.ir import Graph
from kernelflow.graph.ops import indexing as I
from kernelflow.graph.ops import movement as M
from tests.ops.opcheck import OpCase, check_forward, check_gradient

ALL = ("float32", "float64", "int32")
IDX = np.array([[0, 4], [4, -2]])  # repeats and a negative index: the gradient must accumulate


def _vals(rng, dtype, *shapes):
    if np.dtype(dtype).kind == "f":
        return [rng.standard_normal(s).astype(dtype) for s in shapes]
    return [rng.integers(-9, 10, s).astype(dtype) for s in shapes]


def _case(name, build, ref, *shapes, dtypes=ALL, **kw):
    return OpCase(name, build, ref, lambda r, d: _vals(r, d, *shapes), dtypes=dtypes, **kw)


def _scatter_ref(u, like, idx, axis=0):
    out = np.zeros(like.shape, u.dtype)
    k = np.ndim(idx)
    np.add.at(np.moveaxis(out, axis, 0), idx, np.moveaxis(u, tuple(range(axis, axis + k)), tuple(range(k))))
    return out


def _pad_adjoint(g, like, pad_width, mode):
    src = np.pad(np.arange(like.size).reshape(like.shape), pad_width, mode=mode)
    out = np.zeros(like.size)
    np.add.at(out, src.ravel(), g.ravel())
    return out.reshape(like.shape)


def _one_hot_args(r, d):
    return [r.integers(-1, 6, (3, 2)).astype(d)]


def _gather_args(r, d):
    return [_vals(r, d, (5, 3))[0], r.integers(-5, 5, (4,))]


def _split_sizes_rev(a):
    return kf.concat(kf.split(a, [1, -1, 2], axis=0)[::-1], 0)


def _split_sizes_rev_ref(a):
    p = np.split(a, [1, len(a) - 2], axis=0)
    return np.concatenate(p[::-1], 0)


PW = ((1, 2), (0, 1))
SLICE_INDEX = ((1, None, None), (None, None, -2))

CASES = [
    # reshape family
    _case("reshape", lambda a: kf.reshape(a, (2, -1)), lambda a: a.reshape(2, -1), (2, 3, 4)),
    _case("reshape_dynamic", lambda a: a.reshape(-1, 4), lambda a: a.reshape(-1, 4), (3, 2, 4), static_shapes=False),
    _case("expand_dims", lambda a: kf.expand_dims(a, -1), lambda a: a[..., None], (2, 3)),
    _case("squeeze_axis", lambda a: kf.squeeze(a, 1), lambda a: a.squeeze(1), (3, 1, 4)),
    _case("squeeze_all", lambda a: kf.squeeze(a), lambda a: a.squeeze(), (1, 3, 1)),
    _case("transpose_perm", lambda a: kf.transpose(a, (1, 2, 0)), lambda a: a.transpose(1, 2, 0), (2, 3, 4)),
    _case("transpose_T", lambda a: a.T, lambda a: a.T, (2, 5)),
    _case("broadcast_to", lambda a: kf.broadcast_to(a, (2, 3, 4)), lambda a: np.broadcast_to(a, (2, 3, 4)), (3, 1)),
    _case("broadcast_like", kf.broadcast_like, lambda a, b: np.broadcast_to(a, b.shape), (1, 4), (3, 4)),
    _case("flatten_dynamic", kf.flatten, lambda a: a.reshape(len(a), -1), (3, 2, 2), static_shapes=False),
    OpCase("size", lambda a: kf.size(a), lambda a: np.asarray(a.size), lambda r, d: _vals(r, d, (3, 4)),
           dtypes=ALL, grad=False),
    # concat / stack / split
    _case("concat_axis1", lambda a, b, c: kf.concat([a, b, c], 1), lambda a, b, c: np.concatenate([a, b, c], 1),
          (2, 3), (2, 1), (2, 4)),
    _case("concat_dynamic_axis0", lambda a, b: kf.concat([a, b], 0), lambda a, b: np.concatenate([a, b], 0),
          (3, 2), (2, 2), static_shapes=False),
    _case("concat_dynamic_axis1", lambda a, b: kf.concat([a, b], -1), lambda a, b: np.concatenate([a, b], -1),
          (3, 2), (3, 1), static_shapes=False),
    _case("stack_axis1", lambda a, b: kf.stack([a, b], 1), lambda a, b: np.stack([a, b], 1), (2, 3), (2, 3)),
    _case("stack_last", lambda a, b: kf.stack([a, b], -1), lambda a, b: np.stack([a, b], -1), (4,), (4,)),
    _case("split_num_axis1", lambda a: kf.split(a, 3, axis=1)[1] * 2, lambda a: np.split(a, 3, 1)[1] * 2, (2, 6)),
    _case("split_num_dynamic_reversed", lambda a: kf.concat(kf.split(a, 2)[::-1], 0),
          lambda a: np.concatenate(np.split(a, 2)[::-1], 0), (4, 3), static_shapes=False),
    _case("split_sizes", _split_sizes_rev, _split_sizes_rev_ref, (6, 2)),
    _case("split_sizes_dynamic", _split_sizes_rev, _split_sizes_rev_ref, (5, 2), static_shapes=False),
    # slicing and indexing
    _case("getitem_basic", lambda a: a[1:, ::-2, None], lambda a: a[1:, ::-2, None], (3, 5, 2)),
    _case("getitem_int_ellipsis", lambda a: a[..., 0, :], lambda a: a[..., 0, :], (2, 3, 4)),
    _case("getitem_negative_int", lambda a: a[-1], lambda a: a[-1], (3, 4)),
    _case("getitem_numpy_scalar_ints", lambda a: a[np.int64(1), np.array(-1)], lambda a: a[1, -1], (3, 4, 2)),
    _case("getitem_all_ints", lambda a: a[1, -2], lambda a: np.asarray(a[1, -2]), (3, 4)),
    _case("getitem_dynamic_slice", lambda a: a[1:3, 1:], lambda a: a[1:3, 1:], (4, 3), static_shapes=False),
    _case("getitem_dynamic_reverse", lambda a: a[::-1, None, 2], lambda a: a[::-1, None, 2], (4, 3),
          static_shapes=False),
    _case("getitem_list_then_slice", lambda a: a[[2, 0, 2], 1:], lambda a: a[[2, 0, 2], 1:], (3, 4)),
    _case("getitem_array_2d", lambda a: a[IDX], lambda a: a[IDX], (5, 2)),
    OpCase("getitem_tensor", lambda a, i: a[i], lambda a, i: a[i], _gather_args, dtypes=ALL, static_shapes=False),
    _case("slice", lambda a: kf.slice(a, [1, 0], [2, -1]), lambda a: a[1:3, 0:], (4, 3)),
    _case("strided_slice", lambda a: kf.strided_slice(a, [0, -1], [None, None], [2, -1]), lambda a: a[0::2, ::-1],
          (5, 3)),
    # gather / take / scatter_add / one_hot
    OpCase("gather", kf.gather, lambda a, i: a[i], _gather_args, dtypes=ALL),
    OpCase("gather_dynamic", kf.gather, lambda a, i: a[i], _gather_args, dtypes=ALL, static_shapes=False),
    _case("take_axis1", lambda a: kf.take(a, IDX, axis=1), lambda a: np.take(a, IDX, axis=1), (3, 5, 2)),
    _case("scatter_add", lambda u, like: kf.scatter_add(u, [0, 2, 0, -1], like),
          lambda u, like: _scatter_ref(u, like, [0, 2, 0, -1]), (4, 3), (3, 3), grad_args=(0,)),
    _case("scatter_add_axis1", lambda u, like: kf.scatter_add(u, IDX, like, axis=1),
          lambda u, like: _scatter_ref(u, like, IDX, 1), (2, 2, 2), (2, 5), grad_args=(0,), static_shapes=False),
    OpCase("one_hot", lambda i: kf.one_hot(i, 5, dtype="float32", on_value=2.0, off_value=-1.0),
           lambda i: np.where(i[..., None] == np.arange(5), 2.0, -1.0), _one_hot_args,
           dtypes=("int32", "int64"), grad=False),
    # tile / pad
    _case("tile_more_reps", lambda a: kf.tile(a, (2, 1, 3)), lambda a: np.tile(a, (2, 1, 3)), (2, 3)),
    _case("tile_fewer_reps", lambda a: kf.tile(a, 2), lambda a: np.tile(a, 2), (2, 3)),
    _case("tile_dynamic", lambda a: kf.tile(a, (3, 2)), lambda a: np.tile(a, (3, 2)), (2, 2), static_shapes=False),
    _case("pad_constant", lambda a: kf.pad(a, PW, constant_values=3),
          lambda a: np.pad(a, PW, constant_values=3), (2, 3)),
    _case("pad_constant_dynamic", lambda a: kf.pad(a, (1, 2)), lambda a: np.pad(a, (1, 2)), (3, 2),
          static_shapes=False),
    *[_case(f"pad_{m}", lambda a, m=m: kf.pad(a, PW, mode=m), lambda a, m=m: np.pad(a, PW, mode=m), (3, 4))
      for m in ("edge", "reflect", "symmetric", "wrap")],
    _case("pad_reflect_dynamic", lambda a: kf.pad(a, 1, mode="reflect"), lambda a: np.pad(a, 1, mode="reflect"),
          (3, 3), static_shapes=False),
    # the adjoint ops gradients are built from (their own vjps are checked here)
    _case("strided_slice_grad", lambda g, x: I.strided_slice_grad_op.bind(g, x, index=SLICE_INDEX),
          lambda g, x: _scatter_slice(g, x), (2, 2), (3, 4), grad_args=(0,), dtypes=("float32", "float64")),
    _case("tile_grad", lambda g, x: M.tile_grad_op.bind(g, x, reps=(2, 1, 3)),
          lambda g, x: g.reshape(2, 2, 3, 3).sum((0, 2)), (2, 2, 9), (2, 3), grad_args=(0,),
          dtypes=("float32", "float64")),
    _case("pad_grad_reflect", lambda g, x: M.pad_grad_op.bind(g, x, pad_width=PW, mode="reflect"),
          lambda g, x: _pad_adjoint(g, x, PW, "reflect"), (6, 5), (3, 4), grad_args=(0,),
          dtypes=("float32", "float64")),
    _case("split_part_like", lambda g, a, b: M.split_part_op.bind(g, a, b, axis=1, index=1, num=0),
          lambda g, a, b: g[:, 2:], (2, 5), (2, 2), (2, 3), grad_args=(0,), dtypes=("float32", "float64"),
          static_shapes=False),
]


def _scatter_slice(g, x):
    out = np.zeros(x.shape, g.dtype)
    out[1:, ::-2] = g
    return out


@pytest.mark.parametrize("case,dtype", [(c, d) for c in CASES for d in c.dtypes],
                         ids=[f"{c.name}-{d}" for c in CASES for d in c.dtypes])
def test_movement_forward_matches_numpy(case, dtype, rng):
    check_forward(case, dtype, rng)


@pytest.mark.parametrize("case", [c for c in CASES if c.grad], ids=lambda c: c.name)
def test_movement_gradient_matches_finite_differences(case, rng):
    check_gradient(case, rng)


# --------------------------------------------------------------------------- static shapes
def test_getitem_static_shape_with_unknown_dims(g):
    x = g.placeholder((None, 5, 4), "float32", name="x")
    assert x[0].shape == (5, 4)
    assert x[:, 1:4, ::-1].shape == (None, 3, 4)
    assert x[..., None, 0].shape == (None, 5, 1)
    assert x[np.array([[1, 2]])].shape == (1, 2, 5, 4)
    assert x[1:].shape == (None, 5, 4)


def test_split_returns_one_node_per_part(g):
    x = g.placeholder((6, 4), "float32", name="x")
    parts = kf.split(x, [1, 2, 3])
    assert [p.shape for p in parts] == [(1, 4), (2, 4), (3, 4)]
    assert [p.name for p in parts] == ["split", "split_1", "split_2"]
    vals = g.run(parts, {x: np.arange(24, dtype="float32").reshape(6, 4)})
    assert [v[:, 0].tolist() for v in vals] == [[0.0], [4.0, 8.0], [12.0, 16.0, 20.0]]


def test_concat_mixed_dtypes_promotes_like_numpy(g):
    a = g.placeholder((2,), "int32", name="a")
    b = g.placeholder((1,), "float32", name="b")
    out = kf.concat([a, b])
    got = g.run(out, {a: np.array([1, 2], "int32"), b: np.array([0.5], "float32")})
    assert out.dtype == "float64" and got.dtype == np.float64
    np.testing.assert_array_equal(got, [1.0, 2.0, 0.5])


def test_one_hot_out_of_range_rows_are_off(g):
    i = g.placeholder((3,), "int64", name="i")
    got = g.run(kf.one_hot(i, 3, dtype="int32"), {i: np.array([2, -1, 3])})
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, [[0, 0, 1], [0, 0, 0], [0, 0, 0]])


def test_movement_attrs_survive_the_wire_round_trip(g):
    x = g.placeholder((None, 4), "float32", name="x")
    outs = [x[1:, None, ::-2], kf.pad(x, ((1, 0), (2, 3)), mode="reflect"), kf.tile(x, (2, 1))] + kf.split(x, 2, 1)
    dicts = msgpack.unpackb(msgpack.packb(g.to_dicts()), raw=False)
    server = Graph("server")
    server.extend_from_dicts(dicts)
    for t in outs:
        assert server[t.name].attrs == t.attrs and server[t.name].shape == t.shape


# --------------------------------------------------------------------------- aliasing
def test_getitem_of_variable_fetched_then_mutated_leaves_variable_unchanged(g):
    init = np.arange(6, dtype="float32").reshape(2, 3)
    v = g.variable(init, name="v")
    row, block, flat = g.run([v[0], v[:, 1:], kf.reshape(v, (-1,))])
    row[:] = -1
    block[:] = -2
    flat[:] = -3
    np.testing.assert_array_equal(v.value(), init)
    np.testing.assert_array_equal(g.run(v[0]), [0.0, 1.0, 2.0])


def test_view_ops_are_marked_alias():
    views = [M.reshape_op, M.expand_dims_op, M.squeeze_op, M.transpose_op, M.broadcast_to_op, M.broadcast_like_op,
             M.split_part_op, I.strided_slice_op]
    assert all(op.alias for op in views)
    assert not any(op.alias for op in (M.concat_op, M.tile_op, M.pad_op, I.take_op, I.scatter_add_op))


# --------------------------------------------------------------------------- shape errors
@pytest.mark.parametrize("build,pattern", [
    (lambda x: kf.reshape(x, (4,)), r"reshape: cannot reshape \(2, 3\) \(6 elements\) into \(4,\)"),
    (lambda x: kf.reshape(x, (-1, -1)), r"reshape: at most one -1"),
    (lambda x: kf.reshape(x, (None, 3)), r"reshape: new shape dims must be >= 0 or a single -1; got \(None, 3\)"),
    (lambda x: kf.concat([x, kf.transpose(x)]), r"concat: dims other than axis 0 must match; "
                                                r"got values\[0\].shape=\(2, 3\), values\[1\].shape=\(3, 2\)"),
    (lambda x: kf.concat([x, x[0]]), r"concat: all inputs must have the same rank"),
    (lambda x: kf.concat([x, x], axis=2), r"concat: axis 2 is out of range for a tensor of rank 2"),
    (lambda x: kf.expand_dims(x, 3), r"expand_dims: axis 3 is out of range for a tensor of rank 3"),
    (lambda x: kf.take(x, [0], axis=-3), r"take: axis -3 is out of range"),
    (lambda x: kf.stack([x, x[:1]]), r"stack: all inputs must have the same shape; got values\[0\].shape=\(2, 3\), "
                                     r"values\[1\].shape=\(1, 3\)"),
    (lambda x: kf.split(x, 2, axis=1), r"split: axis 1 of size 3 does not divide into 2 equal parts"),
    (lambda x: kf.split(x, [1, 1], axis=1), r"split: sizes \[1, 1\] do not add up to the size 3 of axis 1"),
    (lambda x: kf.split(x, [2, 2, -1], axis=1), r"split: sizes \[2, 2, -1\] do not add up"),
    (lambda x: kf.pad(x, ((1, 1),) * 3), r"pad: pad_width needs one \(before, after\) pair per dim of x \(rank 2\)"),
    (lambda x: kf.pad(x, ((1, -1), (0, 0))), r"pad: pad widths must be \(before, after\) pairs of ints >= 0"),
    (lambda x: x[0, 0, 0], r"getitem: too many indices for tensor 'x' of rank 2; got 3"),
    (lambda x: x[:, 3], r"strided_slice: index 3 is out of range for axis 1 with size 3"),
    (lambda x: x[-3], r"strided_slice: index -3 is out of range for axis 0 with size 2"),
    (lambda x: kf.slice(x, [1, 0], [2, -1]), r"slice: begin\[0\]=1 with size\[0\]=2 runs past dim 0 of size 2"),
    (lambda x: kf.slice(x, [0], [1]), r"slice: begin and size need one entry per dim"),
    (lambda x: kf.strided_slice(x, [0, 0, 0], [1, 1, 1]), r"strided_slice: got 3 begin values"),
    (lambda x: kf.transpose(x, (0, 0)), r"transpose: axes \(0, 0\) are not a permutation of 2 dims"),
    (lambda x: kf.squeeze(x, 0), r"squeeze: axis 0 has size 2, not 1"),
    (lambda x: kf.broadcast_to(x, (4, 3, 2)), r"broadcast_to: shapes cannot be broadcast together"),
    (lambda x: kf.flatten(x[0, 0]), r"flatten: x must have rank >= 1"),
])
def test_movement_bad_shapes_raise(g, build, pattern):
    x = g.placeholder((2, 3), "float32", name="x")
    with pytest.raises(kf.errors.ShapeError, match=pattern):
        build(x)


def test_scatter_add_updates_shape_mismatch_raises(g):
    u = g.placeholder((3, 3), "float32", name="u")
    like = g.placeholder((5, 3), "float32", name="like")
    with pytest.raises(kf.errors.ShapeError, match=r"scatter_add: updates must have shape .*\(2, 3\); "
                                                   r"got updates.shape=\(3, 3\)"):
        kf.scatter_add(u, [0, 1], like)


def test_split_unknown_dim_not_dividing_raises_at_run_time(g):
    x = g.placeholder((None, 2), "float32", name="x")
    parts = kf.split(x, 2)
    assert parts[0].shape == (None, 2)
    with pytest.raises(kf.errors.ShapeError, match=r"split: axis 0 of size 5 does not divide into 2 equal parts"):
        g.run(parts[0], {x: np.zeros((5, 2), "float32")})


@pytest.mark.parametrize("build,pattern", [
    (lambda x: x[np.array([True, False])], r"boolean mask indexing is not supported"),
    (lambda x: x[:, [0, 1]], r"integer-array indexing is supported on axis 0 only"),
    (lambda x: x[..., ...], r"only one Ellipsis"),
    (lambda x: x[1.5], r"getitem: unsupported index 1.5"),
    (lambda x: x[::0], r"slice step must not be zero"),
    (lambda x: kf.take(x, [0.5]), r"take: indices must be integers"),
    (lambda x: kf.gather(x, x), r"take: index tensor 'x' must have an integer dtype; got float32"),
    (lambda x: kf.one_hot(x, 3), r"one_hot: indices must have an integer dtype; got float32"),
    (lambda x: kf.pad(x, 1, mode="mirror"), r"pad: mode must be one of"),
    (lambda x: kf.split(x, 0), r"split: the number of parts must be >= 1"),
])
def test_movement_bad_arguments_raise(g, build, pattern):
    x = g.placeholder((2, 3), "float32", name="x")
    with pytest.raises(kf.errors.InvalidArgumentError, match=pattern):
        build(x)


def test_gather_out_of_range_index_raises_at_run_time(g):
    x = g.placeholder((None, 2), "float32", name="x")
    i = g.placeholder((None,), "int64", name="i")
    out = kf.gather(x, i)
    with pytest.raises(kf.errors.InvalidArgumentError, match=r"take.*failed at run time: IndexError"):
        g.run(out, {x: np.zeros((3, 2), "float32"), i: np.array([0, 3])})
