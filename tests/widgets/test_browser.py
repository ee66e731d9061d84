"""The inspector in a real browser: JupyterLab + Debian's chromium + Playwright (marker ``browser``).

Runs examples/inspect_cnn.ipynb in JupyterLab against a real runtime server, then clicks the
drawing: a closed scope opens, a variable shows its details and value summary, search highlights.
A second notebook draws closed scopes that form a cycle: the
back edge must come out as two downward stubs. Skipped when chromium, playwright or jupyterlab
is missing.
"""

from __future__ import annotations

import pathlib
import shutil

import pytest

from tests.widgets.jupyterlab import CHROMIUM, CHROMIUM_ARGS, jupyterlab, require_browser, run_all

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def lab(tmp_path):
    require_browser()
    nb_dir = tmp_path / "nb"
    nb_dir.mkdir()
    shutil.copy(ROOT / "examples" / "inspect_cnn.ipynb", nb_dir / "inspect_cnn.ipynb")
    with jupyterlab(tmp_path, nb_dir) as (base, srv):
        yield base


def test_inspector_renders_and_reacts_to_clicks_in_jupyterlab(lab, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            run_all(page, lab, "inspect_cnn.ipynb")
            root = page.locator(".jp-OutputArea .kf-inspector").first
            root.wait_for(timeout=90_000)
            # the graph opened with its scopes closed; the last cell opened conv1/ and selected conv2/relu
            page.wait_for_selector(".kf-inspector .kf-group[data-id='conv1/']", timeout=90_000)
            page.wait_for_function("document.querySelector('.kf-inspector .kf-details-title')?.textContent"
                                   " === 'conv2/relu'", timeout=90_000)
            assert root.locator(".kf-box").count() >= 10
            assert root.locator(".kf-edge").count() >= 10
            # the notebook's last cell showed the train step's plan: conv1's fused add + relu outlined
            root.locator(".kf-box.kf-fused[data-id='conv1/add']").wait_for(timeout=90_000)
            assert root.locator(".kf-box[data-id='conv1/relu']").get_attribute("data-fused") == "conv1/relu"
            assert root.locator(".kf-box.kf-fused[data-id='conv1/conv2d']").count() == 0
            # a click on the closed scope opens it: a group with a header appears, its inner scopes closed
            # dispatch_event: the box may lie outside the clipped canvas (the drawing is taller than it)
            root.locator(".kf-box[data-id='gradients/']").dispatch_event("click")
            root.locator(".kf-group[data-id='gradients/']").wait_for(timeout=30_000)
            root.locator(".kf-box.kf-scope[data-id='gradients/conv1/']").wait_for(timeout=30_000)
            # close it again (a header click); open conv2/ for the search below
            root.locator(".kf-header[data-id='gradients/']").dispatch_event("click")
            root.locator(".kf-box.kf-scope[data-id='gradients/']").wait_for(timeout=30_000)
            root.locator(".kf-box[data-id='conv2/']").dispatch_event("click")
            root.locator(".kf-group[data-id='conv2/']").wait_for(timeout=30_000)
            # a click on a variable shows its details and its value summary from the runtime
            root.locator(".kf-box[data-id='conv1/w']").dispatch_event("click")
            page.wait_for_function("document.querySelector('.kf-inspector .kf-details-title')?.textContent"
                                   " === 'conv1/w'", timeout=30_000)
            root.locator(".kf-summary").wait_for(timeout=30_000)
            details = root.locator(".kf-details").inner_text()
            assert "variable" in details and "min / max" in details and "NaN / Inf" in details
            assert root.locator(".kf-hist-bar").count() == 30
            assert root.locator(".kf-box.kf-sel[data-id='conv1/w']").count() == 1
            # the notebook left a trace highlighted: clear it, then search
            root.locator(".kf-clear").click()
            page.wait_for_function("document.querySelectorAll('.kf-inspector .kf-hl').length === 0", timeout=30_000)
            root.locator(".kf-search").fill("relu")
            page.wait_for_selector(".kf-inspector .kf-box.kf-hl[data-id='conv1/relu']", timeout=30_000)
            assert root.locator(".kf-box.kf-hl[data-id='conv2/relu']").count() == 1
            assert root.locator(".kf-box.kf-hl[data-id='dense/matmul']").count() == 0
            root.locator(".kf-fit").click()
            shot = tmp_path / "inspector.png"  # docs/img/inspector.png is the first view (test_inspector_browser.py)
            root.screenshot(path=str(shot))
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()


SCOPE_CYCLE_NB = {
    "cells": [{"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": (
        "import kernelflow as kf\n"
        "from kernelflow.widgets import GraphInspector\n"
        "g = kf.Graph('cycle')\n"
        "x = g.placeholder((3,), name='x')\n"
        "with g.name_scope('A'):\n    p = kf.relu(x)\n"
        "with g.name_scope('B'):\n    q = kf.exp(p)\n"
        "with g.name_scope('A'):\n    r = kf.tanh(q)\n"
        "GraphInspector(g, expanded=[])  # A/ -> B/ -> A/: a cycle of closed scopes")}],
    "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    "nbformat": 4, "nbformat_minor": 5}


def test_inspector_draws_scope_cycle_back_edge_as_two_downward_stubs(lab, tmp_path):
    import json

    from playwright.sync_api import sync_playwright

    (tmp_path / "nb" / "cycle.ipynb").write_text(json.dumps(SCOPE_CYCLE_NB))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            run_all(page, lab, "cycle.ipynb")
            back = page.locator(".kf-inspector .kf-edge.kf-back")
            back.first.wait_for(state="attached", timeout=90_000)
            assert back.count() == 1
            d = back.first.get_attribute("d")
            pts = [tuple(map(float, seg[1:].split())) for seg in d.replace("M", "|M").replace("L", "|L").split("|")
                   if seg]
            assert [seg[0] for seg in d.replace("M", "|M").replace("L", "|L").split("|") if seg] == \
                ["M", "L", "M", "L"]  # two separate stubs
            assert pts[1][1] > pts[0][1] and pts[3][1] > pts[2][1]  # both go down
            labels = page.locator(".kf-inspector .kf-back-label").all_text_contents()
            # the out-stub names the target, the in-stub the source (which of A/->B/, B/->A/ is the back one
            # is igraph's feedback-arc-set choice)
            assert labels in (["\u2192 A/", "B/ \u2192"], ["\u2192 B/", "A/ \u2192"]), labels
        finally:
            browser.close()
