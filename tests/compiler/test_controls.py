"""Compiler controls: g.run(compile=False), g.plan(...), graph.run options, `kernelflow serve --no-compile`."""

from __future__ import annotations

import numpy as np
import pytest

import kernelflow as kf
from kernelflow.compiler.cupy_backend import elementwise_source, reduction_source
from kernelflow.compiler.fusion import fuse
from kernelflow.compiler.passes import run_passes
from kernelflow.errors import InvalidArgumentError
from tests.compiler.conftest import plan_of


def _mlp_bits(g):
    x = g.placeholder((None, 8), "float32", name="x")
    b = g.variable(np.linspace(-1, 1, 8).astype(np.float32), name="b")
    h = kf.relu(x * 2.0 + b)
    return x, h, kf.sum(h * h, axis=0)


def test_plan_text_shows_fused_groups_and_compile_false_does_not(rt):
    g = rt.graph("plan")
    x, h, s = _mlp_bits(g)
    on = g.plan([h, s], feeds=[x])
    off = g.plan([h, s], feeds=[x], compile=False)
    # h is fetched and read by h * h: one kernel computes it and the sum, and hands out both
    assert "sum = fused[multiply add relu multiply sum](x, const, b) : float32(8,), float32(None, 8)" in on
    assert "fused_groups 1, fused_ops 5, multi_output_groups 1, extra_outputs 1" in on
    assert "    | relu = relu(add)  [output 1]\n" in on and "tuple_get" not in on
    assert "fused" not in off and "relu = relu(add)" in off and off.startswith("# plan (compiler off)")


def test_plan_groups_format_lists_the_fused_nodes_and_a_bad_format_raises(rt):
    g = rt.graph("plan-groups")
    x, h, s = _mlp_bits(g)
    assert g.fused_groups([h, s], feeds=[x]) == [
        {"name": "sum", "members": ["multiply", "add", "relu", "multiply_1", "sum"],
         "ops": ["multiply", "add", "relu", "multiply", "sum"], "outputs": ["sum", "relu"]}]
    assert g.fused_groups([h, s]) == g.fused_groups([h, s], feeds=[x])  # feeds default to the placeholders
    off = rt.call("graph.plan", ["plan-groups", g.version, [], [h.name], [x.name], {"format": "groups",
                                                                                   "compile": False}])
    assert off == {"compiled": False, "groups": []}
    with pytest.raises(InvalidArgumentError, match=r"option 'format' must be 'text' or 'groups'; got 'xml'"):
        rt.call("graph.plan", ["plan-groups", g.version, [], [h.name], [x.name], {"format": "xml"}])


def test_run_with_and_without_compile_agree(rt, rng):
    g = rt.graph("agree")
    x, h, s = _mlp_bits(g)
    xv = rng.standard_normal((300, 8)).astype(np.float32)  # above the fusion size threshold
    a = g.run([h, s], {x: xv}, compile=False)
    b = g.run([h, s], {x: xv})
    step = g.make_callable([h, s], [x], compile=False)
    c = step(xv)
    for u, v, w in zip(a, b, c):
        assert u.dtype == v.dtype == w.dtype and u.shape == v.shape
        np.testing.assert_allclose(v, u, rtol=1e-5)
        np.testing.assert_array_equal(w, u)


def test_run_option_of_wrong_type_raises(rt):
    g = rt.graph("opts")
    x = g.placeholder((2,), "float32", name="x")
    y = kf.exp(x)
    g.run(y, {x: np.ones(2, np.float32)})
    with pytest.raises(InvalidArgumentError, match=r"option 'compile' must be true or false; got 'no'"):
        rt.call("graph.run", ["opts", g.version, [], [y.name], [x.name], [np.ones(2, np.float32)],
                               {"compile": "no"}])
    with pytest.raises(InvalidArgumentError, match=r"unknown option\(s\) \['fast'\]"):
        rt.call("graph.run", ["opts", g.version, [], [y.name], [x.name], [np.ones(2, np.float32)], {"fast": 1}])


def test_serve_no_compile_runs_plans_as_built(tmp_path):
    from tests.support.server import ServerProcess

    proc = ServerProcess(tmp_path, "--no-compile").wait_listening()
    try:
        rt = kf.connect(proc.url, token=proc.token, timeout=60)
        g = rt.graph("nc")
        x, h, s = _mlp_bits(g)
        text = g.plan([h, s], feeds=[x])
        assert text.startswith("# plan (compiler off)") and "fused" not in text
        out = g.run(h, {x: np.ones((2, 8), np.float32)})
        np.testing.assert_allclose(out, np.maximum(2 + np.linspace(-1, 1, 8), 0)[None].repeat(2, 0), rtol=1e-6)
        rt.close()
    finally:
        proc.stop()


