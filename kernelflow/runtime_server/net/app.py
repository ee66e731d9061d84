"""``serve()``: the runtime server as a process — service, TCP server, REST, runtime file, signals, shutdown.

``kernelflow serve`` parses its flags into `ServeOptions` and calls `serve`; everything that
happens from there on (building the service, listening, announcing the URL, the TF Serving
REST API, SIGTERM/SIGINT, a clean shutdown that checkpoints every graph before the runtime
file goes) is here.

Contents: ServeOptions, serve, tune_malloc.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..._version import __version__
from ...errors import KernelflowError
from ...protocol.codec import DEFAULT_MAX_MESSAGE_ELEMENTS
from ...protocol.runtime_file import write_runtime_file
from ..service import PROTOCOL_VERSION, RuntimeService
from .server import (
    DEFAULT_AUTH_TIMEOUT_S,
    DEFAULT_MAX_BUFFERED_INPUT_BYTES,
    DEFAULT_UNAUTH_MESSAGE_BYTES,
    RuntimeServer,
    tune_malloc,
)

log = logging.getLogger("kernelflow.server")

__all__ = ["ServeOptions", "serve", "tune_malloc"]


@dataclass
class ServeOptions:
    """What ``kernelflow serve`` was asked for (checked by the command line parser).

    Attributes:
        host: the address to listen on.
        port: the RPC port (0: any free one).
        token: the secret clients authenticate with.
        token_given: the user chose the token (then it is not printed).
        ssl_context: serve TLS with it (None: plain TCP).
        device: default device ("cpu", "gpu:N", "auto").
        state_dir: where state persists (None: memory only).
        max_message_bytes: the largest request accepted.
        workers: threads running service calls.
        max_run_seconds: the per-run time limit (None: none).
        unauth_message_bytes: the largest message before ``auth``.
        auth_timeout_s: close a connection not authenticated after this long.
        max_buffered_input_bytes: input held for incomplete messages over all connections.
        max_message_elements: the most values in one message.
        http_port: the REST port (None: RPC port + 1 when the RPC port was given, else any;
            negative: no REST API).
        http_max_body_bytes: the largest REST request body.
        model_config: per-model settings (the parsed ``--model-config-file``).
        batching: default batching options.
        poll_wait_s: how often the model base path is looked at.
        distributed: join an MPI world (under ``mpiexec``): rank 0 serves, the other ranks follow it.
        collective_timeout_s: how long a rank waits for the others before a job is interrupted.
        fusion_bytes: the fusion threshold of the data-parallel gradient all-reduce (0: off).
        shard_datasets: followers keep one shard of each dataset instead of a replica (docs/distributed.md).
        compile: the graph compiler's mode ("on", "sync", "off"; None: ``$KERNELFLOW_COMPILE``, else on).
    """

    host: str
    port: int
    token: str
    token_given: bool = False
    ssl_context: ssl.SSLContext | None = None
    device: str = "cpu"
    state_dir: str | None = None
    max_message_bytes: int = 4 << 30
    workers: int = 4
    max_run_seconds: float | None = None
    unauth_message_bytes: int = DEFAULT_UNAUTH_MESSAGE_BYTES
    auth_timeout_s: float = DEFAULT_AUTH_TIMEOUT_S
    max_buffered_input_bytes: int = DEFAULT_MAX_BUFFERED_INPUT_BYTES
    max_message_elements: int = DEFAULT_MAX_MESSAGE_ELEMENTS
    http_port: int | None = None
    http_max_body_bytes: int = 64 << 20
    model_config: dict = field(default_factory=dict)
    batching: dict = field(default_factory=dict)
    poll_wait_s: float = 1.0
    distributed: bool = False
    collective_timeout_s: float = 60.0
    fusion_bytes: int = 16 << 20
    shard_datasets: bool = False
    compile: str | None = None


def serve(opts: ServeOptions) -> int:
    """Run a runtime server until ``server.shutdown``, SIGTERM or Ctrl-C, then shut the service down
    cleanly (jobs stopped, every graph checkpointed when there is a state dir); returns the exit code."""
    tune_malloc()
    world = None
    if opts.distributed:  # every rank gets here; only rank 0 goes on to serve clients
        from ..service import join_world, serve_follower

        world = join_world(opts.collective_timeout_s, opts.device)
        world.shard_datasets = opts.shard_datasets and world.size > 1
        if world.rank != 0:
            return serve_follower(world, opts.device, opts.collective_timeout_s, opts.fusion_bytes, opts.compile)
    try:
        service = RuntimeService(device=opts.device, state_dir=opts.state_dir, max_run_seconds=opts.max_run_seconds,
                                 world=world, collective_timeout_s=opts.collective_timeout_s,
                                 fusion_bytes=opts.fusion_bytes, compile=opts.compile)
        if service.compiler is not None:
            service.compiler.prewarm()  # numba's import and warm-up (~1 s) off the first run's path
    except KernelflowError as e:  # the state dir is held by another server
        print(f"kernelflow serve: {e}", file=sys.stderr)
        return 1
    server = RuntimeServer(service, opts.token, max_message_bytes=opts.max_message_bytes,
                           ssl_context=opts.ssl_context, workers=opts.workers,
                           unauth_message_bytes=opts.unauth_message_bytes, auth_timeout_s=opts.auth_timeout_s,
                           max_buffered_input_bytes=opts.max_buffered_input_bytes,
                           max_message_elements=opts.max_message_elements)
    service.models.configure(opts.model_config, opts.batching)
    try:
        asyncio.run(_serve(opts, service, server))
    finally:
        service.shutdown()  # idempotent; covers a loop that ended before serving (port in use)
        service.leave_world()
    if service.busy_runs():
        # Everything is saved; a kernel cannot be interrupted and its pool thread would keep the
        # process alive (issue #15): leave without waiting for it.
        print(f"kernelflow serve: abandoning {service.busy_runs()} runs still inside a kernel", flush=True)
        logging.shutdown()
        os._exit(0)
    return 0


async def _serve(opts: ServeOptions, service: RuntimeService, server: RuntimeServer) -> None:
    server.listen(opts.port, opts.host)
    port = server.bound_port()
    shown = opts.host if ":" not in opts.host else f"[{opts.host}]"
    url = f"{'kfs' if opts.ssl_context else 'kf'}://{shown}:{port}"
    # REST first, so the runtime file and `info` carry its URL (with --port 0 it is any free port)
    rest_port = _start_rest(opts, service, port, shown)
    service.rest_port = rest_port
    service.rest_url = f"http://{shown}:{rest_port}" if rest_port else None
    path = write_runtime_file({"url": url, "host": opts.host, "port": port, "pid": os.getpid(),
                               "token": opts.token, "tls": opts.ssl_context is not None, "version": __version__,
                               "protocol": PROTOCOL_VERSION, "rest_url": service.rest_url, "rest_port": rest_port,
                               "python": sys.executable, "prefix": sys.prefix,
                               "package": str(Path(__file__).resolve().parents[2]),
                               "state_dir": str(service.state.root) if service.state is not None else None})
    _announce(opts, service, url, path)
    if service.models.base is not None:
        # Load the models there on the manager's loader threads, then watch for new versions.
        # Not waiting for the loads: they take as long as the models need, and RPC clients
        # must not wait for them (a model request meanwhile gets UnavailableError: START/LOADING).
        service.models.start(opts.poll_wait_s, wait=False)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.shutdown)
    try:
        await server.stopped.wait()
    finally:
        # Stop jobs and checkpoint every graph while the signal handlers still hold off a
        # second SIGTERM, and before the runtime file goes (a successor waits for the state dir).
        if service.state is not None:
            print("kernelflow serve: checkpointing before exit", flush=True)
        service.shutdown()
        path.unlink(missing_ok=True)
        print("kernelflow serve: stopped", flush=True)


def _announce(opts: ServeOptions, service: RuntimeService, url: str, path: Path) -> None:
    print(f"kernelflow {__version__} runtime server (protocol {PROTOCOL_VERSION}), device "
          f"{service.devices.default}", flush=True)
    if opts.distributed:
        w = service.world
        print(f"    world: {w.size} rank(s) on {', '.join(sorted({r['host'] for r in w.ranks}))} (collective "
              f"timeout {opts.collective_timeout_s:g} s)", flush=True)
    if service.state is not None:
        print(f"    state dir: {service.state.root} ({len(service.graphs)} graphs loaded)", flush=True)
    else:
        print("    no state dir: graphs and variables live in memory only (--state-dir DIR keeps them)", flush=True)
    print(f"    listening on {url}", flush=True)
    if opts.token_given:
        print("    token: the one given with --token/--token-file", flush=True)
    else:
        print(f"    connect with kf.connect(\"{url}/?token={opts.token}\")", flush=True)
    print(f"    runtime file: {path}", flush=True)


def _start_rest(opts: ServeOptions, service: RuntimeService, port: int, shown: str) -> int | None:
    """TF Serving's REST API on this IO loop (RPC port + 1 by default); returns its port (None: off)."""
    if opts.http_port is not None and opts.http_port < 0:
        return None
    http_port = opts.http_port if opts.http_port is not None else (port + 1 if opts.port else 0)
    try:
        http_bound = service.listen_rest(http_port, opts.host, opts.http_max_body_bytes)
    except OSError as e:
        if opts.http_port is not None:
            raise
        print(f"    REST: port {http_port} unavailable ({e}); no REST API (give --http-port)", flush=True)
        return None
    print(f"    REST (TensorFlow Serving API) on http://{shown}:{http_bound}/v1/models", flush=True)
    return int(http_bound)
