"""The ``%kf`` line magic: connect, status, graphs, jobs, monitor, inspect, gc.

Contents: KernelflowMagics, Report.
"""

from __future__ import annotations

import shlex
import sys
from html import escape
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class

from ..client.runtime import Runtime, connect, set_default_runtime
from ..errors import KernelflowError, NotFoundError
from .tidy import parse_duration, plan_tidy, run_tidy

_USAGE = """usage: %kf connect [URL] | status | graphs | jobs | monitor [JOB] | inspect [GRAPH]
       | gc [--older-than DURATION] [--graphs GLOB] [--dry-run]
(%kf? for details)"""


class Report:
    """Text with an HTML twin: the terminal shows ``text``, Jupyter shows ``html``."""

    def __init__(self, text: str, html: str):
        self.text = text
        self.html = html

    def __repr__(self) -> str:
        return self.text

    def _repr_html_(self) -> str:
        return self.html


def _table(title: str, header: list[str], rows: list[list[Any]]) -> Report:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(header)]
    lines = [title, "  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    style = 'style="text-align:left;padding:0 6px"'
    html = [f'<table style="border-collapse:collapse;font-size:12px"><caption style="text-align:left">'
            f"<b>{escape(title)}</b></caption><tr>"]
    html += [f"<th {style}>{escape(h)}</th>" for h in header]
    html.append("</tr>")
    for r in cells:
        html.append("<tr>" + "".join(f"<td {style}>{escape(c)}</td>" for c in r) + "</tr>")
    html.append("</table>")
    return Report("\n".join(lines), "".join(html))


@magics_class
class KernelflowMagics(Magics):
    """The ``%kf`` magic; registered by ``%load_ext kernelflow``."""

    @line_magic
    def kf(self, line: str) -> Any:
        """Talk to the kernelflow runtime of this kernel.

        %kf connect [URL]   connect to URL (kf://host:port, kfs://host:port or inproc; the token
                            from ?token=..., $KERNELFLOW_TOKEN or $KERNELFLOW_TOKEN_FILE); without
                            URL: $KERNELFLOW_URL, else the local runtime server. From then on
                            kf.connect() with no arguments returns this runtime in this kernel.
        %kf status          server URL and REST base URL, version, backend, devices, memory in
                            use, graphs and jobs.
        %kf graphs          the graphs the runtime holds: name, nodes, variables.
        %kf jobs            the runtime's training jobs and their status.
        %kf monitor [JOB]   the live training monitor of a job (the newest one by default).
        %kf inspect [GRAPH] the graph inspector widget (GRAPH may be omitted when there is one).
        %kf gc [--older-than DURATION] [--graphs GLOB] [--dry-run]
                            delete the ended jobs (completed, stopped, failed; not interrupted
                            ones, which can resume) that finished DURATION ago or earlier (90s,
                            30m, 2h, 1d; default: all), and with --graphs the graphs matching GLOB
                            that no remaining job trains. --dry-run lists them and deletes nothing.

        Commands other than connect use the runtime that kf.connect() returns (connecting
        first when there is none yet).
        """
        try:
            args = shlex.split(line)
        except ValueError as e:
            raise UsageError(f"%kf: {e}\n{_USAGE}") from e
        if not args or args[0] in ("help", "-h", "--help"):
            print(_USAGE)
            return None
        cmd, rest = args[0], args[1:]
        handler = getattr(self, f"_cmd_{cmd}", None)
        if handler is None:
            raise UsageError(f"%kf: unknown command {cmd!r}\n{_USAGE}")
        try:
            return handler(rest)
        except KernelflowError as e:
            print(f"%kf {cmd}: {type(e).__name__}: {e}", file=sys.stderr)
            return None

    # ----------------------------------------------------------------- commands
    @staticmethod
    def _runtime() -> Runtime:
        rt = connect()  # the default runtime when one is set
        set_default_runtime(rt)
        return rt

    def _cmd_connect(self, args: list[str]) -> None:
        if len(args) > 1:
            raise UsageError("usage: %kf connect [URL]")
        set_default_runtime(None)
        rt = connect(args[0] if args else None)
        set_default_runtime(rt)
        info = rt.info()
        print(f"connected to {rt.url}: kernelflow {info.get('version')}, {info.get('backend')}, "
              f"devices {', '.join(map(str, info.get('devices', [])))}; kf.connect() returns this runtime")

    def _cmd_status(self, args: list[str]) -> Report:
        rt = self._runtime()
        info = rt.info()
        mem = ", ".join(f"{k} {v}" for k, v in (info.get("memory") or {}).items())
        jobs = _jobs(rt)
        lines = [f"runtime   {rt.url}", f"REST      {info.get('rest_url') or '(none)'}"
                 + ("  (TensorFlow Serving API: POST <REST>/v1/models/NAME:predict)" if info.get("rest_url") else ""),
                 f"version   {info.get('version')} (protocol {info.get('protocol')})",
                 f"backend   {info.get('backend')}",
                 f"devices   {', '.join(map(str, info.get('devices', [])))} (default {info.get('default_device')})",
                 f"memory    {mem}", f"graphs    {', '.join(info.get('graphs', [])) or '(none)'}",
                 "jobs      " + ("(not supported by this server)" if jobs is None else
                                 ", ".join(f"{j.get('id')} {j.get('status', '')}" for j in jobs) or "(none)")]
        return Report("\n".join(lines), rt._repr_html_())

    def _cmd_graphs(self, args: list[str]) -> Report:
        rt = self._runtime()
        # graph.list carries versions and variable counts; Runtime.graphs() keeps only the names.
        rows = [[d["name"], d.get("version", ""), d.get("variables", "")] for d in rt.call("graph.list", [])]
        return _table(f"graphs on {rt.url}: {len(rows)}", ["name", "nodes", "variables"], rows)

    def _cmd_jobs(self, args: list[str]) -> Report | None:
        rt = self._runtime()
        jobs = _jobs(rt)
        if jobs is None:
            print(f"the runtime at {rt.url} does not run training jobs (no 'job.list' method)")
            return None
        keys = ["id", "graph", "status", "step", "steps"]
        present = [k for k in keys if any(k in j for j in jobs)] or ["id"]
        rows = [[j.get(k, "") for k in present] for j in jobs]
        return _table(f"jobs on {rt.url}: {len(rows)}", present, rows)

    def _cmd_monitor(self, args: list[str]) -> Any:
        from ..widgets.monitor import TrainingMonitor  # ipywidgets and bqplot: only when asked for

        rt = self._runtime()
        job_id = args[0] if args else None
        if job_id is None:
            jobs = _jobs(rt) or []
            if not jobs:
                print("%kf monitor: the runtime has no jobs")
                return None
            job_id = jobs[-1]["id"]
        return TrainingMonitor(rt.job(job_id))

    def _cmd_inspect(self, args: list[str]) -> Any:
        rt = self._runtime()
        if len(args) > 1:
            raise UsageError("usage: %kf inspect [GRAPH]")
        if not args:
            names = rt.graphs()
            if len(names) != 1:
                raise UsageError(f"%kf inspect: name the graph; the runtime holds {names}")
            args = names
        elif args[0] not in rt.graphs():  # rt.graph() would create it
            raise NotFoundError(f"no graph named {args[0]!r} on {rt.url}; graphs: {rt.graphs()}")
        from ..widgets import GraphInspector

        return GraphInspector(rt.graph(args[0]))

    def _cmd_gc(self, args: list[str]) -> Report:
        older, graphs, dry = _gc_args(args)
        rt = self._runtime()
        plan = plan_tidy(rt, older, graphs)
        errors = [] if dry else run_tidy(rt, plan)
        verb = "would delete" if dry else "deleted"
        rows = [["job", j.get("name") or j["id"], f"{j.get('status')}, graph {j.get('graph')}"] for j in plan.jobs]
        rows += [["graph", name, "no job left trains it"] for name in plan.graphs]
        rows += [["graph (kept)", name, why] for name, why in plan.kept_graphs.items()]
        rows += [["error", "", e] for e in errors]
        title = f"%kf gc on {rt.url}: {verb} {len(plan.jobs)} jobs and {len(plan.graphs)} graphs"
        return _table(title, ["what", "name", "why"], rows)


def _gc_args(args: list[str]) -> tuple[float, str | None, bool]:
    older, graphs, dry = 0.0, None, False
    it = iter(args)
    for a in it:
        if a in ("--dry-run", "-n"):
            dry = True
        elif a in ("--older-than", "--graphs"):
            value = next(it, None)
            if value is None:
                raise UsageError(f"%kf gc: {a} needs a value\n{_USAGE}")
            if a == "--graphs":
                graphs = value
            else:
                older = parse_duration(value)
        else:
            raise UsageError(f"%kf gc: unknown argument {a!r}\n{_USAGE}")
    return older, graphs, dry


def _jobs(rt: Runtime) -> list[dict] | None:
    """The runtime's jobs, or None when the server has no job methods."""
    try:
        return list(rt.jobs())
    except NotFoundError:
        return None
