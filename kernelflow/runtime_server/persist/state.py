"""The state dir: what the runtime writes so that nothing is lost across kill -9 and restart.

Layout (all under the root given to ``kernelflow serve --state-dir DIR``)::

    lock                              flock'ed by the one server using the dir
    graphs/<name>/graph.log           record log: a header record {"graph", "seed", "format"},
                                      then one {"since", "nodes"} record per acknowledged extend
    checkpoints/<graph>/<tag>.json    a checkpoint's manifest (tag, seq, step, time, job, metrics,
                                      file, bytes, sha256, variables); written after its file
    checkpoints/<graph>/<seq>-<tag>.safetensors   the variables (temp file, fsync, rename)
    datasets/<name>/meta.msgpack      {"name", "meta", "bytes"}; arrays.safetensors beside it
    jobs/<id>/job.msgpack             {"id", "created", "spec"}; status.msgpack, history.log beside it,
                                      and images.log (the pixels of image records, bounded)
    tensorboard/<job>/...             TensorBoard event files
    models/<name>/<version>/          exported models (format: kernelflow.protocol.model_dir), which
                                      the model manager serves
    trash/, quarantine/               deleted dirs on their way out; graphs that failed to load

``<name>`` is the name with every byte outside ``[A-Za-z0-9_-]`` written ``%XX`` (long names
end in a hash); the real name is stored inside. A record log is the magic ``KFLOG\\0\\1\\n``
then records ``[u32 length][u32 crc32][msgpack payload]`` (big-endian; payloads encoded with
kernelflow's codec, arrays as ext 1). A record whose length or crc does not check out, and
everything after it, is a torn tail from a crash mid-append: ignored and cut off on load.

Every write a request acknowledges is durable before the method returns: files are written
to a temp name in the same dir, fsynced, renamed into place, and the dir fsynced. Nothing
read from here is unpickled or evaluated: JSON, msgpack (kernelflow's codec) and
safetensors only.

Contents: StateDir (the interface the service, datasets and jobs use).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from ...errors import FailedPreconditionError, InternalError, InvalidArgumentError, KernelflowError, NotFoundError
from ...protocol.codec import decode, encode
from ...protocol.jobspec import MEDIA, media_key
from .records import (
    RecordLogs,
    fs_name,
    fsync_dir,
    mkdirs,
    read_span,
    sha256_file,
    tmp_path,
    write_atomic,
)

log = logging.getLogger("kernelflow.state")

RECORD_HEAD = struct.Struct(">II")  # payload length, crc32 of the payload
GRAPH_FORMAT = 1
_TAG_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}")
_ST_METADATA = {"format": "kernelflow-checkpoint-1"}  # constant: equal variables give equal files


def _st_ready(name: str, a: Any) -> np.ndarray:
    """``a`` as safetensors needs it: C-contiguous (it silently writes strided arrays wrong), little-endian."""
    a = np.asarray(a)
    if a.dtype.kind not in "biufc":
        raise InvalidArgumentError(f"state dir: array '{name}' has dtype {a.dtype}, which a checkpoint cannot hold")
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return a if a.flags.c_contiguous else a.copy(order="C")


def _save_arrays(path: Path, arrays: dict[str, Any]) -> tuple[int, str]:
    """Write ``arrays`` as safetensors to a temp file, fsync, rename; returns (bytes, sha256)."""
    tmp = tmp_path(path)
    try:
        save_file({k: _st_ready(k, v) for k, v in arrays.items()}, str(tmp), metadata=_ST_METADATA)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        sha = sha256_file(tmp)
        size = tmp.stat().st_size
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return size, sha


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (tuple, set)):
        return list(o)
    raise InvalidArgumentError(f"checkpoint manifest: cannot store a value of type {type(o).__name__}")


# ----------------------------------------------------------------- record logs
class StateDir:
    """Reads and writes the runtime's state under ``root``.

    Every write that a request acknowledges is durable (fsynced, renamed into place) before
    the method returns. Readers tolerate a torn last record (a crash mid-append). Methods are
    thread-safe; writes to one graph, dataset or job are serialised.

    Args:
        root: the state directory (created 0700 if missing).

    Example:
        >>> state = StateDir("/var/lib/kernelflow"); state.lock()
        >>> state.append_graph_nodes("mnist", 0, 0, node_dicts)
        >>> m = state.write_checkpoint("mnist", None, {"w": w}, {"step": 100}, keep_last=5)
        >>> arrays, m = state.read_checkpoint("mnist")   # "latest": newest intact one
    """

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().absolute()
        if not self.root.is_dir():
            mkdirs(self.root.parent)
            self.root.mkdir(mode=0o700, exist_ok=True)  # graphs and data are the user's alone
            fsync_dir(self.root.parent)
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, str], threading.RLock] = {}
        self.logs = RecordLogs()
        self._spec_digests: dict[str, str] = {}
        self._image_counts: dict[Path, dict[str, int]] = {}  # image records per name in each images.log
        self._lock_fd: int | None = None

    def __repr__(self) -> str:
        return f"<StateDir {self.root}>"

    # ----------------------------------------------------------------- process lock
    def lock(self, timeout_s: float = 30.0) -> None:
        """Take the dir's exclusive lock (one server per state dir), waiting up to ``timeout_s``.

        The kernel drops the lock when the holder dies, so a ``kill -9``'d server never blocks
        its successor; a server still checkpointing at shutdown does, for that long.

        Raises:
            FailedPreconditionError: another live process holds the dir.
        """
        if self._lock_fd is not None:
            return
        path = self.root / "lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + timeout_s
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                    os.close(fd)
                    raise FailedPreconditionError(
                        f"state dir {self.root} is in use by another kernelflow server (pid {holder or '?'}); "
                        "stop it or give another --state-dir") from None
                if not told:
                    log.warning("state dir %s is locked by another server; waiting up to %.0f s", self.root,
                                timeout_s)
                    told = True
                time.sleep(0.1)  # polling a lock another process holds, with a deadline
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd
        self._clean_trash()

    def close(self) -> None:
        """Release the dir's lock."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _key_lock(self, kind: str, name: str) -> threading.RLock:
        with self._guard:
            lk = self._locks.get((kind, name))
            if lk is None:
                lk = self._locks[(kind, name)] = threading.RLock()
            return lk

    def _clean_trash(self) -> None:
        """Finish what a killed predecessor left half done: trash, temp files, unlisted checkpoint files."""
        trash = self.root / "trash"
        if trash.is_dir():
            shutil.rmtree(trash, ignore_errors=True)
        for sub in ("graphs", "checkpoints", "datasets", "jobs"):
            base = self.root / sub
            for p in list(base.rglob(".*.tmp-*")) if base.is_dir() else ():
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
        models = self.root / "models"
        for d in models.iterdir() if models.is_dir() else ():
            for p in d.glob(".tmp-*") if d.is_dir() else ():  # an export killed mid-write (issue #15)
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        base = self.root / "checkpoints"
        for d in base.iterdir() if base.is_dir() else ():
            listed = {m["file"] for m in self._manifests_in(d)}
            for p in d.glob("*.safetensors"):
                if p.name not in listed:  # renamed into place, but its manifest never written
                    p.unlink(missing_ok=True)

    def _discard(self, path: Path) -> None:
        """Remove a dir durably: an atomic rename into trash/ (fsynced), then the slow delete."""
        if not path.exists():
            return
        trash = self.root / "trash"
        mkdirs(trash)
        dest = trash / f"{path.name}-{time.time_ns()}-{secrets.token_hex(2)}"
        os.replace(path, dest)
        fsync_dir(path.parent)
        # Gone for every reader now; the files themselves may take a while (big checkpoints).
        threading.Thread(target=shutil.rmtree, args=(dest, True), name="kf-state-trash", daemon=True).start()

    # ----------------------------------------------------------------- record logs
    # ----------------------------------------------------------------- graphs
    def _graph_dir(self, graph: str) -> Path:
        return self.root / "graphs" / fs_name(graph)

    def append_graph_nodes(self, graph: str, seed: int, since: int, node_dicts: list[dict]) -> None:
        """Persist nodes ``since`` .. ``since + len(node_dicts)`` of ``graph`` (durable on return).

        With no nodes and ``since == 0`` it records that the graph exists (``graph.open``).

        Raises:
            NotFoundError: nodes for a graph whose log is gone (deleted meanwhile).
            InternalError: the disk refused the write.
        """
        with self._key_lock("graph", graph):
            path = self._graph_dir(graph) / "graph.log"
            if not path.exists():
                if since != 0:
                    raise NotFoundError(f"state dir: graph '{graph}' has no log to extend from version {since} "
                                        "(deleted meanwhile?)")
                self.logs.create(path, [{"graph": graph, "seed": int(seed), "format": GRAPH_FORMAT}])
            if node_dicts:
                self.logs.append(path, [{"since": int(since), "nodes": list(node_dicts)}])

    def delete_graph(self, graph: str) -> None:
        """Forget a graph: its nodes and checkpoints (durable on return)."""
        with self._key_lock("graph", graph), self._key_lock("ckpt", graph):
            d = self._graph_dir(graph)
            self.logs.forget(d / "graph.log")
            self._discard(d)
            self._discard(self._ckpt_dir(graph))

    def quarantine_graph(self, graph: str) -> Path:
        """Move a graph that cannot be rebuilt (and its checkpoints) to quarantine/; returns where."""
        with self._key_lock("graph", graph), self._key_lock("ckpt", graph):
            dest = self.root / "quarantine" / f"{fs_name(graph)}-{time.strftime('%Y%m%d-%H%M%S')}"
            mkdirs(dest)
            for src, sub in ((self._graph_dir(graph), "graph"), (self._ckpt_dir(graph), "checkpoints")):
                if src.exists():
                    os.replace(src, dest / sub)
                    fsync_dir(src.parent)
            fsync_dir(dest)
            self.logs.forget(self._graph_dir(graph) / "graph.log")
            return dest

    def load_graphs(self) -> list[tuple[str, int, list[dict]]]:
        """Every persisted graph as (name, seed, node dicts in order), sorted by name."""
        out = []
        base = self.root / "graphs"
        for d in sorted(base.iterdir()) if base.is_dir() else ():
            path = d / "graph.log"
            if d.name.startswith(".") or not path.is_file():
                continue
            records = self.logs.load(path)
            head = records[0] if records else None
            if not (isinstance(head, dict) and isinstance(head.get("graph"), str)
                    and isinstance(head.get("seed"), int)):
                log.error("state dir: %s has no graph header record; skipping it", path)
                continue
            nodes: list[dict] = []
            for i, r in enumerate(records[1:], 1):
                since = r.get("since") if isinstance(r, dict) else None
                batch = r.get("nodes") if isinstance(r, dict) else None
                if not isinstance(since, int) or not isinstance(batch, list) or since > len(nodes):
                    log.error("state dir: %s: record %d does not continue version %d; loading the graph up to "
                              "there", path, i, len(nodes))
                    break
                nodes[since:] = batch  # a re-sent batch (since < len) replaces the identical tail
            out.append((head["graph"], head["seed"], nodes))
        return out

    # ----------------------------------------------------------------- checkpoints
    def _ckpt_dir(self, graph: str) -> Path:
        return self.root / "checkpoints" / fs_name(graph)

    def write_checkpoint(self, graph: str, tag: str | None, arrays: dict[str, np.ndarray],
                         manifest: dict[str, Any], keep_last: int | None = None, *,
                         skip_if_unchanged: bool = False) -> dict[str, Any]:
        """Write a checkpoint of ``arrays`` (variable name -> host array); returns its manifest.

        The manifest is ``manifest`` (step, job, metrics...) plus ``graph``, ``tag``, ``seq``,
        ``time``, ``file``, ``bytes``, ``sha256`` and ``variables``. A new checkpoint with the
        tag of an existing one replaces it. Without ``tag`` it is named ``ckpt-<seq>``.

        Args:
            keep_last: afterwards delete all but the newest ``keep_last`` checkpoints.
            skip_if_unchanged: when the newest checkpoint holds exactly these arrays (same
                bytes, intact on disk), write nothing and return its manifest.

        Raises:
            InvalidArgumentError: a bad tag or keep_last, an array dtype safetensors cannot hold.
        """
        if tag is not None and (not isinstance(tag, str) or not _TAG_RE.fullmatch(tag) or tag == "latest"):
            raise InvalidArgumentError(f"checkpoint tag must be 1-100 characters of letters, digits, '_', '-', '.' "
                                       f"starting with a letter or digit, and not 'latest'; got {tag!r}")
        if keep_last is not None and (isinstance(keep_last, bool) or not isinstance(keep_last, int)
                                      or keep_last < 1):
            raise InvalidArgumentError(f"keep_last must be a positive integer or None; got {keep_last!r}")
        with self._key_lock("ckpt", graph):
            d = self._ckpt_dir(graph)
            mkdirs(d)
            existing = self.list_checkpoints(graph)
            seq = max((m["seq"] for m in existing), default=0) + 1
            tag = tag or f"ckpt-{seq:06d}"
            path = d / f"{seq:06d}-{tag}.safetensors"
            try:
                size, sha = _save_arrays(path, arrays)
            except OSError as e:
                raise InternalError(f"state dir: cannot write checkpoint {path}: {e}") from e
            if skip_if_unchanged and existing:
                last = existing[-1]
                same = last.get("sha256") == sha and last.get("variables") == sorted(arrays)
                if same and sha256_file(d / last["file"]) == sha:
                    path.unlink()
                    return last
            m = {"step": None, "job": None, "metrics": {}, **manifest, "graph": graph, "tag": tag, "seq": seq,
                 "file": path.name, "bytes": size, "sha256": sha, "variables": sorted(arrays)}
            m["time"] = manifest.get("time") or time.time()
            write_atomic(d / f"{tag}.json", [json.dumps(m, default=_json_default, indent=1).encode()])
            replaced = [x for x in existing if x["tag"] == tag]
            for x in replaced:
                (d / x["file"]).unlink(missing_ok=True)
            kept = [x for x in existing if x["tag"] != tag] + [m]
            if keep_last is not None and len(kept) > keep_last:
                for x in kept[:-keep_last]:
                    (d / f"{x['tag']}.json").unlink(missing_ok=True)  # the manifest first: then it is gone
                    (d / x["file"]).unlink(missing_ok=True)
            fsync_dir(d)
            return m

    def list_checkpoints(self, graph: str) -> list[dict[str, Any]]:
        """Manifests of ``graph``'s checkpoints, oldest first (unreadable manifests are skipped)."""
        return self._manifests_in(self._ckpt_dir(graph))

    @staticmethod
    def _manifests_in(d: Path) -> list[dict[str, Any]]:
        out = []
        for p in d.glob("*.json") if d.is_dir() else ():
            if p.name.startswith("."):
                continue
            try:
                m = json.loads(p.read_text())
            except (OSError, ValueError) as e:
                log.warning("state dir: unreadable checkpoint manifest %s: %s", p, e)
                continue
            if (isinstance(m, dict) and isinstance(m.get("seq"), int) and isinstance(m.get("file"), str)
                    and m.get("tag") == p.stem and "/" not in m["file"]):
                out.append(m)
            else:
                log.warning("state dir: checkpoint manifest %s lacks tag, seq or file; skipping it", p)
        return sorted(out, key=lambda m: m["seq"])

    def read_checkpoint(self, graph: str, tag: str = "latest") -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """(arrays, manifest) of a checkpoint; for "latest", a damaged newest one is skipped with a
        warning and the previous one is used (the manifest then lists the skipped tags under
        ``"damaged"``).

        Raises:
            NotFoundError: no checkpoint (with that tag).
            FailedPreconditionError: the checkpoint (every checkpoint, for "latest") is damaged.
        """
        with self._key_lock("ckpt", graph):
            manifests = self.list_checkpoints(graph)
            if not manifests:
                raise NotFoundError(f"graph '{graph}' has no checkpoint; write one with g.save()")
            if tag == "latest":
                candidates = manifests[::-1]
            else:
                candidates = [m for m in manifests if m["tag"] == tag]
                if not candidates:
                    raise NotFoundError(f"graph '{graph}' has no checkpoint tagged {tag!r}; tags: "
                                        f"{[m['tag'] for m in manifests]}")
            damaged: list[str] = []
            for m in candidates:
                try:
                    arrays = self._load_checked(graph, m)
                except _DamagedError as e:
                    damaged.append(m["tag"])
                    if tag == "latest":
                        log.warning("graph '%s': checkpoint %s is damaged (%s); trying the previous one", graph,
                                    m["tag"], e)
                        continue
                    raise FailedPreconditionError(f"graph '{graph}': checkpoint {m['tag']} is damaged ({e}); "
                                                  "restore another one (g.checkpoints() lists them)") from None
                return arrays, ({**m, "damaged": damaged} if damaged else m)
            raise FailedPreconditionError(f"graph '{graph}': every checkpoint is damaged: {damaged}")

    def _load_checked(self, graph: str, m: dict[str, Any]) -> dict[str, np.ndarray]:
        path = self._ckpt_dir(graph) / m["file"]
        try:
            size = path.stat().st_size
        except OSError as e:
            raise _DamagedError(f"file missing: {e}") from None
        if size != m.get("bytes"):
            raise _DamagedError(f"{size} bytes on disk; the manifest says {m.get('bytes')}")
        sha = sha256_file(path)
        if sha != m.get("sha256"):
            raise _DamagedError(f"sha256 {sha[:12]}... differs from the manifest's {str(m.get('sha256'))[:12]}...")
        try:
            arrays = load_file(str(path))
        except Exception as e:  # safetensors raises its own error types on a bad header
            raise _DamagedError(f"safetensors cannot read it: {e}") from None
        if sorted(arrays) != m.get("variables"):
            raise _DamagedError("its variables differ from the manifest's")
        return arrays

    # ----------------------------------------------------------------- datasets
    def _dataset_dir(self, name: str) -> Path:
        return self.root / "datasets" / fs_name(name)

    def write_dataset(self, name: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        """Persist a dataset once (durable on return); a dataset of the same name is replaced.

        ``meta`` may hold anything kernelflow's codec carries (arrays too).
        """
        with self._key_lock("dataset", name):
            final = self._dataset_dir(name)
            mkdirs(final.parent)
            tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
            tmp.mkdir()
            try:
                size, sha = _save_arrays(tmp / "arrays.safetensors", arrays)
                write_atomic(tmp / "meta.msgpack", encode({"name": name, "meta": meta, "bytes": size,
                                                            "sha256": sha}))
                self._discard(final)
                os.replace(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            fsync_dir(final.parent)

    def delete_dataset(self, name: str) -> None:
        """Forget a dataset (durable on return)."""
        with self._key_lock("dataset", name):
            self._discard(self._dataset_dir(name))

    def load_datasets(self) -> list[tuple[str, dict[str, np.ndarray], dict[str, Any]]]:
        """Every persisted dataset as (name, arrays, meta); damaged ones are logged and skipped."""
        out = []
        base = self.root / "datasets"
        for d in sorted(base.iterdir()) if base.is_dir() else ():
            if d.name.startswith("."):
                if ".tmp-" in d.name:  # a write that never finished
                    shutil.rmtree(d, ignore_errors=True)
                continue
            try:
                info = decode((d / "meta.msgpack").read_bytes())
                path = d / "arrays.safetensors"
                if path.stat().st_size != info["bytes"]:
                    raise ValueError(f"arrays.safetensors has {path.stat().st_size} bytes; expected {info['bytes']}")
                out.append((info["name"], load_file(str(path)), info["meta"]))
            except Exception as e:  # any damage (OSError, codec, safetensors): skip this one, load the rest
                log.error("state dir: dataset in %s cannot be loaded: %s", d, e)
        return out

    # ----------------------------------------------------------------- jobs
    def _job_dir(self, job_id: str) -> Path:
        return self.root / "jobs" / fs_name(job_id)

    def write_job(self, job_id: str, spec: dict[str, Any], status: dict[str, Any]) -> None:
        """Persist a job's spec (msgpack-able, may hold arrays) and its status map (durable).

        The spec is rewritten only when it changed; the status every time.
        """
        with self._key_lock("job", job_id):
            d = self._job_dir(job_id)
            mkdirs(d)
            body = b"".join(bytes(f) for f in encode(spec))
            digest = hashlib.sha256(body).hexdigest()
            head = d / "job.msgpack"
            if self._spec_digests.get(job_id) != digest or not head.exists():
                created = time.time()
                with contextlib.suppress(OSError, KernelflowError, KeyError, TypeError):
                    created = decode(head.read_bytes())["created"]  # a changed spec keeps the job's place
                write_atomic(head, encode({"id": job_id, "created": created, "spec": spec}))
                self._spec_digests[job_id] = digest
            write_atomic(d / "status.msgpack", encode(status))

    def append_job_records(self, job_id: str, records: list[dict[str, Any]],
                           keep_images: int | None = None) -> list[int]:
        """Append logged records (metrics, histograms, images) to a job's history (durable on return);
        returns the byte offset of each record in ``history.log`` (for `read_job_records`).

        The pixels of an image record go to ``images.log`` (``history.log`` gets the record with
        ``"images": None``, so the history keeps its order); once a name has more than
        ``2 * keep_images`` records there, images.log is rewritten with the newest ``keep_images``
        per name, so it stays bounded.
        """
        if not records:
            return []
        heads, pixels = [], []
        for r in records:
            key = MEDIA.get(r.get("kind"))  # audio records' samples go to images.log too
            if key is not None and r.get(key) is not None:
                pixels.append(r)
                r = {**r, key: None}
            heads.append(r)
        with self._key_lock("job", job_id):
            d = self._job_dir(job_id)
            offsets = self._append_or_create(d / "history.log", heads)
            if pixels:
                self._append_images(d / "images.log", pixels, keep_images)
            return offsets

    def read_job_records(self, job_id: str, offset: int, count: int) -> list[dict[str, Any]]:
        """``count`` records of a job's history from byte ``offset`` of history.log (an offset
        `append_job_records` or `scan_job_history` gave); image and audio records without payload.

        Raises:
            NotFoundError: the job's history is gone (deleted).
            InternalError: the log holds fewer records there.
        """
        path = self._job_dir(job_id) / "history.log"
        try:
            return read_span(path, offset, count)
        except FileNotFoundError:
            raise NotFoundError(f"job {job_id!r}: its history is gone from the state dir (deleted)") from None

    def scan_job_history(self, job_id: str, visit: Callable[[int, dict[str, Any]], None]) -> int:
        """Stream a job's history to ``visit(offset, record)`` in order (a torn tail cut off), holding
        none of it; image and audio records come without payload (`job_media` has the kept ones).
        Returns the record count."""
        with self._key_lock("job", job_id):
            path = self._job_dir(job_id) / "history.log"
            return self.logs.scan(path, visit) if path.exists() else 0

    def job_media(self, job_id: str) -> dict[tuple[str, Any], Any]:
        """The payloads images.log still holds: ``{(media_key, step): pixels or samples}``."""
        with self._key_lock("job", job_id):
            pix = self._job_dir(job_id) / "images.log"
            if not pix.exists():
                return {}
            return {(media_key(r), r.get("step")): r.get(MEDIA.get(r.get("kind"), "images"))
                    for r in self.logs.load(pix) if isinstance(r, dict)}

    def _append_or_create(self, path: Path, records: list[Any]) -> list[int]:
        if not path.exists():
            return self.logs.create(path, list(records))
        return self.logs.append(path, records)

    def _append_images(self, path: Path, records: list[dict[str, Any]], keep: int | None) -> None:
        counts = self._image_counts.get(path)
        if counts is None:
            counts = {}
            for r in self.logs.load(path) if path.exists() else ():
                counts[media_key(r)] = counts.get(media_key(r), 0) + 1
            self._image_counts[path] = counts
        self._append_or_create(path, records)
        for r in records:
            counts[media_key(r)] = counts.get(media_key(r), 0) + 1
        if keep is not None and max(counts.values()) > 2 * keep:
            kept: list[Any] = []
            per: dict[Any, int] = {}
            for r in reversed(self.logs.load(path)):  # newest first
                per[media_key(r)] = per.get(media_key(r), 0) + 1
                if per[media_key(r)] <= keep:
                    kept.append(r)
            kept.reverse()
            self.logs.create(path, kept)  # compacted: replaces the log whole
            self._image_counts[path] = {k: min(v, keep) for k, v in per.items()}

    def delete_job(self, job_id: str) -> None:
        """Forget a job: spec, status, history (durable on return)."""
        with self._key_lock("job", job_id):
            d = self._job_dir(job_id)
            self.logs.forget(d / "history.log")
            self.logs.forget(d / "images.log")
            self._image_counts.pop(d / "images.log", None)
            self._spec_digests.pop(job_id, None)
            self._discard(d)

    def load_jobs(self) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
        """Every persisted job as (id, spec, status), oldest job first; its history is read with
        `scan_job_history` and `job_media`, its records on demand with `read_job_records`."""
        out = []
        base = self.root / "jobs"
        for d in base.iterdir() if base.is_dir() else ():
            if d.name.startswith("."):
                continue
            try:
                head = decode((d / "job.msgpack").read_bytes())
                if not (isinstance(head, dict) and isinstance(head.get("id"), str) and "spec" in head):
                    raise InternalError("job.msgpack lacks id or spec")
                status_path = d / "status.msgpack"
                status = decode(status_path.read_bytes()) if status_path.exists() else {}
            except (OSError, KernelflowError) as e:
                log.error("state dir: job in %s cannot be loaded: %s", d, e)
                continue
            out.append((float(head.get("created") or 0.0), head["id"], head["spec"], status))
        return [(i, spec, status) for _, i, spec, status in sorted(out, key=lambda t: t[0])]

    def models_dir(self) -> Path:
        """The base path of exported models (created now if missing)."""
        d = self.root / "models"
        mkdirs(d)
        return d

    def tensorboard_dir(self, job_id: str) -> Path:
        """Where a job's TensorBoard event files go."""
        return self.root / "tensorboard" / fs_name(job_id)


class _DamagedError(Exception):
    """A checkpoint file that does not match its manifest."""
