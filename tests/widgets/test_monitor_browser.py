"""The training monitor in a real browser: JupyterLab + Debian's chromium + Playwright (marker ``browser``).

Runs examples/monitor.ipynb (with a long job) in JupyterLab against a real runtime server, waits
for the monitor, checks that a chart line has several points and grows while the job runs, that
the images panel shows the logged 8x8 images (decoded by the browser), clicks
Stop and sees the job stopped (badge and server). Saves a screenshot to docs/img/monitor.png with
KF_SAVE_SCREENSHOTS=1 (else to the test's tmp dir). Skipped when chromium, playwright or jupyterlab
is missing.
"""

from __future__ import annotations

import json
import os
import pathlib
import time

import pytest

from tests.widgets.jupyterlab import CHROMIUM, CHROMIUM_ARGS, jupyterlab, require_browser, run_all

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "img" / "monitor.png"
# points of the first chart's smoothed loss line (a path "M x,y L x,y ..."): bqplot draws raw lines first
POINTS_JS = """() => {
  const paths = [...document.querySelectorAll('.kf-monitor .kf-monitor-chart path.line')]
    .map(p => (p.getAttribute('d') || '').split(/[ML]/).filter(s => s.trim()).length);
  return paths.length ? Math.max(...paths) : 0;
}"""

IMAGES_JS = """[...document.querySelectorAll('.kf-monitor .kf-monitor-images img')]
  .filter(i => i.complete && i.naturalWidth === 8 && i.naturalHeight === 8).length"""


@pytest.fixture
def lab(tmp_path):
    require_browser()
    nb_dir = tmp_path / "nb"
    nb_dir.mkdir()
    nb = json.loads((ROOT / "examples" / "monitor.ipynb").read_text())
    # a job long enough to still run when Stop is clicked; and no last cell waiting for it: while a
    # cell runs, the kernel holds widget messages (the Stop click) until the cell ends
    assert "".join(nb["cells"][-1]["source"]).startswith("status = job.wait()")
    nb["cells"] = nb["cells"][:-2]
    epochs = [c for c in nb["cells"] if "".join(c["source"]) == "EPOCHS = 60"]
    assert len(epochs) == 1
    epochs[0]["source"] = "EPOCHS = 100000"
    (nb_dir / "monitor.ipynb").write_text(json.dumps(nb))
    with jupyterlab(tmp_path, nb_dir) as (base, srv):
        yield base, srv


def test_monitor_live_chart_grows_and_stop_button_stops_job_in_jupyterlab(lab, tmp_path):
    from playwright.sync_api import sync_playwright

    base, srv = lab
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            run_all(page, base, "monitor.ipynb")
            root = page.locator(".jp-OutputArea .kf-monitor").first
            root.wait_for(timeout=90_000)
            root.locator(".kf-badge-running").wait_for(timeout=60_000)
            page.wait_for_function(f"({POINTS_JS})() > 1", timeout=60_000)
            first = page.evaluate(POINTS_JS)
            page.wait_for_function(f"({POINTS_JS})() > {first}", timeout=60_000)  # grows while the job runs
            assert root.locator(".kf-monitor-chart").count() >= 2  # loss and accuracy
            assert root.locator(".kf-monitor-histograms .bqplot").count() == 2
            # the images panel: 16 images of the batch's digits, 8x8 PNGs the browser decoded
            page.wait_for_function(IMAGES_JS + " === 16", timeout=60_000)
            assert "step" in root.locator(".kf-monitor-images .kf-image-step").inner_text()
            shot = SCREENSHOT if os.environ.get("KF_SAVE_SCREENSHOTS") == "1" else tmp_path / "monitor.png"
            shot.parent.mkdir(parents=True, exist_ok=True)
            time.sleep(2)  # a few more redraws for a fuller picture
            root.screenshot(path=str(shot))
            assert shot.stat().st_size > 10_000
            root.locator("button.kf-stop").click()
            with srv.connect() as rt:
                deadline = time.monotonic() + 60
                while True:  # the click reaches the kernel, which stops the job on the server
                    jobs = [j for j in rt.jobs() if j["name"] == "digits-mlp"]
                    if [j["status"] for j in jobs] == ["stopped"]:
                        break
                    assert time.monotonic() < deadline, jobs
                    time.sleep(0.2)
                assert 0 < jobs[0]["step"] < jobs[0]["total_steps"]
            # On this loaded 2-core machine headless chromium works through a backlog of chart updates
            # (tens of seconds) before it shows the badge update that follows them: a generous wait.
            root.locator(".kf-badge-stopped").wait_for(timeout=180_000)
            assert root.locator("button.kf-stop").is_disabled()
        finally:
            browser.close()
