"""The CuPy multi-variable update kernel on a GPU: bitwise the members' own CuPy kernels, no host
sync in a step, replayable from a CUDA graph, and training on the GPU with update groups
($KERNELFLOW_GPU_UPDATE_GROUPS=1) equal to training without them. Skipped without CuPy and a CUDA GPU.

Written for the second H200 run; the first (2026-12-04, run 5 of docs/gpu.md) found the kernel
converting the device learning rates to host scalars, and this test wrongly expecting every slot
to change (RMSProp without momentum leaves its momentum slot alone, as the numpy kernel does).
"""

from __future__ import annotations

import numpy as np
import pytest

import kernelflow as kf
from kernelflow.compiler.pipeline import Compiler
from kernelflow.kernels.registry import get_kernel
from tests.compiler.test_multi_update_kernels import OPTIMISERS, Store, _build, _inputs, _state

pytestmark = pytest.mark.gpu
cupy = pytest.importorskip("cupy")
if not cupy.cuda.is_available():
    pytest.skip("no CUDA GPU", allow_module_level=True)


@pytest.fixture
def graph():
    rt = kf.connect("inproc", compile="off")
    yield rt.graph("c")
    rt.close()


@pytest.fixture(autouse=True)
def gpu_groups(monkeypatch):
    monkeypatch.setenv("KERNELFLOW_GPU_UPDATE_GROUPS", "1")


def _own_step(grp, own, dgrads, scalars, dtype):
    for m, gr in zip(grp.members, dgrads):
        m_ins = [own[m.inputs[j].name] for j in range(grp.n_state)] + [gr] + [
            cupy.asarray(np.asarray(s, dtype)) for s in scalars]
        get_kernel(m.op, "cupy").fn(Store(m, own), cupy, *m_ins, **m.attrs)


def _no_sync():
    """A context in which CuPy raises on an implicit device-to-host sync (when this CuPy has one)."""
    import contextlib

    import cupyx

    allow = getattr(cupyx, "allow_synchronize", None)
    return allow(False) if allow is not None else contextlib.nullcontext()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", sorted(OPTIMISERS))
def test_cupy_group_kernel_is_bitwise_the_members_cupy_kernels(graph, tmp_path, name, dtype):
    node, scalars = _build(graph, name, dtype)
    grp = node.op.group
    values, grads = _state(node, np.random.default_rng(5), dtype)
    dev = {k: cupy.asarray(v) for k, v in values.items()}
    own = {k: cupy.asarray(v) for k, v in values.items()}
    dgrads = [cupy.asarray(gr) for gr in grads]
    kernel = Compiler(mode="sync", cache_dir=str(tmp_path)).kernel_for(node, "cupy").fn
    for step in range(3):
        ins = [cupy.asarray(a) if isinstance(a, np.ndarray) else a
               for a in _inputs(node, dgrads, scalars, dev, dtype)]
        if step == 0:
            kernel(Store(node, dev), cupy, *ins)  # compiles and uploads the pointer tables
        else:
            with _no_sync():  # a step never waits for the device (the learning rates stay there)
                kernel(Store(node, dev), cupy, *ins)
        _own_step(grp, own, dgrads, scalars, dtype)
    assert kernel.launches == 3 and not kernel._broken  # the RawKernel compiled and ran each step
    assert kernel.prepares == 1
    for k in values:
        got, want = cupy.asnumpy(dev[k]), cupy.asnumpy(own[k])
        np.testing.assert_array_equal(got, want, err_msg=k)
        # every array the members' kernels change is changed (RMSProp without momentum leaves that slot)
        assert np.array_equal(got, values[k]) == np.array_equal(want, values[k]), k


def test_cupy_group_kernel_replays_from_a_cuda_graph(graph, tmp_path):
    # A capture with new gradient addresses: the pointer table goes through pinned memory, and a
    # replay with other gradient values (same addresses) updates as the members' kernels do.
    dtype = "float32"
    node, scalars = _build(graph, "adamw", dtype)
    grp = node.op.group
    values, grads = _state(node, np.random.default_rng(6), dtype)
    dev = {k: cupy.asarray(v) for k, v in values.items()}
    own = {k: cupy.asarray(v) for k, v in values.items()}
    kernel = Compiler(mode="sync", cache_dir=str(tmp_path)).kernel_for(node, "cupy").fn
    dscal = [cupy.asarray(np.asarray(s, dtype)) for s in scalars]

    def ins(dgrads):
        out = []
        for m, gr in zip(grp.members, dgrads):
            out += [dev[m.inputs[j].name] for j in range(grp.n_state)] + [gr]
        return out + dscal

    warm = [cupy.asarray(g) for g in grads]
    kernel(Store(node, dev), cupy, *ins(warm))  # eager: compiles
    _own_step(grp, own, warm, scalars, dtype)
    stream = cupy.cuda.Stream(non_blocking=True)
    captured = [cupy.asarray(g) for g in grads]
    cupy.cuda.Device().synchronize()
    with stream:
        stream.begin_capture()
        kernel(Store(node, dev), cupy, *ins(captured))
        g = stream.end_capture()
    rng = np.random.default_rng(7)
    for _ in range(2):
        new = [rng.standard_normal(a.shape).astype(dtype) for a in grads]
        for dst, src in zip(captured, new):
            dst.set(src)
        cupy.cuda.Device().synchronize()
        g.launch(stream)
        stream.synchronize()
        _own_step(grp, own, [cupy.asarray(a) for a in new], scalars, dtype)
    for k in values:
        np.testing.assert_array_equal(cupy.asnumpy(dev[k]), cupy.asnumpy(own[k]), err_msg=k)


@pytest.mark.parametrize("opt", ["adam", "adamw", "momentum", "rmsprop"])
def test_gpu_training_with_update_groups_is_bitwise_without_them(monkeypatch, opt):
    # (fused float32 reductions accumulate in double on the GPU: only the grouping differs here)
    from tests.compiler.test_updates import _batches, _mlp

    results = {}
    for mode in ("1", "0"):
        monkeypatch.setenv("KERNELFLOW_GROUP_UPDATES", mode)
        rt = kf.connect("inproc", compile="sync", device="gpu")
        g = rt.graph("t")
        x, y, train, _ = _mlp(g, opt)
        grouped = any(grp["ops"][0].startswith("apply_") for grp in g.fused_groups(train, feeds=[x, y]))
        assert grouped == (mode == "1")
        for xv, yv in _batches():
            g.run(train, {x: xv, y: yv})
        results[mode] = {v.name: g.read_variable(v) for v in g.variables()}
        rt.close()
    for k, v in results["0"].items():
        np.testing.assert_array_equal(results["1"][k], v, err_msg=k)
