"""Fused groups with several outputs: an inner member read after the group's root (or fetched)
is one more output of the group's kernel, computed once (compiler/fusion.py, numba_backend.py)."""

from __future__ import annotations

import numpy as np
import pytest

import kernelflow as kf
from kernelflow.compiler import numba_backend as NB
from kernelflow.compiler.cupy_backend import CupyFusedKernel, elementwise_source, reduction_source
from kernelflow.compiler.fusion import FusedOp, fuse
from kernelflow.compiler.numba_backend import FusedKernel
from kernelflow.compiler.passes import run_passes
from kernelflow.compiler.pipeline import Compiler
from kernelflow.graph.ops import elementwise as E
from kernelflow.runtime_server.engine.devices import Placement

from .conftest import fused_plan, plan_of

pytest.importorskip("numba")


def _groups(made):
    """[(member ops, names of the extra outputs)] of fused nodes, sorted."""
    return sorted((tuple(m.op.name for m in f.op.program.members),
                   tuple(f.op.program.members[j].name for j in f.op.program.outputs)) for f in made)


def _args(node, values):
    """The fused node's inputs: ``values`` by placeholder name, constants' values."""
    return [i.attrs["value"] if i.op.name == "constant" else values[i.name] for i in node.inputs]


def _kernel(kcache, node):
    fk = FusedKernel(node.op.program, kcache, threads=1)
    fk.min_elements = 0
    return fk


# --------------------------------------------------------------------------- which groups form
def test_a_value_read_by_two_consumers_outside_is_an_output_of_one_group(graph):
    x = graph.placeholder((None, 8), "float32", name="x")
    w = graph.placeholder((8, 3), "float32", name="w")
    e = kf.exp(x * 0.5)
    s = kf.sum(e + 1.0, axis=0)  # the root
    mm = e @ w  # read outside, after the root
    t = kf.tanh(e) - 1.0  # and by another group
    new, fused_for, made = fused_plan([s, mm, t], [x, w])
    assert _groups(made) == [(("multiply", "exp", "add", "sum"), ("exp",)), (("tanh", "subtract"), ())]
    one = next(f for f in made if f.op.program.outputs)
    assert one.aval.parts == (s.aval, e.aval) and isinstance(one.op, FusedOp)
    # both readers take the exp's tuple_get, placed with the fused node where the root was
    got = fused_for[id(e)]
    assert got.op.name == "tuple_get" and got.attrs["index"] == 1 and got.name == "exp" and got.inputs[0] is one
    assert fused_for[id(s)].attrs["index"] == 0 and fused_for[id(s)].name == "sum"
    names = [n.name for n in new]
    assert names.index("sum") < names.index("matmul") and names.count("exp") == 1


def test_without_multi_output_the_shared_value_ends_the_group(graph):
    x = graph.placeholder((None, 8), "float32", name="x")
    e = kf.exp(x * 0.5)
    s = kf.sum(e + 1.0, axis=0)
    t = kf.tanh(e) - 1.0
    _, _, made = fused_plan([s, t], [x], multi=False)
    assert _groups(made) == [(("add", "sum"), ()), (("multiply", "exp"), ()), (("tanh", "subtract"), ())]


def test_a_fetched_member_used_inside_the_group_is_an_output(graph):
    x = graph.placeholder((50,), "float32", name="x")
    e = kf.exp(x)
    out = kf.log1p(e) * 2.0
    new, _, made = fused_plan([out, e], [x])
    assert _groups(made) == [(("exp", "log1p", "multiply"), ("exp",))]


def test_a_reader_before_the_root_keeps_the_value_out_of_the_group(graph):
    x = graph.placeholder((None, 8), "float32", name="x")
    w = graph.placeholder((8, 8), "float32", name="w")
    e = kf.exp(x)
    mm = e @ w  # created (and scheduled) before the root: the group's kernel would run too late
    s = kf.sum(e * mm, axis=0)
    _, _, made = fused_plan([s], [x, w])
    assert _groups(made) == [(("multiply", "sum"), ())]


def test_an_output_must_have_the_iteration_shape(graph):
    x = graph.placeholder((None, 8), "float32", name="x")
    b = graph.placeholder((8,), "float32", name="b")
    b2 = b * 2.0  # fetched, but (8,) in a (None, 8) loop
    out = kf.relu(x + b2)
    _, _, made = fused_plan([out, b2], [x, b])
    assert _groups(made) == [(("add", "relu"), ())]


