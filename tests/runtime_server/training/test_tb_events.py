"""TensorBoard event writing keeps memory bounded when a job logs images faster than they can be
encoded (issue #15 item 9: ~6 MB/s of growth with images every step)."""

from __future__ import annotations

import time

import numpy as np

from kernelflow.runtime_server.training import tb_events
from kernelflow.runtime_server.training.tb_events import MAX_QUEUED_IMAGE_BYTES, EventWriter

WAIT_S = 120.0


def test_image_records_beyond_the_queue_budget_skip_the_event_files(tmp_path):
    w = EventWriter()
    w.open("j", str(tmp_path / "tb"))
    pixels = np.random.default_rng(0).integers(0, 256, (4, 256, 256, 3), dtype=np.uint8)  # 768 KiB
    n = 2 * MAX_QUEUED_IMAGE_BYTES // pixels.nbytes
    peak = 0
    for step in range(1, n + 1):
        w.write("j", {"kind": "images", "name": "img", "step": step, "wall_time": time.time(), "images": pixels})
        peak = max(peak, w.queued_image_bytes)
    w.write("j", {"kind": "scalars", "step": n + 1, "wall_time": time.time(), "values": {"loss": 0.5}})
    assert peak <= MAX_QUEUED_IMAGE_BYTES
    assert w.dropped_images > 0  # PNG-encoding 170 records takes far longer than queueing them
    w.close("j")
    w.shutdown(timeout_s=WAIT_S)
    assert w.queued_image_bytes == 0  # every queued record was written (or failed) and released
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_image_bytes_counts_only_image_records_with_pixels():
    img = np.zeros((2, 4, 4, 1), np.uint8)
    assert tb_events._image_bytes({"kind": "images", "images": img}) == 32
    assert tb_events._image_bytes({"kind": "images", "images": None}) == 0
    assert tb_events._image_bytes({"kind": "scalars", "values": {}}) == 0
