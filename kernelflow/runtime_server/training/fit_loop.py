"""One training job: its spec, its binding to a graph and datasets, and the fit loop that runs
on the job's worker thread.

Each step takes the graph session's lock only for the step itself, so a ``graph.run`` from
any client is served between two steps. Minibatches are cut on the device from the resident
dataset; the row order of epoch ``e`` is a permutation drawn from ``(seed, e)``, so a job
resumed at step ``s`` sees the same batches it would have seen. Metrics are fetched only on
logging steps (with the graph's in-graph summaries), image, audio and text tensors only on
image steps, all in the same run as that step's train op; the other steps run the plan for
the train op alone (no host sync).

Contents: Bound, bind, Halt, FitLoop, to_uint8_images.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import InvalidArgumentError, NotFoundError
from ...graph.ir import Tensor, Variable
from ...graph.shapes import format_shape
from ...protocol.jobspec import JobSpec
from ..engine.devices import to_host
from .media import Summaries, check_audio, check_text, find_summaries, to_pcm16, to_text_rows

if TYPE_CHECKING:
    from ..datasets import DatasetStore, StoredDataset
    from ..engine.session import GraphSession
    from ..graphs import GraphStore
    from .jobs import Job

log = logging.getLogger("kernelflow.jobs")


@dataclass
class Bound:
    """A spec resolved against the runtime: the session, datasets and node names it runs."""

    session: GraphSession
    data: StoredDataset
    columns: list[str]
    feed_names: list[str]
    feed_places: list[Any]              # a placement to move a batch array to, or None
    train_fetch: list[str]
    log_fetch: list[str]
    metric_names: list[str]
    val_data: StoredDataset | None
    val_fetch: list[str]
    val_names: list[str]
    histograms: list[str]
    image_names: list[str]               # the keys of spec.images, in fetch order
    image_fetch: list[str]               # their nodes
    audio_names: list[str]
    audio_fetch: list[str]
    text_names: list[str]
    text_fetch: list[str]
    summaries: Summaries                 # in-graph summaries fetched on logging steps
    steps_per_epoch: int
    total_steps: int
    drop_remainder: bool


def bind(graphs: GraphStore, datasets: DatasetStore, spec: JobSpec) -> Bound:
    """Resolve ``spec`` on the runtime and compile its plans, so that a bad spec fails at
    ``job.start`` (naming what is wrong) rather than at the job's first step.

    Raises:
        NotFoundError: an unknown graph, dataset or node.
        InvalidArgumentError: a feed whose dataset array does not fit the node (dtype, shape),
            a non-scalar metric, a histogram of a non-variable, a placeholder left unfed.
    """
    session = graphs.session(spec.graph)
    g = session.graph

    def node(name: str, what: str) -> Tensor:
        if name not in g:
            raise NotFoundError(f"fit: {what} '{name}' is not a node of graph '{g.name}'")
        return g[name]

    train = node(spec.train_op, "train_op")
    data = datasets.get(spec.data)
    feed_nodes = [node(n, "feed key") for n in spec.feed]
    drop = spec.drop_remainder
    for t, col in zip(feed_nodes, spec.feed.values()):
        drop = _check_feed(t, data, col, spec.batch_size) or drop
    metrics = {k: node(v, f"metric '{k}'") for k, v in spec.metrics.items()}
    val_metrics = {k: node(v, f"validation metric '{k}'") for k, v in spec.validation_metrics.items()}
    for k, t in {**metrics, **val_metrics}.items():
        if t.shape != ():
            raise InvalidArgumentError(f"fit: metric '{k}' ({t.name}) must be a scalar; its shape is "
                                       f"{format_shape(t.shape)} (reduce it, e.g. kf.mean)", node=t.name)
    val_data = None
    if spec.validation_data is not None:
        val_data = datasets.get(spec.validation_data)
        for t, col in zip(feed_nodes, spec.feed.values()):
            _check_feed(t, val_data, col, None)
    image_nodes = {k: node(v, f"image '{k}'") for k, v in spec.images.items()}
    for k, t in image_nodes.items():
        _check_image(k, t)
    audio_nodes = {k: node(v, f"audio '{k}'") for k, v in spec.audio.items()}
    for k, t in audio_nodes.items():
        check_audio(k, t)
    text_nodes = {k: node(v, f"text '{k}'") for k, v in spec.text.items()}
    for k, t in text_nodes.items():
        check_text(k, t)
    for h in spec.histograms:
        if not isinstance(node(h, "histogram"), Variable):
            raise InvalidArgumentError(f"fit: histograms are of variables; '{h}' is a {g[h].op.name} node")
    n = int(data.meta.get("shard", [0, 1, data.length])[2])  # a follower's shard: the whole dataset's rows
    spe = n // spec.batch_size if drop else math.ceil(n / spec.batch_size)
    if spe == 0:
        raise InvalidArgumentError(f"fit: dataset '{data.name}' has {n} rows, fewer than one batch of "
                                   f"{spec.batch_size} (with drop_remainder)")
    total = spec.steps if spec.steps is not None else spec.epochs * spe
    feed_names = [t.name for t in feed_nodes]
    summaries = find_summaries(g.nodes(), feed_names) if spec.summaries else Summaries()
    for tag, need in summaries.skipped.items():
        log.info("fit: summary '%s' of graph '%s' is not collected: the feed lacks %s", tag, g.name, need)
    places = [session.placement(t) for t in feed_nodes]
    b = Bound(session, data, list(spec.feed.values()), feed_names,
              [None if p == data.place else p for p in places], [train.name],
              [train.name, *[t.name for t in metrics.values()]], list(metrics), val_data,
              [t.name for t in val_metrics.values()], list(val_metrics), list(spec.histograms),
              list(image_nodes), [t.name for t in image_nodes.values()], list(audio_nodes),
              [t.name for t in audio_nodes.values()], list(text_nodes), [t.name for t in text_nodes.values()],
              summaries, spe, total, drop)
    with session.lock:  # compile now: an unfed placeholder is an error of job.start
        for is_log in (False, True):
            for is_media in (False, True):
                if (is_log and not has_log(b)) or (is_media and not media_fetch(b)):
                    continue
                session.plan(step_fetch(b, is_log, is_media), feed_names)
        if val_data is not None:
            session.plan(b.val_fetch, feed_names)
    return b


def has_log(b: Bound) -> bool:
    """Whether logging steps fetch anything (metrics or in-graph summaries)."""
    return bool(b.metric_names or b.summaries.nodes)


def media_fetch(b: Bound) -> list[str]:
    """The nodes of an image step: images, then audio, then text."""
    return b.image_fetch + b.audio_fetch + b.text_fetch


def step_fetch(b: Bound, is_log: bool, is_media: bool) -> list[str]:
    """A step's fetch list: the train op, [metrics, summaries], [images, audio, text]."""
    return (b.log_fetch + b.summaries.fetch if is_log else b.train_fetch) + (media_fetch(b) if is_media else [])


