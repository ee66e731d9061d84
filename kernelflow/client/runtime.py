"""`Runtime`, the client's handle on one runtime, and `connect`.

Contents: Runtime, connect, set_default_runtime.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import FailedPreconditionError, InvalidArgumentError
from .graph import RemoteGraph
from .transport import Transport


class Runtime:
    """A connection to a kernelflow runtime (in-process or a server).

    Use `connect` to make one. The same interface works wherever the runtime is.
    """

    def __init__(self, transport: Transport):
        self._transport = transport
        # call(method, params): one RPC to the runtime, its result or its error raised as the
        # same kernelflow.errors type (docs/protocol.md lists the methods). The transport's own
        # bound method, so the hot path pays no extra frame.
        self.call: Callable[[str, list], Any] = transport.call
        self._graphs: dict[str, RemoteGraph] = {}

    @property
    def url(self) -> str:
        """Where the runtime is: ``kf://host:port``, ``kfs://...`` or ``inproc``."""
        return self._transport.url

    def __repr__(self) -> str:
        return f"<kf.Runtime {self.url}>"

    def _repr_html_(self) -> str:
        """Jupyter's rich display: server, devices, memory, graphs and jobs (one ``info`` call)."""
        from html import escape

        from ..errors import KernelflowError, NotFoundError
        from ..graph.ir import _html_table, _human_bytes

        try:
            info = self.info()
        except KernelflowError as e:
            return _html_table(f"kf.Runtime {escape(self.url)}", [("error", escape(str(e)))])
        devices = ", ".join(escape(str(d.get("name", d)) if isinstance(d, dict) else str(d))
                            for d in info.get("devices", []))
        mem = info.get("memory") or {}
        rows = [("version", escape(f"{info.get('version')} (protocol {info.get('protocol')})")),
                ("backend", escape(str(info.get("backend")))),
                ("devices", devices + escape(f" (default {info.get('default_device')})")),
                ("memory", ", ".join(f"{escape(k.removesuffix('_bytes'))} {_human_bytes(int(v))}"
                                     for k, v in mem.items() if isinstance(v, (int, float))))]
        graphs = info.get("graphs") or []
        rows.append((f"graphs ({len(graphs)})", escape(", ".join(graphs)) or "<i>none</i>"))
        try:
            jobs = self.jobs()
        except NotFoundError:  # a server without training jobs
            jobs = None
        except KernelflowError as e:
            jobs = [{"id": "?", "status": str(e)}]
        if jobs is not None:
            text = ", ".join(f"{j.get('id', '?')} {j.get('status', '')}".strip() for j in jobs[:10])
            rows.append((f"jobs ({len(jobs)})", escape(text + (" ..." if len(jobs) > 10 else "")) or "<i>none</i>"))
        return _html_table(f"kf.Runtime {escape(self.url)}", rows)

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (the runtime's state stays where it is)."""
        self._transport.close()

    def info(self) -> dict:
        """Runtime version, backend, devices, memory in use, graphs."""
        return self.call("info", [])

    def graph(self, name: str, seed: int = 0, reset: bool = False) -> RemoteGraph:
        """Create the graph ``name``, or re-attach to it with its nodes and variables.

        Args:
            name: the graph's name in the runtime.
            seed: graph-level seed for random ops (used when the graph is created).
            reset: start the graph afresh: an existing graph of that name is deleted first (its
                nodes and variables; jobs that trained it keep their histories). The cell that
                builds a model can then run again without making ``x_1``, ``dense1/w_1``, ...

        Raises:
            FailedPreconditionError: with ``reset``, while a job still trains the graph.

        Example:
            >>> g = rt.graph("mnist", reset=True)   # re-runnable model-building cell
        """
        if not isinstance(name, str) or not name:
            raise InvalidArgumentError(f"graph: name must be a non-empty string; got {name!r}")
        if reset:
            active = [j for j in self.call("job.list", []) if j.get("graph") == name
                      and j.get("status") in ("queued", "running", "paused")]
            if active:
                raise FailedPreconditionError(
                    f"graph: cannot reset '{name}' while job {active[0].get('name') or active[0]['id']} "
                    f"({active[0]['status']}) trains it; stop it first (rt.job(name).stop())")
            if name in self.graphs():
                self.delete_graph(name)
            self._graphs.pop(name, None)
        g = self._graphs.get(name)
        if g is not None:
            return g
        info = self.call("graph.open", [name, int(seed)])
        g = RemoteGraph(self, name, seed=info.get("seed", seed))
        if info["version"]:
            g._load(self.call("graph.get", [name, 0]))
        self._graphs[name] = g
        return g

    def graphs(self) -> list[str]:
        """Names of the graphs the runtime holds."""
        return [d["name"] for d in self.call("graph.list", [])]

    def dataset(self, name: str, arrays: dict | None = None, *, overwrite: bool = False,
                chunk_bytes: int | None = None, progress: bool | None = None) -> Any:
        """Upload ``arrays`` as dataset ``name``, or re-attach to it when ``arrays`` is None.

        Args:
            name: the dataset's name (letters, digits, ``_``, ``.``, ``-``).
            arrays: ``{name: array}``, all with the same first dimension (one row per example).
            overwrite: replace a dataset of that name with other contents (else AlreadyExistsError).
            chunk_bytes: bytes per upload message (default 64 MiB).
            progress: show a progress bar (default: for uploads over 64 MiB).

        Returns:
            A `kernelflow.client.dataset.Dataset`.

        Example:
            >>> ds = rt.dataset("digits", {"x": X.astype("float32"), "y": y})
        """
        from .dataset import open_dataset

        return open_dataset(self, name, arrays, overwrite=overwrite, chunk_bytes=chunk_bytes, progress=progress)

    def datasets(self) -> list[dict]:
        """Info of every dataset the runtime holds."""
        return self.call("dataset.list", [])

    def job(self, name_or_id: str) -> Any:
        """Re-attach to a job by name (``g.fit(..., name=...)``; the newest of that name) or id,
        with its full history.

        Raises:
            NotFoundError: no job has that name or id (the message lists the names).
        """
        from .job import attach_job

        return attach_job(self, name_or_id)

    def jobs(self) -> Any:
        """Every job the runtime knows, as `Job` handles (a `JobList`: a table in Jupyter,
        ``.frame()`` for a DataFrame). Each reads like its status map: ``j["status"]``."""
        from .job import Job
        from .joblist import JobList

        return JobList(Job(self, st) for st in self.call("job.list", []))

    @property
    def rest_url(self) -> str | None:
        """Base URL of the runtime's REST API (TensorFlow Serving's), e.g. ``http://127.0.0.1:7071``,
        as this client reaches the runtime's host; None when it serves no REST."""
        port = self.info().get("rest_port")
        if not port:
            return None
        host = getattr(self._transport, "host", "127.0.0.1")
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}"

    def model(self, name: str, version: int | None = None) -> Any:
        """A `kernelflow.client.model.ModelHandle` on exported model ``name`` (latest version by default)."""
        from .model import ModelHandle

        return ModelHandle(self, name, version)

    def models(self) -> list[dict]:
        """Every exported model with its versions (TF Serving's model_version_status fields)."""
        from .model import list_models

        return list_models(self)

    def runs(self) -> list[dict]:
        """The runs in flight on the runtime: ``{"id", "method", "graph", "seconds", "kernel", "cancelled"}``."""
        return self._call_aside("run.list", [])

    def cancel(self, graph: str | None = None, run_id: int | None = None) -> int:
        """Cancel runs in flight: those on ``graph``, the run ``run_id`` (see `runs`), or every run.

        Each stops before its next kernel and its caller gets CancelledError. Works from another
        thread while this runtime's own call waits (it then uses a second connection).

        Returns:
            How many runs were cancelled.
        """
        return self._call_aside("run.cancel", [graph, run_id])

    def _call_aside(self, method: str, params: list) -> Any:
        aside = getattr(self._transport, "call_aside", None)
        return aside(method, params) if aside is not None else self._call(method, params)

    def delete_graph(self, name: str) -> None:
        """Delete a graph and its variables from the runtime (jobs that trained it keep their
        histories; ``%kf gc`` tidies many at once).

        Raises:
            NotFoundError: no graph of that name.
        """
        self.call("graph.delete", [name])
        self._graphs.pop(name, None)


