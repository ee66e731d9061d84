"""Control flow (issue #13): values and gradients against TensorFlow (float64, GradientTape),
typed errors for bad bodies and predicates, maximum_iterations, the saved-memory limit, and
graphs with loops surviving a server restart on a state dir and g.export + REST predict."""

from __future__ import annotations

import collections

import numpy as np
import pytest

import kernelflow as kf
from tests.support.server import ServerProcess

IAE = kf.errors.InvalidArgumentError


@pytest.fixture
def g():
    rt = kf.connect("inproc")
    yield rt.graph("cf")
    rt.close()


@pytest.fixture(scope="module")
def tf():
    tf = pytest.importorskip("tensorflow")
    return tf


def _tf_grads(tf, f, *args):
    vs = [tf.Variable(a) for a in args]
    with tf.GradientTape() as tape:
        out = f(*vs)
        obj = tf.reduce_sum(out * tf.constant(np.linspace(-1.0, 2.0, int(np.prod(out.shape))).reshape(out.shape)))
    return out.numpy(), [t.numpy() for t in tape.gradient(obj, vs)]


def _kf_grads(g, f, *args):
    vs = [g.variable(np.asarray(a), name=f"v{i}") for i, a in enumerate(args)]
    out = f(*vs)
    n = int(np.prod(out.shape))
    obj = kf.sum(out * g.constant(np.linspace(-1.0, 2.0, n).reshape(out.shape)))
    return g.run([out, kf.gradients(obj, vs)])


def _compare(tf, g, kf_f, tf_f, *args):
    out, grads = _kf_grads(g, kf_f, *args)
    t_out, t_grads = _tf_grads(tf, tf_f, *args)
    np.testing.assert_allclose(out, t_out, rtol=1e-10, atol=1e-12)
    for a, b in zip(grads, t_grads):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_while_loop_captured_variable_matches_tf(tf, g):
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 3)), rng.standard_normal((3, 3)) * 0.5

    def kf_f(x, w):
        return kf.while_loop(lambda i, h: i < 6, lambda i, h: (i + 1, kf.tanh(h @ w) + x), (0, x))[1]

    def tf_f(x, w):
        return tf.while_loop(lambda i, h: i < 6, lambda i, h: (i + 1, tf.tanh(h @ w) + x), (0, tf.identity(x)))[1]

    _compare(tf, g, kf_f, tf_f, x, w)


def test_nested_while_and_cond_in_loop_match_tf(tf, g):
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal(4), rng.standard_normal(4)

    def kf_f(x, w):
        def body(i, v):
            _, u = kf.while_loop(lambda j, u: j < i, lambda j, u: (j + 1, kf.sin(u * w)), (0, v))
            return i + 1, kf.cond(kf.sum(u) > 0, lambda: u * w, lambda: u + x)
        return kf.while_loop(lambda i, v: i < 4, body, (0, x))[1]

    def tf_f(x, w):
        def body(i, v):
            _, u = tf.while_loop(lambda j, u: j < i, lambda j, u: (j + 1, tf.sin(u * w)), (0, v))
            return i + 1, tf.cond(tf.reduce_sum(u) > 0, lambda: u * w, lambda: u + x)
        return tf.while_loop(lambda i, v: i < 4, body, (0, tf.identity(x)))[1]

    _compare(tf, g, kf_f, tf_f, x, w)


def test_loop_in_cond_and_scan_match_tf(tf, g):
    rng = np.random.default_rng(2)
    xs, w = rng.standard_normal((5, 3)), rng.standard_normal(3)

    def kf_f(xs, w):
        s = kf.scan(lambda a, e: kf.tanh(a * w + e), xs, initializer=xs[0] * 0.0)
        return kf.cond(kf.sum(w) > -100.0, lambda: kf.fori_loop(0, 3, lambda i, v: v * w, s), lambda: s)

    def tf_f(xs, w):
        s = tf.scan(lambda a, e: tf.tanh(a * w + e), xs, initializer=tf.zeros(3, tf.float64))
        return tf.cond(tf.reduce_sum(w) > -100.0,
                       lambda: tf.while_loop(lambda i, v: i < 3, lambda i, v: (i + 1, v * w), (0, s))[1], lambda: s)

    _compare(tf, g, kf_f, tf_f, xs, w)


def test_maximum_iterations_stops_the_loop_as_in_tf(g):
    x = g.placeholder((), "float64", name="x")
    i, v = kf.while_loop(lambda i, v: v < 1e9, lambda i, v: (i + 1, v * 2.0), (0, x), maximum_iterations=5)
    gv = kf.gradients(v, x)
    got = g.run([i, v, gv], {x: 1.5})
    assert int(got[0]) == 5 and float(got[1]) == 48.0 and float(got[2]) == 32.0