def _check_feed(t: Tensor, data: StoredDataset, col: str, batch_size: int | None) -> bool:
    """Check that array ``col`` of ``data`` can feed ``t``; True when batches must be full."""
    if col not in data.columns:
        raise InvalidArgumentError(f"fit: feed '{t.name}' <- '{col}': dataset '{data.name}' has no array '{col}'; "
                                   f"arrays: {sorted(data.columns)}", node=t.name)
    a = data.columns[col]
    rows = (None, *a.shape[1:])
    if a.dtype.name != t.dtype:
        raise InvalidArgumentError(f"fit: feed '{t.name}' ({t.dtype}{format_shape(t.shape)}) <- array '{col}' of "
                                   f"dataset '{data.name}' ({a.dtype.name}{format_shape(rows)}): dtypes differ; "
                                   f"upload the array as {t.dtype}", node=t.name, source=t.source)
    shape = t.shape
    if len(shape) != len(rows) or any(d is not None and d != r for d, r in zip(shape[1:], rows[1:])):
        raise InvalidArgumentError(f"fit: feed '{t.name}' ({t.dtype}{format_shape(shape)}) <- array '{col}' of "
                                   f"dataset '{data.name}' (rows {format_shape(rows)}): shapes differ",
                                   node=t.name, source=t.source)
    if shape[0] is not None and batch_size is not None:
        if shape[0] != batch_size:
            raise InvalidArgumentError(f"fit: feed '{t.name}' has a fixed batch dimension {shape[0]} but "
                                       f"batch_size={batch_size}", node=t.name, source=t.source)
        return True
    return False


