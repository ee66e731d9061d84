"""Executor semantics: variable reads and in-place updates, feeds, pruning, plan cache, NaN."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

import kernelflow as kf


def test_run_train_and_loss_reports_loss_of_start_weights(g):
    w = g.variable(np.array([1.0, 2.0], "float64"), name="w")
    loss = kf.sum(w * w)
    step = w.assign_sub(w * 0.5)
    out = g.run([step, loss])
    assert out[1] == pytest.approx(5.0)  # from the pre-update weights
    np.testing.assert_allclose(w.value(), [0.5, 1.0])
    assert g.run(loss) == pytest.approx(1.25)


def test_variable_read_consumed_after_update_sees_old_value(g):
    # The update does not depend on `late`; the executor must still run `late` before it.
    w = g.variable(np.array([3.0], "float64"), name="w")
    upd = w.assign(np.array([10.0]))
    late = w * 2.0
    got_late, _ = g.run([late, upd])
    assert got_late[0] == 6.0
    assert w.value()[0] == 10.0


def test_fetched_variable_is_a_copy_not_live_storage(g):
    w = g.variable(np.arange(3.0), name="w")
    inc = w.assign_add(np.ones(3))
    before, _ = g.run([w, inc])
    np.testing.assert_array_equal(before, [0.0, 1.0, 2.0])
    before[:] = 99  # mutating what the user got must not touch the runtime
    np.testing.assert_array_equal(w.value(), [1.0, 2.0, 3.0])


def test_view_of_variable_fetched_is_copied(g):
    w = g.variable(np.arange(6.0).reshape(2, 3), name="w")
    t = w.T
    got = g.run(t)
    got[0, 0] = -1
    assert w.value()[0, 0] == 0.0


def test_control_dependency_read_sees_updated_value(g):
    w = g.variable(np.array(1.0), name="w")
    upd = w.assign_add(np.array(4.0))
    with g.control_dependencies([upd]):
        after = w.read_value()
    assert g.run(after) == 5.0
    assert g.run(w) == 5.0


def test_unfed_placeholder_raises_naming_it(g):
    x = g.placeholder((None, 2), "float32", name="inputs")
    y = x * 2.0
    with pytest.raises(kf.errors.InvalidArgumentError, match=r"placeholder 'inputs' .*must be fed"):
        g.run(y)


def test_wrong_feed_dtype_and_shape_raise_and_change_nothing(g):
    x = g.placeholder((None, 2), "float32", name="x")
    w = g.variable(np.ones(2, "float32"), name="w")
    upd = w.assign_add(kf.sum(x, axis=0))
    with pytest.raises(kf.errors.InvalidArgumentError, match=r"feed for 'x': expected dtype float32; got float64"):
        g.run(upd, {x: np.ones((3, 2))})
    with pytest.raises(kf.errors.InvalidArgumentError,
                       match=r"feed for 'x': expected shape \(None, 2\); got \(3, 5\)"):
        g.run(upd, {x: np.ones((3, 5), "float32")})
    np.testing.assert_array_equal(w.value(), [1.0, 1.0])


def test_python_list_feed_takes_placeholder_dtype(g):
    x = g.placeholder((3,), "float32", name="x")
    out = g.run(x * 2.0, {x: [1, 2, 3]})
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [2, 4, 6])


def test_feeding_an_intermediate_prunes_its_inputs(g):
    x = g.placeholder((2,), "float32", name="x")
    h = x * 3.0
    y = h + 1.0
    np.testing.assert_array_equal(g.run(y, {h: np.array([1.0, 2.0], "float32")}), [2.0, 3.0])


def test_fetch_structures_are_preserved(g):
    a = g.constant(np.float32(1.0), name="a")
    b = a + 1.0
    out = g.run({"x": [a, (b, "a")], "y": {"z": b}})
    assert isinstance(out["x"], list) and isinstance(out["x"][1], tuple)
    assert out["x"][0] == 1.0 and out["x"][1][0] == 2.0 and out["x"][1][1] == 1.0 and out["y"]["z"] == 2.0


def test_nan_is_a_value_not_a_crash(g):
    x = g.placeholder((3,), "float32", name="x")
    y = kf.log(x)
    out = g.run(y, {x: np.array([-1.0, 0.0, 1.0], "float32")})
    assert np.isnan(out[0]) and out[1] == -np.inf and out[2] == 0.0


def test_runtime_shape_error_names_node_and_source(g):
    a = g.placeholder((None, 3), "float32", name="a")
    b = g.placeholder((None, 3), "float32", name="b")
    c = a + b
    pattern = r"add \(add\) failed at run time.*a: float32\(2, 3\)"
    with pytest.raises(kf.errors.InvalidArgumentError, match=pattern) as e:
        g.run(c, {a: np.ones((2, 3), "float32"), b: np.ones((4, 3), "float32")})
    assert e.value.node == "add" and "test_executor.py" in e.value.source


def test_plan_is_cached_per_signature(inproc_rt):
    rt = inproc_rt
    g = rt.graph("test")
    x = g.placeholder((2,), "float32", name="x")
    y = x + 1.0
    feed = {x: np.zeros(2, "float32")}
    g.run(y, feed)
    session = rt._transport.service.graphs.session("test")
    plan = session.plan(["add"], ["x"])
    g.run(y, feed)
    assert session.plan(["add"], ["x"]) is plan
    assert len(session._plans) == 1


def test_intermediate_buffers_are_freed_after_last_use(inproc_rt):
    rt = inproc_rt
    g = rt.graph("test")
    x = g.placeholder((1000,), "float64", name="x")
    h1 = x * 2.0
    h2 = h1 + 1.0
    out = kf.sum(h2)
    refs = []
    session = rt._transport.service.graphs.session("test")
    g.run(out, {x: np.ones(1000)}, compile=False)
    plan = session.plan([out.name], ["x"], compile=False)  # as built: the compiler would fuse h1 away
    # Instrument: wrap the kernel of h1 to record a weak reference to its output.
    k = next(i for i, n in enumerate(plan.step_nodes) if n.name == h1.name)
    fn, ins, slot, free = plan.steps[k]

    class Arr(np.ndarray):
        pass

    def recording(*a):
        r = fn(*a).view(Arr)
        refs.append(weakref.ref(r))
        return r

    plan.steps[k] = (recording, ins, slot, free)
    session.run([out.name], ["x"], [np.ones(1000)], compile=False)
    gc.collect()
    assert refs and refs[0]() is None


def test_graph_reattach_in_same_runtime_keeps_variables(rt):
    g1 = rt.graph("model")
    w = g1.variable(np.array([1.0, 2.0], "float32"), name="w")
    g1.run(w.assign_add(np.array([1.0, 1.0], "float32")))
    rt._graphs.clear()  # forget the client-side handle, as a new process would
    g2 = rt.graph("model")
    assert g2 is not g1
    np.testing.assert_array_equal(g2["w"].value(), [2.0, 3.0])
    assert [v.name for v in g2.variables()] == ["w"]
    assert g2.version == g1.version


def test_runtime_lists_and_deletes_graphs(rt):
    rt.graph("a")
    rt.graph("b")
    assert set(rt.graphs()) == {"a", "b"}
    rt.delete_graph("a")
    assert rt.graphs() == ["b"]
    with pytest.raises(kf.errors.NotFoundError, match="no graph named 'a'"):
        rt.call("graph.get", ["a"])
    info = rt.info()
    assert info["devices"][0] == "cpu" and "graph.run" in info["methods"]


def test_gpu_node_without_gpu_raises_failed_precondition(g):
    if "gpu:0" in g.runtime.info()["devices"]:
        pytest.skip("a GPU is present")
    with g.device("gpu"):
        y = g.constant(np.float32(1.0), name="c") * 2.0
    with pytest.raises(kf.errors.FailedPreconditionError, match=r"node '.*' is placed on gpu:0 but"):
        g.run(y)


def test_soft_placement_falls_back_to_cpu_and_warns_once(caplog):
    rt = kf.connect("inproc", soft_placement=True)
    if rt._transport.service.devices.gpu_count():
        pytest.skip("a GPU is present")
    g = rt.graph("soft")
    with g.device("gpu:0"):
        y = g.constant(np.float32(2.0), name="c") * 3.0
        z = y + 1.0
    with caplog.at_level("WARNING", logger="kernelflow.devices"):
        assert g.run(z) == 7.0
    assert sum("soft placement" in r.message for r in caplog.records) == 1


def test_make_callable_runs_with_positional_feeds(g):
    x = g.placeholder((None,), "float32", name="x")
    w = g.variable(np.float32(2.0), name="w")
    f = g.make_callable([x * w, kf.sum(x)], feed_list=[x])
    a, s = f(np.array([1.0, 2.0], "float32"))
    np.testing.assert_array_equal(a, [2.0, 4.0])
    assert s == 3.0
    with pytest.raises(kf.errors.InvalidArgumentError, match="expected 1 feed values"):
        f()


def test_node_names_are_unique_and_scoped(g):
    with g.name_scope("dense1"):
        a = g.variable(np.zeros(2, "float32"), name="w")
        b = g.variable(np.zeros(2, "float32"), name="w")
    assert (a.name, b.name) == ("dense1/w", "dense1/w_1")
    assert g["dense1/w_1"] is b
    with pytest.raises(kf.errors.NotFoundError, match="did you mean 'dense1/w'"):
        g["dense1/ww"]


def test_weak_typing_keeps_tensor_dtype(g):
    x = g.placeholder((2,), "float64", name="x")
    assert (x * 2.0).dtype == "float64"
    i = g.placeholder((2,), "int32", name="i")
    assert (i + 1).dtype == "int32"
    assert (i * 1.5).dtype == "float64"  # as numpy: int32 array * 1.5 -> float64


def test_unused_feed_is_allowed_does_not_raise(g):
    a = g.placeholder((2,), "float32", name="a")
    b = g.placeholder((2,), "float32", name="b")
    np.testing.assert_array_equal(g.run(a * 2.0, {a: np.ones(2, "float32"), b: np.zeros(2, "float32")}), [2, 2])


def test_python_scalar_out_of_dtype_range_raises(g):
    u = g.placeholder((2,), "uint8", name="u")
    with pytest.raises(kf.errors.InvalidArgumentError,
                       match=r"multiply: Python scalar -1 does not fit the dtype uint8"):
        u * -1


def test_op_using_update_and_pre_update_read_sees_both_values(g):
    v = g.variable(np.array([1.0]), name="v")
    out = g.run(v.assign_add(np.array([1.0])) + v)
    np.testing.assert_array_equal(out, [3.0])  # new value 2 + value from before the run 1
    np.testing.assert_array_equal(v.value(), [2.0])


def test_inproc_peer_notifications_reach_callbacks_in_order(inproc_rt):
    import threading

    service = inproc_rt._transport.service
    got, done = [], threading.Event()

    def ping(n, *, peer):
        for i in range(n):
            peer.notify("test.ping", [i])
        return n

    from kernelflow.runtime_server.methods import Method, MethodTable

    service.methods = MethodTable([*service.methods.entries(), Method("test.ping", ping, needs_peer=True)])

    def on_ping(params):
        got.append(params[0])
        if len(got) == 5:
            done.set()

    inproc_rt._transport.on_notification("test.ping", on_ping)
    assert inproc_rt.call("test.ping", [5]) == 5
    assert done.wait(5)
    assert got == [0, 1, 2, 3, 4]
    inproc_rt.close()
