"""The CuPy multi-variable update kernel on a GPU: bitwise the members' own CuPy kernels, and
training on the GPU with the compiler on equal to off. Skipped without CuPy and a CUDA GPU."""

from __future__ import annotations

import numpy as np
import pytest

import kernelflow as kf
from kernelflow.compiler.pipeline import Compiler
from kernelflow.kernels.registry import get_kernel
from tests.compiler.test_multi_update_kernels import OPTIMISERS, Store, _build, _inputs, _state

pytestmark = [pytest.mark.gpu, pytest.mark.xfail(
    reason="the CuPy multi-update kernel is not enabled: on the first H200 run (2026-12-04) it raised on device "
           "scalars and left an optimiser slot unchanged; GPU updates keep their own kernels (docs/gpu.md)",
    strict=False)]
cupy = pytest.importorskip("cupy")
if not cupy.cuda.is_available():
    pytest.skip("no CUDA GPU", allow_module_level=True)


@pytest.fixture
def graph():
    rt = kf.connect("inproc", compile="off")
    yield rt.graph("c")
    rt.close()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", sorted(OPTIMISERS))
def test_cupy_group_kernel_is_bitwise_the_members_cupy_kernels(graph, tmp_path, name, dtype):
    node, scalars = _build(graph, name, dtype)
    grp = node.op.group
    values, grads = _state(node, np.random.default_rng(5), dtype)
    dev = {k: cupy.asarray(v) for k, v in values.items()}
    own = {k: cupy.asarray(v) for k, v in values.items()}
    dgrads = [cupy.asarray(gr) for gr in grads]
    entry = Compiler(mode="sync", cache_dir=str(tmp_path)).kernel_for(node, "cupy")
    kernel = entry.fn
    for _ in range(3):
        ins = [cupy.asarray(a) if isinstance(a, np.ndarray) else a
               for a in _inputs(node, dgrads, scalars, dev, dtype)]
        kernel(Store(node, dev), cupy, *ins)
        for m, gr in zip(grp.members, dgrads):
            m_ins = [own[m.inputs[j].name] for j in range(grp.n_state)] + [gr] + [
                cupy.asarray(np.asarray(s, dtype)) for s in scalars]
            get_kernel(m.op, "cupy").fn(Store(m, own), cupy, *m_ins, **m.attrs)
    assert kernel._kernels and not kernel._broken  # the RawKernel compiled and ran
    for k in values:
        np.testing.assert_array_equal(cupy.asnumpy(dev[k]), cupy.asnumpy(own[k]), err_msg=k)
        assert not np.array_equal(cupy.asnumpy(dev[k]), values[k]) or name.startswith("sgd"), k


@pytest.mark.parametrize("opt", ["adam", "adamw", "momentum"])
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
