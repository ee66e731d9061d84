"""Job histories go over the wire a page at a time, and the client keeps a bounded mirror.

``job.records`` and ``job.subscribe`` answer at most ``limit`` records with ``next`` and
``more``; a subscription's notifications carry the rest a page each, in order, each record
once. The Python client fetches page by page, keeps only the newest ``job.mirror_records``
records and reads older ones back from the runtime: ``job.records(start, stop)``,
``job.history`` and a new subscriber's history so far still give every record. Tested against
a real `kernelflow serve` (the module's server fixture) and the in-process runtime.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

import kernelflow as kf
import kernelflow.client.job as client_job
from kernelflow.errors import InvalidArgumentError
from kernelflow.runtime_server.training.jobs import MAX_PAGE_RECORDS, PAGE_RECORDS
from tests.support.waiting import WAIT_S, wait_for

from .test_job_images import BATCH, X, build

STEPS = 1200
IMAGE_EVERY = 50
RECORDS = STEPS + STEPS // IMAGE_EVERY  # a scalar record every step, an image record every 50th


def _fit(rt: kf.Runtime, name: str, steps: int = STEPS) -> kf.Job:
    ds, g, x, train, loss, images = build(rt, name)
    return g.fit(train, data=ds, feed={x: "x"}, batch_size=BATCH, steps=steps, shuffle=False,
                 metrics={"loss": loss}, log_every=1, images={"gray": images["gray"]}, image_every=IMAGE_EVERY,
                 image_max=1, image_keep=3, checkpoint_every_s=None)


def _steps(recs: list[dict]) -> list[tuple[str, int]]:
    return [(r["kind"], r["step"]) for r in recs]


def _expected() -> list[tuple[str, int]]:
    out = []
    for s in range(1, STEPS + 1):
        out.append(("scalars", s))
        if s % IMAGE_EVERY == 0:
            out.append(("images", s))
    return out


@pytest.fixture(params=["serve", "inproc"])
def rt(request):
    if request.param == "serve":
        r = request.getfixturevalue("server").connect()
    else:
        r = kf.connect("inproc")
    yield r
    r.close()


@pytest.fixture(scope="module")
def done_job(server):
    """A completed job of RECORDS records on the module's server, and its whole history (one call)."""
    with server.connect() as rt:
        job = _fit(rt, "paged")
        assert job.wait(timeout=WAIT_S * 4) == "completed", job.error
        full = rt.call("job.records", [job.id, 0, MAX_PAGE_RECORDS])
    assert not full["more"] and full["next"] == RECORDS
    assert _steps(full["records"]) == _expected()
    return job.id, full["records"]


