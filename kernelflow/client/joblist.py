"""`JobList`: what ``rt.jobs()`` and ``g.jobs()`` return: `Job` handles that show as a table.

A list of handles (``rt.jobs()[0].wait()``), shown in Jupyter as an HTML table of name, id,
graph, status, step and latest metrics; ``.frame()`` gives the same as a pandas DataFrame.

Contents: JobList, job_row.
"""

from __future__ import annotations

import datetime as _dt
from html import escape
from typing import Any

_COLUMNS = ("name", "id", "graph", "status", "step", "total_steps", "created")


def job_row(st: dict) -> dict[str, Any]:
    """One table row of a job's status map: the columns above plus its latest metrics."""
    row: dict[str, Any] = {k: st.get(k) for k in _COLUMNS}
    if isinstance(row["created"], (int, float)):
        row["created"] = _dt.datetime.fromtimestamp(row["created"]).strftime("%Y-%m-%d %H:%M:%S")
    for k, v in sorted((st.get("metrics") or {}).items()):
        row[k] = v
    return row


class JobList(list):
    """A list of `Job` handles, newest last, with a table display and a DataFrame view."""

    def _rows(self) -> list[dict[str, Any]]:
        return [job_row(j.last_status) for j in self]

    def frame(self) -> Any:
        """The jobs as a pandas DataFrame (index: the job's id)."""
        import pandas as pd

        df = pd.DataFrame(self._rows(), columns=None)
        return df.set_index("id") if len(df) else df

    def __repr__(self) -> str:
        if not self:
            return "JobList([])"
        rows = self._rows()
        keys = [k for k in ("name", "id", "graph", "status", "step") if any(r.get(k) is not None for r in rows)]
        cells = [[("" if r.get(k) is None else str(r.get(k))) for k in keys] for r in rows]
        widths = [max([len(k)] + [len(c[i]) for c in cells]) for i, k in enumerate(keys)]
        lines = ["  ".join(k.ljust(w) for k, w in zip(keys, widths)).rstrip()]
        lines += ["  ".join(c.ljust(w) for c, w in zip(cell, widths)).rstrip() for cell in cells]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = self._rows()
        keys = list(dict.fromkeys(k for r in rows for k in r))
        style = 'style="text-align:left;padding:0 6px"'
        out = [f'<table style="border-collapse:collapse;font-size:12px"><caption style="text-align:left">'
               f"<b>{len(rows)} job{'s' if len(rows) != 1 else ''}</b></caption><tr>"]
        out += [f"<th {style}>{escape(k)}</th>" for k in keys]
        out.append("</tr>")
        for r in rows:
            cells = []
            for k in keys:
                v = r.get(k)
                text = "" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))
                cells.append(f"<td {style}>{escape(text)}</td>")
            out.append("<tr>" + "".join(cells) + "</tr>")
        out.append("</table>")
        return "".join(out)
