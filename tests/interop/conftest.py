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


def onnx_round_trip(rt, g: kf.Graph, path: Path, inputs: dict, outputs: dict, feeds: list[dict],
                    rtol: float = 1e-5, atol: float = 1e-6) -> object:
    """Export, `kf.import_onnx` into a fresh graph, and assert that graph's outputs equal ``g.run``'s on
    each of ``feeds``. Returns the `ImportedModel`."""
    g.export_onnx(path, inputs=inputs, outputs=outputs)
    m = kf.import_onnx(path, rt.graph(f"{g.name}_imported"))
    assert list(m.inputs) == list(inputs) and list(m.outputs) == list(outputs)
    for feed in feeds:
        want = g.run(outputs, feed={inputs[k]: v for k, v in feed.items()})
        got = m.graph.run(m.outputs, feed={m.inputs[k]: v for k, v in feed.items()})
        for k in outputs:
            w, o = np.asarray(want[k]), np.asarray(got[k])
            assert (o.dtype, o.shape) == (w.dtype, w.shape), (k, o.dtype, o.shape, w.dtype, w.shape)
            if w.dtype.kind == "f":
                np.testing.assert_allclose(o, w, rtol=rtol, atol=atol, err_msg=k)
            else:
                np.testing.assert_array_equal(o, w, err_msg=k)
    return m