def test_a_control_input_is_never_an_output(graph):
    x = graph.placeholder((16,), "float32", name="x")
    e = kf.exp(x)
    s = kf.sum(e * 2.0)
    with graph.control_dependencies([e]):
        after = kf.identity(x)
    _, _, made = fused_plan([s, after, e], [x])
    assert _groups(made) == [(("multiply", "sum"), ())]


def test_group_reading_a_variable_is_not_formed_across_its_update(graph):
    v = graph.variable(np.linspace(-1, 1, 4096).astype(np.float32), name="v")
    a = kf.exp(v)  # reads v before the update
    upd = kf.assign_add(v, 1.0)
    s = kf.sum(a * 2.0)  # created after the update
    t = kf.tanh(a)  # a second reader, after the root
    order, fed = plan_of([s, t, upd])
    order.sort(key=lambda n: (n.index if n is not upd else a.index + 0.5))
    rw = run_passes(order, fed, [s, t, upd])
    _, _, made = fuse(rw.order, fed, [rw.resolve(s), rw.resolve(t), upd], lambda n: True)
    assert not any(any(m.op.name == "exp" for m in f.op.program.members) for f in made)


def test_gpu_plans_get_no_group_with_several_outputs():
    rt = kf.connect("inproc", compile="off")
    g = rt.graph("gpu-plan")
    x = g.placeholder((None, 8), "float32", name="x")
    e = kf.exp(x * 0.5)
    s = kf.sum(e + 1.0, axis=0)
    t = kf.tanh(e) - 1.0
    order, fed = plan_of([s, t], [x])
    for backend, want in (("cupy", 3), ("numpy", 2)):
        plan = Compiler("sync").optimize(order, fed, [s, t], lambda n, b=backend: Placement(b, 0))
        assert len(plan.fused) == want
        assert any(f.op.program.outputs for f in plan.fused) == (backend == "numpy")
    rt.close()


def test_cupy_refuses_a_multi_output_program_cleanly(graph, rng):
    x = graph.placeholder((64,), "float32", name="x")
    e = kf.exp(x)
    _, _, (node,) = fused_plan([kf.log1p(e) * 2.0, e], [x])
    with pytest.raises(NotImplementedError, match="several outputs"):
        elementwise_source(node.op.program)
    with pytest.raises(NotImplementedError, match="several outputs"):
        reduction_source(node.op.program)
    xv = rng.standard_normal(64).astype(np.float32)
    before = list(CupyFusedKernel.fallbacks)
    out, ev = CupyFusedKernel(node.op.program)(np, *_args(node, {"x": xv}))  # the members' own kernels
    np.testing.assert_array_equal(ev, np.exp(xv))
    np.testing.assert_array_equal(out, np.log1p(np.exp(xv)) * np.float32(2))
    assert CupyFusedKernel.fallbacks == before  # not a failed kernel: never made


