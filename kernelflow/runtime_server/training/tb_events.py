"""TensorBoard event files of jobs, written by tensorboardX on a thread of their own.

tensorboardX is imported on that thread, when the first job starts: importing it can take a
second (it loads torch when torch is installed), and a runtime without it (a bare GPU box)
logs that once and writes no event files. Jobs hand records over through a queue and never
wait for the writer. Encoding images as PNG can be slower than a job logs them, so the pixels
waiting in the queue are bounded (`MAX_QUEUED_IMAGE_BYTES`): beyond it image records skip the
event files (the job's history keeps them) instead of growing memory without end (issue #15).

Contents: EventWriter.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

from ...protocol.jobspec import MEDIA, has_media
from ...protocol.media import wav_bytes

log = logging.getLogger("kernelflow.jobs")

MAX_QUEUED_IMAGE_BYTES = 64 << 20


class EventWriter:
    """One writer thread for the event files of every job of a runtime."""

    def __init__(self) -> None:
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.queued_image_bytes = 0  # pixels of image records waiting in the queue
        self.dropped_images = 0  # image records that skipped the event files (queue full)

    def _put(self, item: tuple) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="kf-tensorboard", daemon=True)
                self._thread.start()
        self._q.put(item)

    def open(self, job_id: str, logdir: str) -> None:
        """Start (or continue, after a resume) the event files of ``job_id`` in ``logdir``."""
        self._put(("open", job_id, logdir))

    def graph(self, job_id: str, graph_def: bytes) -> None:
        """Write a serialized GraphDef (`kernelflow.interop.graphdef.graph_def`) to the job's file."""
        self._put(("graph", job_id, graph_def))

    def run_metadata(self, job_id: str, tag: str, run_metadata: bytes) -> None:
        """Write a serialized RunMetadata (a profiled step) under ``tag`` to the job's file."""
        self._put(("run_metadata", job_id, (tag, run_metadata)))

    def write(self, job_id: str, record: dict) -> None:
        """Write one logged record (scalars, a histogram with its ``stats``, images, audio, text); image and
        audio records are dropped while `MAX_QUEUED_IMAGE_BYTES` of their payloads wait already."""
        nbytes = _image_bytes(record)
        if nbytes:
            with self._lock:
                if self.queued_image_bytes + nbytes > MAX_QUEUED_IMAGE_BYTES:
                    self.dropped_images += 1
                    if self.dropped_images == 1 or self.dropped_images % 1000 == 0:
                        log.warning("TensorBoard events of job %s: the writer is behind; %d image records skipped "
                                    "the event files so far (the job's history keeps them)", job_id,
                                    self.dropped_images)
                    return
                self.queued_image_bytes += nbytes
        self._put(("record", job_id, record))

    def close(self, job_id: str) -> None:
        """Flush and close the files of ``job_id``."""
        self._put(("close", job_id, None))

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Write what is queued, close every file, end the thread."""
        with self._lock:
            t = self._thread
        if t is None:
            return
        self._q.put(("stop", None, None))
        t.join(timeout_s)

    def _run(self) -> None:
        SummaryWriter = _import_writer()  # noqa: N806
        writers: dict[str, Any] = {}
        while True:
            kind, job_id, arg = self._q.get()
            if kind == "stop":
                break
            try:
                if SummaryWriter is None:
                    continue
                if kind == "open":
                    writers[job_id] = SummaryWriter(logdir=arg, flush_secs=5)
                elif kind == "close":
                    w = writers.pop(job_id, None)
                    if w is not None:
                        w.close()
                elif kind == "graph" and job_id in writers:
                    _write_graph(writers[job_id], arg)
                elif kind == "run_metadata" and job_id in writers:
                    _write_run_metadata(writers[job_id], *arg)
                elif job_id in writers:
                    _write(writers[job_id], arg)
            except Exception:
                log.error("TensorBoard events of job %s: %s failed", job_id, kind, exc_info=True)
            finally:
                nbytes = _image_bytes(arg) if kind == "record" else 0
                if nbytes:
                    with self._lock:
                        self.queued_image_bytes -= nbytes
        for w in writers.values():
            try:
                w.close()
            except Exception:
                log.error("closing a TensorBoard writer failed", exc_info=True)


def _import_writer() -> Any:
    """tensorboardX's SummaryWriter, or None (logged) when it is not installed.

    tensorboardX imports torch, when installed, only to recognise torch tensors; this writer
    hands it numpy and floats. Hiding torch for the import saves a second of CPU (holding the
    GIL) that would slow the first job and every request meanwhile.
    """
    import sys

    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # type: ignore[assignment]  # `import torch` raises ImportError
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        log.warning("tensorboardX is not installed: jobs write no TensorBoard event files")
        return None
    finally:
        if hide and sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]
    return SummaryWriter


def _image_bytes(r: Any) -> int:
    """The bytes of an image or audio record's payload (0 for other records and stubs)."""
    if not isinstance(r, dict) or not has_media(r):
        return 0
    return int(getattr(r[MEDIA[r["kind"]]], "nbytes", 0))


def _write(w: Any, r: dict) -> None:
    step, t = r["step"], r["wall_time"]
    if r["kind"] == "scalars":
        for k, v in r["values"].items():
            w.add_scalar(k, v, global_step=step, walltime=t)
    elif r["kind"] == "histogram":
        lo, hi, total, sq, count = r["stats"]
        w.add_histogram_raw(r["name"], lo, hi, int(count), total, sq, r["edges"][1:].tolist(), r["counts"].tolist(),
                            global_step=step, walltime=t)
    elif r["kind"] == "images" and r.get("images") is not None:
        w.add_images(r["name"], r["images"], global_step=step, walltime=t, dataformats="NHWC")
    elif r["kind"] == "audio" and r.get("audio") is not None:
        # One summary per clip, tagged as tf.summary.audio tags them (name/audio/i).
        for i, clip in enumerate(r["audio"]):
            _write_audio(w, f"{r['name']}/audio/{i}", clip, int(r["sample_rate"]), step, t)
    elif r["kind"] == "text":
        w.add_text(r["name"], "\n\n".join(r["text"]) or "(empty)", global_step=step, walltime=t)


def _write_audio(w: Any, tag: str, clip: Any, rate: int, step: int, t: float) -> None:
    # tensorboardX's add_audio needs the soundfile package; the WAV is written here instead.
    from tensorboardX.proto.summary_pb2 import Summary

    audio = Summary.Audio(sample_rate=rate, num_channels=clip.shape[1], length_frames=clip.shape[0],
                          encoded_audio_string=wav_bytes(clip, rate), content_type="audio/wav")
    w._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, audio=audio)]), step, t)


def _write_run_metadata(w: Any, tag: str, run_metadata: bytes) -> None:
    from tensorboardX.proto import event_pb2

    trm = event_pb2.TaggedRunMetadata(tag=tag, run_metadata=run_metadata)
    w._get_file_writer().add_event(event_pb2.Event(tagged_run_metadata=trm))


def _write_graph(w: Any, graph_def: bytes) -> None:
    from tensorboardX.proto import event_pb2

    w._get_file_writer().add_event(event_pb2.Event(graph_def=graph_def))