def connect(url: str | None = None, *, token: str | None = None, timeout: float | None = None,
            device: str = "cpu", soft_placement: bool = False, ssl_context: Any = None,
            state_dir: str | None = None, compile: str | None = None, cuda_graphs: bool | None = None) -> Runtime:
    """Connect to a kernelflow runtime.

    Args:
        url: ``"kf://host:port"`` for a runtime server (``"kfs://host:port"`` over TLS; the
            token may come as ``?token=...``), or ``"inproc"`` for a runtime inside this
            process. None: ``$KERNELFLOW_URL`` if set (token from ``$KERNELFLOW_TOKEN`` or the
            file named by ``$KERNELFLOW_TOKEN_FILE``), else the user's local runtime server: the
            one recorded in a runtime file if it answers, otherwise a new ``kernelflow serve``
            started detached on 127.0.0.1 (it outlives this process and a kernel restart).
        token: the server's token (wins over one in the URL). For a server on this machine
            it defaults to the one in the server's runtime file.
        timeout: seconds to reach a server, and the deadline of each request (None: wait).
        device: default device of an in-process runtime: "cpu", "gpu", "gpu:N" or "auto".
        soft_placement: in-process runtime runs nodes asking for a missing GPU on the CPU.
        ssl_context: an ``ssl.SSLContext`` for ``kfs://`` (e.g. one trusting a self-signed cert).
        state_dir: for ``"inproc"``: keep graphs, checkpoints, datasets, job histories and
            exported models in this dir (`kernelflow serve --state-dir` does the same for a server);
            ``close()`` then checkpoints and releases it.
        compile: for ``"inproc"``: the graph compiler's mode: "on" (fused kernels compile in the
            background; runs meanwhile are unfused), "sync" (compile before running), "off"
            (None: ``$KERNELFLOW_COMPILE``, else "on"). A server's is `kernelflow serve --no-compile`.
        cuda_graphs: for ``"inproc"``: capture each GPU plan as a CUDA graph and replay it (None:
            ``$KERNELFLOW_CUDA_GRAPHS`` = 1; docs/gpu.md). A server's is `kernelflow serve --cuda-graphs`.

    Returns:
        A `Runtime`.

    Raises:
        UnavailableError: the server cannot be reached.
        UnauthenticatedError: no token, or a wrong one.

    Example:
        >>> rt = kf.connect("kf://127.0.0.1:7070/?token=...")
        >>> g = rt.graph("mnist")
    """
    if state_dir is not None and url != "inproc":
        raise InvalidArgumentError(f"connect: state_dir is for url='inproc'; a server keeps its own "
                                   f"(`kernelflow serve --state-dir`); got url {url!r}")
    if url is None and _default_runtime is not None:
        return _default_runtime
    if url is None:
        import os

        url = os.environ.get("KERNELFLOW_URL")
        if not url:
            from .local import connect_local

            return Runtime(connect_local(timeout=timeout))
        token = token or _env_token()
    if url == "inproc":
        from .inproc import InprocTransport

        return Runtime(InprocTransport(device=device, soft_placement=soft_placement, state_dir=state_dir,
                                       compile=compile, cuda_graphs=cuda_graphs))
    if isinstance(url, str) and url.startswith(("kf://", "kfs://")):
        from .tcp import TcpTransport

        return Runtime(TcpTransport.from_url(url, token=token, timeout=timeout, ssl_context=ssl_context))
    raise InvalidArgumentError(f"connect: unsupported url {url!r}; expected 'inproc', 'kf://host:port' or "
                               "'kfs://host:port'")


_default_runtime: Runtime | None = None


def set_default_runtime(runtime: Runtime | None) -> None:
    """Make ``kf.connect()`` with no url return ``runtime`` in this process (``%kf connect``).

    Args:
        runtime: the runtime to hand out, or None to go back to ``$KERNELFLOW_URL`` / the local server.
    """
    global _default_runtime
    _default_runtime = runtime


def _env_token() -> str | None:
    """The token from ``$KERNELFLOW_TOKEN`` or the file ``$KERNELFLOW_TOKEN_FILE`` names."""
    import os

    if os.environ.get("KERNELFLOW_TOKEN"):
        return os.environ["KERNELFLOW_TOKEN"]
    path = os.environ.get("KERNELFLOW_TOKEN_FILE")
    if path:
        try:
            with open(os.path.expanduser(path)) as f:
                return f.read().strip() or None
        except OSError as e:
            raise InvalidArgumentError(f"connect: cannot read $KERNELFLOW_TOKEN_FILE {path!r}: {e}") from e
    return None