# --------------------------------------------------------------------------- the kernels
def _float64_outputs(xv, bv):
    x, b = xv.astype(np.float64), bv.astype(np.float64)
    h = np.maximum(x * 0.5 + b, 0)
    return h, np.exp(-h) * x


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("layout", ["flat", "2d"])
def test_elementwise_kernel_hands_out_inner_values(kcache, graph, rng, dtype, layout):
    shape_b = (64, 100) if layout == "flat" else (100,)  # a bias row: the 2-D loop
    x = graph.placeholder((64, 100), dtype, name="x")
    b = graph.placeholder(shape_b, dtype, name="b")
    h = kf.relu(x * 0.5 + b)
    y = kf.exp(-h) * x
    pos = kf.greater(y, 0.1)  # a bool output
    out = kf.where(pos, y, h)
    _, _, (node,) = fused_plan([out, h, y, pos], [x, b])
    assert [node.op.program.members[j].name for j in node.op.program.outputs] == [h.name, y.name, pos.name]
    fk = _kernel(kcache, node)
    for _ in range(3):  # the first call works the signature out; the others replay it
        xv = rng.standard_normal((64, 100)).astype(dtype)
        bv = rng.standard_normal(shape_b).astype(dtype)
        got = fk(*_args(node, {"x": xv, "b": bv}))
        ref = node.op.program.run_unfused(*_args(node, {"x": xv, "b": bv}))
        assert isinstance(got, tuple) and len(got) == 4
        for g_, r_ in zip(got, ref):
            assert g_.dtype == r_.dtype and g_.shape == r_.shape
        h64, y64 = _float64_outputs(xv, bv)
        np.testing.assert_array_equal(got[1], ref[1])  # relu of an exact affine map: numpy's bits
        np.testing.assert_allclose(got[1], h64, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(got[2], y64, rtol=1e-5 if dtype == "float32" else 1e-13, atol=1e-6)
        np.testing.assert_array_equal(got[3], got[2] > 0.1)
        np.testing.assert_array_equal(got[0], np.where(got[3], got[2], got[1]))
    assert fk.fused_calls == 3 and fk.unfused_calls == 0
    assert {k[0] for k in fk._sources} == {layout}


REDUCTIONS = {
    "cols_sum": ("sum", {"axis": 0}, (300, 64)),
    "cols_mean": ("mean", {"axis": 0, "keepdims": True}, (300, 64)),
    "cols_sum_to": ("sum_to", None, (5, 60, 64)),
    "rows_sum": ("sum", {"axis": -1}, (300, 64)),
    "all_mean": ("mean", {}, (300, 64)),
    "one_column": ("sum", {"axis": 0}, (300, 1)),
}
MODES = {"cols_sum": "cols", "cols_mean": "cols", "cols_sum_to": "cols", "rows_sum": "rows", "all_mean": "all",
         "one_column": "all"}


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", sorted(REDUCTIONS))
def test_reduction_kernel_hands_out_the_value_it_reduces(kcache, graph, rng, kind, dtype, order):
    op, attrs, shape = REDUCTIONS[kind]
    g_ = graph.placeholder(shape, dtype, name="g")
    h = graph.placeholder(shape, dtype, name="h")
    d = E.relu_grad(g_, h)  # the ReLU gradient: read by a matmul and reduced to a bias gradient
    if op == "sum_to":
        like = graph.placeholder(shape[-1:], dtype, name="like")
        red = kf.sum_to(d, like)
        feeds = [g_, h, like]
    else:
        red = getattr(kf, op)(d, **attrs)
        feeds = [g_, h]
    _, _, (node,) = fused_plan([red, d], feeds)
    assert node.op.program.reduce is not None and len(node.op.program.outputs) == 1
    fk = _kernel(kcache, node)
    for step in range(3):
        gv = rng.standard_normal(shape).astype(dtype)
        gv[rng.random(shape) < 0.1] = -0.0
        gv = np.asfortranarray(gv) if order == "F" else gv
        hv = rng.standard_normal(shape).astype(dtype)
        vals = {"g": gv, "h": hv, "like": np.zeros(shape[-1:], dtype)}
        fused = fk.fused_calls
        got_red, got_d = fk(*_args(node, vals))
        # the kernel itself ran (the first call may run unfused while the shared cache adds this layout)
        assert fk.fused_calls == fused + 1 or step == 0
        ref_red, ref_d = node.op.program.run_unfused(*_args(node, vals))
        np.testing.assert_array_equal(got_d, ref_d)
        assert np.array_equal(np.signbit(got_d), np.signbit(ref_d))  # g * 0 keeps the zero's sign
        assert got_red.shape == ref_red.shape and got_red.dtype == ref_red.dtype == np.dtype(dtype)
        d64 = gv.astype(np.float64) * (hv > 0)
        axes = (0, 1) if op == "sum_to" else attrs.get("axis")
        want = getattr(np, op if op != "sum_to" else "sum")(d64, axis=axes, keepdims=attrs and
                                                             attrs.get("keepdims", False) or False)
        np.testing.assert_allclose(got_red, want, rtol=1e-5, atol=1e-4)
        if MODES[kind] == "cols":
            # a leading-axes sum in the value's dtype, row after row: bitwise numpy's (and its zeros' signs)
            np.testing.assert_array_equal(got_red, ref_red)
            assert np.array_equal(np.signbit(got_red), np.signbit(ref_red))
    assert fk.fused_calls >= 2
    assert {k[0] for k in fk._sources} == {MODES[kind]}


def test_an_output_of_another_shape_at_run_time_runs_unfused(kcache, graph, rng):
    x = graph.placeholder((None, 8), "float32", name="x")
    y = graph.placeholder((None, 8), "float32", name="y")
    e = kf.exp(y) * 2.0  # (None, 8) statically; fed one row below, it broadcasts
    s = kf.sum(x + e, axis=0)
    _, _, (node,) = fused_plan([s, e], [x, y])
    assert node.op.program.outputs
    fk = _kernel(kcache, node)
    xv = rng.standard_normal((600, 8)).astype(np.float32)
    yv = rng.standard_normal((1, 8)).astype(np.float32)
    got_s, got_e = fk(*_args(node, {"x": xv, "y": yv}))
    assert fk.fused_calls == 0 and fk.unfused_calls == 1 and got_e.shape == (1, 8)
    np.testing.assert_allclose(got_s, (xv.astype(np.float64) + np.exp(yv.astype(np.float64)) * 2).sum(0),
                               rtol=1e-5)
    yv = rng.standard_normal((600, 8)).astype(np.float32)  # the iteration shape: the kernel
    got_s, got_e = fk(*_args(node, {"x": xv, "y": yv}))
    assert fk.fused_calls == 1 and got_e.shape == (600, 8)
    np.testing.assert_allclose(got_e, np.exp(yv.astype(np.float64)) * 2, rtol=1e-6)


def test_big_outputs_are_reused_only_when_nobody_holds_them(kcache, graph):
    x = graph.placeholder((None,), "float32", name="x")
    e = kf.exp(x)
    _, _, (node,) = fused_plan([e * 2.0, e], [x])
    fk = _kernel(kcache, node)
    xv = np.linspace(-1, 1, 1 << 18, dtype=np.float32)
    args = _args(node, {"x": xv})
    first = fk(*args)
    kept = first[1]
    second = fk(*args)
    assert second[1] is not kept and second[0] is not first[0]
    addrs = [a.__array_interface__["data"][0] for a in second]
    del first, second
    third = fk(*args)
    assert [a.__array_interface__["data"][0] for a in third] == addrs
    np.testing.assert_allclose(third[1], np.exp(xv), rtol=1e-6)
    np.testing.assert_allclose(kept, np.exp(xv), rtol=1e-6)


# --------------------------------------------------------------------------- plans and runs
def test_plan_shows_the_outputs_and_runs_equal_compile_off(rng):
    rt = kf.connect("inproc", compile="sync")
    g = rt.graph("multi")
    x = g.placeholder((None, 64), "float32", name="x")
    w = g.variable(rng.standard_normal((64, 64)).astype(np.float32) * 0.1, name="w")
    e = kf.exp(x * 0.5)
    s = kf.sum(e + 1.0, axis=0)
    mm = e @ w
    t = kf.tanh(e) - 1.0
    groups = g.fused_groups([s, mm, t, e], feeds=[x])
    assert {"name": "sum", "members": ["multiply", "exp", "add", "sum"], "ops": ["multiply", "exp", "add", "sum"],
            "outputs": ["sum", "exp"]} in groups
    text = g.plan([s, mm, t, e], feeds=[x])
    assert "sum = fused[multiply exp add sum](x, const, const_1) : float32(64,), float32(None, 64)" in text
    assert "    | exp = exp(multiply)  [output 1]" in text and "tuple_get" not in text
    assert "multi_output_groups 1, extra_outputs 1" in text
    xv = rng.standard_normal((200, 64)).astype(np.float32)
    on = g.run([s, mm, t, e], {x: xv})
    off = g.run([s, mm, t, e], {x: xv}, compile=False)
    e64 = np.exp(xv.astype(np.float64) * 0.5)
    for a, b, ref in zip(on, off, [(e64 + 1).sum(0), e64 @ g.read_variable(w).astype(np.float64), np.tanh(e64) - 1,
                                   e64]):
        assert a.dtype == b.dtype == np.float32 and a.shape == b.shape
        np.testing.assert_allclose(a, ref, rtol=2e-5, atol=1e-5)
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-5)
    rt.close()


