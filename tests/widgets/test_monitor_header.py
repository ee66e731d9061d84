"""The monitor's job header (issue #14 items 3 and 10): the "disconnected" badge when the runtime
goes away and its recovery when it comes back (a real `kernelflow serve`, stopped and restarted on
the same port and state dir), no rate or ETA while paused, and a button row of fixed widths."""

from __future__ import annotations

import pytest

pytest.importorskip("bqplot")

from kernelflow.widgets import TrainingMonitor  # noqa: E402
from kernelflow.widgets.monitor import HEARTBEAT_S  # noqa: E402
from tests.support.models import digits, mlp  # noqa: E402
from tests.support.server import ServerProcess  # noqa: E402
from tests.support.waiting import wait_for  # noqa: E402
from tests.widgets.test_monitor import FakeJob  # noqa: E402


def _n(mon) -> int:
    s = mon.series.get((0, "loss"))
    return 0 if s is None else len(s.value)


def _numbers(h) -> str:
    return h.numbers.value


def test_paused_header_shows_no_rate_or_eta_and_buttons_keep_their_places():
    job = FakeJob()
    job.last_status.update(step=120, examples_per_s=5321.0, elapsed_s=12.0, eta_s=30.0)
    mon = TrainingMonitor(job, live=False)
    h = mon.headers[0]
    assert "5,321 ex/s" in _numbers(h) and "ETA 0:00:30" in _numbers(h)
    widths = [c.layout.width for c in h.widget.children]
    job.last_status["status"] = "paused"
    mon.flush()
    assert "kf-badge-paused" in h.title.value
    assert "ex/s" not in _numbers(h) and "ETA" not in _numbers(h)  # frozen numbers would mislead
    assert "step <b>120</b> / 1000" in _numbers(h) and "elapsed 0:00:12" in _numbers(h)
    # every part of the row has a fixed width (the buttons sit in one box that never wraps)
    assert [c.layout.width for c in h.widget.children] == widths
    assert all(w and w.endswith("px") for w in widths[:3])
    assert h.buttons.children == (h.pause, h.resume, h.stop) and h.buttons.layout.flex_flow == "row nowrap"
    assert h.pause.disabled and not h.resume.disabled and not h.stop.disabled
    mon.close()


def test_monitor_shows_disconnected_within_seconds_and_recovers_when_the_server_returns(tmp_path):
    state = tmp_path / "state"
    srv = ServerProcess(tmp_path, "--state-dir", str(state)).wait_listening()
    port = srv.port
    rt = srv.connect(timeout=10.0)
    srv2 = None
    try:
        train, _ = digits(rt, "digits-conn")
        m = mlp(rt, "conn")
        job = m.g.fit(m.train, data=train, feed={m.x: "x", m.y: "y"}, batch_size=32, steps=10_000_000,
                      metrics={"loss": m.loss}, log_every=5, name="conn")
        mon = TrainingMonitor(job)
        h = mon.headers[0]
        wait_for(lambda: "kf-badge-running" in h.title.value and _n(mon) > 3,
                 "running with records")
        assert mon.connected
        srv.stop()  # `kernelflow stop` does the same: SIGTERM
        wait_for(lambda: "kf-badge-disconnected" in h.title.value, "disconnected badge", 4 * HEARTBEAT_S + 5)
        assert not mon.connected
        assert "lost the runtime" in mon.message.value
        assert "ETA" not in h.numbers.value and "ex/s" not in h.numbers.value
        assert h.pause.disabled and h.stop.disabled and h.resume.disabled
        srv2 = ServerProcess(tmp_path / "again", "--state-dir", str(state), port=port).wait_listening()
        # the same URL: the monitor's next probe reconnects; the job was interrupted by the stop
        wait_for(lambda: "kf-badge-interrupted" in h.title.value, "badge after the restart", 30)
        assert mon.connected and mon.message.value == ""
        assert not h.resume.disabled  # an interrupted job can resume from its checkpoint
        h.resume.click()
        n = _n(mon)
        wait_for(lambda: _n(mon) > n + 2, "new records after resume", 30)
        h.stop.click()
        wait_for(lambda: "kf-badge-stopped" in h.title.value, "stopped")
        mon.close()
    finally:
        rt.close()
        srv.stop()
        if srv2 is not None:
            srv2.stop()
