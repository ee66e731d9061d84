"""The ``kernelflow`` command: ``serve`` runs a runtime server, ``status`` lists the local
ones, ``stop`` shuts one down, ``serve-models`` serves a model base path over REST,
``export-model`` copies a model version out of a state dir or base path (or converts it to ONNX).

Contents: runtime_dir, main (and the serve/status/stop/serve-models/export-model commands).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import signal
import ssl
import sys
from pathlib import Path

from . import __version__
from .errors import KernelflowError
from .protocol.runtime_file import is_loopback, pid_alive, read_runtime_file, runtime_files

log = logging.getLogger("kernelflow.cli")


def _read_token(args: argparse.Namespace) -> tuple[str, bool]:
    """(token, whether the user chose it)."""
    if args.token and args.token_file:
        raise SystemExit("kernelflow serve: give --token or --token-file, not both")
    if args.token:
        return args.token, True
    if args.token_file:
        token = Path(args.token_file).read_text().strip()
        if not token:
            raise SystemExit(f"kernelflow serve: token file {args.token_file} is empty")
        return token, True
    return secrets.token_urlsafe(32), False


def _ssl_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    if not args.certfile and not args.keyfile:
        return None
    if not (args.certfile and args.keyfile):
        raise SystemExit("kernelflow serve: TLS needs both --certfile and --keyfile")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(args.certfile, args.keyfile)
    return ctx


def _usage_error(message: str) -> None:
    print(message, file=sys.stderr)
    raise SystemExit(2)


def _model_settings(args: argparse.Namespace, prog: str) -> tuple[dict, dict]:
    """(per-model config, default batching options) from the serving flags; SystemExit(2) when bad."""
    from .runtime_server.serving.manager import load_model_config, parse_batching

    if args.file_system_poll_wait_seconds <= 0:
        _usage_error(f"kernelflow {prog}: --file-system-poll-wait-seconds must be > 0; "
                     f"got {args.file_system_poll_wait_seconds}")
    batching = {"enabled": args.batching == "on", "max_batch_size": args.max_batch_size,
                "batch_timeout_micros": args.batch_timeout_micros, "max_enqueued_batches": args.max_enqueued_batches}
    try:  # the config file's checks, with the flags' names in the message
        parse_batching(batching, f"kernelflow {prog}", {k: "--" + k.replace("_", "-") for k in batching})
    except KernelflowError as e:
        _usage_error(str(e))
    config = {}
    if args.model_config_file:
        try:
            config = load_model_config(args.model_config_file)
        except KernelflowError as e:
            _usage_error(f"kernelflow {prog}: {e}")
    return config, batching


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-config-file", help="JSON {\"models\": {name: {\"version_policy\": \"latest\" | \"all\" | "
                   "{\"specific\": [1, 3]}, \"batching\": {...}}}} (default: latest for every model)")
    p.add_argument("--file-system-poll-wait-seconds", type=float, default=1.0,
                   help="how often the model base path is looked at for new versions (default 1)")
    p.add_argument("--batching", choices=("on", "off"), default="on",
                   help="merge concurrent predicts of one model version into one run (default on)")
    p.add_argument("--max-batch-size", type=int, default=64, help="most rows in one batched run (default 64)")
    p.add_argument("--batch-timeout-micros", type=int, default=0,
                   help="how long a batch waits to fill after its first request, in microseconds (default 0: "
                        "batch what queued while the previous batch ran, as TF Serving's guide advises to start)")
    p.add_argument("--max-enqueued-batches", type=int, default=100,
                   help="the queue holds N x max-batch-size rows; a request over that gets 503 (default 100)")


def cmd_serve(args: argparse.Namespace) -> int:
    """``kernelflow serve``: check the flags, then `kernelflow.runtime_server.net.app.serve`."""
    if args.distributed:
        from .runtime_server.distributed.launch import needs_supervisor, supervise

        if needs_supervisor():  # the MPI launcher's direct child only watches the real rank
            return supervise([sys.executable, "-m", "kernelflow", *sys.argv[1:]])
    from .runtime_server.net.app import ServeOptions, serve

    token, user_token = _read_token(args)
    ctx = _ssl_context(args)
    model_config, batching = _model_settings(args, "serve")
    if not is_loopback(args.host) and ctx is None and not args.allow_insecure:
        print(f"kernelflow serve: refusing to listen on {args.host} without TLS: the token, your graphs and "
              "every array would cross the network in clear text. Give --certfile/--keyfile, reach the server "
              "through an ssh tunnel to 127.0.0.1, or pass --allow-insecure on a network you trust.",
              file=sys.stderr)
        return 2
    if args.cuda_graphs:
        os.environ["KERNELFLOW_CUDA_GRAPHS"] = "1"  # read by the runtime's DeviceManager
    return serve(ServeOptions(host=args.host, port=args.port, token=token, token_given=user_token, ssl_context=ctx,
                              device=args.device, state_dir=args.state_dir, max_message_bytes=args.max_message_bytes,
                              compile="off" if args.no_compile else None,
                              workers=args.workers, max_run_seconds=args.max_run_seconds,
                              unauth_message_bytes=args.unauth_message_bytes, auth_timeout_s=args.auth_timeout_s,
                              max_buffered_input_bytes=args.max_buffered_input_bytes,
                              max_message_elements=args.max_message_elements, http_port=args.http_port,
                              http_max_body_bytes=args.http_max_body_bytes, model_config=model_config,
                              batching=batching, poll_wait_s=args.file_system_poll_wait_seconds,
                              distributed=args.distributed, collective_timeout_s=args.collective_timeout,
                              fusion_bytes=args.fusion_bytes, shard_datasets=args.shard_datasets))


def cmd_serve_models(args: argparse.Namespace) -> int:
    """Serve the models under --model-base-path over REST until SIGTERM or Ctrl-C."""
    from .runtime_server.serving.manager import ModelManager
    from .runtime_server.serving.rest import listen_rest

    base = Path(args.model_base_path)
    if not base.is_dir():
        print(f"kernelflow serve-models: {base} is not a directory", file=sys.stderr)
        return 2
    config, batching = _model_settings(args, "serve-models")
    manager = ModelManager(base, config=config, batching=batching)

    async def main() -> None:
        stop = asyncio.Event()
        manager.start(args.file_system_poll_wait_seconds)
        _, port = listen_rest(manager, args.port, args.host, args.http_max_body_bytes)
        print(f"kernelflow {__version__} model server: {base} (batching {args.batching})", flush=True)
        print(f"    REST (TensorFlow Serving API) on http://{args.host}:{port}/v1/models", flush=True)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()

    try:
        asyncio.run(main())
    finally:
        manager.close()
    return 0


def cmd_export_model(args: argparse.Namespace) -> int:
    """Copy a model version out of a state dir or model base path: a directory ``<to>/<name>/<version>/``
    or a ``.tar.gz`` holding ``<name>/<version>/`` (``kf.load_model`` reads either)."""
    import shutil
    import tarfile

    from .protocol.model_dir import MARKER, check_model_name, versions_on_disk

    if bool(args.state_dir) == bool(args.model_base_path):
        print("kernelflow export-model: give --state-dir or --model-base-path (one)", file=sys.stderr)
        return 2
    base = Path(args.state_dir) / "models" if args.state_dir else Path(args.model_base_path)
    try:
        check_model_name(args.name)
    except KernelflowError as e:
        print(f"kernelflow export-model: {e}", file=sys.stderr)
        return 2
    versions = versions_on_disk(base / args.name)
    if not versions:
        print(f"kernelflow export-model: no complete model '{args.name}' under {base}", file=sys.stderr)
        return 1
    version = versions[-1] if args.version is None else args.version
    src = base / args.name / str(version)
    if not (src / MARKER).is_file():
        print(f"kernelflow export-model: model '{args.name}' has no complete version {version}; versions: "
              f"{versions}", file=sys.stderr)
        return 1
    to = Path(args.to)
    if args.format == "onnx":
        return _export_onnx(args.name, version, src, to)
    archive = to.name.endswith((".tar.gz", ".tgz"))
    dest = to if archive else to / args.name / str(version)
    if dest.exists():
        print(f"kernelflow export-model: {dest} exists already", file=sys.stderr)
        return 1
    # A temp name of its own (concurrent exports must not share one), removed whatever happens.
    tmp = dest.parent / f".{dest.name}.tmp-{secrets.token_hex(4)}"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        if archive:
            with tarfile.open(tmp, "x:gz") as tar:
                # The marker goes last, as when the version was written.
                for p in sorted(src.iterdir(), key=lambda p: (p.name == MARKER, p.name)):
                    tar.add(p, arcname=f"{args.name}/{version}/{p.name}", recursive=False)
        else:
            shutil.copytree(src, tmp)
        os.replace(tmp, dest)  # whole or not at all, for a watcher of that base path
    except (OSError, shutil.Error, tarfile.TarError) as e:
        print(f"kernelflow export-model: cannot write {dest}: {e}", file=sys.stderr)
        return 1
    finally:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
    print(f"exported model '{args.name}' version {version} to {dest}", flush=True)
    return 0


def _export_onnx(name: str, version: int, src: Path, to: Path) -> int:
    """``export-model --format onnx``: the model version dir's graph as one ``.onnx`` file."""
    from .graph.ir import Graph
    from .interop import export_onnx
    from .protocol.model_dir import read_model_dir

    if to.suffix != ".onnx":
        print(f"kernelflow export-model: --format onnx writes a .onnx file; got --to {to}", file=sys.stderr)
        return 2
    try:
        dicts, signature = read_model_dir(src)
        g = Graph(f"{name}@{version}")
        g.extend_from_dicts(dicts)  # variables carry their exported values as their initial attr
        info = export_onnx(g, to, {k: s["name"] for k, s in signature["inputs"].items()},
                           {k: s["name"] for k, s in signature["outputs"].items()})
    except KernelflowError as e:
        print(f"kernelflow export-model: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"kernelflow export-model: cannot write {to}: {e}", file=sys.stderr)
        return 1
    print(f"exported model '{name}' version {version} as onnx (opset {info['opset']}, {info['nodes']} nodes) "
          f"to {to}", flush=True)
    return 0


def _load_runtime_files() -> list[dict]:
    out = []
    for p in runtime_files():
        info = read_runtime_file(p)
        if info and isinstance(info.get("url"), str):
            info["file"] = str(p)
            out.append(info)
    return out


def cmd_status(args: argparse.Namespace) -> int:
    """Print the local runtime servers that answer."""
    from .client.runtime import connect

    found = 0
    for info in _load_runtime_files():
        if not pid_alive(info.get("pid")):
            continue
        try:
            with connect(info["url"], token=info.get("token"), timeout=args.timeout) as rt:
                i = rt.info()
        except (KernelflowError, OSError) as e:
            print(f"{info['url']}  pid {info.get('pid')}  not answering: {e}")
            continue
        found += 1
        print(f"{info['url']}  pid {info.get('pid')}  kernelflow {i['version']}  device {i['default_device']}  "
              f"graphs {len(i['graphs'])}")
        from .client.local import is_same_environment

        prefix = info.get("prefix") or i.get("python_prefix") or "?"
        here = "  (this environment: kf.connect() re-uses it)" if is_same_environment(info) else ""
        print(f"    REST {i.get('rest_url') or info.get('rest_url') or '(none)'}  python {prefix}  "
              f"kernelflow from {info.get('package') or '?'}{here}")
    if not found:
        print("no kernelflow runtime server is running")
    return 0 if found else 1


def cmd_stop(args: argparse.Namespace) -> int:
    """Shut down a local runtime server (the newest one, the one at --url, or --all)."""
    from .client.runtime import connect

    infos = [i for i in _load_runtime_files() if pid_alive(i.get("pid"))]
    if args.url:
        infos = [i for i in infos if i["url"] == args.url.split("/?")[0].rstrip("/")]
    elif not args.all:
        infos = infos[:1]
    if not infos:
        print("kernelflow stop: no running server found", file=sys.stderr)
        return 1
    for info in infos:
        try:
            with connect(info["url"], token=info.get("token"), timeout=args.timeout) as rt:
                rt.call("server.shutdown", [])
            print(f"stopped {info['url']} (pid {info.get('pid')})")
        except (KernelflowError, OSError) as e:
            print(f"kernelflow stop: {info['url']}: {e}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``kernelflow`` command."""
    p = argparse.ArgumentParser(prog="kernelflow", description="kernelflow runtime tools")
    p.add_argument("--version", action="version", version=f"kernelflow {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run a runtime server")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=7070, help="TCP port; 0 picks a free one (default 7070)")
    s.add_argument("--token", help="the secret clients must present (default: a fresh random one)")
    s.add_argument("--token-file", help="read the token from this file")
    s.add_argument("--max-message-bytes", type=int, default=4 << 30,
                   help="largest request accepted, in bytes (default 4 GiB)")
    s.add_argument("--unauth-message-bytes", type=int, default=64 << 10,
                   help="largest message a connection may send before auth, in bytes (default 64 KiB)")
    s.add_argument("--auth-timeout-s", type=float, default=10.0,
                   help="close a connection that has not authenticated after this long (default 10 s)")
    s.add_argument("--max-buffered-input-bytes", type=int, default=8 << 30,
                   help="input held for incomplete messages over all connections; beyond it the connection "
                   "that asks for more is closed with ResourceExhaustedError (default 8 GiB)")
    s.add_argument("--max-message-elements", type=int, default=1 << 22,
                   help="most values (array items, map entries, scalars) in one message (default 4194304)")
    s.add_argument("--device", default="cpu", help="default device: cpu, auto or gpu:N (default cpu)")
    s.add_argument("--workers", type=int, default=4, help="threads running graph runs (default 4)")
    s.add_argument("--max-run-seconds", type=float, default=None,
                   help="cancel a run that takes longer, at its next kernel; kernels certain to outlast it are "
                   "refused up front (default: no limit)")
    s.add_argument("--certfile", help="TLS certificate (PEM); serve kfs:// with --keyfile")
    s.add_argument("--keyfile", help="TLS private key (PEM)")
    s.add_argument("--allow-insecure", action="store_true",
                   help="allow a non-loopback --host without TLS")
    s.add_argument("--state-dir", help="keep graphs, checkpoints, datasets and job histories in this dir; "
                   "they are loaded again at start (default: memory only)")
    s.add_argument("--http-port", type=int, default=None,
                   help="port of the REST model API (default: --port + 1; 0 picks a free one; -1: none)")
    s.add_argument("--http-max-body-bytes", type=int, default=64 << 20,
                   help="largest REST predict body, in bytes (default 64 MiB)")
    _add_model_flags(s)
    s.add_argument("--distributed", action="store_true",
                   help="one runtime over the ranks of an MPI world: run under `mpiexec -disable-auto-cleanup -n N`; "
                        "rank 0 serves clients, the others follow it (needs kernelflow[distributed])")
    s.add_argument("--collective-timeout", type=float, default=60.0,
                   help="seconds a rank waits for the others in a collective before the job is interrupted "
                        "(--distributed; default 60)")
    s.add_argument("--fusion-bytes", type=int, default=16 << 20,
                   help="tensor-fusion bucket size of the gradient all-reduce in bytes; 0: no fusion (default 16 MiB)")
    s.add_argument("--shard-datasets", action="store_true",
                   help="(--distributed) each follower keeps one shard of every dataset instead of a replica; "
                        "data-parallel jobs then draw each rank's rows from its shard (other batches than one "
                        "rank's; docs/distributed.md)")
    s.add_argument("--cuda-graphs", action="store_true",
                   help="capture each GPU plan as a CUDA graph after its first run and replay it (docs/gpu.md; "
                        "default: $KERNELFLOW_CUDA_GRAPHS)")
    s.add_argument("--no-compile", action="store_true",
                   help="run plans as built: no graph compiler passes or fused kernels (default: "
                        "$KERNELFLOW_COMPILE, else on)")
    s.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    s.set_defaults(fn=cmd_serve)

    sm = sub.add_parser("serve-models", help="serve exported models over REST only (tensorflow_model_server's role)")
    sm.add_argument("--model-base-path", required=True, help="dir holding <name>/<version>/ model dirs")
    sm.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    sm.add_argument("--port", type=int, default=8501, help="REST port; 0 picks a free one (default 8501)")
    sm.add_argument("--http-max-body-bytes", type=int, default=64 << 20,
                    help="largest predict body, in bytes (default 64 MiB)")
    _add_model_flags(sm)
    sm.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    sm.set_defaults(fn=cmd_serve_models)

    em = sub.add_parser("export-model", help="copy a model version to a dir or .tar.gz (kf.load_model reads it)")
    em.add_argument("name", help="the model's name")
    em.add_argument("--state-dir", help="the runtime's state dir (models are in <state dir>/models)")
    em.add_argument("--model-base-path", help="a dir holding <name>/<version>/ model dirs")
    em.add_argument("--version", type=int, default=None, help="the version (default: the highest complete one)")
    em.add_argument("--to", required=True, help="a dir (gets <name>/<version>/), a file ending in .tar.gz, or with "
                    "--format onnx a file ending in .onnx")
    em.add_argument("--format", choices=("kernelflow", "onnx"), default="kernelflow",
                    help="kernelflow: the model dir as it is (default); onnx: one ONNX file onnxruntime runs")
    em.set_defaults(fn=cmd_export_model)

    st = sub.add_parser("status", help="list the local runtime servers")
    st.add_argument("--timeout", type=float, default=5.0)
    st.set_defaults(fn=cmd_status)

    sp = sub.add_parser("stop", help="shut down a local runtime server")
    sp.add_argument("--url", help="the server to stop (default: the newest local one)")
    sp.add_argument("--all", action="store_true", help="stop every local server")
    sp.add_argument("--timeout", type=float, default=5.0)
    sp.set_defaults(fn=cmd_stop)
    from .extension.kernelspec import add_kernel_commands

    add_kernel_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``kernelflow`` console script and ``python -m kernelflow``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(args, "log_level", "WARNING").upper(),
                        format="[%(asctime)s %(name)s %(levelname)s] %(message)s")
    return int(args.fn(args) or 0)
