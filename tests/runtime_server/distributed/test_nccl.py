"""The NCCL backend (issue #18) on a one-rank world: the CuPy all-reduce wrapper and the fusion
buckets on device buffers. Skipped without CuPy and a CUDA GPU (its logic is the same interface
the MPI tests exercise)."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gpu
cupy = pytest.importorskip("cupy")
if not cupy.cuda.is_available():
    pytest.skip("no CUDA GPU", allow_module_level=True)


def _comm():
    from kernelflow.runtime_server.distributed.comm import LocalCommunicator
    from kernelflow.runtime_server.distributed.nccl import NCCLCommunicator

    return NCCLCommunicator(LocalCommunicator(), device=0, timeout_s=30.0)


def test_nccl_allreduce_one_rank_keeps_values_and_dtype():
    c = _comm()
    for dt in ("float32", "float64", "float16"):
        x = cupy.arange(1000, dtype=dt) / 7
        want = cupy.asnumpy(x).copy()
        c.allreduce_sum([x], "t")
        got = cupy.asnumpy(x)
        assert got.dtype == np.dtype(dt)
        np.testing.assert_array_equal(got, want)
    c.close()


def test_nccl_fusion_buckets_on_device_scale_and_unpack():
    from kernelflow.runtime_server.distributed.fusion import GradientReducer

    specs = [("w", (64, 32), "float32"), ("b", (32,), "float32"), ("s", (), "float64")]
    rng = np.random.default_rng(0)
    host = [rng.standard_normal(s).astype(d) for _, s, d in specs]
    red = GradientReducer(_comm(), specs, bucket_bytes=4096, xp=cupy)
    out = red.reduce([cupy.asarray(h) for h in host], "t", scale=2.0)
    for h, o in zip(host, out):
        assert isinstance(o, cupy.ndarray) and o.shape == h.shape and o.dtype == h.dtype
        np.testing.assert_allclose(cupy.asnumpy(o), 2.0 * h.astype(np.float64), rtol=1e-6)


def test_nccl_rejects_an_unsupported_dtype():
    from kernelflow.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="nccl: cannot reduce a complex64 buffer"):
        _comm().allreduce_sum([cupy.zeros(3, "complex64")], "t")
