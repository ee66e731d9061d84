"""Inspector layout candidates in a real browser: igraph Sugiyama + kernelflow's SVG vs ipyelk (ELK layered).

Question (issue #6): on a 2,000-node graph, how long do layout plus first render take in
JupyterLab, for the current inspector (layout in the kernel with igraph, drawn by
``static/inspector.js``) and for ipyelk (ELK's layered algorithm in elkjs, in the browser,
drawn by sprotty)? And is the current inspector usable at 20,000 nodes?

Each case is one fresh notebook opened in JupyterLab (Debian chromium + Playwright), run
with "Run All". The measured cell first displays a start marker, then builds and displays
the widget, then an end marker saying how many elements the drawing will hold. A
MutationObserver installed in the page timestamps the start marker's arrival and the
moment the drawing holds all its elements (ipyelk draws only after elkjs has laid the
graph out), so a time is kernel work + transfer + layout + DOM render, as a user waits for
it. The graph is an MLP with its Adam optimizer (bench/inspector.py's generator), in a plain
in-kernel ``kf.Graph`` (no runtime server is needed for the drawing).

ELK gets the whole graph as one compound graph: scopes are ELK parent nodes, edges sit in
the root with ``elk.hierarchyHandling: INCLUDE_CHILDREN`` (ELK's hierarchical mode, the
reason to consider it). The current inspector is timed as it opens (top-level scopes
closed, >150 nodes) and with every scope open (the drawing comparable to ELK's).

Needs: ``pip install ipyelk`` (not a kernelflow dependency), /usr/bin/chromium, playwright.
Careful: on the 2,000-node graph ipyelk's kernel side grew past 13 GB of memory within 10
minutes without drawing anything (2026-11-29); each ELK case's kernel is shut down at its
timeout (``--elk-timeout``, default 120 s).

    .venv/bin/python bench/inspector_elk.py [--repeat 3] [--elk-timeout 120]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]
# One JupyterLab launcher and browser settings with the browser tests (run from the repo root).
sys.path.insert(0, str(ROOT))
from tests.widgets.jupyterlab import CHROMIUM, CHROMIUM_ARGS, TOKEN, lab_process  # noqa: E402
from tests.widgets.jupyterlab import get_json as _get_json  # noqa: E402

SETUP = """
import sys, time
sys.path.insert(0, {bench!r})
from IPython.display import HTML, display
from inspector import mlp_graph
import kernelflow as kf
from kernelflow.widgets import GraphInspector
g = mlp_graph({depth})
GraphInspector(kf.Graph("warm"))  # imports (igraph, anywidget) out of the timed cell
print(len(g), "nodes")
"""

KF_CELL = """
display(HTML('<div class="bench-start"></div>'))
w = GraphInspector(g{expand})
display(w)
display(HTML(f'<div class="bench-end" data-expect="{{len(w.meta["ids"])}}" data-kind="kf"></div>'))
"""

ELK_SETUP = """
import ipyelk
from ipyelk.elements import convert_elkjson
def elk_json(g, width=110.0, height=36.0):
    root = {"id": "root", "children": [], "edges": [], "layoutOptions": {
        "elk.algorithm": "layered", "elk.direction": "DOWN", "elk.hierarchyHandling": "INCLUDE_CHILDREN"}}
    containers = {"": root}
    def container(scope):
        if scope not in containers:
            parent = container(scope.rpartition("/")[0])
            c = {"id": scope + "/", "children": [], "edges": [],
                 "labels": [{"id": scope + "/:label", "text": scope.rpartition("/")[2] + "/"}]}
            parent["children"].append(c)
            containers[scope] = c
        return containers[scope]
    for n in g.nodes():
        container(n.name.rpartition("/")[0])["children"].append({
            "id": n.name, "width": width, "height": height,
            "labels": [{"id": n.name + ":label", "text": n.name.rpartition("/")[2]}]})
    k = 0
    for n in g.nodes():
        for i in (*n.inputs, *n.control_inputs):
            root["edges"].append({"id": f"e{k}", "sources": [i.name], "targets": [n.name]})
            k += 1
    return root, len(containers) - 1
