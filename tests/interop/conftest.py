"""Shared helpers of the interop tests: export a graph to ONNX and compare onnxruntime with g.run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import kernelflow as kf


@pytest.fixture(scope="module")
def rt():
    """One in-process runtime for a test module (each test makes its own graph)."""
    r = kf.connect("inproc")
    yield r
    r.close()


def onnx_matches_run(g: kf.Graph, path: Path, inputs: dict, outputs: dict, feeds: list[dict],
                     rtol: float = 1e-5, atol: float = 1e-6, feed_extra: dict | None = None) -> object:
    """Export, check, run onnxruntime on each of ``feeds`` ({input key: array}) and assert its outputs
    equal ``g.run``'s (same dtype and shape, values within tolerance). Returns the ModelProto."""
    import onnx
    import onnxruntime as ort

    g.export_onnx(path, inputs=inputs, outputs=outputs)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    assert names == list(outputs)
    for feed in feeds:
        got = dict(zip(names, sess.run(None, feed)))
        want = g.run(outputs, feed={**{inputs[k]: v for k, v in feed.items()}, **(feed_extra or {})})
        for k in outputs:
            w = np.asarray(want[k])
            assert got[k].dtype == w.dtype, (k, got[k].dtype, w.dtype)
            assert got[k].shape == w.shape, (k, got[k].shape, w.shape)
            if w.dtype.kind == "f":
                np.testing.assert_allclose(got[k], w, rtol=rtol, atol=atol, err_msg=k)
            else:
                np.testing.assert_array_equal(got[k], w, err_msg=k)
    return model