SIZES = (16, 256, 256, 4)  # batch 32: dense1's gradient comes column-major from matmul's swapped form


def _mlp(g, dtype):
    rng = np.random.default_rng(5)
    x = g.placeholder((None, SIZES[0]), dtype, name="x")
    y = g.placeholder((None,), "int64", name="y")
    h = x
    for i, (a, b) in enumerate(zip(SIZES[:-1], SIZES[1:])):
        w = g.variable((rng.standard_normal((a, b)) / np.sqrt(a)).astype(dtype), name=f"w{i}")
        bias = g.variable((rng.standard_normal(b) * 0.1).astype(dtype), name=f"b{i}")
        h = h @ w + bias
        if i < len(SIZES) - 2:
            h = kf.relu(h)
    loss = kf.mean(kf.softmax_cross_entropy(h, y))
    return x, y, loss, kf.optim.Adam(lr=0.01).minimize(loss)


def _train(mode, dtype="float32", steps=6):
    rt = kf.connect("inproc", compile=mode)
    g = rt.graph("mlp")
    x, y, loss, train = _mlp(g, dtype)
    rng = np.random.default_rng(6)
    groups = g.fused_groups(train, feeds=[x, y]) if mode != "off" else []
    losses = []
    for step in range(steps):
        if mode == "on" and step in (2, 3):  # the kernels come midway: unfused steps, then the kernels'
            assert rt._transport.service.graphs.session(g.name).compiler.wait_idle()
        xv = rng.standard_normal((32, SIZES[0])).astype(dtype)
        yv = rng.integers(0, SIZES[-1], 32)
        losses.append(g.run([train, loss], {x: xv, y: yv})[1])
    out = {v.name: g.read_variable(v) for v in g.variables()}
    rt.close()
    return out, groups, losses


