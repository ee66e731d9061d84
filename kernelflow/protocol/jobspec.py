"""The job spec: what ``job.start`` carries, as one dataclass the client builds and the server checks.

Every field, its default and its meaning live here once. The client (``g.fit``) builds a
`JobSpec` from its keyword arguments and checks it before anything goes on the wire; the
server checks the map it receives again (it never trusts a client) with `JobSpec.from_map`.
Values that need the graph (node names, dataset arrays, shapes) are checked by the server
when it binds the spec to a graph.

Contents: JobSpec, FIT_OPTIONS, IMAGE_KEEP_DEFAULT, KeptImages.
"""

from __future__ import annotations

import bisect
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError
from .rpc import MAX_NAME_CHARS

PAGE_RECORDS = 10_000
"""Records in one page of a job's history (``job.records`` / ``job.subscribe``'s default limit)."""
IMAGE_KEEP_DEFAULT = 100


@dataclass
class JobSpec:
    """What a training job runs (the ``job.start`` map of docs/protocol.md).

    Attributes:
        graph: the graph to train.
        train_op: the node one step runs (e.g. ``opt.minimize(loss)``).
        data: the training dataset's name.
        feed: ``{placeholder node: dataset array name}``.
        batch_size: rows per step (the last batch of an epoch may be smaller unless
            ``drop_remainder``).
        epochs: passes over the data (default 1); or give ``steps`` instead.
        steps: total steps.
        shuffle: reshuffle rows every epoch.
        seed: seed of the shuffles (the same seed gives the same batches, also on resume).
        metrics: ``{name: scalar node}`` logged every ``log_every`` steps (on that step's batch).
        log_every: steps between logged metrics (0: never).
        validation_data: a dataset evaluated over whole, in batches (the mean of batch values
            weighted by batch size).
        validation_metrics: ``{name: scalar node}`` of the validation.
        validate_every: steps between validations, or ``"epoch"`` (the default with validation).
        validation_batch_size: rows per validation batch (default ``max(batch_size, 256)``).
        histograms: variables whose value histograms are recorded every ``histogram_every`` steps.
        histogram_every: steps between histograms.
        histogram_bins: bins per histogram.
        images: ``{name: image node}`` logged every ``image_every`` steps, in the same run as that
            step: ``(N, H, W)``, ``(N, H, W, C)`` with C 1, 3 or 4, or ``(N, C, H, W)`` with C 1 or 3
            (a last dim of 1, 3 or 4 means NHWC), float or uint8. Float images with every value in
            [0, 1] are scaled by 255, others min-max normalised per image.
        image_every: steps between logged images.
        image_max: first images of each tensor kept per record.
        image_keep: image records per name that keep their pixels (runtime memory, state dir,
            client); older ones are dropped. Audio records follow the same rule.
        audio: ``{name: waveform node}`` logged on the image steps (every ``image_every``): float
            ``[batch, frames]`` or ``[batch, frames, channels]`` in [-1, 1] (clipped), kept as 16-bit PCM.
        audio_sample_rate: samples per second of the ``audio`` tensors.
        audio_max: first clips of each audio tensor kept per record.
        text: ``{name: node}`` logged on the image steps: integer character codes ``[length]`` or
            ``[batch, length]`` (one string per row, the first ``image_max`` rows; Unicode code
            points, UTF-8 bytes for uint8; zeros are padding), e.g. decoded sequences.
        summaries: collect the graph's in-graph summaries (``kf.summary.*``) whose inputs the
            feed provides, on the logging steps (every ``log_every``).
        checkpoint_every_s: seconds between checkpoints (the job also checkpoints when it starts
            and ends); needs a runtime with a state dir.
        keep_checkpoints: keep only this many newest checkpoints of the graph.
        stop_on_nan: end the job as failed when a logged metric is NaN or infinite.
        drop_remainder: skip an epoch's last, smaller batch.
        name: a name to show (default: the job's id).
        replicas: ``"all"`` (or the world's size): a data-parallel job over every rank of a
            distributed runtime (``kernelflow serve --distributed``, docs/distributed.md);
            ``batch_size`` is then the global batch, split across the ranks, whose gradients are
            averaged before the same update everywhere. None: an ordinary job.
    """

    graph: str
    train_op: str
    data: str
    feed: dict[str, str]
    batch_size: int = 32
    epochs: int | None = None
    steps: int | None = None
    shuffle: bool = True
    seed: int = 0
    metrics: dict[str, str] = field(default_factory=dict)
    log_every: int = 10
    validation_data: str | None = None
    validation_metrics: dict[str, str] = field(default_factory=dict)
    validate_every: int | str | None = None
    validation_batch_size: int | None = None
    histograms: list[str] = field(default_factory=list)
    histogram_every: int = 100
    histogram_bins: int = 30
    images: dict[str, str] = field(default_factory=dict)
    image_every: int = 100
    image_max: int = 16
    image_keep: int = IMAGE_KEEP_DEFAULT
    audio: dict[str, str] = field(default_factory=dict)
    audio_sample_rate: int = 16000
    audio_max: int = 4
    text: dict[str, str] = field(default_factory=dict)
    summaries: bool = True
    checkpoint_every_s: float | None = 60.0
    keep_checkpoints: int | None = None
    stop_on_nan: bool = False
    drop_remainder: bool = False
    name: str | None = None
    replicas: int | str | None = None

    def to_map(self) -> dict[str, Any]:
        """The wire map (every field)."""
        return asdict(self)

    @classmethod
    def from_map(cls, m: Any) -> JobSpec:
        """A checked spec from a wire map: keys, types and ranges (not the graph's nodes).

        Raises:
            InvalidArgumentError: naming the field, what it must be and what came.
        """
        if not isinstance(m, dict):
            raise InvalidArgumentError(f"job.start: spec must be a map; got {type(m).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(k for k in m if k not in known)
        if unknown:
            raise InvalidArgumentError(f"job.start: unknown spec field(s) {unknown}; known: {sorted(known)}")
        for k in ("graph", "train_op", "data", "feed"):
            if m.get(k) in (None, "", {}):
                raise InvalidArgumentError(f"job.start: spec needs '{k}'")
        s = cls(**m)
        s.check()
        return s

    def check(self) -> None:
        """Check every field's type and range; fill the defaults that depend on others."""
        s = self
        for k in ("graph", "train_op", "data"):
            _want(isinstance(getattr(s, k), str), k, "a string", getattr(s, k))
        for k in ("feed", "metrics", "validation_metrics", "images", "audio", "text"):
            v = getattr(s, k)
            _want(isinstance(v, dict) and all(isinstance(a, str) and isinstance(b, str) for a, b in v.items()),
                  k, "a map of strings", v)
        _want(isinstance(s.histograms, list) and all(isinstance(h, str) for h in s.histograms), "histograms",
              "a list of variable names", s.histograms)
        _want(_is_int(s.batch_size) and s.batch_size >= 1, "batch_size", "an integer >= 1", s.batch_size)
        if s.epochs is not None and s.steps is not None:
            raise InvalidArgumentError(f"job.start: give epochs or steps, not both; got epochs={s.epochs}, "
                                       f"steps={s.steps}")
        if s.epochs is None and s.steps is None:
            s.epochs = 1
        for k in ("epochs", "steps"):
            v = getattr(s, k)
            _want(v is None or (_is_int(v) and v >= 1), k, "an integer >= 1", v)
        _want(_is_int(s.seed), "seed", "an integer", s.seed)
        _want(_is_int(s.log_every) and s.log_every >= 0, "log_every", "an integer >= 0 (0: never)", s.log_every)
        _want(_is_int(s.histogram_every) and s.histogram_every >= 1, "histogram_every", "an integer >= 1",
              s.histogram_every)
        _want(_is_int(s.histogram_bins) and 1 <= s.histogram_bins <= 10_000, "histogram_bins", "1..10000",
              s.histogram_bins)
        _want(_is_int(s.image_every) and s.image_every >= 1, "image_every", "an integer >= 1", s.image_every)
        _want(_is_int(s.image_max) and 1 <= s.image_max <= 1024, "image_max", "1..1024", s.image_max)
        _want(_is_int(s.image_keep) and s.image_keep >= 1, "image_keep", "an integer >= 1", s.image_keep)
        _want(_is_int(s.audio_sample_rate) and 1 <= s.audio_sample_rate <= 384_000, "audio_sample_rate",
              "an integer in 1..384000 (samples per second)", s.audio_sample_rate)
        _want(_is_int(s.audio_max) and 1 <= s.audio_max <= 64, "audio_max", "1..64", s.audio_max)
        ve = s.validate_every
        _want(ve is None or ve == "epoch" or (_is_int(ve) and ve >= 1), "validate_every",
              "an integer >= 1 or 'epoch'", ve)
        if s.validation_data is not None:
            _want(isinstance(s.validation_data, str), "validation_data", "a dataset name", s.validation_data)
            if not s.validation_metrics:
                raise InvalidArgumentError("job.start: validation needs metrics: (dataset, {name: tensor})")
            if s.validate_every is None:
                s.validate_every = "epoch"
        vbs = s.validation_batch_size
        _want(vbs is None or (_is_int(vbs) and vbs >= 1), "validation_batch_size", "an integer >= 1", vbs)
        c = s.checkpoint_every_s
        _want(c is None or (isinstance(c, (int, float)) and not isinstance(c, bool) and c > 0),
              "checkpoint_every_s", "seconds > 0 or None", c)
        k = s.keep_checkpoints
        _want(k is None or (_is_int(k) and k >= 1), "keep_checkpoints", "an integer >= 1", k)
        _want(s.name is None or isinstance(s.name, str), "name", "a string", s.name)
        for k in ("graph", "data", "validation_data", "name"):
            v = getattr(s, k)
            if isinstance(v, str) and len(v) > MAX_NAME_CHARS:
                raise InvalidArgumentError(f"job.start: {k} is a name of at most {MAX_NAME_CHARS} characters; got "
                                           f"one of {len(v)} characters")
        r = s.replicas
        _want(r is None or r == "all" or (_is_int(r) and r >= 1), "replicas", "'all' or an integer >= 1", r)
        s.shuffle, s.stop_on_nan, s.drop_remainder = bool(s.shuffle), bool(s.stop_on_nan), bool(s.drop_remainder)
        s.summaries = bool(s.summaries)


# The spec fields a user sets as keyword arguments of ``g.fit`` (the others come from its
# positional arguments and tensors: graph, train_op, data, feed, validation).
FIT_OPTIONS = tuple(f.name for f in fields(JobSpec)
                    if f.name not in ("graph", "train_op", "data", "feed", "validation_data", "validation_metrics"))


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _want(ok: bool, key: str, what: str, got: Any) -> None:
    if not ok:
        raise InvalidArgumentError(f"job.start: {key} must be {what}; got {got!r}")


MEDIA = {"images": "images", "audio": "audio"}
"""Record kinds whose payload only the newest ``image_keep`` per name keep: kind -> payload key."""


def media_key(rec: dict) -> str:
    """The name `KeptImages` counts a media record under (images by their name; audio apart from them)."""
    return rec.get("name") if rec.get("kind") != "audio" else f"audio:{rec.get('name')}"


def media_stub(rec: dict) -> dict:
    """An image (or audio) record without its payload (it keeps its place in the history)."""
    return {**rec, MEDIA[rec["kind"]]: None}


def has_media(rec: dict) -> bool:
    """``rec`` is an image or audio record that carries its payload."""
    kind = rec.get("kind")
    return kind in MEDIA and rec.get(MEDIA[kind]) is not None


class KeptImages:
    """Which image records keep their pixels: the newest ``keep`` per image name.

    The runtime (in memory and in the state dir) and the client's mirror of a job's history
    apply this one rule, so both drop the same records' pixels.
    """

    def __init__(self, keep: int = IMAGE_KEEP_DEFAULT):
        self.keep = keep
        self._idx: dict[str, list[int]] = {}

    def add(self, name: str, i: int) -> list[int]:
        """Record ``i`` of image ``name`` has pixels; returns the records whose pixels go now."""
        idx = self._idx.setdefault(name, [])
        bisect.insort(idx, i)
        dropped = []
        while len(idx) > self.keep:
            dropped.append(idx.pop(0))
        return dropped