def test_trip_count_varies_per_run_forward_and_gradient(g):
    n = g.placeholder((), "int32", name="n")
    x = g.placeholder((), "float64", name="x")
    v = kf.fori_loop(kf.cast(n * 0, "int32"), n, lambda i, v: v * x, g.constant(1.0, dtype="float64"))
    gx = kf.gradients(v, x)
    for k in (0, 1, 4):
        got = g.run([v, gx], {n: k, x: 1.5})
        np.testing.assert_allclose(got, [1.5 ** k, k * 1.5 ** (k - 1) if k else 0.0])


def test_nested_loop_vars_keep_their_structure(g):
    State = collections.namedtuple("State", "h c")
    x = g.placeholder((2,), "float64", name="x")
    out = kf.while_loop(lambda s, d: s.h[0] < 100.0,
                        lambda s, d: (State(s.h * 2.0 + d["b"], s.c + 1.0), {"b": d["b"]}),
                        (State(x, x * 0.0), {"b": g.constant(np.ones(2))}))
    s, d = out
    assert isinstance(s, State) and set(d) == {"b"}
    h, c = g.run([s.h, s.c], {x: np.array([1.0, 2.0])})
    np.testing.assert_allclose(h, [127.0, 191.0])
    np.testing.assert_allclose(c, [6.0, 6.0])


def test_body_returning_other_structure_raises(g):
    x = g.placeholder((), "float32", name="x")
    with pytest.raises(IAE, match=r"while_loop body_fn: must return \(x, x\); got \(x, x, x\)"):
        kf.while_loop(lambda a, b: a < 3.0, lambda a, b: (a, b, a), (x, x))


def test_body_returning_other_dtype_raises(g):
    x = g.placeholder((), "float32", name="x")
    with pytest.raises(IAE, match=r"returned float64\(\) for loop variable 0, which is float32"):
        kf.while_loop(lambda a: a < 3.0, lambda a: kf.cast(a, "float64"), [x])


def test_non_scalar_predicate_raises(g):
    x = g.placeholder((3,), "float32", name="x")
    with pytest.raises(IAE, match=r"cond: pred must be a scalar bool tensor; got .*bool\(3,\)"):
        kf.cond(x > 0, lambda: x, lambda: -x)
    with pytest.raises(IAE, match=r"cond_fn must return one scalar bool tensor; got bool\(3,\)"):
        kf.while_loop(lambda a: a > 0, lambda a: a - 1.0, [x])
    with pytest.raises(IAE, match=r"switch_case: branch_index must be a scalar integer"):
        kf.switch_case(kf.sum(x), [lambda: x])


def test_branches_with_different_dtypes_raise(g):
    x = g.placeholder((), "float32", name="x")
    with pytest.raises(IAE, match=r"cond: output 0 is float32 in false_fn but int32"):
        kf.cond(x > 0, lambda: kf.cast(x, "int32"), lambda: x)


def test_saved_values_over_limit_raise_resource_exhausted_and_change_nothing(g):
    w = g.variable(np.ones(1000), name="w")
    _, v = kf.while_loop(lambda i, v: i < 50, lambda i, v: (i + 1, v * 0.99), (0, w), saved_memory_limit=100_000)
    loss = kf.sum(v)
    train = kf.optim.SGD(0.1).minimize(loss)
    assert float(g.run(loss)) == pytest.approx(1000 * 0.99 ** 50)  # forward alone saves nothing
    with pytest.raises(kf.errors.ResourceExhaustedError, match=r"while '.*': the per-iteration values saved for "
                       r"the gradient exceed the memory limit of 100000 bytes"):
        g.run(train)
    np.testing.assert_array_equal(w.value(), np.ones(1000))


def test_loop_body_creates_variables_in_the_root_graph(g):
    x = g.placeholder((2,), "float32", name="x")

    def body(i, v):
        w = v.graph.variable(np.float32(0.5), name="scale")  # hoisted out of the body
        return i + 1, v * w

    _, v = kf.while_loop(lambda i, v: i < 3, body, (0, x))
    assert [t.name for t in g.variables()] == ["scale"]
    np.testing.assert_allclose(g.run(v, {x: np.array([8.0, 16.0], "float32")}), [1.0, 2.0])
    assert kf.gradients(kf.sum(v), g.variables()[0]) is not None


