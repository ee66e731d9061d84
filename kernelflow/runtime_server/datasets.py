"""Resident datasets: named arrays uploaded once and kept on the runtime's device.

A dataset is a set of named arrays ("columns") that agree on their first dimension. It is
uploaded in chunks (``dataset.begin``, one ``dataset.put`` per slice, ``dataset.commit``)
into arrays allocated once on the runtime's default device, so the server holds at most
one chunk beyond the dataset itself. A split is a view: an index array into the rows of
its root dataset, with no copy of the data. Jobs cut minibatches from datasets on the
device (`StoredDataset.epoch_rows`, `StoredDataset.gather`).

Contents: StoredDataset, DatasetStore.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
)
from .engine.devices import Placement, to_host

if TYPE_CHECKING:
    from .engine.devices import DeviceManager
    from .persist.state import StateDir

log = logging.getLogger("kernelflow.datasets")

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_VIEW_INDEX = "index"  # the one array a persisted view holds


def _check_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name) or len(name) > 200:
        raise InvalidArgumentError(f"{what} must be letters, digits, '_', '.' or '-' (not starting with a "
                                   f"punctuation mark, at most 200 characters); got {name!r}")
    return name


@dataclass
class StoredDataset:
    """One dataset on the runtime: columns on ``place``, or a view (row index) of a root dataset."""

    name: str
    columns: dict[str, Any]
    length: int
    place: Placement
    meta: dict[str, Any] = field(default_factory=dict)
    index: np.ndarray | None = None      # a view's rows of the root dataset (host int64)
    device_index: Any = None             # the same on the device
    view_of: str | None = None

    def base_rows(self) -> np.ndarray:
        """This dataset's rows of its root's columns (host int64)."""
        return self.index if self.index is not None else np.arange(self.length, dtype=np.int64)

    def column_info(self) -> dict[str, dict]:
        out = {}
        for c, a in self.columns.items():
            shape = [self.length, *a.shape[1:]]
            row_bytes = int(a.dtype.itemsize * int(np.prod(a.shape[1:], dtype=np.int64)))
            out[c] = {"dtype": a.dtype.str, "shape": shape, "bytes": row_bytes * self.length}
        return out

    def info(self) -> dict[str, Any]:
        """``{"name", "length", "arrays", "bytes", "device", "view_of", "created"}``; ``bytes`` is the
        memory the dataset itself holds (a view: its index only)."""
        own = int(self.index.nbytes) if self.index is not None else sum(int(a.nbytes) for a in self.columns.values())
        return {"name": self.name, "length": self.length, "arrays": self.column_info(), "bytes": own,
                "device": self.place.name, "view_of": self.view_of, "created": self.meta.get("created"),
                "split": self.meta.get("split")}

    # ----------------------------------------------------------------- minibatches (jobs)
    def epoch_rows(self, order: np.ndarray | None, devices: Any) -> Any:
        """Root rows in the order of one epoch, on the device; None means "rows 0..length in order"
        of an unviewed dataset (batches are then plain slices, no gather)."""
        if order is None:
            return self.device_index
        rows = self.index[order] if self.index is not None else order
        return devices.to_device(np.ascontiguousarray(rows, dtype=np.int64), self.place)

    def gather(self, names: list[str], rows: Any, lo: int, hi: int) -> list[Any]:
        """Rows ``lo:hi`` of an epoch (see `epoch_rows`) of the columns ``names``."""
        if rows is None:
            return [self.columns[n][lo:hi] for n in names]
        sel = rows[lo:hi]
        return [self.columns[n].take(sel, axis=0) for n in names]


@dataclass
class _Upload:
    id: str
    name: str
    columns: dict[str, Any]
    length: int
    place: Placement
    meta: dict[str, Any]
    peer: Any
    filled: dict[str, int]


class DatasetStore:
    """The runtime's datasets and the ``dataset.*`` RPC methods."""

    def __init__(self, devices: DeviceManager, state: StateDir | None):
        self.devices = devices
        self.state = state
        self.datasets: dict[str, StoredDataset] = {}
        self._uploads: dict[str, _Upload] = {}
        self._lock = threading.Lock()

    def get(self, name: Any) -> StoredDataset:
        """The dataset ``name``, or NotFoundError listing the known ones."""
        with self._lock:
            ds = self.datasets.get(name) if isinstance(name, str) else None
            if ds is None:
                raise NotFoundError(f"no dataset named {name!r}; datasets: {sorted(self.datasets)}")
            return ds

    def _place(self, name: str) -> Placement:
        return self.devices.resolve(None, f"<dataset {name}>")

    # ----------------------------------------------------------------- upload
    def begin(self, name: str, columns: dict, options: dict | None = None, *, peer: Any = None) -> dict:
        """Start an upload of ``columns`` ({name: {"dtype", "shape"}}); returns ``{"upload": id}``, or
        ``{"reused": true, "info": ...}`` when a dataset of that name has the same fingerprint."""
        name = _check_name(name, "dataset: name")
        options = options if isinstance(options, dict) else {}
        if not isinstance(columns, dict) or not columns:
            raise InvalidArgumentError(f"dataset '{name}': arrays must be a non-empty map of name -> array")
        specs: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}
        for c, spec in columns.items():
            _check_name(c, f"dataset '{name}': array name")
            specs[c] = _parse_spec(name, c, spec)
        lengths = {c: s[1][0] for c, s in specs.items()}
        if len(set(lengths.values())) > 1:
            got = ", ".join(f"{c}: {n}" for c, n in lengths.items())
            raise InvalidArgumentError(f"dataset '{name}': arrays must agree on their first dimension (one row per "
                                       f"example); got {got}")
        fingerprint = options.get("fingerprint")
        with self._lock:
            old = self.datasets.get(name)
        if old is not None:
            if fingerprint and old.meta.get("fingerprint") == fingerprint:
                return {"reused": True, "info": old.info()}
            if not options.get("overwrite"):
                raise AlreadyExistsError(f"dataset '{name}' exists with other contents; pass overwrite=True to "
                                         f"replace it, or rt.dataset('{name}') to re-attach to it")
        place = self._place(name)
        xp = np if place.backend == "numpy" else _cupy(place)
        try:
            arrays = {c: xp.empty(shape, dtype=dt) for c, (dt, shape) in specs.items()}
        except MemoryError as e:
            total = sum(int(np.prod(s, dtype=np.int64)) * dt.itemsize for dt, s in specs.values())
            raise ResourceExhaustedError(f"dataset '{name}': cannot allocate {total} bytes on {place.name}: "
                                         f"{e}") from e
        up = _Upload(uuid.uuid4().hex, name, arrays, next(iter(lengths.values())), place,
                     {"created": time.time(), "fingerprint": fingerprint}, peer, dict.fromkeys(arrays, 0))
        with self._lock:
            self._uploads[up.id] = up
        return {"upload": up.id}

    def _upload(self, upload_id: Any) -> _Upload:
        with self._lock:
            up = self._uploads.get(upload_id) if isinstance(upload_id, str) else None
        if up is None:
            raise NotFoundError(f"dataset: no upload {upload_id!r} in progress (committed, aborted, or its "
                                "connection closed)")
        return up

    def put(self, upload_id: str, column: str, start: int, chunk: Any) -> int:
        """Copy ``chunk`` into rows ``start:start+len(chunk)`` of ``column``; returns rows received so far."""
        up = self._upload(upload_id)
        dst = up.columns.get(column) if isinstance(column, str) else None
        if dst is None:
            raise InvalidArgumentError(f"dataset '{up.name}': no array {column!r} in this upload; arrays: "
                                       f"{sorted(up.columns)}")
        if not isinstance(chunk, np.ndarray):
            raise InvalidArgumentError(f"dataset '{up.name}': chunk of {column!r} must be an ndarray")
        if chunk.dtype.name != dst.dtype.name or chunk.shape[1:] != dst.shape[1:] or chunk.ndim != dst.ndim:
            raise InvalidArgumentError(f"dataset '{up.name}': chunk of {column!r} is {chunk.dtype.str}"
                                       f"{list(chunk.shape)}; expected {dst.dtype.str}[n, "
                                       f"{', '.join(map(str, dst.shape[1:]))}]")
        start = int(start)
        stop = start + chunk.shape[0]
        if start < 0 or stop > up.length:
            raise InvalidArgumentError(f"dataset '{up.name}': chunk rows {start}:{stop} of {column!r} are outside "
                                       f"0:{up.length}")
        dst[start:stop] = chunk if up.place.backend == "numpy" else self.devices.to_device(chunk, up.place)
        with self._lock:
            up.filled[column] += stop - start
            return up.filled[column]

    def commit(self, upload_id: str) -> dict:
        """Finish an upload: every row of every array must have arrived; returns the dataset's info."""
        up = self._upload(upload_id)
        short = {c: n for c, n in up.filled.items() if n != up.length}
        if short:
            got = ", ".join(f"{c}: {n}" for c, n in short.items())
            raise FailedPreconditionError(f"dataset '{up.name}': upload incomplete; {up.length} rows expected per "
                                          f"array, got {got}")
        with self._lock:
            self._uploads.pop(up.id, None)
        ds = StoredDataset(up.name, up.columns, up.length, up.place, up.meta)
        with self._lock:
            self._drop_locked(up.name)  # an overwritten dataset and the splits made from it
        if self.state is not None:
            self.state.write_dataset(up.name, {c: to_host(a) for c, a in up.columns.items()}, up.meta)
        with self._lock:
            self.datasets[up.name] = ds
        log.info("dataset '%s': %d rows, %s on %s", up.name, up.length, sorted(up.columns), up.place.name)
        return ds.info()

    def abort(self, upload_id: str) -> bool:
        """Drop an upload in progress."""
        with self._lock:
            return self._uploads.pop(upload_id, None) is not None if isinstance(upload_id, str) else False

    def peer_closed(self, peer: Any) -> None:
        with self._lock:
            for uid in [u.id for u in self._uploads.values() if u.peer is peer]:
                del self._uploads[uid]

    # ----------------------------------------------------------------- queries
    def info(self, name: str) -> dict:
        """A dataset's names, shapes, dtypes, bytes and device."""
        return self.get(name).info()

    def list(self) -> list[dict]:
        """Info of every dataset, by name."""
        with self._lock:
            items = sorted(self.datasets.items())
        return [ds.info() for _, ds in items]

    def read(self, name: str, column: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows ``start:stop`` of one array of a dataset (a host copy)."""
        ds = self.get(name)
        if column not in ds.columns:
            raise NotFoundError(f"dataset '{name}' has no array {column!r}; arrays: {sorted(ds.columns)}")
        lo, hi, _ = slice(int(start), None if stop is None else int(stop)).indices(ds.length)
        hi = max(hi, lo)
        if ds.index is None:
            return np.array(to_host(ds.columns[column][lo:hi]), copy=True)
        return np.asarray(to_host(ds.columns[column].take(ds.device_index[lo:hi], axis=0)))

    def delete(self, name: str) -> list[str]:
        """Delete a dataset and the splits made from it; returns the names deleted. Jobs that use
        them keep their arrays until they end."""
        self.get(name)
        with self._lock:
            gone = self._drop_locked(name)
        return gone

    def _drop_locked(self, name: str) -> list[str]:
        gone = [name] if name in self.datasets else []
        gone += [n for n, d in self.datasets.items() if d.view_of == name]
        for n in gone:
            del self.datasets[n]
            if self.state is not None:
                try:
                    self.state.delete_dataset(n)
                except Exception:
                    log.error("cannot delete dataset '%s' from the state dir", n, exc_info=True)
        return gone

    # ----------------------------------------------------------------- views
    def split(self, name: str, fraction: float, seed: int = 0, shuffle: bool = True,
              names: list | None = None) -> list[dict]:
        """Split a dataset into two views (no copy): the first ``fraction`` of its rows (shuffled by
        ``seed`` when ``shuffle``) and the rest; returns their infos."""
        ds = self.get(name)
        try:
            fraction = float(fraction)
        except (TypeError, ValueError):
            raise InvalidArgumentError(f"dataset.split: fraction must be a number; got {fraction!r}") from None
        n_a = int(ds.length * fraction)
        if not 0.0 < fraction < 1.0 or n_a == 0 or n_a == ds.length:
            raise InvalidArgumentError(f"dataset.split: fraction must be in (0, 1) and leave rows on both sides; "
                                       f"got fraction={fraction} of {ds.length} rows of '{name}'")
        names = list(names) if names else [f"{name}.train", f"{name}.val"]
        if len(names) != 2:
            raise InvalidArgumentError(f"dataset.split: names must be two names; got {names}")
        for n in names:
            _check_name(n, "dataset.split: name")
            with self._lock:
                other = self.datasets.get(n)
            if other is not None and other.view_of is None:
                raise AlreadyExistsError(f"dataset.split: '{n}' is an uploaded dataset; pick other names")
        order = np.random.default_rng(int(seed)).permutation(ds.length) if shuffle else np.arange(ds.length)
        rows = ds.base_rows()
        root = ds.view_of or ds.name
        base = self.get(root)
        split = {"of": name, "fraction": fraction, "seed": int(seed), "shuffle": bool(shuffle)}
        out = []
        for part, (n, sel) in enumerate(zip(names, (order[:n_a], order[n_a:]))):
            index = np.ascontiguousarray(rows[sel], dtype=np.int64)
            meta = {"created": time.time(), "view_of": root, "split": {**split, "part": part}}
            view = self._make_view(n, base, index, meta)
            if self.state is not None:
                self.state.write_dataset(n, {_VIEW_INDEX: index}, meta)
            with self._lock:
                self.datasets[n] = view
            out.append(view.info())
        return out

    def _make_view(self, name: str, root: StoredDataset, index: np.ndarray, meta: dict) -> StoredDataset:
        return StoredDataset(name, root.columns, len(index), root.place, meta, index=index,
                             device_index=self.devices.to_device(index, root.place), view_of=root.name)

    # ----------------------------------------------------------------- state dir
    def load_from_state(self) -> None:
        """Bring back the datasets of the state dir (roots first, then their views)."""
        state = self.state
        if state is None:
            return
        items = state.load_datasets()
        for name, arrays, meta in sorted(items, key=lambda it: it[2].get("view_of") is not None):
            try:
                if meta.get("view_of"):
                    ds = self._make_view(name, self.get(meta["view_of"]), np.asarray(arrays[_VIEW_INDEX], np.int64),
                                         meta)
                else:
                    place = self._place(name)
                    cols = {c: self.devices.to_device(np.ascontiguousarray(a), place)
                            for c, a in arrays.items()}
                    ds = StoredDataset(name, cols, len(next(iter(cols.values()))), place, dict(meta))
            except Exception:
                log.error("cannot load dataset '%s' from the state dir; skipped", name, exc_info=True)
                continue
            with self._lock:
                self.datasets[name] = ds
        if items:
            log.info("loaded %d dataset(s) from the state dir", len(items))


def _parse_spec(name: str, column: str, spec: Any) -> tuple[np.dtype, tuple[int, ...]]:
    if not isinstance(spec, dict):
        raise InvalidArgumentError(f"dataset '{name}': spec of {column!r} must be {{'dtype', 'shape'}}")
    try:
        dt = np.dtype(spec.get("dtype"))
    except TypeError:
        dt = np.dtype("O")
    if dt.kind not in "biufc" or not isinstance(spec.get("dtype"), str):
        raise InvalidArgumentError(f"dataset '{name}': array {column!r} has dtype {spec.get('dtype')!r}; only "
                                   "bool, integer, float and complex arrays can be uploaded")
    shape = spec.get("shape")
    if (not isinstance(shape, (list, tuple)) or not shape
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise InvalidArgumentError(f"dataset '{name}': array {column!r} needs a shape of one or more sizes >= 0 "
                                   f"(first: the number of examples); got {shape!r}")
    return dt.newbyteorder("="), tuple(shape)  # resident arrays are native-endian


def _cupy(place: Placement) -> Any:
    import cupy

    class _OnDevice:  # allocate on the placement's GPU
        @staticmethod
        def empty(shape: tuple, dtype: Any) -> Any:
            with cupy.cuda.Device(place.index):
                return cupy.empty(shape, dtype=dtype)

    return _OnDevice
