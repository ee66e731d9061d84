"""Fusion: which nodes group, and the numba kernels compute what the unfused kernels compute."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import kernelflow as kf
from kernelflow.compiler.fusion import FusedOp, fuse
from kernelflow.compiler.numba_backend import FusedKernel, KernelCache, source
from kernelflow.compiler.passes import run_passes
from kernelflow.graph.ops import elementwise as E
from tests.compiler.conftest import fused_plan, plan_of

pytest.importorskip("numba")


def _fused(fetches, feeds, multi=True):
    new, _, made = fused_plan(fetches, feeds, multi)
    return new, made


def _run(kcache, node, *values):
    """The fused node on ``values`` (for its placeholders, in order of creation) and its constants."""
    phs = sorted((t for t in node.inputs if t.op.name == "placeholder"), key=lambda t: t.index)
    by_name = {t.name: v for t, v in zip(phs, values)}
    args = [t.attrs["value"] if t.op.name == "constant" else by_name[t.name] for t in node.inputs]
    fk = FusedKernel(node.op.program, kcache, threads=2)
    fk.min_elements = 0
    with np.errstate(all="ignore"):
        got = fk(*args)
        ref = node.op.program.run_unfused(*args)
    assert fk.fused_calls == 1, "the generated kernel did not run"
    return got, ref


def test_chain_becomes_one_group_with_its_members(graph):
    x = graph.placeholder((None, 8), "float32", name="x")
    b = graph.placeholder((8,), "float32", name="b")
    out = kf.relu(x * 2.0 + b)
    new, made = _fused([out], [x, b])
    assert len(made) == 1
    assert [m.op.name for m in made[0].op.program.members] == ["multiply", "add", "relu"]
    assert isinstance(new[-1].op, FusedOp) and new[-1].name == out.name


def test_node_with_two_consumers_ends_a_group_without_multi_output(graph):
    x = graph.placeholder((4,), "float32", name="x")
    e = kf.exp(x * 3.0)
    out1 = kf.tanh(e) + 1.0
    out2 = kf.sqrt(e) - 1.0
    _, made = _fused([out1, out2], [x], multi=False)
    members = sorted(tuple(m.op.name for m in f.op.program.members) for f in made)
    assert members == [("multiply", "exp"), ("sqrt", "subtract"), ("tanh", "add")]
    assert not any(f.op.program.outputs for f in made)


def test_fetched_inner_node_is_not_swallowed_without_multi_output(graph):
    x = graph.placeholder((4,), "float32", name="x")
    e = kf.exp(x)
    out = kf.log1p(e) * 2.0
    _, made = _fused([out, e], [x], multi=False)
    assert [m.op.name for m in made[0].op.program.members] == ["log1p", "multiply"]


def test_group_reading_a_variable_is_not_moved_past_its_update(graph):
    v = graph.variable(np.ones(4, np.float32), name="v")
    a = kf.exp(v)  # reads v before the update
    upd = kf.assign_add(v, 1.0)
    out = kf.tanh(a) * 2.0  # created after the update: the group would run after it
    order, fed = plan_of([out, upd])
    order.sort(key=lambda n: (n.index if n is not upd else a.index + 0.5))
    rw = run_passes(order, fed, [out, upd])
    _, _, made = fuse(rw.order, fed, [rw.resolve(out), upd], lambda n: True)
    assert not any(any(m.op.name == "exp" for m in f.op.program.members) for f in made)


SHAPES = {
    "flat": ((1000,), (1000,), ()),
    "broadcast_row": ((64, 100), (100,), ()),
    "broadcast_col": ((64, 100), (64, 1), (1, 1)),
    "rank3": ((4, 16, 8), (16, 1), (8,)),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", sorted(SHAPES))
def test_elementwise_kernel_matches_unfused(kcache, graph, rng, kind, dtype):
    sa, sb, sc = SHAPES[kind]
    a, b, c = (graph.placeholder(s, dtype, name=n) for s, n in zip((sa, sb, sc), "abc"))
    out = kf.where(kf.greater(a, b), kf.sigmoid(a * b) - kf.tanh(c), kf.maximum(kf.exp(-kf.abs(a)), c) / (b + 3.0))
    out = kf.relu(out) + kf.rsqrt(kf.square(b) + 1.0) * kf.log1p(kf.abs(c))
    _, made = _fused([out], [a, b, c])
    assert len(made) == 1
    args = [rng.standard_normal(s).astype(dtype) for s in (sa, sb, sc)]
    got, ref = _run(kcache, made[0], *args)
    assert got.dtype == ref.dtype and got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=2e-6 if dtype == "float32" else 1e-14, atol=1e-7)
    np.testing.assert_allclose(got, _float64_reference(args), rtol=1e-5, atol=1e-6)


def _float64_reference(args):
    a, b, c = (x.astype(np.float64) for x in args)
    sig = 1 / (1 + np.exp(-(a * b)))
    out = np.where(a > b, sig - np.tanh(c), np.maximum(np.exp(-np.abs(a)), c) / (b + 3.0))
    return np.maximum(out, 0) + 1 / np.sqrt(b * b + 1.0) * np.log1p(np.abs(c))


def test_nan_and_inf_propagate_as_in_numpy(kcache, graph):
    x = graph.placeholder((8,), "float32", name="x")
    y = graph.placeholder((8,), "float32", name="y")
    out = kf.maximum(kf.relu(x), y) + kf.minimum(x, y) / y
    _, made = _fused([out], [x, y])
    xv = np.array([np.nan, 1, -1, 0, np.inf, -np.inf, 2, 3], np.float32)
    yv = np.array([1, np.nan, 0, 0, 1, 1, -np.inf, np.nan], np.float32)
    got, ref = _run(kcache, made[0], xv, yv)
    np.testing.assert_array_equal(got, ref)  # NaN positions and infinities equal


def test_mixed_dtypes_promote_as_unfused(kcache, graph, rng):
    x = graph.placeholder((50,), "float32", name="x")
    y = graph.placeholder((50,), "float64", name="y")
    m = graph.placeholder((50,), "bool", name="m")
    out = kf.where(m, kf.exp(x) * 1.5, kf.cast(x, "float64") - y) + kf.cast(kf.less(x, 0.0), "float32")
    _, made = _fused([out], [x, y, m])
    args = [rng.standard_normal(50).astype(np.float32), rng.standard_normal(50), rng.random(50) > 0.5]
    got, ref = _run(kcache, made[0], *args)
    assert got.dtype == ref.dtype == np.float64
    np.testing.assert_allclose(got, ref, rtol=1e-6)


@pytest.mark.parametrize("axis,keepdims,like", [(None, False, None), (0, False, None), (1, True, None),
                                                ((0, 1), False, None), (None, False, (200,)),
                                                (None, False, (1, 200)), (None, False, (64, 1))])
@pytest.mark.parametrize("op", ["sum", "mean"])
def test_trailing_reduction_matches_unfused(kcache, graph, rng, axis, keepdims, like, op):
    if like is not None and op == "mean":
        pytest.skip("sum_to has no mean")
    x = graph.placeholder((64, 200), "float32", name="x")
    b = graph.placeholder((200,), "float32", name="b")
    g = E.relu_grad(x * 0.5, x + b)
    if like is not None:
        target = graph.placeholder(like, "float32", name="like")
        out = kf.sum_to(g, target)
        feeds = [x, b, target]
    else:
        out = getattr(kf, op)(g, axis=axis, keepdims=keepdims)
        feeds = [x, b]
    _, made = _fused([out], feeds)
    assert made and made[0].op.program.reduce is not None
    args = [rng.standard_normal(s).astype(np.float32) for s in [(64, 200), (200,)] + ([like] if like else [])]
    got, ref = _run(kcache, made[0], *args)
    assert got.shape == ref.shape and got.dtype == ref.dtype
    # float32 sums: the kernel accumulates in float64, numpy pairwise in float32.
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4)


def test_generated_source_is_plain_numba_text(graph):
    x = graph.placeholder((4,), "float32", name="x")
    out = kf.exp(x) * 2.0
    _, made = _fused([out], [x])
    text = source(made[0].op.program, "flat", (False, True), parallel=True)
    assert "@numba.njit(parallel=True, cache=True, error_model='numpy'" in text
    assert "for i in prange(n):" in text and "x1 = a1[0]" in text and "np.exp(x0)" in text


def test_kernel_loads_from_disk_cache_after_restart(tmp_path):
    script = textwrap.dedent("""
        import sys, numpy as np, kernelflow as kf
        from kernelflow.compiler.numba_backend import KernelCache, FusedKernel
        from kernelflow.compiler.fusion import fuse
        from kernelflow.compiler.passes import run_passes
        from kernelflow.graph.ir import toposort
        rt = kf.connect("inproc", compile="off")
        g = rt.graph("d")
        x = g.placeholder((100,), "float32", name="x")
        out = kf.tanh(kf.exp(x) * 0.5)
        order = toposort([out])
        rw = run_passes(order, {id(x)}, [out])
        _, _, made = fuse(rw.order, {id(x)}, [rw.resolve(out)], lambda n: True)
        cache = KernelCache(sys.argv[1], background=False)
        fk = FusedKernel(made[0].op.program, cache, threads=1)
        fk.min_elements = 0
        fk(np.linspace(-1, 1, 100, dtype=np.float32), made[0].inputs[1].attrs["value"])
        print(cache.compiled, cache.disk_hits, fk.fused_calls)
    """)
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    runs = [subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, env=env,
                           check=True).stdout.split() for _ in range(2)]
    assert runs[0] == ["1", "0", "1"]  # compiled cold
    assert runs[1] == ["1", "1", "1"]  # the restarted process loads it from disk


def test_tampered_cache_source_is_rewritten(tmp_path, graph):
    x = graph.placeholder((4,), "float32", name="x")
    _, made = _fused([kf.exp(x) + 1.0], [x])
    cache = KernelCache(str(tmp_path), background=False)
    fk = FusedKernel(made[0].op.program, cache, threads=1)
    fk.min_elements = 0
    fk(np.ones(4, np.float32), np.ones((), np.float32))
    (path,) = tmp_path.glob("kf_*.py")
    path.write_text("raise SystemExit('imported a file it did not write')\n")
    fresh = KernelCache(str(tmp_path), background=False)
    fk2 = FusedKernel(made[0].op.program, fresh, threads=1)
    fk2.min_elements = 0
    np.testing.assert_allclose(fk2(np.ones(4, np.float32), np.ones((), np.float32)), np.e + 1, rtol=1e-6)
    assert "raise SystemExit" not in path.read_text()


def test_big_output_is_reused_only_when_nobody_holds_it(kcache, graph):
    x = graph.placeholder((None,), "float32", name="x")
    _, made = _fused([kf.exp(x) * 2.0], [x])
    fk = FusedKernel(made[0].op.program, kcache, threads=1)
    xv = np.linspace(-1, 1, 1 << 18, dtype=np.float32)
    two = made[0].inputs[1].attrs["value"]
    first = fk(xv, two)
    kept = first  # the caller still holds it: the next call must not write into it
    second = fk(xv * 0.5, two)
    assert second is not kept
    np.testing.assert_allclose(kept, np.exp(xv) * 2, rtol=1e-6)
    addr = second.__array_interface__["data"][0]
    del first, kept, second
    third = fk(xv, two)  # nobody holds the last output: its buffer is reused
    assert third.__array_interface__["data"][0] == addr
    np.testing.assert_allclose(third, np.exp(xv) * 2, rtol=1e-6)


def test_replayed_calls_follow_new_values_shapes_and_a_rebound_bias(kcache, graph, rng):
    x = graph.placeholder((None, 300), "float32", name="x")
    b = graph.placeholder((300,), "float32", name="b")
    _, made = _fused([kf.relu(x * 2.0 + b)], [x, b])
    node = made[0]
    fk = FusedKernel(node.op.program, kcache, threads=1)
    two = node.inputs[1].attrs["value"]

    def ref(xv, bv):
        return np.maximum(xv * 2 + bv, 0)

    bias = rng.standard_normal(300).astype(np.float32)
    for rows in (32, 32, 20, 32):  # the second call replays the first's signature; 20 rows is a new one
        xv = rng.standard_normal((rows, 300)).astype(np.float32)
        np.testing.assert_allclose(fk(xv, two, bias), ref(xv, bias), rtol=1e-6)
    bias += 1.0  # updated in place (a variable's storage): the kept row view sees it
    np.testing.assert_allclose(fk(xv, two, bias), ref(xv, bias), rtol=1e-6)
    other = rng.standard_normal(300).astype(np.float32)  # another array with the same signature
    np.testing.assert_allclose(fk(xv, two, other), ref(xv, other), rtol=1e-6)
    assert fk.fused_calls == 6 and fk.unfused_calls == 0 and len(fk._replays) == 2
    xf = np.asfortranarray(xv)  # another layout: another signature (compiled for it on first sight)
    for _ in range(3):
        np.testing.assert_allclose(fk(xf, two, other), ref(xv, other), rtol=1e-6)
    assert fk.fused_calls >= 8 and len(fk._replays) == 3
    # the bias is read as a row vector ([j]), not through a broadcast view
    assert any(key[0] == "2d" and "r" in key[1] for key in fk._sources)


def test_one_element_group_of_three_ops_is_compiled_below_the_threshold(kcache, graph):
    t = graph.placeholder((), "float64", name="t")
    lr = kf.sqrt(1.0 - 0.999 ** (t + 1.0)) / (1.0 - 0.9 ** (t + 1.0)) * 0.001
    _, made = _fused([lr], [t])
    fk = FusedKernel(made[0].op.program, kcache, threads=1)  # the default threshold (4096)
    args = [np.float64(4.0) if i.op.name == "placeholder" else i.attrs["value"] for i in made[0].inputs]
    got = fk(*[np.asarray(a) for a in args])
    assert fk.fused_calls == 1
    np.testing.assert_allclose(got, np.sqrt(1 - 0.999 ** 5) / (1 - 0.9 ** 5) * 0.001, rtol=1e-14)


def test_background_compile_thread_ends_when_idle_and_a_later_compile_starts_another(tmp_path, graph, monkeypatch):
    """The compile thread holds its cache (and every kernel in it): it must not outlive its work."""
    import threading
    import time
    import weakref

    from kernelflow.compiler import numba_backend

    monkeypatch.setattr(numba_backend, "COMPILE_THREAD_IDLE_S", 0.05, raising=False)
    x = graph.placeholder((4,), "float32", name="x")
    cache = KernelCache(str(tmp_path), background=True)
    xv, one = np.arange(4, dtype=np.float32) - 1.5, np.ones((), np.float32)

    def compiled(cache, expr, want):
        _, made = _fused([expr], [x])
        fk = FusedKernel(made[0].op.program, cache, threads=1)
        fk.min_elements = 0
        np.testing.assert_allclose(fk(xv, one), want, rtol=1e-6)  # unfused while it compiles
        assert cache.wait_idle(120)
        fk(xv, one)
        assert fk.fused_calls == 1, "the kernel compiled in the background did not run"

    def wait_thread_ended(cache) -> None:
        end = time.monotonic() + 30
        while cache._thread is not None:
            assert time.monotonic() < end, "the compile thread did not end when idle"
            time.sleep(0.01)

    compiled(cache, kf.exp(x) + 1.0, np.exp(xv) + 1)
    first = cache._thread
    assert isinstance(first, threading.Thread)
    wait_thread_ended(cache)
    first.join(30)
    assert not first.is_alive()
    compiled(cache, kf.tanh(x) * 1.0, np.tanh(xv))  # a new thread compiles the next kernel
    wait_thread_ended(cache)
    ref = weakref.ref(cache)
    del cache
    import gc

    gc.collect()
    assert ref() is None, "something still holds the idle cache"
