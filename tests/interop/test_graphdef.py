"""The graph as a TensorBoard GraphDef (issue #17): TensorBoard's own loader reads what we write."""

from __future__ import annotations

import numpy as np
import pytest

import kernelflow as kf
from kernelflow.interop.graphdef import crc32c, graph_def
from tests.runtime_server.serving.conftest import build_digits


def _edges(nodes) -> set[tuple[str, str]]:
    return {(i.name, n.name) for n in nodes for i in n.inputs} | \
        {("^" + c.name, n.name) for n in nodes for c in n.control_inputs}


def test_crc32c_known_values():
    # RFC 3720 B.4 test vectors: 32 bytes of zeros, of 0xff, and 0..31.
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(bytes(range(32))) == 0x46DD794E


def test_to_tensorboard_graph_equals_kernelflow_graph(rt, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    d = build_digits(rt, name="tb_digits", steps=0)
    with d.g.device("cpu"), d.g.control_dependencies([d.g["Adam/train"]]):
        extra = kf.identity(d.probs, name="on_cpu")
    path = d.g.to_tensorboard(tmp_path / "run")
    assert path.parent == tmp_path / "run" and "tfevents" in path.name
    acc = EventAccumulator(str(tmp_path / "run"))
    acc.Reload()
    assert acc.Tags()["graph"] is True
    gd = acc.Graph()
    nodes = d.g.nodes()
    assert [n.name for n in gd.node] == [n.name for n in nodes]
    assert [n.op for n in gd.node] == [n.op.name for n in nodes]
    assert {(i, n.name) for n in gd.node for i in n.input} == _edges(nodes)
    by_name = {n.name: n for n in gd.node}
    shape = by_name[d.probs.name].attr["_output_shapes"].list.shape[0]
    assert [dim.size for dim in shape.dim] == [-1, 10]
    assert by_name[extra.name].device == "/device:CPU:0"
    assert by_name["w1"].attr["dtype"].type == 1  # DT_FLOAT
    assert "Adam/update_w1" in by_name  # scopes kept in the names
    assert list(by_name[extra.name].input) == [d.probs.name, "^Adam/train"]


def test_graph_def_of_scoped_nodes_parses_with_tensorboard_protos(g):
    from tensorboard.compat.proto.graph_pb2 import GraphDef

    x = g.placeholder((None, 4), "float32", name="x")
    with g.name_scope("block"):
        y = kf.relu(x @ g.constant(np.ones((4, 2), "float32"), name="w"), name="act")
    gd = GraphDef.FromString(graph_def(g.nodes()))
    assert [n.name for n in gd.node] == ["x", "block/w", "block/matmul", "block/act"]
    assert list(gd.node[-1].input) == ["block/matmul"]
    assert gd.node[1].attr["value"].s.decode().replace(" ", "").startswith("[[1.,1.]")
    assert y.name == "block/act"


@pytest.fixture(scope="module")
def rt():
    r = kf.connect("inproc")
    yield r
    r.close()