def _loop_graph(rt, name="loops"):
    g = rt.graph(name)
    x = g.placeholder((None, 3), "float32", name="x")
    w = g.variable(np.array([0.5, -1.0, 2.0], "float32"), name="w")
    s = kf.scan(lambda a, e: kf.tanh(a * w + e), x, initializer=g.constant(np.zeros(3, "float32")))
    y = kf.cond(kf.sum(w) > 0, lambda: s * 2.0, lambda: s)
    y = kf.identity(kf.while_loop(lambda i, v: i < 2, lambda i, v: (i + 1, v + 1.0), (0, y))[1], name="y")
    return g, x, y


def _np_loop(xv):
    w = np.array([0.5, -1.0, 2.0])
    a, out = np.zeros(3), []
    for e in xv:
        a = np.tanh(a * w + e)
        out.append(a)
    return np.stack(out) * 2.0 + 2.0


def test_loops_survive_server_restart_and_export_rest(tmp_path):
    import json
    import urllib.request

    from tests.runtime_server.serving.test_rest import rest_port
    from tests.support.waiting import wait_for

    xv = np.random.default_rng(3).standard_normal((4, 3)).astype("float32")
    args = ("--state-dir", str(tmp_path / "state"), "--http-port", "0", "--file-system-poll-wait-seconds", "0.2")
    srv = ServerProcess(tmp_path, *args).wait_listening()
    try:
        rt = srv.connect()
        g, x, y = _loop_graph(rt)
        np.testing.assert_allclose(g.run(y, {x: xv}), _np_loop(xv), rtol=1e-5)
        assert g.export("loopy", inputs={"x": x}, outputs={"y": y}) == 1
        rt.close()
    finally:
        srv.stop()
    srv = ServerProcess(tmp_path, *args).wait_listening()
    try:
        rt = srv.connect()
        g2 = rt.graph("loops")  # re-attach: the sub-graphs come back from the state dir
        np.testing.assert_allclose(g2.run("y", {"x": xv}), _np_loop(xv), rtol=1e-5)
        port = rest_port(srv)

        def predict():
            req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models/loopy:predict", method="POST",
                                         data=json.dumps({"inputs": {"x": xv.tolist()}}).encode())
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    return json.loads(r.read())
            except urllib.error.HTTPError as e:
                if e.code in (404, 503):  # not found until the restarted server's model poll loads it
                    return None
                raise

        doc = wait_for(predict, "model loopy available")
        np.testing.assert_allclose(np.array(doc["outputs"]), _np_loop(xv), rtol=1e-5)
        rt.close()
    finally:
        srv.stop()


def test_fetching_a_control_flow_node_itself_raises(g):
    x = g.placeholder((), "float32", name="x")
    v = kf.while_loop(lambda a: a < 3.0, lambda a: a + 1.0, [x])[0]
    with pytest.raises(IAE, match=r"fetch 'while' is a while node, which yields 1 values; fetch its tuple_get"):
        g.run(v.inputs[0], {x: 0.0})


@pytest.mark.parametrize("stride", [True, 3, 7])
def test_checkpointed_loops_give_the_same_gradients_with_less_saved(g, stride):
    rng = np.random.default_rng(6)
    xs = g.constant(rng.standard_normal((10, 200)))
    w = g.variable(rng.standard_normal(200) * 0.5, name="w")

    def build(ck, limit):
        s = kf.scan(lambda a, e: kf.tanh(a * w + e), xs, initializer=xs[0] * 0.0, checkpoint=ck, reverse=True)
        _, v = kf.while_loop(lambda i, v: i < 10, lambda i, v: (i + 1, kf.sin(v * w)), (0, s[0]),
                             maximum_iterations=10, checkpoint=ck, saved_memory_limit=limit)
        return kf.gradients(kf.sum(v * v), w)

    full = g.run(build(False, None))
    np.testing.assert_allclose(g.run(build(stride, 8_000)), full, rtol=1e-12)  # 4 of 10 carries fit
    with pytest.raises(kf.errors.ResourceExhaustedError, match="memory limit of 8000 bytes"):
        g.run(build(False, 8_000))


def test_branch_returning_a_variable_gives_its_pre_update_value(g):
    w = g.variable(np.array([1.0, 2.0]), name="w")
    p = g.placeholder((), "bool", name="p")
    y = kf.cond(p, lambda: w, lambda: w * 2.0)
    z = kf.while_loop(lambda v: kf.sum(v) > 100.0, lambda v: v, [w])[0]  # zero trips: w itself
    update = w.assign_add(np.array([10.0, 10.0]))
    got_y, got_z, _ = g.run([y, z, update], {p: True})
    np.testing.assert_array_equal(got_y, [1.0, 2.0])
    np.testing.assert_array_equal(got_z, [1.0, 2.0])
    np.testing.assert_array_equal(w.value(), [11.0, 12.0])