IMAGE_DTYPES = ("uint8", "float16", "float32", "float64")
_IMAGE_SHAPES = "(N, H, W), (N, H, W, C) with C in 1, 3, 4, or (N, C, H, W) with C in 1, 3"


def _image_layout(shape: tuple | None) -> str | None:
    """"NHW", "NHWC" or "NCHW" for a (possibly partly unknown) shape; "?" while unknown dims
    leave it open; None when no image layout fits."""
    if shape is None:
        return "?"
    if len(shape) == 3:
        return "NHW"
    if len(shape) != 4:
        return None
    last, c1 = shape[3], shape[1]
    if last in (1, 3, 4):
        return "NHWC"
    if c1 in (1, 3) and last is not None:
        return "NCHW"
    if last is None or c1 is None:
        return "?"
    return None


def _check_image(key: str, t: Tensor) -> None:
    if t.dtype not in IMAGE_DTYPES:
        raise InvalidArgumentError(f"fit: image '{key}' ({t.name}) must be float or uint8; its dtype is {t.dtype}",
                                   node=t.name, source=t.source)
    if _image_layout(t.shape) is None:
        raise InvalidArgumentError(f"fit: image '{key}' ({t.name}) must be {_IMAGE_SHAPES}; its shape is "
                                   f"{format_shape(t.shape)}", node=t.name, source=t.source)


def to_uint8_images(key: str, a: Any, max_n: int) -> np.ndarray:
    """The first ``max_n`` images of ``a`` as uint8 ``(N, H, W, C)``, C in 1, 3, 4.

    uint8 is taken as it is. A float image whose finite values all lie in [0, 1] is scaled by
    255; any other float image is min-max normalised on its own (a constant image is black).
    NaN and infinities are black.

    Raises:
        InvalidArgumentError: a shape or dtype that is no image batch (naming ``key`` and it).
    """
    a = to_host(a[:max_n] if getattr(a, "ndim", 0) >= 1 else a)
    a = np.asarray(a)
    layout = _image_layout(a.shape)
    if layout in (None, "?") or 0 in a.shape[1:]:
        raise InvalidArgumentError(f"image '{key}' must be {_IMAGE_SHAPES}; its value has shape "
                                   f"{format_shape(a.shape)}")
    if layout == "NHW":
        a = a[..., None]
    elif layout == "NCHW":
        a = a.transpose(0, 2, 3, 1)
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if a.dtype.kind != "f":
        raise InvalidArgumentError(f"image '{key}' must be float or uint8; its value is {a.dtype.name}")
    x = a.astype(np.float32)
    finite = np.isfinite(x)
    lo = np.where(finite, x, np.inf).min(axis=(1, 2, 3), keepdims=True)
    hi = np.where(finite, x, -np.inf).max(axis=(1, 2, 3), keepdims=True)
    unit = (lo >= 0) & (hi <= 1)                # no finite value: lo = inf, so not "unit", scale < 0
    base = np.where(unit, 0.0, lo)
    scale = np.where(unit, 1.0, hi - lo)
    ok = finite & (scale > 0)
    y = np.where(ok, (np.where(ok, x, 0.0) - np.where(scale > 0, base, 0.0)) / np.where(scale > 0, scale, 1.0), 0.0)
    return np.clip(np.rint(y * 255.0), 0, 255).astype(np.uint8)


class Halt(Exception):
    """Raised at a step boundary to end the loop with ``status`` (stopped or interrupted)."""

    def __init__(self, status: str):
        super().__init__(status)
        self.status = status


