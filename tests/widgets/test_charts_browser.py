"""The monitor's chart axes in a real browser (issue #14 item 2; marker ``browser``): JupyterLab +
Debian's chromium + Playwright run examples/monitor.ipynb (a short job) against a real runtime
server; then the "log scale" and "ignore outliers" boxes are toggled in three orders and the y
tick texts are read back from the page after each toggle. Each time the ticks must be round
values inside the data's range (the job's history, asked of the server), and their positions must
follow the scale on show: linear in the value on a linear axis, in its logarithm on a log axis
(the old monitor left linear labels on log curves). Also: train and validation curves in two
colours, the legend below the plot, no "negative width" errors in the console. Saves
docs/img/monitor.png (log scale on) with KF_SAVE_SCREENSHOTS=1, else into the test's tmp dir.
"""

from __future__ import annotations

import json
import os
import pathlib
import time

import numpy as np
import pytest

from tests.widgets.jupyterlab import CHROMIUM, CHROMIUM_ARGS, jupyterlab, require_browser, run_all

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "img" / "monitor.png"

# Ticks of each axis of the chart titled `title`: [{x, y, text}] per axis, from the tick groups' transforms.
AXES_JS = """(title) => {
  const figs = [...document.querySelectorAll('.kf-monitor .kf-monitor-chart')];
  const fig = figs.find(f => [...f.querySelectorAll('text.mainheading')].some(t => t.textContent === title));
  if (!fig) return null;
  return [...fig.querySelectorAll('g.axis')].map(ax => [...ax.querySelectorAll('g.tick')].map(t => {
    const m = /translate\\(\\s*([-\\d.e]+)[ ,]+([-\\d.e]+)\\s*\\)/.exec(t.getAttribute('transform') || '');
    const txt = t.querySelector('text');
    return {x: m ? +m[1] : NaN, y: m ? +m[2] : NaN, text: txt ? txt.textContent : '',
            opacity: +getComputedStyle(t).opacity};
  }));
}"""

COLOURS_JS = """(title) => {
  const figs = [...document.querySelectorAll('.kf-monitor .kf-monitor-chart')];
  const fig = figs.find(f => [...f.querySelectorAll('text.mainheading')].some(t => t.textContent === title));
  const strokes = [...fig.querySelectorAll('path.line')].map(p => getComputedStyle(p).stroke);
  const legend = fig.parentElement.querySelector('.kf-legend');
  return {strokes, figBottom: fig.getBoundingClientRect().bottom,
          legendTop: legend ? legend.getBoundingClientRect().top : null,
          legendText: legend ? legend.textContent : ''};
}"""


def _parse(text: str) -> float:
    return float(text.replace("\u2212", "-").replace(",", ""))


def _y_ticks(page, title: str) -> list[tuple[float, float]] | None:
    """(value, y pixel) of the y axis's ticks (the axis whose ticks all sit at x = 0)."""
    axes = page.evaluate(AXES_JS, title)
    if not axes:
        return None
    for ticks in axes:
        shown = [t for t in ticks if t["opacity"] > 0.5 and t["text"]]
        if shown and all(t["x"] == 0 for t in shown) and len({t["y"] for t in shown}) == len(shown):
            return [(_parse(t["text"]), t["y"]) for t in shown]
    return None


def _fits(ticks: list[tuple[float, float]], log: bool) -> bool:
    """True when the tick positions are an affine function of the value (of its log10 for ``log``)."""
    v = np.array([t[0] for t in ticks])
    y = np.array([t[1] for t in ticks])
    if len(v) < 2 or (log and (v <= 0).any()):
        return False
    u = np.log10(v) if log else v
    if len(v) == 2:
        return bool((np.diff(y) * np.diff(u) < 0).all())  # up the screen as the value grows
    a, b = np.polyfit(u, y, 1)
    return a < 0 and float(np.abs(a * u + b - y).max()) < 1.5