def test_job_records_pages_with_next_and_more(server, done_job):
    job_id, full = done_job
    with server.connect() as rt:
        got, since, calls = [], 0, 0
        while True:
            r = rt.call("job.records", [job_id, since, 500])
            assert r["start"] == since and len(r["records"]) <= 500
            got += r["records"]
            calls += 1
            if not r["more"]:
                break
            assert r["next"] == since + 500
            since = r["next"]
        assert calls == -(-RECORDS // 500)
        assert _steps(got) == _steps(full)
        default = rt.call("job.records", [job_id, 0])
        assert len(default["records"]) == min(RECORDS, PAGE_RECORDS) and default["more"] == (RECORDS > PAGE_RECORDS)
        past = rt.call("job.records", [job_id, RECORDS + 7, 10])
        assert past["records"] == [] and past["more"] is False and past["next"] == RECORDS + 7


def test_subscribe_pages_the_history_then_streams_it_in_order(server, done_job):
    job_id, full = done_job
    with server.connect() as rt:
        notes: list[tuple[int, int]] = []
        got: list[dict] = []
        lock = threading.Lock()

        def on_records(params):
            jid, start, recs, _status = params
            if jid == job_id:
                with lock:
                    notes.append((start, len(recs)))
                    got.extend(recs)

        rt._transport.on_notification("job.records", on_records)
        r = rt.call("job.subscribe", [job_id, 100, 300])
        assert r["start"] == 100 and len(r["records"]) == 300 and r["more"] is True and r["next"] == 400
        wait_for(lambda: len(got) >= RECORDS - 400, what="the paged history in notifications")
        with lock:
            assert all(n <= 300 for _, n in notes)
            assert [s for s, _ in notes] == list(range(400, RECORDS, 300))  # each page once, in order
            assert _steps(r["records"] + got) == _steps(full[100:])
        rt.call("job.unsubscribe", [job_id])


@pytest.mark.parametrize("params, word", [
    ([0, 0], "limit"), ([0, -3], "limit"), ([0, MAX_PAGE_RECORDS + 1], "limit"), ([0, "ten"], "limit"),
    ([0, 1.5], "limit"), ([0, True], "limit"), ([-1, 10], "since"),
])
def test_bad_page_params_are_typed_errors(server, done_job, params, word):
    job_id, _ = done_job
    with server.connect() as rt:
        for method in ("job.records", "job.subscribe"):
            with pytest.raises(InvalidArgumentError) as e:
                rt.call(method, [job_id, *params])
            msg = str(e.value)
            assert method in msg and word in msg and repr(params[1 if word == "limit" else 0]) in msg, msg
        assert rt.call("job.status", [job_id])["records"] == RECORDS  # the server still answers


def test_client_mirror_bounded_while_old_records_read_back(rt, monkeypatch):
    monkeypatch.setattr(client_job, "PAGE_RECORDS", 200)
    job = _fit(rt, "mirror")
    job.mirror_records = 150
    seen: list[dict] = []
    chunks: list[int] = []

    def cb(recs):
        seen.extend(recs)
        chunks.append(len(recs))

    job.subscribe(cb)  # while the job runs: the history so far, then the stream
    assert job.wait(timeout=WAIT_S * 4) == "completed", job.error
    wait_for(lambda: len(seen) >= RECORDS, what="every record through the subscription")
    assert _steps(seen) == _expected()  # each record once, in order
    assert job.mirrored == 150  # full: exactly its bound
    full = job.records()
    assert _steps(full) == _expected() and job.mirrored == 150
    assert _steps(job.records(10, 40)) == _expected()[10:40]
    assert _steps(job.records(RECORDS - 30)) == _expected()[RECORDS - 30:]
    for a, b in zip(full, seen):
        if a["kind"] == "scalars":
            assert a["values"] == b["values"]
    hist = job.history["loss"]
    np.testing.assert_array_equal(hist["step"], np.arange(1, STEPS + 1))
    np.testing.assert_array_equal(hist["value"], [r["values"]["loss"] for r in full if r["kind"] == "scalars"])
    assert len(job.image_history["gray"]) == 3  # the runtime keeps 3, all within the mirror

    late: list[int] = []  # a second subscriber gets the whole history: old pages from the runtime
    job.subscribe(lambda recs: late.append(len(recs)) if recs else None)
    assert sum(late) == RECORDS and max(late) <= 200
    assert job.mirrored == 150  # full: exactly its bound
    job.unsubscribe()

    other = rt.job(job.id)  # another handle on the same connection shares the mirror
    assert other.records(0, 5) == full[:5]
    with pytest.raises(InvalidArgumentError, match="start must be an integer >= 0; got -1"):
        job.records(-1)
    with pytest.raises(InvalidArgumentError, match="mirror_records must be an integer >= 1; got 0"):
        job.mirror_records = 0


def test_reattached_handle_mirrors_only_the_newest_and_reads_the_rest_back(server, done_job, monkeypatch):
    import kernelflow.client.mirror as client_mirror

    job_id, full = done_job
    monkeypatch.setattr(client_job, "PAGE_RECORDS", 200)
    monkeypatch.setattr(client_mirror, "MIRROR_RECORDS", 100)
    with server.connect() as rt:
        old = rt.call("job.subscribe", [job_id])  # a client from before paging: one answer, the default page
        assert len(old["records"]) == RECORDS and old["more"] is False and old["next"] == RECORDS
        rt.call("job.unsubscribe", [job_id])
        job = rt.job(job_id)
        assert job.mirror_records == 100
        assert _steps(job.records(RECORDS - 10)) == _steps(full[RECORDS - 10:])
        assert job.mirrored == 100 and job._m.base == RECORDS - 100  # the catch-up started at the bound
        assert _steps(job.records(3, 700)) == _steps(full[3:700]) and job.mirrored == 100
        np.testing.assert_array_equal(job.history["loss"]["step"], np.arange(1, STEPS + 1))
        seen: list[dict] = []
        job.subscribe(seen.extend)
        assert _steps(seen) == _steps(full)
        job.unsubscribe()


# ----------------------------------------------------------------- past the default page size
TEXT_NAMES = 50
BIG_STEPS = 220
BIG_RECORDS = BIG_STEPS * (1 + TEXT_NAMES)  # a scalars record and 50 text records every step: past PAGE_RECORDS


def _fit_big(rt: kf.Runtime, name: str) -> kf.Job:
    ds, g, x, train, loss, _ = build(rt, name)
    codes = kf.cast(x * 25.0 + 65.0, "int32")  # letters: the text of the step's batch
    return g.fit(train, data=ds, feed={x: "x"}, batch_size=BATCH, steps=BIG_STEPS, shuffle=False,
                 metrics={"loss": loss}, log_every=1, text={f"t{k:02d}": codes for k in range(TEXT_NAMES)},
                 image_every=1, image_max=1, checkpoint_every_s=None)


def _big_expected() -> list[tuple[str, int]]:
    return [(kind, s) for s in range(1, BIG_STEPS + 1) for kind in ["scalars"] + ["text"] * TEXT_NAMES]


def _count_pages(monkeypatch, rt: kf.Runtime) -> list[tuple[int, int]]:
    """(since, records answered) of every ``job.records`` call the client makes through ``rt``."""
    pages: list[tuple[int, int]] = []
    call = rt.call

    def counting(method, params, *a, **kw):
        r = call(method, params, *a, **kw)
        if method == "job.records":
            pages.append((params[1], len(r["records"])))
        return r

    monkeypatch.setattr(rt, "call", counting)
    return pages


def test_client_pages_past_the_default_page_size_with_a_full_mirror(server, monkeypatch):
    assert BIG_RECORDS > PAGE_RECORDS
    with server.connect() as rt:
        job = _fit_big(rt, "paged_big")
        job.mirror_records = 500
        seen: list[dict] = []
        job.subscribe(seen.extend)  # while the job runs: at the bound, the mirror drops records every batch
        assert job.wait(timeout=WAIT_S * 4) == "completed", job.error
        wait_for(lambda: len(seen) >= BIG_RECORDS, what="every record through the subscription")
        assert _steps(seen) == _big_expected()  # each record once, in order
        m = job._m
        assert job.mirrored == 500 and m.base == BIG_RECORDS - 500  # full: exactly its bound
        # trimming is amortised O(1) a record: shifting the whole mirror on each notification batch
        # would move about 500 records per batch; the window moves each record at most once
        assert m.records.moved <= BIG_RECORDS
        job.unsubscribe()

    with server.connect() as rt:  # a fresh connection: a mirror of 500, the rest in default pages
        job = rt.job(job.id)
        job.mirror_records = 500
        pages = _count_pages(monkeypatch, rt)
        full = job.records()
        assert _steps(full) == _big_expected() and job.mirrored == 500
        old = [p for p in pages if p[0] < BIG_RECORDS - 500]  # read back from below the mirror
        assert old == [(0, PAGE_RECORDS), (PAGE_RECORDS, BIG_RECORDS - 500 - PAGE_RECORDS)]
        for r, s in zip(full, seen):
            assert r.get("values", r.get("text")) == s.get("values", s.get("text"))
        chunks: list[int] = []
        later: list[dict] = []
        job.subscribe(lambda recs: (chunks.append(len(recs)), later.extend(recs)))
        assert _steps(later) == _big_expected() and max(chunks) <= PAGE_RECORDS and len(chunks) >= 3
        job.unsubscribe()


def test_mirror_trims_in_amortised_constant_time_and_keeps_exactly_its_bound():
    from kernelflow.client.mirror import Mirror

    m = Mirror(max_records=1000)
    batches, per = 400, 25
    for k in range(batches):
        m.apply(k * per, [{"kind": "scalars", "step": k * per + j, "values": {}} for j in range(per)])
        n = (k + 1) * per
        assert len(m.records) == min(n, 1000) and m.base == max(0, n - 1000)
        assert m.records[0]["step"] == m.base and m.records[-1]["step"] == n - 1
        assert [r["step"] for r in m.records[10:13]] == [m.base + 10, m.base + 11, m.base + 12]
    # a list shifted on every batch moves ~1000 records per batch past the bound (~360,000 here)
    assert m.records.moved <= batches * per


def test_history_views_page_the_history_older_than_the_mirror_once(server, monkeypatch):
    with server.connect() as rt:
        ds, g, x, train, loss, images = build(rt, "paged_views")
        codes = kf.cast(x * 25.0 + 65.0, "int32")
        job = g.fit(train, data=ds, feed={x: "x"}, batch_size=BATCH, steps=60, shuffle=False,
                    metrics={"loss": loss}, log_every=1, images={"gray": images["gray"]}, audio={"wave": x * 0.5},
                    text={"codes": codes}, image_every=1, image_max=1, audio_max=1, image_keep=3,
                    checkpoint_every_s=None)
        assert job.wait(timeout=WAIT_S * 4) == "completed", job.error
        total = 60 * 4  # scalars, an image, an audio clip and a text record every step
    with server.connect() as rt:
        job = rt.job(job.id)
        job.mirror_records = 20  # the other 220 records live only on the runtime
        pages = _count_pages(monkeypatch, rt)
        text, audio = job.text, job.audio
        read, asked = sum(n for _, n in pages), len(pages)
        assert read >= total  # the first access read the history below the mirror
        assert [s for s, _ in text["codes"]] == list(range(1, 61)) and text["codes"][0][1][0] == "".join(
            chr(int(c)) for c in (X[0] * 25.0 + 65.0).astype("int32"))
        assert audio["wave"][0] == 60 and audio["wave"][1].dtype == np.int16
        assert [s for s, *_ in job.audio_history["wave"]] == [58, 59, 60]  # the newest image_keep
        assert [s for s, _ in job.image_history["gray"]] == [58, 59, 60]
        np.testing.assert_array_equal(job.history["loss"]["step"], np.arange(1, 61))
        for _ in range(3):  # again: only the check for new records, which answers none
            assert job.text == text and job.audio.keys() == audio.keys()
            job.history, job.audio_history  # noqa: B018
        assert sum(n for _, n in pages) == read
        assert len(pages) > asked and all(since == total for since, _ in pages[asked:])  # from the newest only
        assert job.records(0, 5)[0]["step"] == 1 and sum(n for _, n in pages) > read  # records() still reads back


def test_digest_takes_each_record_once_and_the_payloads_filled_later():
    from kernelflow.client.mirror import Mirror

    m = Mirror(max_records=4)
    m.status = {"image_keep": 2}
    px = np.zeros((1, 2, 2, 1), np.uint8)
    img = [{"kind": "images", "step": s, "wall_time": 0.0, "name": "a", "images": None} for s in (1, 2)]
    m.apply(0, [{"kind": "scalars", "step": 0, "wall_time": 0.5, "values": {"loss": 2.0}}, *img,
                {"kind": "images", "step": 3, "wall_time": 0.0, "name": "a", "images": px}])
    d = m.digest
    d.take(0, m.records[:], m.keep())
    d.take(2, m.records[2:], m.keep())  # records it has: ignored
    history, _, images, _, _ = d.views()
    assert d.n == 4 and history["loss"]["value"].tolist() == [2.0] and history["loss"]["step"].dtype == np.int64
    assert [s for s, _ in images["a"]] == [3]  # 2 came as a stub; 1 is past the newest 2 of "a"
    m.fill_images(2, [{"kind": "images", "step": 2, "wall_time": 0.0, "name": "a", "images": px + 1}])
    d.refill(m.record)
    assert [(s, int(a[0, 0, 0, 0])) for s, a in d.views()[2]["a"]] == [(2, 1), (3, 0)]
    m.apply(4, [{"kind": "scalars", "step": 4, "wall_time": 1.5, "values": {"loss": 1.0}},
                {"kind": "text", "step": 4, "wall_time": 1.5, "name": "t", "text": ["hi"]}])
    d.take(4, m.records[-2:], m.keep())
    history, _, _, _, text = d.views()
    assert history["loss"]["step"].tolist() == [0, 4] and text == {"t": [(4, ["hi"])]}