class FitLoop:
    """The steps of one job on its worker thread; writes progress and records into ``job``."""

    def __init__(self, job: Job, b: Bound):
        self.job = job
        self.b = b
        self.devices = b.session.devices
        spec = job.spec
        self.log_every = spec.log_every
        self.hist_every = spec.histogram_every if b.histograms else 0
        self.img_every = spec.image_every if media_fetch(b) else 0
        self.fetches = {(lg, md): step_fetch(b, lg, md) for lg in (False, True) for md in (False, True)}
        ve = spec.validate_every if b.val_data is not None else None
        self.val_every = b.steps_per_epoch if ve == "epoch" else (ve or 0)
        self.ckpt_every_s = spec.checkpoint_every_s if job.can_checkpoint() else None
        self._val_rows: Any = None

    def run(self) -> None:
        """Steps until the total, a stop (Halt) or an error; the caller sets the final status."""
        job, b, spec = self.job, self.b, self.job.spec
        data, session = b.data, b.session
        spe, total, bs, n = b.steps_per_epoch, b.total_steps, spec.batch_size, data.length
        last_ckpt = time.monotonic()
        cached_epoch, rows = -1, None
        mark_t, mark_step = time.monotonic(), job.step
        profile = job.tensorboard_dir is not None  # the first step of this run: per-node times for TensorBoard
        while job.step < total:
            if job.request is not None:
                job.boundary()
                mark_t, mark_step = time.monotonic(), job.step  # no pause in the rate
            s = job.step
            epoch, pos = divmod(s, spe)
            if epoch != cached_epoch:
                order = np.random.default_rng([spec.seed, epoch]).permutation(n) if spec.shuffle else None
                rows, cached_epoch = data.epoch_rows(order, self.devices), epoch
            lo = pos * bs
            batch = data.gather(b.columns, rows, lo, min(lo + bs, n))
            for i, place in enumerate(b.feed_places):
                if place is not None:
                    batch[i] = self.devices.to_device(batch[i], place)
            step_no = s + 1
            is_log = bool(self.log_every and has_log(b) and (step_no % self.log_every == 0 or step_no == total))
            is_img = bool(self.img_every and (step_no % self.img_every == 0 or step_no == total))
            fetch = self.fetches[is_log, is_img]
            job.failing_step = step_no
            with session.lock:
                if profile:
                    out, times = session.plan(fetch, b.feed_names).run_profiled(batch)
                else:
                    out = session.plan(fetch, b.feed_names).run(batch)
            if profile:
                job.profiled(step_no, times)
                profile = False
            job.step = step_no
            now = time.monotonic()
            if now - mark_t >= (0.5 if job.steps_per_s else 0.05) or step_no == total:  # a first rate soon
                job.note_rate((step_no - mark_step) / (now - mark_t) if now > mark_t else None, bs)
                mark_t, mark_step = now, step_no
            if is_log:
                n_sum = len(b.summaries.nodes)
                sums = out[len(b.log_fetch):len(b.log_fetch) + n_sum]
                values = dict(zip(b.metric_names, (float(v) for v in out[1:len(b.log_fetch)])))
                values.update((t.attrs["tag"], float(v)) for t, v in zip(b.summaries.nodes, sums)
                              if t.attrs["kind"] == "scalar")
                if values:
                    self._scalars(step_no, values)
                self._summaries(step_no, sums)
            if is_img:
                media = out[len(fetch) - len(media_fetch(b)):]
                ni, na = len(b.image_fetch), len(b.audio_fetch)
                self._images(step_no, media[:ni])
                self._audio(step_no, b.audio_names, media[ni:ni + na], self.job.spec.audio_sample_rate)
                self._text(step_no, b.text_names, media[ni + na:])
            if self.hist_every and (step_no % self.hist_every == 0 or step_no == total):
                self._histograms(step_no)
            if self.val_every and (step_no % self.val_every == 0 or step_no == total):
                self._validate(step_no)
            if self.ckpt_every_s is not None and time.monotonic() - last_ckpt >= self.ckpt_every_s:
                job.checkpoint("periodic")
                last_ckpt = time.monotonic()

    # ----------------------------------------------------------------- records
    def _scalars(self, step: int, values: dict[str, float]) -> None:
        job = self.job
        if job.spec.stop_on_nan:
            bad = [k for k, v in values.items() if not math.isfinite(v)]
            if bad:
                raise InvalidArgumentError(f"metric '{bad[0]}' is {values[bad[0]]} at step {step}; the job stops "
                                           "there (stop_on_nan=True)")
        t = time.time()
        rec = {"kind": "scalars", "step": step, "epoch": round(step / self.b.steps_per_epoch, 6), "wall_time": t,
               "values": values}
        job.add_record(rec)

    def _images(self, step: int, values: list) -> None:
        n = self.job.spec.image_max
        arrays = [to_uint8_images(k, v, n) for k, v in zip(self.b.image_names, values)]
        t = time.time()
        for k, a in zip(self.b.image_names, arrays):
            self.job.add_record({"kind": "images", "step": step, "wall_time": t, "name": k, "images": a})

    def _audio(self, step: int, names: list[str], values: list, rate: float) -> None:
        clips = [to_pcm16(k, v, self.job.spec.audio_max) for k, v in zip(names, values)]
        t = time.time()
        for k, a in zip(names, clips):
            self.job.add_record({"kind": "audio", "step": step, "wall_time": t, "name": k, "audio": a,
                                 "sample_rate": float(rate)})

    def _text(self, step: int, names: list[str], values: list) -> None:
        rows = [to_text_rows(k, v, self.job.spec.image_max) for k, v in zip(names, values)]
        t = time.time()
        for k, r in zip(names, rows):
            self.job.add_record({"kind": "text", "step": step, "wall_time": t, "name": k, "text": r})

    def _summaries(self, step: int, values: list) -> None:
        """Records of the in-graph summaries (the scalars went into the step's scalars record)."""
        t = time.time()
        for node, v in zip(self.b.summaries.nodes, values):
            kind, tag = node.attrs["kind"], node.attrs["tag"]
            if kind == "histogram":
                st = _histogram(v, self.job.spec.histogram_bins)
                if st is not None:
                    counts, edges, *stats = (to_host(x) for x in st)
                    self.job.add_record({"kind": "histogram", "step": step, "wall_time": t, "name": tag,
                                         "edges": np.asarray(edges, np.float64),
                                         "counts": np.asarray(counts, np.int64), "stats": [float(x) for x in stats]})
            elif kind == "image":
                self.job.add_record({"kind": "images", "step": step, "wall_time": t, "name": tag,
                                     "images": to_uint8_images(tag, v, self.job.spec.image_max)})
            elif kind == "audio":
                self._audio(step, [tag], [v], node.attrs["sample_rate"])
            elif kind == "text":
                self._text(step, [tag], [v])

    def _histograms(self, step: int) -> None:
        session, bins = self.b.session, self.job.spec.histogram_bins
        stats = []
        with session.lock:
            for name in self.b.histograms:
                stats.append((name, _histogram(session.variables[name], bins)))
        t = time.time()
        for name, st in stats:
            if st is None:
                continue
            counts, edges, *stats = (to_host(v) for v in st)
            self.job.add_record({"kind": "histogram", "step": step, "wall_time": t, "name": name,
                                 "edges": np.asarray(edges, np.float64), "counts": np.asarray(counts, np.int64),
                                 "stats": [float(v) for v in stats]})

    def _validate(self, step: int) -> None:
        b, job = self.b, self.job
        vd = b.val_data
        assert vd is not None
        vbs = job.spec.validation_batch_size or max(job.spec.batch_size, 256)
        if self._val_rows is None:
            self._val_rows = vd.epoch_rows(None, self.devices)
        sums = np.zeros(len(b.val_names))
        for lo in range(0, vd.length, vbs):
            if job.request in ("stop", "interrupt"):
                return
            hi = min(lo + vbs, vd.length)
            batch = vd.gather(b.columns, self._val_rows, lo, hi)
            for i, place in enumerate(b.feed_places):
                if place is not None:
                    batch[i] = self.devices.to_device(batch[i], place)
            with b.session.lock:
                out = b.session.plan(b.val_fetch, b.feed_names).run(batch)
            sums += np.array([float(v) for v in out]) * (hi - lo)
        values = dict(zip(b.val_names, (float(v) for v in sums / max(vd.length, 1))))
        self._scalars(step, values)


def _histogram(a: Any, bins: int) -> tuple | None:
    """(counts, edges, min, max, sum, sum of squares, count) of ``a``'s finite values, on its device."""
    if isinstance(a, np.ndarray):
        xp: Any = np
    else:
        import cupy as xp
    flat = a.ravel().astype(xp.float64)
    finite = xp.isfinite(flat)
    if not bool(finite.all()):
        flat = flat[finite]
    if flat.size == 0:
        return None
    counts, edges = xp.histogram(flat, bins=bins)
    return counts, edges, flat.min(), flat.max(), flat.sum(), (flat * flat).sum(), flat.size