def _wait_ticks(page, title: str, log: bool, lo: float, hi: float, timeout_s: float = 60) -> list:
    """Poll the page until the y ticks fit the scale and lie in ``[lo, hi]`` (the page may still show
    the previous state for a moment after a toggle); fail with what it showed at the deadline."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = _y_ticks(page, title)
        if last and _fits(last, log) and all(lo * (1 - 1e-6) - 1e-9 <= v <= hi * (1 + 1e-6) + 1e-9
                                             for v, _ in last):
            break
        time.sleep(0.2)  # polling the browser's DOM, with a deadline
    else:
        raise AssertionError(f"y ticks never fit a {'log' if log else 'linear'} scale on [{lo}, {hi}]: {last}")
    assert max(y for _, y in last) - min(y for _, y in last) > 50, last  # spread over the plot, not in a corner
    return last


DONE_JS = """() => {
  const errors = [...document.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.error"]')]
    .map(e => e.textContent);
  const done = [...document.querySelectorAll('.jp-OutputArea-output')]
    .some(o => o.textContent.includes('completed at step'));
  return {errors, done};
}"""


def _wait_last_cell(page, timeout_s: float = 240) -> None:
    """Until the notebook's last cell printed its line (the job completed); fail at once on a cell error."""
    deadline = time.monotonic() + timeout_s
    while True:
        st = page.evaluate(DONE_JS)
        assert not st["errors"], st["errors"]
        if st["done"]:
            return
        assert time.monotonic() < deadline, "the notebook's last cell did not finish"
        time.sleep(0.5)  # polling the page, with a deadline


@pytest.fixture
def lab(tmp_path):
    require_browser()
    nb_dir = tmp_path / "nb"
    nb_dir.mkdir()
    nb = json.loads((ROOT / "examples" / "monitor.ipynb").read_text())
    epochs = [c for c in nb["cells"] if "".join(c["source"]).strip() == "EPOCHS = 60"]
    assert len(epochs) == 1
    epochs[0]["source"] = "EPOCHS = 4"
    # a job this short may end before the cell that waits for more records runs: drop that cell
    nb["cells"] = [c for c in nb["cells"] if not "".join(c["source"]).startswith(("seen = monitor", "The cell above"))]
    (nb_dir / "monitor.ipynb").write_text(json.dumps(nb))
    with jupyterlab(tmp_path, nb_dir) as (base, srv):
        yield base, srv


def test_log_scale_and_outlier_toggles_in_three_orders_show_matching_tick_labels(lab, tmp_path):
    from playwright.sync_api import sync_playwright

    base, srv = lab
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            console: list[str] = []
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            run_all(page, base, "monitor.ipynb")
            root = page.locator(".jp-OutputArea .kf-monitor").first
            root.wait_for(timeout=90_000)
            _wait_last_cell(page)
            with srv.connect() as rt:
                job = next(j for j in rt.jobs() if j["name"] == "digits-mlp")
                hist = rt.job(job["id"]).history
            loss = np.concatenate([hist["loss"]["value"], hist["val_loss"]["value"]]).astype(np.float32)
            lo, hi = float(loss.min()), float(loss.max())
            assert hi / lo > 2  # a range where log and linear ticks differ

            _wait_ticks(page, "loss", False, lo, hi)
            log_box = root.get_by_label("log scale")
            outliers_box = root.get_by_label("ignore outliers")
            orders = [
                [(log_box, True), (log_box, False)],
                [(log_box, True), (outliers_box, True), (log_box, False)],
                [(log_box, True), (outliers_box, False), (log_box, False)],
            ]
            for order in orders:
                for box, on in order:
                    box.set_checked(on)
                    log, outl = log_box.is_checked(), outliers_box.is_checked()
                    # the outlier-free range is the 5-95 % band, padded by 10 % (in log10 on a log axis)
                    wide = (lo / 2, hi * 2) if log else (lo - 0.2 * (hi - lo), hi)
                    _wait_ticks(page, "loss", log, *(wide if outl else (lo, hi)))
                    ticks = _y_ticks(page, "loss")
                    if log:  # round values of a log axis: 1, 2 or 5 times a power of ten (or linear within a decade)
                        assert all(round(v / 10 ** np.floor(np.log10(v)), 6) in (1.0, 2.0, 5.0) for v, _ in ticks) \
                            or _fits(ticks, False), ticks
            # the screenshot: log scale on, train and validation in their colours
            log_box.set_checked(True)
            _wait_ticks(page, "loss", True, lo, hi)
            info = page.evaluate(COLOURS_JS, "loss")
            assert len({s for s in info["strokes"] if s and s != "none"}) >= 2, info  # train != validation colour
            assert info["legendTop"] is not None and info["legendTop"] >= info["figBottom"] - 1, info
            assert "loss" in info["legendText"] and "val_loss" in info["legendText"]
            shot = SCREENSHOT if os.environ.get("KF_SAVE_SCREENSHOTS") == "1" else tmp_path / "monitor.png"
            shot.parent.mkdir(parents=True, exist_ok=True)
            root.screenshot(path=str(shot))
            assert shot.stat().st_size > 10_000
            negative = [m for m in console if "negative" in m.lower()]
            assert not negative, negative  # bqplot drawing a hidden (zero-size) figure
        finally:
            browser.close()