def test_cupy_sources_for_a_chain_and_a_reduction(graph):
    x = graph.placeholder((None, 8), "float32", name="x")
    b = graph.placeholder((8,), "float32", name="b")
    h = kf.maximum(kf.sigmoid(x) * b, 0.5)
    s = kf.mean(kf.exp(x) + b, axis=0)
    order, fed = plan_of([h, s], [x, b])
    rw = run_passes(order, fed, [h, s])
    _, _, made = fuse(rw.order, fed, [rw.resolve(h), rw.resolve(s)], lambda n: True)
    ew = next(m for m in made if m.op.program.reduce is None)
    red = next(m for m in made if m.op.program.reduce is not None)
    src = elementwise_source(ew.op.program)
    assert src["in_params"] == "float32 x0, float32 x1, float32 x2" and src["out_params"] == "float32 y"
    assert "float t0_e = exp(-fabs(x0));" in src["operation"]
    assert "isnan(t1) ? t1 : (isnan(x2) ? x2 : (t1 >= x2 ? t1 : x2))" in src["operation"]
    assert src["operation"].endswith("y = t2;")
    rsrc = reduction_source(red.op.program)
    assert rsrc["reduce_expr"] == "a + b" and rsrc["identity"] == "0" and rsrc["reduce_type"] == "double"
    assert "float t0 = exp(x0);" in rsrc["map_expr"] and "_in_ind.size()" in rsrc["post_map_expr"]


@pytest.mark.gpu
def test_cupy_fused_kernel_matches_numpy_on_gpu(rng):
    cupy = pytest.importorskip("cupy")
    rt = kf.connect("inproc", device="gpu", compile="sync")
    g = rt.graph("gpu")
    x, h, s = _mlp_bits(g)
    xv = rng.standard_normal((300, 8)).astype(np.float32)
    a = g.run([h, s], {x: xv}, compile=False)
    b = g.run([h, s], {x: xv})
    for u, v in zip(a, b):
        np.testing.assert_allclose(v, u, rtol=1e-5)
    assert cupy.cuda.runtime.getDeviceCount() > 0
    rt.close()


def test_without_numba_plans_get_the_passes_and_run_numpy_kernels():
    """The GPU box has no numba: CPU groups are not fused, results equal compile=False."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['numba'] = None\n"
        "import numpy as np, kernelflow as kf\n"
        "rt = kf.connect('inproc', compile='sync')\n"
        "g = rt.graph('n')\n"
        "x = g.placeholder((None, 6, 6, 2), 'float32', name='x')\n"
        "f = g.constant(np.linspace(-1, 1, 36, dtype=np.float32).reshape(3, 3, 2, 2))\n"
        "y = kf.max_pool2d(kf.relu(kf.conv2d(x, f, padding='SAME') * 2.0 + 1.0), 2)\n"
        "xv = np.random.default_rng(0).standard_normal((70, 6, 6, 2)).astype(np.float32)\n"
        "a, b = g.run(y, {x: xv}), g.run(y, {x: xv}, compile=False)\n"
        "plan = g.plan(y, feeds=[x])\n"
        "print(np.array_equal(a, b), 'fused[' in plan, 'numba' in sys.modules and sys.modules['numba'] is not None)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False", "False"], out.stderr[-2000:]


@pytest.mark.parametrize("value, default, want", [
    (None, True, True), (None, False, False), ("0", True, False), ("OFF", True, False), (" False ", True, False),
    ("1", False, True), ("On", False, True), ("TRUE", False, True), ("maybe", True, True), ("maybe", False, False),
])
def test_compiler_switches_read_any_case_and_keep_the_default_otherwise(monkeypatch, tmp_path, value, default,
                                                                        want):
    from kernelflow.compiler.pipeline import Compiler, switch_from_env

    if value is None:
        monkeypatch.delenv("KERNELFLOW_FUSE_MULTI_OUTPUT", raising=False)
    else:
        monkeypatch.setenv("KERNELFLOW_FUSE_MULTI_OUTPUT", value)
    assert switch_from_env("KERNELFLOW_FUSE_MULTI_OUTPUT", default) is want
    if default:  # the compiler's own reading of the switch
        assert Compiler("sync", cache_dir=str(tmp_path)).multi_output is want