t = time.perf_counter()
convert_elkjson(elk_json(g)[0])
print("ipyelk python-side conversion (warm-up):", round(time.perf_counter() - t, 3), "s")
"""

# "Warm" cases first draw a tiny graph with the same widget, so the front end's code (and
# ELK's web worker) is loaded before the timed cell runs.
KF_WARM = """
small = kf.Graph("small")
small.placeholder((1,), name="a")
display(GraphInspector(small))
"""

ELK_WARM = """
display(ipyelk.from_elkjson(elk_json(mlp_graph(0))[0]))
"""
WARM_DONE = {"kf": "document.querySelectorAll('.kf-inspector .kf-box').length > 0",
             "elk": "document.querySelectorAll('svg.sprotty-graph rect.elknode').length > 0"}

ELK_CELL = """
display(HTML('<div class="bench-start"></div>'))
data, n_scopes = elk_json(g)
d = ipyelk.from_elkjson(data)
d.layout.height = "900px"
display(d)
display(HTML(f'<div class="bench-end" data-expect="{len(g) + n_scopes}" data-kind="elk"></div>'))
"""

# Watches the page: when the start marker arrives and when the drawing holds all its elements.
OBSERVER = """
() => {
  window.__bench = {start: null, done: null, count: 0};
  const last = (sel) => { const all = document.querySelectorAll(sel); return all[all.length - 1]; };
  const count = (kind) => {  // in the newest drawing (a warm case shows a small one first)
    const root = last(kind === "kf" ? ".kf-inspector" : ".jp-OutputArea svg.sprotty-graph");
    return root ? root.querySelectorAll(kind === "kf" ? ".kf-box, .kf-group" : "rect.elknode").length : 0;
  };
  const check = () => {
    const b = window.__bench;
    if (b.start === null && document.querySelector(".bench-start")) b.start = performance.now();
    const end = document.querySelector(".bench-end");
    if (b.done === null && end) {
      b.count = count(end.dataset.kind);
      if (b.count >= Number(end.dataset.expect)) b.done = performance.now();
    }
  };
  new MutationObserver(check).observe(document.body, {childList: true, subtree: true});
}
"""


def _notebook(cells: list[str]) -> dict:
    return {"cells": [{"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
                       "source": c.strip()} for c in cells],
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


def _wait_idle(base: str, name: str, page=None) -> None:
    deadline = time.monotonic() + 90
    while True:
        ks = [k for k in (_get_json(f"{base}/api/kernels?token={TOKEN}") or []) if k["connections"] >= 1]
        if ks and all(k["execution_state"] == "idle" for k in ks):
            return
        if page is not None and page.locator(".jp-Dialog .jp-mod-accept").count():
            page.locator(".jp-Dialog .jp-mod-accept").first.click()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name}: kernel not idle: {ks}")
        time.sleep(0.3)  # polling JupyterLab's REST API, with a deadline


def run_case(browser, base: str, nb_dir: pathlib.Path, name: str, cells: list[str], timeout_s: float,
             warm: str | None = None, then_open: str | None = None) -> dict:
    """Open a fresh notebook, run it, return {"ms", "elements"} (ms None past the timeout).

    Cold (``warm`` None): Run All. Warm: run every cell above the last, wait until the JS
    condition ``warm`` holds (the warm-up drawing is there) and the kernel is idle, then run the last.
    ``then_open``: a closed scope box of the kf drawing to click once it is drawn; the time until it
    is redrawn open is returned as "open_ms".
    """
    (nb_dir / f"{name}.ipynb").write_text(json.dumps(_notebook(cells)))
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        # A workspace of its own: the default one would reopen earlier cases' notebooks in hidden tabs.
        page.goto(f"{base}/lab/workspaces/{name}/tree/{name}.ipynb?token={TOKEN}")
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
        _wait_idle(base, name, page)  # "Run All" before the kernel is connected silently runs nothing
        if warm is not None:
            page.locator(".jp-Notebook .jp-Cell .jp-InputPrompt").last.click()  # select the timed cell
            page.locator(".lm-MenuBar-itemLabel:text-is('Run')").click()
            page.locator(".lm-Menu-itemLabel:text-is('Run All Above Selected Cell')").click()
            page.wait_for_function(warm, timeout=120_000, polling=100)
            _wait_idle(base, name)
            page.evaluate(OBSERVER)
            page.keyboard.press("Shift+Enter")
        else:
            page.evaluate(OBSERVER)
            page.locator(".lm-MenuBar-itemLabel:text-is('Run')").click()
            page.locator(".lm-Menu-itemLabel:text-is('Run All Cells')").click()
        try:
            page.wait_for_function("window.__bench.done !== null", timeout=timeout_s * 1000, polling=50)
        except Exception:  # playwright's TimeoutError: report it as "did not finish"
            if os.environ.get("KF_BENCH_DEBUG"):
                print((nb_dir.parent / "lab.log").read_text()[-3000:])
                page.screenshot(path=f"/tmp/{name}.png")
                print(page.evaluate("""() => { const c = {}; document.querySelectorAll('.jp-OutputArea *')
                    .forEach(e => { const k = e.tagName + '.' + (e.getAttribute('class') || '');
                    c[k] = (c[k] || 0) + 1; }); return c; }"""))
            return {"ms": None, "elements": page.evaluate("window.__bench.count")}
        b = page.evaluate("window.__bench")
        out = {"ms": b["done"] - b["start"], "elements": b["count"]}
        if then_open is not None:  # the click round trip: message, re-layout in the kernel, model, redraw
            page.evaluate(f"""() => {{ window.__t0 = performance.now();
                document.querySelector(".kf-inspector .kf-box[data-id='{then_open}']")
                  .dispatchEvent(new MouseEvent("click", {{bubbles: true}})); }}""")
            page.wait_for_selector(f".kf-inspector .kf-group[data-id='{then_open}']", state="attached",
                                   timeout=timeout_s * 1000)
            out["open_ms"] = page.evaluate("performance.now() - window.__t0")
            out["open_elements"] = page.evaluate("document.querySelectorAll('.kf-inspector .kf-box, "
                                                 ".kf-inspector .kf-group').length")
        return out
    finally:
        page.close()
        for k in _get_json(f"{base}/api/kernels?token={TOKEN}") or []:  # one kernel at a time
            req = urllib.request.Request(f"{base}/api/kernels/{k['id']}?token={TOKEN}", method="DELETE")
            with contextlib.suppress(urllib.error.URLError):
                urllib.request.urlopen(req, timeout=10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--elk-timeout", type=float, default=120.0)
    ap.add_argument("--skip-elk", action="store_true")
    ap.add_argument("--skip-20k", action="store_true")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    bench = str(ROOT / "bench")

    def kf_cells(depth: int, expand: str = "") -> list[str]:
        return [SETUP.format(bench=bench, depth=depth), KF_CELL.format(expand=expand)]

    every = ", expanded=set(kf.widgets.layout.scope_sizes(n.name for n in g.nodes()))"
    elk = [SETUP.format(bench=bench, depth=95), ELK_SETUP, ELK_CELL]
    # (name, cells, timeout s, warm-up cell and its done-condition or None, scope to open after)
    cases = [("kf_2k_default", kf_cells(95), 60.0, None, "gradients/"),
             ("kf_2k_all_open", kf_cells(95, every), 60.0, None, None),
             ("kf_2k_all_open_warm", kf_cells(95, every), 60.0, (KF_WARM, WARM_DONE["kf"]), None)]
    if not args.skip_elk:
        cases += [("elk_2k", elk, args.elk_timeout, None, None),
                  ("elk_2k_warm", elk, args.elk_timeout, (ELK_WARM, WARM_DONE["elk"]), None)]
    if not args.skip_20k:
        cases += [("kf_20k_default", kf_cells(960), 120.0, None, "gradients/")]
    results: dict[str, list] = {}
    with tempfile.TemporaryDirectory() as d, sync_playwright() as p:
        tmp = pathlib.Path(d)
        (tmp / "nb").mkdir()
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            with lab_process(tmp, tmp / "nb") as base:
                for rep in range(args.repeat):
                    for name, cells, timeout_s, warm, then_open in cases:
                        if warm is not None:
                            cells = [*cells[:-1], warm[0], cells[-1]]
                        r = run_case(browser, base, tmp / "nb", f"{name}_{rep}", cells, timeout_s,
                                     None if warm is None else warm[1], then_open)
                        results.setdefault(name, []).append(r)
                        print(f"  {name} run {rep + 1}: {r}", flush=True)
        finally:
            browser.close()
    print(f"\n{'case':<20} {'elements drawn':>15} {'median s':>9} {'runs (s)':>24} {'vs kf_2k_all_open':>18} "
          f"{'open gradients/ (median s, elements)':>38}")
    ref = None
    for name, runs in results.items():
        ms = [r["ms"] for r in runs if r["ms"] is not None]
        med = statistics.median(ms) / 1000 if ms else None
        if name == "kf_2k_all_open":
            ref = med
        ratio = f"{med / ref:.1f}x" if med and ref else "-"
        runs_s = ", ".join("timeout" if r["ms"] is None else f"{r['ms'] / 1000:.2f}" for r in runs)
        med_s = f"{med:.2f}" if med else "timeout"
        opens = [r["open_ms"] / 1000 for r in runs if "open_ms" in r]
        open_s = f"{statistics.median(opens):.2f} s, {runs[-1]['open_elements']}" if opens else "-"
        print(f"{name:<20} {runs[-1]['elements']:>15} {med_s:>9} {runs_s:>24} {ratio:>18} {open_s:>38}")


if __name__ == "__main__":
    main()
