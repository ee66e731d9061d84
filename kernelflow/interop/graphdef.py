"""A kernelflow graph as a TensorBoard GraphDef, and event files holding it (protobuf written by hand).

TensorBoard's Graphs dashboard reads a ``GraphDef`` from the ``graph_def`` field of an event.
We encode the few messages it needs (GraphDef, NodeDef, AttrValue, TensorShapeProto, Event)
with the protobuf wire format directly, so neither TensorFlow nor tensorboard is needed to
write one. Each kernelflow node becomes one NodeDef: its name (scopes are the ``/`` parts,
which TensorBoard folds into boxes), its op name, its data inputs and ``^control`` inputs, its
device (``/device:CPU:0``), and the attrs ``_output_shapes`` (TensorBoard labels edges with
them; -1 is an unknown dim), ``dtype`` and the op's small attrs as strings.

Event files are TFRecord files: each record is its length, a masked CRC-32C of the length,
the bytes and a masked CRC-32C of them.

Contents: graph_def, run_metadata, graph_event, EventFileWriter, write_graph, TF_DTYPES.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..graph.ir import Graph, Tensor

TF_DTYPES = {"float32": 1, "float64": 2, "int32": 3, "uint8": 4, "int16": 5, "int8": 6, "str": 7, "int64": 9,
             "bool": 10, "uint16": 17, "float16": 19, "uint32": 22, "uint64": 23}
"""numpy dtype name -> TensorFlow's DataType enum (types.proto)."""

_PRODUCER = 1  # VersionDef.producer: TensorBoard only displays it


# --------------------------------------------------------------------------- protobuf wire format
def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # int64 negatives are ten-byte two's complement varints
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint((field << 3) | wire)


def _bytes(field: int, data: bytes | str) -> bytes:
    if isinstance(data, str):
        data = data.encode()
    return _key(field, 2) + _varint(len(data)) + data


def _int(field: int, n: int) -> bytes:
    return _key(field, 0) + _varint(int(n))


def _double(field: int, x: float) -> bytes:
    return _key(field, 1) + struct.pack("<d", x)


def _shape(shape: tuple | None) -> bytes:
    """TensorShapeProto: dim = 2 (Dim: size = 1); unknown_rank = 3."""
    if shape is None:
        return _int(3, 1)
    return b"".join(_bytes(2, _int(1, -1 if d is None else int(d))) for d in shape)


def _attr_entry(key: str, value: bytes) -> bytes:
    """One entry of NodeDef.attr (field 5): a map entry {key = 1, value = 2 (AttrValue)}."""
    return _bytes(5, _bytes(1, key) + _bytes(2, value))


def _attr_string(v: Any) -> str:
    """A short text form of one op attr (a large array as its dtype and shape)."""
    if isinstance(v, np.ndarray):
        return f"array {v.dtype.name}{list(v.shape)}" if v.size > 8 else np.array2string(v, separator=", ")
    text = repr(v)
    return text if len(text) <= 200 else text[:197] + "..."


def normalize_tf_device(device: str | None) -> str:
    """kernelflow's ``"cpu"``/``"gpu:N"`` as TensorFlow's ``/device:CPU:0``/``/device:GPU:N`` ("" when unset)."""
    if not device:
        return ""
    kind, _, idx = device.partition(":")
    return f"/device:{kind.upper()}:{idx or 0}"


def node_def(n: Tensor, device: str | None = None) -> bytes:
    """One NodeDef (name = 1, op = 2, input = 3, device = 4, attr = 5)."""
    parts = [_bytes(1, n.name), _bytes(2, n.op.name)]
    parts += [_bytes(3, t.name) for t in n.inputs]
    parts += [_bytes(3, "^" + t.name) for t in n.control_inputs]
    dev = normalize_tf_device(device if device is not None else n.device)
    if dev:
        parts.append(_bytes(4, dev))
    for k, v in sorted(n.attrs.items()):
        if k == "dtype":  # written below as a type, as TensorFlow writes it (it is the output's dtype)
            continue
        parts.append(_attr_entry(k, _bytes(2, _attr_string(v))))  # AttrValue.s = 2
    if n.dtype is not None:
        # AttrValue.list = 1 -> ListValue.shape = 7: one shape per output (kernelflow nodes have one).
        parts.append(_attr_entry("_output_shapes", _bytes(1, _bytes(7, _shape(n.shape)))))
        if n.dtype in TF_DTYPES:
            parts.append(_attr_entry("dtype", _int(6, TF_DTYPES[n.dtype])))
    if n.source:
        parts.append(_attr_entry("_source", _bytes(2, n.source)))
    return b"".join(parts)


