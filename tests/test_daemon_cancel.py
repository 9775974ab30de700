"""The cancellation hooks the daemon's SIGTERM uses: a harvest stops at a window boundary with
nothing half-committed, a transfer in flight is abandoned quickly with its partial file kept and
its validator reported, so that the next run resumes it."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeSleep, FakeTap, write_config
from fakes.faultserver import LAST_MODIFIED, FaultServer, Step

from mirror.api import Mirror
from mirror.fetch.transport import Download, Transport
from mirror.retry import RetryPolicy

ID = "obs_publisher_did"


@pytest.fixture
def tap() -> Iterator[FakeTap]:
    with FakeTap(hard_limit=7).load_recorded() as server:
        yield server


def sql(m: Mirror, query: str) -> list[tuple[Any, ...]]:
    with m.catalogue().begin() as conn:
        return [tuple(r) for r in conn.exec_driver_sql(query).all()]


def test_a_cancelled_harvest_stops_after_a_committed_window_and_resumes(tmp_path: Path,
                                                                       tap: FakeTap) -> None:
    cfg = write_config(tmp_path, {"name": "fake", "url": tap.url})
    policy = RetryPolicy(attempts=2, sleep=FakeSleep(), rng=lambda: 0.5)
    cancel = threading.Event()

    def progress(event: dict[str, Any]) -> None:
        if event["phase"] == "rows" and event["windows"] == 2:
            cancel.set()  # "SIGTERM" while the second window is being written

    with Mirror.open(cfg) as m:
        [first] = m.sync(policy=policy, cancel=cancel, progress=progress)
        assert first.status == "cancelled" and first.windows == 2
        rows = sql(m, "SELECT count(*) FROM obscore_fake")[0][0]
        windows = sql(m, f"SELECT count(*) FROM sync_windows WHERE run_id = {first.run_id}")
        cursor = sql(m, "SELECT cursor_id FROM sources WHERE name = 'fake'")[0][0]
        assert rows == 14 and windows == [(2,)]  # two whole windows of 7, nothing more
        assert cursor == max(r[0] for r in sql(m, f"SELECT {ID} FROM obscore_fake"))
        assert first.withdrawn == 0 and sql(m, "SELECT status FROM sync_runs") == [("cancelled",)]
        # a stop is not slowed by profiling the rows written so far: the resumed sync does it
        assert sql(m, "SELECT count(*) FROM table_profiles") == [(0,)]
        [second] = m.sync(policy=policy)
        assert second.status == "ok" and second.proof_ok
        assert sql(m, "SELECT count(*) FROM table_profiles")[0][0] > 0
        ids = [r[0] for r in sql(m, f"SELECT {ID} FROM ivoa.obscore ORDER BY 1")]
    assert ids == sorted(tap.ids())


def test_a_cancelled_transfer_ends_within_a_second_and_keeps_its_partial_file(
        tmp_path: Path) -> None:
    data = os.urandom(200_000)
    with FaultServer() as srv, Transport(low_speed_time=30) as transport:
        srv.files["/slow"] = data
        url = srv.script("/slow", Step("stall", cut=50_000, delay=30))
        cancel = threading.Event()
        dest = tmp_path / ".slow.part"
        timer = threading.Timer(1.0, cancel.set)
        timer.start()
        t0 = time.monotonic()
        outcomes = list(transport.run([Download("k", url, dest)], cancel=cancel))
        seconds = time.monotonic() - t0
    assert seconds < 3.0  # 1 s until the cancel, then at most one turn of the loop
    [out] = outcomes
    assert out.cancelled and out.transient and out.error == "cancelled"
    assert out.headers["last-modified"] == LAST_MODIFIED  # what a resume needs
    assert dest.read_bytes() == data[:50_000]  # the partial file stays as it was


def test_a_fetch_asked_to_stop_downloads_nothing_and_keeps_its_queue(tmp_path: Path,
                                                                     tap: FakeTap) -> None:
    cfg = write_config(tmp_path, {"name": "fake", "url": tap.url})
    policy = RetryPolicy(attempts=2, sleep=FakeSleep(), rng=lambda: 0.5)
    with Mirror.open(cfg) as m:
        assert m.sync(policy=policy)[0].status == "ok"
        cancel = threading.Event()
        cancel.set()  # stopped before it began: nothing is downloaded, nothing is lost
        [report] = m.fetch(policy=policy, cancel=cancel)
        assert report.status == "cancelled" and report.done == 0
        states = sql(m, "SELECT state, count(*) FROM products GROUP BY state")
    assert states == [("pending", len(tap.ids()))]


def test_a_fetch_stopped_mid_transfer_keeps_a_resumable_file_and_the_next_run_resumes(
        tmp_path: Path) -> None:
    from test_fetch_faults import CUT, FITS, Rig, ok

    with FakeTap(hard_limit=20) as tap, FaultServer() as srv:
        tap.load_recorded()
        rig = Rig(tmp_path, tap, srv, n=2, fetch={"stall_seconds": 30.0})
        rig.sync()
        srv.script(rig.path(1), Step("stall", cut=CUT, delay=30, content_type=FITS))
        cancel = threading.Event()
        threading.Timer(1.0, cancel.set).start()  # SIGTERM while product 1 is half-way
        t0 = time.monotonic()
        with Mirror.open(rig.config) as m:
            [report] = m.fetch(policy=rig.policy(), cancel=cancel)
        assert time.monotonic() - t0 < 5
        assert report.status == "cancelled" and report.done == 1
        row = rig.products()[rig.pid(1)]
        assert row["state"] == "pending" and row["last_modified"] == LAST_MODIFIED
        [partial] = rig.partials()
        assert partial.stat().st_size == CUT
        rig.assert_done(2)
        srv.script(rig.path(1), ok())
        assert rig.fetch().status == "ok"
        rig.assert_done(1)
        resumed = srv.requests(rig.path(1))[-1].headers
        assert resumed.get("range") == f"bytes={CUT}-"
        assert resumed.get("if-range") == LAST_MODIFIED
        assert rig.partials() == []
