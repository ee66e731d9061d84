"""The monitor notices a dead server, in a real browser (issue #14 item 3; marker ``browser``):
JupyterLab + chromium run a notebook whose job trains on a real `kernelflow serve` with a state
dir; the server is stopped (SIGTERM, as `kernelflow stop` does) and the page must show the
"disconnected" badge; the server is started again on the same port and state dir and the page
must show the job's real status (interrupted), and Resume must work from the page.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from tests.support.waiting import wait_for
from tests.widgets.jupyterlab import CHROMIUM, CHROMIUM_ARGS, lab_process, require_browser, run_all

pytestmark = [pytest.mark.browser, pytest.mark.slow]

NB = {
    "cells": [{"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": (
        "import kernelflow as kf\n"
        "from sklearn.datasets import load_digits\n"
        "rt = kf.connect()\n"
        "X, y = load_digits(return_X_y=True)\n"
        "ds = rt.dataset('digits', {'x': (X / 16).astype('float32'), 'y': y.astype('int64')})\n"
        "g = rt.graph('conn')\n"
        "x = g.placeholder((None, 64), 'float32', name='x')\n"
        "labels = g.placeholder((None,), 'int64', name='y')\n"
        "logits = kf.layers.dense(kf.layers.dense(x, 32, activation=kf.relu, name='h'), 10, name='out')\n"
        "loss = kf.mean(kf.softmax_cross_entropy(logits, labels))\n"
        "train = kf.optim.Adam(1e-3).minimize(loss)\n"
        "job = g.fit(train, data=ds, feed={x: 'x', labels: 'y'}, steps=10_000_000, log_every=10,\n"
        "            metrics={'loss': loss}, name='conn')\n"
        "job.monitor()")}],
    "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    "nbformat": 4, "nbformat_minor": 5}


def test_monitor_badge_disconnected_when_server_stops_and_back_when_it_restarts(tmp_path):
    require_browser()
    from playwright.sync_api import sync_playwright

    from tests.support.server import ServerProcess

    state = tmp_path / "state"
    srv = ServerProcess(tmp_path, "--state-dir", str(state)).wait_listening()
    srv2 = None
    nb_dir = tmp_path / "nb"
    nb_dir.mkdir()
    (nb_dir / "conn.ipynb").write_text(json.dumps(NB))
    (tmp_path / "token").write_text(srv.token)
    env = {**os.environ, "KERNELFLOW_URL": srv.url, "KERNELFLOW_TOKEN_FILE": str(tmp_path / "token")}
    env.pop("KERNELFLOW_TOKEN", None)
    try:
        with lab_process(tmp_path, nb_dir, env, start_timeout_s=60) as base, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1200})
                run_all(page, base, "conn.ipynb")
                root = page.locator(".jp-OutputArea .kf-monitor").first
                root.locator(".kf-badge-running").wait_for(timeout=120_000)
                srv.stop()
                t0 = time.monotonic()
                root.locator(".kf-badge-disconnected").wait_for(timeout=60_000)
                print(f"disconnected badge {time.monotonic() - t0:.1f} s after the stop")
                assert "lost the runtime" in root.inner_text()
                assert root.locator("button.kf-stop").is_disabled()
                srv2 = ServerProcess(tmp_path / "again", "--state-dir", str(state), port=srv.port).wait_listening()
                root.locator(".kf-badge-interrupted").wait_for(timeout=60_000)
                # the badge and the message are separate widget updates: wait for the message to clear too
                wait_for(lambda: "lost the runtime" not in root.inner_text(), "the lost-runtime message to clear",
                         timeout_s=60, every_s=0.2)
                root.locator("button.kf-resume").click()
                root.locator(".kf-badge-running").wait_for(timeout=60_000)
                with srv2.connect() as rt:
                    assert [j["status"] for j in rt.jobs() if j["name"] == "conn"] == ["running"]
                    rt.job(rt.jobs()[0]["id"]).stop()
            finally:
                browser.close()
    finally:
        srv.stop()
        if srv2 is not None:
            srv2.stop()
