"""The monitor's record browser: records of one kind by name, with a name dropdown and a step slider.

`RecordPanel` holds the newest ``keep`` records per name and shows one at a time; while the
slider is on the newest record it follows new ones, moved back it stays where it is until
moved to the end again. Subclasses draw a record: the images panel (images.py) as a grid of
PNGs, the audio panel as playable clips and the text panel as rows (media.py).

Contents: RecordPanel.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import ipywidgets as widgets

KEEP = 100          # records per name kept for the slider


class RecordPanel:
    """Records by name: a name dropdown, a step slider, a label and a body a subclass draws.

    Args:
        kind: the dropdown's description (``"images"``, ``"audio"``, ``"text"``).
        body: the widget the records are drawn into.
        keep: records per name kept.
        min_interval_s: least time between two draws of new records by the render thread.

    Attributes:
        data: ``{name: [(step, payload), ...]}``, oldest first, at most ``keep`` each.
    """

    def __init__(self, kind: str, body: widgets.Widget, keep: int = KEEP, min_interval_s: float = 0.0,
                 head: tuple = ()) -> None:
        self.keep = keep
        self.min_interval_s = min_interval_s
        self._drawn_at = -math.inf
        self.data: dict[str, list[tuple[int, Any]]] = {}
        self.choice = widgets.Dropdown(options=[], description=kind, layout=widgets.Layout(width="320px"))
        # continuous_update=False: with it on, the front end sends the value back on every change of
        # max (noUiSlider's "update" event), and a stale value would stop the slider following
        self.slider = widgets.IntSlider(value=0, min=0, max=0, description="record", readout=False,
                                        continuous_update=False, layout=widgets.Layout(width="320px"))
        self.label = widgets.HTML()
        self.widget = widgets.VBox([*head, widgets.HBox([self.choice, self.slider, self.label],
                                                        layout=widgets.Layout(align_items="center")), body],
                                   layout=widgets.Layout(display="none"))
        self.dirty = False
        self.follow = True
        self._shown: tuple[str, int] | None = None
        self._setting = False
        # the render thread adds and redraws; slider and dropdown changes come on the kernel's thread
        self._lock = threading.RLock()
        self.choice.observe(self._on_choice, "value")
        self.slider.observe(self._on_slider, "value")

    # ----------------------------------------------------------------- for subclasses
    def _describe(self, step: int, payload: Any, index: int, n: int) -> str:
        """The label's HTML for record ``index`` of ``n``."""
        return f"step <b>{step}</b> · record {index + 1} / {n}"

    def _draw(self, key: str, step: int, payload: Any) -> None:
        """Draw one record into the body."""
        raise NotImplementedError

    def _forget(self, key: str, step: int) -> None:
        """A record dropped from ``data``: drop what was cached for it."""

    # ----------------------------------------------------------------- records in
    def add(self, key: str, step: int, payload: Any) -> None:
        """Take one record (in step order: a late one, fetched after its stub came, goes in its place;
        one of a step already here replaces it)."""
        with self._lock:
            recs = self.data.setdefault(key, [])
            step = int(step)
            at = len(recs)
            while at and recs[at - 1][0] > step:
                at -= 1
            if at and recs[at - 1][0] == step:
                self._forget(key, step)
                recs[at - 1] = (step, payload)
            else:
                recs.insert(at, (step, payload))
            while len(recs) > self.keep:
                old_step, _ = recs.pop(0)
                self._forget(key, old_step)
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
        step, payload = recs[index]
        self.label.value = self._describe(step, payload, index, len(recs))
        if self._shown != (key, step):
            self._draw(key, step, payload)
            self._shown = (key, step)
            self._drawn_at = time.monotonic()
        self.widget.layout.display = None
        self.dirty = False
