"""The training monitor's images panel: the image records of a job (``g.fit(images=...)``) as a
grid of PNG ``ipywidgets.Image``s, with a step slider to look back at earlier records.

Records come as uint8 ``(N, H, W, C)`` arrays (C 1, 3 or 4; converted on the runtime). The
panel keeps the newest ``keep`` records per name (the runtime's default ``image_keep``) and
PNG-encodes (Pillow) only the record on screen, once. The dropdown, slider and following are
`kernelflow.widgets.records.RecordPanel`'s.

Contents: ImagePanel, png_bytes.
"""

from __future__ import annotations

import io
from typing import Any

import ipywidgets as widgets
import numpy as np

from .records import KEEP, RecordPanel

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


class ImagePanel(RecordPanel):
    """Image records by name: a name dropdown, a step slider, a label and a grid of images.

    Attributes:
        data: ``{name: [(step, uint8 (N, H, W, C)), ...]}``, oldest first, at most ``keep`` each.
        grid: the `ipywidgets.GridBox` of `ipywidgets.Image` (PNG) widgets on screen.
    """

    def __init__(self, keep: int = KEEP, min_interval_s: float = MIN_INTERVAL_S) -> None:
        self.grid = widgets.GridBox([], layout=widgets.Layout(grid_template_columns="repeat(8, max-content)",
                                                              grid_gap="4px"))
        self.grid.add_class("kf-monitor-image-grid")
        self._png: dict[tuple[str, int], list[bytes]] = {}
        super().__init__("images", self.grid, keep, min_interval_s, head=(widgets.HTML(_STYLE),))
        self.widget.add_class("kf-monitor-images")

    def add(self, key: str, step: int, images: Any) -> None:
        """Take one image record."""
        super().add(key, step, np.asarray(images, np.uint8))

    def _forget(self, key: str, step: int) -> None:
        self._png.pop((key, step), None)

    def _describe(self, step: int, images: Any, index: int, n_recs: int) -> str:
        n, h, w, _ = images.shape
        return (f'<span class="kf-image-step">step <b>{step}</b></span> · {n} image'
                f"{'s' if n != 1 else ''} {h}×{w} · record {index + 1} / {n_recs}")

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
