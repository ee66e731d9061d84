"""In-graph summary ops (issue #17): tags under name scopes, checks, pass-through value and gradient."""

from __future__ import annotations

import numpy as np
import pytest

import kernelflow as kf
from kernelflow.graph.ops.summary import summaries_of


def test_summary_tags_follow_name_scopes(g):
    x = g.placeholder((None, 3), "float32", name="x")
    with g.name_scope("train"):
        s = kf.summary.scalar("loss", kf.mean(x))
        with g.name_scope("layer1"):
            h = kf.summary.histogram("acts", x)
    a = kf.summary.audio("wave", x, sample_rate=8000)
    t = kf.summary.text("chars", kf.cast(x, "int32"))
    assert [(n.attrs["kind"], n.attrs["tag"]) for n in summaries_of(g)] == [
        ("scalar", "train/loss"), ("histogram", "train/layer1/acts"), ("audio", "wave"), ("text", "chars")]
    assert s.name == "train/summary_loss" and h.shape == (None, 3) and a.attrs["sample_rate"] == 8000.0
    assert t.dtype == "int32"


def test_summary_value_and_gradient_pass_through(g):
    x = g.placeholder((3,), "float64", name="x")
    y = kf.sum(kf.summary.histogram("h", x) * x)
    gx = kf.gradients(y, x)
    v = np.array([1.5, -2.0, 0.25])
    np.testing.assert_allclose(g.run(gx, {x: v}), 2 * v)
    np.testing.assert_array_equal(g.run(g["summary_h"], {x: v}), v)


@pytest.mark.parametrize("build, match", [
    (lambda x: kf.summary.scalar("s", x), r"summary.scalar 's': the tensor must be a scalar; got shape \(None, 3\)"),
    (lambda x: kf.summary.audio("a", x, sample_rate=0), "sample_rate must be > 0"),
    (lambda x: kf.summary.audio("a", kf.cast(x, "int32"), 8000), "must be float"),
    (lambda x: kf.summary.text("t", x), "integer character codes"),
    (lambda x: kf.summary.image("", x), "name must be a non-empty string"),
])
def test_summary_bad_input_raises(g, build, match):
    x = g.placeholder((None, 3), "float32", name="x")
    with pytest.raises(kf.errors.InvalidArgumentError, match=match):
        build(x)