def graph_def(nodes: Iterable[Tensor], devices: dict[str, str] | None = None) -> bytes:
    """The serialized GraphDef of ``nodes`` (node = 1, versions = 4).

    Args:
        nodes: the nodes, in graph order (e.g. ``g.nodes()``).
        devices: {node name: device it ran on}, overriding each node's requested device.

    Returns:
        GraphDef bytes, as TensorBoard reads from an event's ``graph_def``.
    """
    devices = devices or {}
    body = b"".join(_bytes(1, node_def(n, devices.get(n.name))) for n in nodes)
    return body + _bytes(4, _int(1, _PRODUCER))


def run_metadata(times: Iterable[tuple[str, str, float, float]]) -> bytes:
    """A RunMetadata (step_stats = 1) of one profiled step: ``times`` are (node name, device,
    start, end) in ``time.time()`` seconds; one DeviceStepStats per device (device = 1,
    node_stats = 2), each NodeExecStats with node_name = 1, all_start_micros = 2,
    op_start_rel_micros = 3, op_end_rel_micros = 4, all_end_rel_micros = 5."""
    by_device: dict[str, list[bytes]] = {}
    for name, device, start, end in times:
        t0, dur = int(start * 1e6), max(int((end - start) * 1e6), 0)
        by_device.setdefault(normalize_tf_device(device), []).append(
            _bytes(1, name) + _int(2, t0) + _int(3, 0) + _int(4, dur) + _int(5, dur))
    dev_stats = b"".join(_bytes(1, _bytes(1, dev) + b"".join(_bytes(2, ns) for ns in stats))
                         for dev, stats in by_device.items())
    return _bytes(1, dev_stats)


def graph_event(graph_def_bytes: bytes, wall_time: float | None = None) -> bytes:
    """An Event (wall_time = 1, graph_def = 4) carrying a GraphDef."""
    return _double(1, time.time() if wall_time is None else wall_time) + _bytes(4, graph_def_bytes)


# --------------------------------------------------------------------------- event files (TFRecord)
def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as TFRecord uses."""
    crc = 0xFFFFFFFF
    table = _TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked(data: bytes) -> bytes:
    crc = crc32c(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


class EventFileWriter:
    """Appends Event records to a new ``events.out.tfevents.*`` file in ``logdir``.

    Args:
        logdir: the directory (created when missing).
        suffix: appended to the file name (keeps two writers in one dir apart).
    """

    def __init__(self, logdir: str | os.PathLike, suffix: str = ""):
        Path(logdir).mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}.{os.getpid()}{suffix}"
        self.path = Path(logdir) / name
        self._f = open(self.path, "ab")
        self._lock = threading.Lock()
        self.write(_double(1, time.time()) + _bytes(3, "brain.Event:2"))  # file_version first, as TF writes

    def write(self, event: bytes) -> None:
        """Append one serialized Event."""
        header = struct.pack("<Q", len(event))
        with self._lock:
            self._f.write(header + _masked(header) + event + _masked(event))

    def close(self) -> None:
        """Flush and close the file."""
        with self._lock:
            if not self._f.closed:
                self._f.flush()
                os.fsync(self._f.fileno())
                self._f.close()

    def __enter__(self) -> EventFileWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def write_graph(graph: Graph, logdir: str | os.PathLike, nodes: Iterable[Tensor] | None = None) -> Path:
    """Write ``graph`` (or just ``nodes``) as a GraphDef event file in ``logdir``; returns its path."""
    with EventFileWriter(logdir, suffix=".graph") as w:
        w.write(graph_event(graph_def(graph.nodes() if nodes is None else nodes)))
    return w.path
