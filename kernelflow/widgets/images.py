"""The training monitor's images panel: the image records of a job (``g.fit(images=...)``) as a
grid of PNG ``ipywidgets.Image``s, with a step slider to look back at earlier records.

Records come as uint8 ``(N, H, W, C)`` arrays (C 1, 3 or 4; converted on the runtime). The
panel keeps the newest ``keep`` records per name (the runtime's default ``image_keep``) and
PNG-encodes (Pillow) only the record on screen, once. While the slider is on the newest record
it follows new ones; moved back, it stays where it is until moved to the end again.

Contents: ImagePanel, png_bytes.
"""

from __future__ import annotations

import io
import math
import threading
import time
from typing import Any

import ipywidgets as widgets
import numpy as np

KEEP = 100          # records per name kept for the slider
SHOW_PX = 96        # small images are scaled up (by an integer factor) to about this size on screen
MIN_INTERVAL_S = 1.0  # least time between two new records drawn by the render thread: each draw sends one
#                       message per image, and a browser on a busy machine falls behind at the charts' 10/s
_STYLE = "<style>.kf-monitor-images img { image-rendering: pixelated; }</style>"


def png_bytes(image: np.ndarray) -> bytes:
    """One uint8 ``(H, W, C)`` image (C 1, 3 or 4) as PNG bytes."""
    from PIL import Image  # lazily: only a monitor with images needs Pillow

    a = np.ascontiguousarray(image, dtype=np.uint8)
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[a.shape[2]]
    out = io.BytesIO()
    Image.fromarray(a[:, :, 0] if mode == "L" else a, mode=mode).save(out, format="PNG", compress_level=1)
    return out.getvalue()


class ImagePanel:
    """Image records by name: a name dropdown, a step slider, a label and a grid of images.

    Attributes:
        data: ``{name: [(step, uint8 (N, H, W, C)), ...]}``, oldest first, at most ``keep`` each.
        grid: the `ipywidgets.GridBox` of `ipywidgets.Image` (PNG) widgets on screen.
    """

    def __init__(self, keep: int = KEEP, min_interval_s: float = MIN_INTERVAL_S) -> None:
        self.keep = keep
        self.min_interval_s = min_interval_s
        self._drawn_at = -math.inf
        self.data: dict[str, list[tuple[int, np.ndarray]]] = {}
        self.choice = widgets.Dropdown(options=[], description="images", layout=widgets.Layout(width="320px"))
        # continuous_update=False: with it on, the front end sends the value back on every change of
        # max (noUiSlider's "update" event), and a stale value would stop the slider following
        self.slider = widgets.IntSlider(value=0, min=0, max=0, description="record", readout=False,
                                        continuous_update=False, layout=widgets.Layout(width="320px"))
        self.label = widgets.HTML()
        self.grid = widgets.GridBox([], layout=widgets.Layout(grid_template_columns="repeat(8, max-content)",
                                                              grid_gap="4px"))
        self.grid.add_class("kf-monitor-image-grid")
        self.widget = widgets.VBox([widgets.HTML(_STYLE), widgets.HBox([self.choice, self.slider, self.label],
                                                                       layout=widgets.Layout(align_items="center")),
                                    self.grid], layout=widgets.Layout(display="none"))
        self.widget.add_class("kf-monitor-images")
        self.dirty = False
        self.follow = True
        self._shown: tuple[str, int] | None = None
        self._png: dict[tuple[str, int], list[bytes]] = {}
        self._setting = False
        # the render thread adds and redraws; slider and dropdown changes come on the kernel's thread
        self._lock = threading.RLock()
        self.choice.observe(self._on_choice, "value")
        self.slider.observe(self._on_slider, "value")

    def add(self, key: str, step: int, images: Any) -> None:
        """Take one image record."""
        with self._lock:
            recs = self.data.setdefault(key, [])
            recs.append((int(step), np.asarray(images, np.uint8)))
            while len(recs) > self.keep:
                old_step, _ = recs.pop(0)
                self._png.pop((key, old_step), None)
            self.dirty = True

    # ----------------------------------------------------------------- controls
    def _on_choice(self, change: dict) -> None:
        if not self._setting:
            self.follow = True
            self.redraw(force=True)

    def _on_slider(self, change: dict) -> None:
        if not self._setting:
            self.follow = change["new"] >= self.slider.max
            self.redraw(force=True, index=change["new"])

    def show(self, key: str, index: int) -> None:
        """Look at record ``index`` of ``key`` (-1: the newest, and follow new ones)."""
        with self._lock:
            recs = self.data[key]
            self.follow = index == -1 or index >= len(recs) - 1
            self._setting = True
            try:
                self.choice.value = key
            finally:
                self._setting = False
            self.redraw(force=True, index=index % len(recs))

    # ----------------------------------------------------------------- drawing
    def redraw(self, force: bool = False, index: int | None = None, throttle: bool = False) -> None:
        """Draw what changed (``force``: in any case); ``throttle`` (the render thread): not within
        ``min_interval_s`` of the last draw."""
        with self._lock:
            self._redraw(force, index, throttle)

    def _redraw(self, force: bool, index: int | None, throttle: bool) -> None:
        if not (self.dirty or force) or not self.data:
            return
        if throttle and not force and time.monotonic() - self._drawn_at < self.min_interval_s:
            return  # stays dirty: a later redraw takes it
        keys = sorted(self.data)
        self._setting = True
        try:
            if list(self.choice.options) != keys:
                self.choice.options = keys
            if self.choice.value not in keys:
                self.choice.value = keys[0]
            key = self.choice.value
            recs = self.data[key]
            if index is None:
                index = len(recs) - 1
                if not self.follow and self._shown is not None and self._shown[0] == key:
                    # stay on the record looked at, though older ones may have been dropped
                    index = next((i for i, (s, _) in enumerate(recs) if s == self._shown[1]), 0)
            with self.slider.hold_sync():
                self.slider.max = len(recs) - 1
                self.slider.value = index
        finally:
            self._setting = False
        step, images = recs[index]
        n, h, w, _ = images.shape
        self.label.value = (f'<span class="kf-image-step">step <b>{step}</b></span> · {n} image'
                            f"{'s' if n != 1 else ''} {h}×{w} · record {index + 1} / {len(recs)}")
        if self._shown != (key, step):
            self._draw(key, step, images)
        self.widget.layout.display = None
        self.dirty = False

    def _draw(self, key: str, step: int, images: np.ndarray) -> None:
        pngs = self._png.get((key, step))
        if pngs is None:
            pngs = self._png[(key, step)] = [png_bytes(a) for a in images]
        n, h, w, _ = images.shape
        scale = max(1, SHOW_PX // max(h, w))
        size = {"width": f"{w * scale}px", "height": f"{h * scale}px"}
        kids = list(self.grid.children)
        while len(kids) < n:
            kids.append(widgets.Image(format="png", layout=widgets.Layout(**size)))
        with self.grid.hold_sync():
            for im, png in zip(kids, pngs):
                im.value = png
                im.layout.width, im.layout.height = size["width"], size["height"]
            self.grid.children = kids[:n]
            for im in kids[n:]:
                im.close()  # its comm too: fewer images this step must not leak widgets
            self.grid.layout.grid_template_columns = f"repeat({min(n, 8)}, max-content)"
        self._shown = (key, step)
        self._drawn_at = time.monotonic()
