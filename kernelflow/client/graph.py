"""`RemoteGraph`: a graph built locally and run by a runtime (in-process or over TCP).

Nodes are created locally; the ones the runtime has not seen ride along with the next run
(one round trip per `run` in the common case). Fetches come back in the structure they
were given: a tensor, a name, or any nesting of lists, tuples and dicts.

Contents: RemoteGraph.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InvalidArgumentError
from ..graph.ir import Graph, Tensor, Variable, toposort
from . import job as _job

if TYPE_CHECKING:
    from .job import Job
    from .runtime import Runtime


def _flatten(fetches: Any, out: list[Tensor], graph: Graph) -> Callable[[list], Any]:
    """Collect leaf tensors of ``fetches`` into ``out``; returns a function rebuilding the structure."""
    if isinstance(fetches, str):
        fetches = graph[fetches]
    if isinstance(fetches, Tensor):
        if fetches.graph is not graph:
            raise InvalidArgumentError(f"run: tensor '{fetches.name}' belongs to graph '{fetches.graph.name}', "
                                       f"not '{graph.name}'")
        i = len(out)
        out.append(fetches)
        return lambda vals: vals[i]
    if isinstance(fetches, dict):
        parts = {k: _flatten(v, out, graph) for k, v in fetches.items()}
        kind = type(fetches)
        return lambda vals: kind((k, f(vals)) for k, f in parts.items())
    if isinstance(fetches, (list, tuple)):
        parts_l = [_flatten(v, out, graph) for v in fetches]
        if isinstance(fetches, tuple) and hasattr(fetches, "_fields"):  # namedtuple
            kind_t = type(fetches)
            return lambda vals: kind_t(*[f(vals) for f in parts_l])
        kind_s = type(fetches)
        return lambda vals: kind_s(f(vals) for f in parts_l)
    raise InvalidArgumentError(f"run: fetches must be tensors, node names, or lists/tuples/dicts of them; "
                               f"got {type(fetches).__name__}")


def _python_feed(value: Any, t: Tensor) -> np.ndarray:
    """A Python scalar or list as an array of ``t``'s dtype when that holds it exactly.

    numpy arrays are sent as they are: the runtime checks their dtype strictly.
    """
    arr = np.asarray(value)
    if arr.dtype.name != t.dtype and arr.dtype.kind in "biuf" and t.dtype is not None:
        cast = arr.astype(t.dtype)
        if np.array_equal(cast, arr):
            return cast
    return arr


class RemoteGraph(Graph):
    """A named graph of a `Runtime`. Made by ``rt.graph(name)``; not constructed directly."""

    def __init__(self, runtime: Runtime, name: str, seed: int = 0):
        super().__init__(name, seed=seed)
        self.runtime = runtime
        self._synced = 0
        self._last_run: tuple[tuple[str, ...], tuple[str, ...]] | None = None

    def __repr__(self) -> str:
        return (f"<kf.Graph '{self.name}' nodes={len(self)} variables={len(self.variables())} "
                f"runtime={self.runtime.url}>")

    # ----------------------------------------------------------------- syncing
    def _pending(self) -> tuple[int, list[dict]]:
        return self._synced, (self.to_dicts(self._synced) if self._synced < self.version else [])

    def sync(self) -> int:
        """Send nodes the runtime has not seen yet; returns the synced version."""
        since, nodes = self._pending()
        if nodes:
            self._synced = self.runtime.call("graph.extend", [self.name, since, nodes])
        return self._synced

    def pull(self) -> int:
        """Send this client's pending nodes, then take in the nodes other clients added on the
        runtime since; returns the version."""
        self.sync()
        info = self.runtime.call("graph.get", [self.name, self.version])
        if info.get("nodes"):
            self._load(info)
        return self.version

    def _load(self, info: dict) -> None:
        """Rebuild local tensors from the runtime's definition (re-attach)."""
        self.extend_from_dicts(info["nodes"])
        self._synced = self.version

    @property
    def last_run(self) -> dict | None:
        """What this client's most recent compiled run of the graph fetched and fed (`run`, or a
        `make_callable` function; runs with ``compile=False`` are not counted):
        ``{"fetches": [node names], "feeds": [node names]}``, or None before the first. Other
        clients' runs and the runtime's jobs are not seen here (``g.jobs()`` lists the jobs)."""
        if self._last_run is None:
            return None
        return {"fetches": list(self._last_run[0]), "feeds": list(self._last_run[1])}

    # ----------------------------------------------------------------- running
    def run(self, fetches: Any, feed: dict | None = None, compile: bool = True) -> Any:
        """Run ``fetches`` with ``feed`` ({tensor or name: value}); numpy results in the same structure.

        ``compile=False`` runs the plan as built: no graph compiler passes, no fused kernels.

        Example:
            >>> out = g.run({"loss": loss, "acc": acc}, feed={x: xb, y: yb})
        """
        __tracebackhide__ = True  # noqa: F841
        flat: list[Tensor] = []
        rebuild = _flatten(fetches, flat, self)
        feed_names, feed_values = self._feed(feed)
        since, nodes = self._pending()
        version = self.version
        fetch_names = [t.name for t in flat]
        params = [self.name, since, nodes, fetch_names, feed_names, feed_values]
        if not compile:
            params.append({"compile": False})
        vals = self.runtime.call("graph.run", params)
        self._synced = max(self._synced, version)
        if compile:
            self._last_run = (tuple(fetch_names), tuple(feed_names))
        return rebuild(vals)

    def _feed(self, feed: dict | None) -> tuple[list[str], list[Any]]:
        if not feed:
            return [], []
        names, values = [], []
        for k, v in feed.items():
            if isinstance(k, str):
                k = self[k]
            if not isinstance(k, Tensor):
                raise InvalidArgumentError(f"run: feed keys must be tensors or node names; got {type(k).__name__}")
            if k.graph is not self:
                raise InvalidArgumentError(f"run: feed key '{k.name}' belongs to graph '{k.graph.name}'")
            names.append(k.name)
            values.append(v if isinstance(v, np.ndarray) else _python_feed(v, k))
        return names, values

    def make_callable(self, fetches: Any, feed_list: Sequence[Tensor | str] = (),
                      compile: bool = True) -> Callable[..., Any]:
        """A function ``f(*feed_values)`` running ``fetches``, with names resolved once (``compile`` as in `run`).

        Example:
            >>> step = g.make_callable([train, loss], feed_list=[x, y])
            >>> _, l = step(xb, yb)
        """
        flat: list[Tensor] = []
        rebuild = _flatten(fetches, flat, self)
        fetch_names = [t.name for t in flat]
        feed_names = [(t.name if isinstance(t, Tensor) else self[t].name) for t in feed_list]
        call = self.runtime.call
        name = self.name
        n_feeds = len(feed_names)
        extra = [] if compile else [{"compile": False}]
        last_run = (tuple(fetch_names), tuple(feed_names)) if compile else None

        def run_callable(*values: Any) -> Any:
            __tracebackhide__ = True  # noqa: F841
            if len(values) != n_feeds:
                raise InvalidArgumentError(f"callable: expected {n_feeds} feed values {feed_names}; got {len(values)}")
            since, nodes = self._pending()
            version = self.version
            vals = call("graph.run", [name, since, nodes, fetch_names, feed_names, list(values), *extra])
            if nodes:
                self._synced = max(self._synced, version)
            if last_run is not None:
                self._last_run = last_run
            return rebuild(vals)

        return run_callable

    def plan(self, fetches: Any, feeds: Sequence[Tensor | str] = (), compile: bool = True) -> str:
        """The plan a run of ``fetches`` (with ``feeds`` fed) executes, as text: one node a line,
        fused groups with their members, and what the compiler passes did (as XLA's HLO dumps).

        Example:
            >>> print(g.plan(train_op, feeds=[x, y]))
        """
        return self._plan_call(fetches, feeds, {} if compile else {"compile": False})

    def fused_groups(self, fetches: Any, feeds: Sequence[Tensor | str] | None = None) -> list[dict]:
        """The nodes the runtime's compiler fuses into one kernel in a run of ``fetches`` (what
        `plan` prints as ``fused[...]``); the inspector draws them (``g.inspect(plan=...)``).

        Args:
            fetches: a tensor, a node name, or a nesting of them, as for `run`.
            feeds: the tensors the run feeds (default: every placeholder ``fetches`` need).

        Returns:
            ``[{"name": the fused node (named after its last member), "members": [node names],
            "ops": [op names], "outputs": [the members whose values leave the group]}]`` in plan
            order; ``[]`` when the runtime's compiler is off.

        Example:
            >>> [grp["ops"] for grp in g.fused_groups(train_op)]
            [['add', 'relu'], ...]
        """
        if feeds is None:
            flat: list[Tensor] = []
            _flatten(fetches, flat, self)
            feeds = [n for n in toposort(flat) if n.op.name == "placeholder"]
        return self._plan_call(fetches, feeds, {"format": "groups"})["groups"]

    def _plan_call(self, fetches: Any, feeds: Sequence[Tensor | str], opts: dict) -> Any:
        flat: list[Tensor] = []
        _flatten(fetches, flat, self)
        feed_names = [(t.name if isinstance(t, Tensor) else self[t].name) for t in feeds]
        since, nodes = self._pending()
        version = self.version
        out = self.runtime.call("graph.plan", [self.name, since, nodes, [t.name for t in flat], feed_names, opts])
        self._synced = max(self._synced, version)
        return out

    def summary(self, t: Tensor | str, feed: dict | None = None, bins: int = 30,
                allow_side_effects: bool = False) -> dict:
        """Statistics of ``t``'s value computed on the runtime; the tensor itself is not transferred.

        Args:
            t: a tensor of this graph, or a node name.
            feed: values for the placeholders ``t`` depends on, as for `run`.
            bins: histogram bins between the finite min and max.
            allow_side_effects: run ``t`` even when that runs ops that change variables.

        Returns:
            ``{"name", "shape", "dtype", "size", "min", "max", "mean", "std", "finite", "nan", "inf",
            "hist": {"counts", "edges"}}``; min/max/mean/std (float64, finite values only) are None
            when no value is finite.

        Raises:
            InvalidArgumentError: naming the placeholders ``t`` needs that ``feed`` lacks, or the
                state-changing ops it would run.

        Example:
            >>> g.summary(w)["std"], g.summary(logits, feed={x: xb})["nan"]
        """
        if not isinstance(t, (Tensor, str)):
            raise InvalidArgumentError(f"summary: expected a tensor or a node name; got {type(t).__name__}")
        flat: list[Tensor] = []
        _flatten(t, flat, self)  # resolves a name, checks the tensor is this graph's
        name = flat[0].name
        feed_names, feed_values = self._feed(feed)
        since, nodes = self._pending()
        version = self.version
        out = self.runtime.call("tensor.summary", [self.name, since, nodes, name, feed_names, feed_values,
                                                    int(bins), bool(allow_side_effects)])
        self._synced = max(self._synced, version)
        return out

    # ----------------------------------------------------------------- variables
    def read_variable(self, v: Variable) -> np.ndarray:
        """The value of variable ``v`` on the runtime (``v.value()`` calls this)."""
        self.sync()
        return self.runtime.call("variable.read", [self.name, v.name])

    def write_variable(self, v: Variable, value: Any) -> None:
        """Set variable ``v`` on the runtime to ``value`` (``v.set(...)`` calls this)."""
        self.sync()
        arr = np.asarray(value)
        if arr.dtype.name != v.dtype and not isinstance(value, np.ndarray):
            arr = arr.astype(v.dtype)
        self.runtime.call("variable.assign", [self.name, v.name, arr])

    # ----------------------------------------------------------------- checkpoints and jobs
    def save(self, tag: str | None = None, keep_last: int | None = None) -> dict:
        """Checkpoint every variable on the runtime; returns the checkpoint's manifest.

        Args:
            tag: a name for the checkpoint (default: the runtime numbers it).
            keep_last: keep only this many newest checkpoints of the graph.
        """
        self.sync()
        return self.runtime.call("graph.save", [self.name, tag, keep_last])

    def checkpoints(self) -> list[dict]:
        """Manifests of the graph's checkpoints (tag, step, time, job, metrics), oldest first."""
        return self.runtime.call("graph.checkpoints", [self.name])

    def restore(self, tag: str = "latest") -> dict:
        """Set every variable from a checkpoint (``"latest"`` or a tag); returns its manifest."""
        self.sync()
        return self.runtime.call("graph.restore", [self.name, tag])

    def fit(self, train_op: Any, *, data: Any, feed: dict, metrics: dict | None = None,
            validation: tuple | None = None, histograms: list | None = None, images: dict | None = None,
            **options: Any) -> Job:
        __tracebackhide__ = True  # noqa: F841
        return _job.fit(self, train_op, data=data, feed=feed, metrics=metrics, validation=validation,
                        histograms=histograms, images=images, **options)

    fit.__doc__ = (_job.fit.__doc__ or "").replace("        graph: the graph to train.\n", "")
    fit.__signature__ = _job.fit_signature(with_self=True)  # type: ignore[attr-defined]  # help(), Shift-Tab

    def jobs(self) -> Any:
        """The jobs that trained or train this graph (a `kernelflow.client.joblist.JobList`)."""
        from .job import Job
        from .joblist import JobList

        jobs = self.runtime.call("job.list", [])
        return JobList(Job(self.runtime, st) for st in jobs if st.get("graph") == self.name)

    def export(self, name: str, inputs: dict, outputs: dict, version: int | None = None) -> int:
        """Export the inference subgraph as a served model version; see `kernelflow.client.model.export`."""
        from .model import export

        return export(self, name, inputs, outputs, version)

    def export_onnx(self, path: Any, inputs: dict, outputs: dict, opset: int | None = None) -> dict:
        """Write the inference subgraph from ``inputs`` to ``outputs`` as an ONNX file.

        The subgraph is the one `export` writes (training flags bound to False, dropout folded
        away); variables become initializers holding their current values on the runtime;
        a None dim stays symbolic (the batch size is free). See `kernelflow.interop.export_onnx`.

        Args:
            path: the ``.onnx`` file to write (replaced whole, or left alone on error).
            inputs: {ONNX input name: tensor}, e.g. ``{"image": x}``.
            outputs: {ONNX output name: tensor}, e.g. ``{"probabilities": p}``.
            opset: the ONNX opset (default `kernelflow.interop.DEFAULT_OPSET`).

        Returns:
            ``{"path", "opset", "inputs", "outputs", "nodes", "initializers"}``.

        Raises:
            kernelflow.interop.OnnxExportError: naming a node whose op has no ONNX form.
            InvalidArgumentError: naming a placeholder the outputs need that is not an input.

        Example:
            >>> g.export_onnx("digits.onnx", inputs={"image": x}, outputs={"probabilities": probs})
        """
        from ..graph.inference import inference_nodes
        from ..interop import DEFAULT_OPSET, export_onnx  # lazily: onnx is an optional dependency

        ins = {k: self[t] if isinstance(t, str) else t for k, t in dict(inputs).items()}
        outs = {k: self[t] if isinstance(t, str) else t for k, t in dict(outputs).items()}
        plan = inference_nodes(list(outs.values()), list(ins.values()), "export_onnx")
        variables = [i.node for i in plan if i.role == "node" and isinstance(i.node, Variable)]
        values = dict(zip((v.name for v in variables), self.run(variables))) if variables else {}
        return export_onnx(self, path, ins, outs, variables=values, opset=opset or DEFAULT_OPSET)

    def to_tensorboard(self, logdir: Any) -> Any:
        """Write the graph as a TensorBoard GraphDef event file in ``logdir`` (its Graphs dashboard draws it).

        Node names keep their scopes (TensorBoard folds each scope into a box), with op names,
        data and ``^control`` inputs, devices and output shapes. Needs neither TensorFlow nor
        tensorboard. Returns the event file's path.

        Example:
            >>> g.to_tensorboard("runs/digits")   # then: tensorboard --logdir runs
        """
        from ..interop.graphdef import write_graph  # lazily: the client needs it only here

        return write_graph(self, logdir)

    def inspect(self, plan: Any = "auto", feeds: Sequence[Tensor | str] | None = None,
                expanded: Sequence[str] | None = None, collapse_above: int | None = None) -> Any:
        """A `kernelflow.widgets.GraphInspector` of this graph (in a notebook, it displays itself).

        Args:
            plan: fetches (e.g. the train op) whose compiled plan to show: the nodes the compiler
                fuses into one kernel in a run of them are outlined, one colour per kernel.
                ``"auto"`` (the default): the step of the graph's training job (the running or
                paused one, else the newest), else this client's last run of it (`last_run`), else none; None: none.
            feeds: the tensors that run feeds (default: every placeholder ``plan`` needs).
            expanded: scopes to open (default: TensorBoard's first view; see `GraphInspector`).
            collapse_above: node count above which it opens with every top-level scope closed (default 60).

        Example:
            >>> g.inspect(plan=train_op)

        .. versionchanged:: issue #16
            ``plan`` defaults to ``"auto"`` (it was None).
        """
        from ..widgets import GraphInspector  # lazily: the widget layer sits above the client

        extra = {} if collapse_above is None else {"collapse_above": collapse_above}
        return GraphInspector(self, expanded=expanded, plan=plan, feeds=feeds, **extra)