@pytest.mark.parametrize("mode,dtype", [("sync", "float32"), ("sync", "float64"), ("on", "float32")])
def test_mlp_training_with_multi_output_groups_is_bitwise_the_compiler_off(monkeypatch, tmp_path, mode, dtype):
    monkeypatch.setenv("KERNELFLOW_CACHE_DIR", str(tmp_path))  # "on": a cold cache, the kernels come midway
    kernels = []
    init = NB.FusedKernel.__init__

    def record(self, *a, **k):
        init(self, *a, **k)
        kernels.append(self)

    monkeypatch.setattr(NB.FusedKernel, "__init__", record)
    on, groups, losses = _train(mode, dtype)
    off, _, losses_off = _train("off", dtype)
    multi = [grp for grp in groups if grp["ops"] == ["relu_grad", "sum_to"]]
    # each ReLU gradient: one kernel hands out the bias gradient (the root) and the value the matmuls read
    assert len(multi) == 2, groups
    assert all(grp["outputs"] == grp["members"][::-1] and grp["name"].startswith("gradients/sum_to")
               for grp in multi)
    assert sorted(grp["outputs"][1] for grp in multi) == ["gradients/relu_grad", "gradients/relu_grad_1"]
    ran = [k for k in kernels if k.program.outputs and k.fused_calls + k.unfused_calls]  # the run's plan
    assert len(ran) == 2 and all(k.fused_calls > 0 for k in ran)  # the multi-output kernels themselves ran
    if mode == "on":
        assert all(k.unfused_calls >= 2 and k.fused_calls >= 2 for k in ran)
    if mode == "sync":  # both groups share one kernel: dense1's column-major gradient adds an overload at first sight
        assert sorted(k.unfused_calls for k in ran) == [0, 1] and all(k.fused_calls + k.unfused_calls == 6
                                                                      for k in ran)
    for k in off:
        np.testing.assert_array_equal(on[k], off[k], err_msg=k)
    np.testing.assert_array_equal(losses, losses_off)
    assert losses[-1] < losses[0]


def test_multi_output_groups_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("KERNELFLOW_FUSE_MULTI_OUTPUT", "0")
    rt = kf.connect("inproc", compile="sync")
    g = rt.graph("mlp")
    x, y, _, train = _mlp(g, "float32")
    groups = g.fused_groups(train, feeds=[x, y])
    assert groups and all(grp["outputs"] == [grp["name"]] for grp in groups if grp["ops"][0] != "apply_adam")
    assert "multi_output" not in g.plan(train, feeds=[x, y])
    rt.close()


def test_parallel_leading_axes_sum_is_bitwise_numpy_too(kcache, graph, rng):
    # 153,600 elements: the parallel variant (threads take blocks of columns, each summed row after row)
    g_ = graph.placeholder((512, 300), "float32", name="g")
    h = graph.placeholder((512, 300), "float32", name="h")
    d = E.relu_grad(g_, h)
    _, _, (node,) = fused_plan([kf.sum(d, axis=0), d], [g_, h])
    fk = FusedKernel(node.op.program, kcache, threads=2)
    vals = {"g": rng.standard_normal((512, 300)).astype(np.float32),
            "h": rng.standard_normal((512, 300)).astype(np.float32)}
    got_s, got_d = fk(*_args(node, vals))
    ref_s, ref_d = node.op.program.run_unfused(*_args(node, vals))
    assert fk.fused_calls == 1 and any(k == ("cols", (False, False), True) for k in fk._sources)
    np.testing.assert_array_equal(got_d, ref_d)
    np.testing.assert_array_equal(got_s, ref_s)
    np.testing.assert_allclose(got_s, (vals["g"].astype(np.float64) * (vals["h"] > 0)).sum(0), rtol=1e-4, atol=1e-4)
