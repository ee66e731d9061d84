"""The monitor's audio and text panels in a real browser (issue #17): JupyterLab + Debian's chromium +
Playwright (marker ``browser``). A notebook trains a tiny job logging audio and text on a real
runtime server; the browser must hold ``<audio>`` elements whose source is set and whose
duration (decoded from the WAV by chromium) is the clip's, and the text rows."""

from __future__ import annotations

import json

import pytest

from tests.widgets.jupyterlab import CHROMIUM, CHROMIUM_ARGS, jupyterlab, require_browser, run_all

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CELLS = [
    "import numpy as np\nimport kernelflow as kf\nrt = kf.connect()",
    "FRAMES, RATE = 4000, 8000  # half a second per clip\n"
    "w = (np.sin(np.arange(32 * FRAMES).reshape(32, FRAMES) * 0.2) * 0.5).astype('float32')\n"
    "codes = np.tile(np.array([75, 70, 33, 0], 'int32'), (32, 1))\n"
    "ds = rt.dataset('audio-browser', {'w': w, 'c': codes}, overwrite=True)\n"
    "g = rt.graph('audio_browser')\n"
    "x = g.placeholder((None, FRAMES), 'float32', name='w')\n"
    "c = g.placeholder((None, 4), 'int32', name='c')\n"
    "v = g.variable(np.ones(FRAMES, 'float32'), name='v')\n"
    "train = kf.optim.SGD(0.01).minimize(kf.mean(x * v))\n"
    "job = g.fit(train, data=ds, feed={x: 'w', c: 'c'}, batch_size=4, steps=8, shuffle=False, log_every=0,\n"
    "            audio={'wave': x}, text={'codes': c}, audio_sample_rate=RATE, audio_max=2, image_every=4,\n"
    "            checkpoint_every_s=None)\n"
    "job.wait()",
    "kf.widgets.TrainingMonitor(job)",
]

AUDIO_JS = """() => [...document.querySelectorAll('.kf-monitor .kf-monitor-audio audio')]
  .map(a => ({src: a.getAttribute('src') || a.currentSrc || '', duration: a.duration, ready: a.readyState}))"""


def test_monitor_plays_audio_and_shows_text_in_jupyterlab(tmp_path):
    require_browser()
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    nb_dir = tmp_path / "nb"
    nb_dir.mkdir()
    nb = {"cells": [{"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [], "source": s}
                    for s in CELLS],
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
          "nbformat": 4, "nbformat_minor": 5}
    (nb_dir / "audio.ipynb").write_text(json.dumps(nb))
    with jupyterlab(tmp_path, nb_dir) as (base, srv), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=[*CHROMIUM_ARGS, "--autoplay-policy=no-user-gesture-required"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1400})
            run_all(page, base, "audio.ipynb")
            root = page.locator(".jp-OutputArea .kf-monitor").first
            root.wait_for(timeout=120_000)
            # The panel may draw an earlier step's clips first and then swap the sources (a swapped
            # <audio> has no duration until chromium decodes it): wait for the settled state.
            settled = (f"({AUDIO_JS})().length === 2 && ({AUDIO_JS})().every(a => a.src && "
                       "Math.abs(a.duration - 0.5) < 0.01)")  # 4000 frames at 8 kHz
            try:
                page.wait_for_function(settled, timeout=60_000)
            except PlaywrightTimeout:
                raise AssertionError(f"the monitor's audio players never held two 0.5 s clips: "
                                     f"{page.evaluate(AUDIO_JS)}") from None
            assert "step" in root.locator(".kf-monitor-audio .kf-audio-step").inner_text()
            rows = root.locator(".kf-monitor-text-rows li")
            rows.first.wait_for(timeout=30_000)
            assert rows.count() == 4 and rows.first.inner_text() == "KF!"
            root.screenshot(path=str(tmp_path / "audio.png"))
        finally:
            browser.close()
