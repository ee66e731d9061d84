"""Pause works while the cell is in ``job.wait()`` (issue #14 items 4 and 10; marker ``browser``):
JupyterLab + chromium run a notebook that shows the monitor and then blocks in ``job.wait()``; a
click on Pause must reach the kernel during the wait (``job.wait`` handles widget messages while it
waits, as jupyter-ui-poll does), pause the job on the server and so end the wait ("paused"). The
buttons keep their places when the state changes.
"""

from __future__ import annotations

import json

import pytest

from tests.widgets.jupyterlab import CHROMIUM, CHROMIUM_ARGS, jupyterlab, require_browser, run_all

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SETUP = (
    "import kernelflow as kf\n"
    "from sklearn.datasets import load_digits\n"
    "rt = kf.connect()\n"
    "X, y = load_digits(return_X_y=True)\n"
    "ds = rt.dataset('digits', {'x': (X / 16).astype('float32'), 'y': y.astype('int64')})\n"
    "g = rt.graph('wait')\n"
    "x = g.placeholder((None, 64), 'float32', name='x')\n"
    "labels = g.placeholder((None,), 'int64', name='y')\n"
    "logits = kf.layers.dense(kf.layers.dense(x, 32, activation=kf.relu, name='h'), 10, name='out')\n"
    "loss = kf.mean(kf.softmax_cross_entropy(logits, labels))\n"
    "train = kf.optim.Adam(1e-3).minimize(loss)\n"
    "job = g.fit(train, data=ds, feed={x: 'x', labels: 'y'}, steps=10_000_000, log_every=10,\n"
    "            metrics={'loss': loss}, name='wait')\n"
    "job.monitor()")
WAIT = "status = job.wait()\nprint('wait returned', status)"
NB = {"cells": [{"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": src}
                for src in (SETUP, WAIT)],
      "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
      "nbformat": 4, "nbformat_minor": 5}

BUTTONS_JS = """() => [...document.querySelectorAll('.kf-monitor .kf-buttons button')]
  .map(b => { const r = b.getBoundingClientRect(); return [Math.round(r.left), Math.round(r.top)]; })"""


@pytest.fixture
def lab(tmp_path):
    require_browser()
    nb_dir = tmp_path / "nb"
    nb_dir.mkdir()
    (nb_dir / "wait.ipynb").write_text(json.dumps(NB))
    with jupyterlab(tmp_path, nb_dir) as (base, srv):
        yield base, srv


def test_pause_click_reaches_the_kernel_while_the_cell_waits_for_the_job(lab):
    from playwright.sync_api import sync_playwright

    base, srv = lab
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            run_all(page, base, "wait.ipynb")
            root = page.locator(".jp-OutputArea .kf-monitor").first
            root.locator(".kf-badge-running").wait_for(timeout=120_000)
            # the second cell runs (its prompt reads [*]) and the first has finished: the wait is on
            page.wait_for_function("""() => {
              const p = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(e => e.textContent);
              return p.length === 2 && !p[0].includes('*') && p[1].includes('*');
            }""", timeout=60_000)
            before = page.evaluate(BUTTONS_JS)
            root.locator("button.kf-pause").click()
            page.get_by_text("wait returned paused").first.wait_for(state="attached", timeout=60_000)
            with srv.connect() as rt:
                assert [j["status"] for j in rt.jobs() if j["name"] == "wait"] == ["paused"]
            root.locator(".kf-badge-paused").wait_for(timeout=60_000)
            assert "ETA" not in root.locator(".kf-numbers").first.inner_text()
            assert page.evaluate(BUTTONS_JS) == before  # the row did not reflow
            root.locator("button.kf-stop").click()
            root.locator(".kf-badge-stopped").wait_for(timeout=60_000)
        finally:
            browser.close()
