"""Big downloads on two network loops (mirror.fetch.lanes), against the fault-injecting server."""

from __future__ import annotations

import hashlib
import os
import threading
from collections import Counter
from collections.abc import Iterator

import pytest
from fakes.faultserver import FaultServer, Step

from mirror.errors import StoreError
from mirror.fetch.lanes import BIG, Lanes, lanes_for
from mirror.fetch.transport import Download, Transport

FILES = {f"/f{i}": os.urandom(400_000 + i) for i in range(12)}


@pytest.fixture()
def srv() -> Iterator[FaultServer]:
    with FaultServer() as server:
        for path, data in FILES.items():
            server.files[path] = data
            server.script(path, Step("serve", delay=0.02))
        yield server


@pytest.fixture()
def first() -> Iterator[Transport]:
    t = Transport(concurrency=5, per_host=3, low_speed_time=1, connect_timeout=5)
    yield t
    t.close()


def jobs(srv: FaultServer, folder: object) -> Iterator[Download]:
    return (Download(p, srv.url + p, folder / p[1:]) for p in FILES)  # type: ignore[operator]


@pytest.fixture()
def lanes_used(monkeypatch: pytest.MonkeyPatch) -> Counter[int]:
    """How many outcomes each Transport (by id) gave."""
    used: Counter[int] = Counter()
    real = Transport.run

    def counting(self: Transport, jobs: object, cancel: object = None) -> Iterator[object]:
        for outcome in real(self, jobs, cancel):  # type: ignore[arg-type]
            used[id(self)] += 1
            yield outcome

    monkeypatch.setattr(Transport, "run", counting)
    return used


def test_two_lanes_only_for_big_products_and_room_to_share(monkeypatch, first):
    first.limit(16, 8)
    assert lanes_for([BIG, 2 * BIG, None], first) == 2
    assert lanes_for([BIG - 1, BIG - 1, 10 * BIG], first) == 1  # the median decides
    assert lanes_for([None, None], first) == 1 and lanes_for([], first) == 1
    first.limit(16, 1)  # one connection per host: nothing to share out
    assert lanes_for([4 * BIG], first) == 1
    first.limit(16, 8)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})  # one core allowed
    assert lanes_for([4 * BIG], first) == 1


def test_two_lanes_fetch_every_file_whole_sharing_the_limits(srv, first, tmp_path, lanes_used):
    lanes = Lanes(first, 2)
    shares = []
    try:
        for again in (False, True):  # a second pass (retries) shares the limits out again
            folder = tmp_path / str(again)
            folder.mkdir()
            run = lanes.run(jobs(srv, folder))
            outcomes = [next(run)]
            shares.append([(t.concurrency, t.per_host) for t in lanes.transports])
            outcomes += list(run)
            assert sorted(o.key for o in outcomes) == sorted(FILES)
            for o in outcomes:
                assert o.error is None and o.size == len(FILES[o.key])
                assert o.sha256 == hashlib.sha256(FILES[o.key]).hexdigest()
                assert (folder / o.key[1:]).read_bytes() == FILES[o.key]
            assert (first.concurrency, first.per_host) == (5, 3)  # the first's limits back
    finally:
        lanes.close()
    assert shares == [[(3, 2), (2, 1)]] * 2
    assert len(lanes_used) == 2 and sum(lanes_used.values()) == 2 * len(FILES)  # both lanes
    assert srv.peak <= 3  # together no more connections to the host than per_host


def test_a_consumer_that_stops_early_stops_every_lane(srv, first, tmp_path):
    lanes = Lanes(first, 2)
    try:
        run = lanes.run(jobs(srv, tmp_path))
        got = next(run)
        run.close()  # the caller leaves: both loops abandon their transfers and end
        assert got.error is None
        assert not [t for t in threading.enumerate() if t.name.startswith("mirror-lane")]
        (tmp_path / "again").mkdir()
        again = list(first.run(jobs(srv, tmp_path / "again")))  # the first lane still works
        assert all(o.error is None for o in again) and len(again) == len(FILES)
    finally:
        lanes.close()


def test_a_lane_that_fails_stops_the_others_and_its_error_reaches_the_caller(
        srv, first, tmp_path, monkeypatch):
    lanes = Lanes(first, 2)
    real = Transport.run

    def broken(self: Transport, jobs: object, cancel: object = None) -> Iterator[object]:
        if self is not first:
            raise StoreError("the sealer died", "try again")
        yield from real(self, jobs, cancel)  # type: ignore[arg-type]

    monkeypatch.setattr(Transport, "run", broken)
    try:
        with pytest.raises(StoreError, match="sealer died"):
            list(lanes.run(jobs(srv, tmp_path)))
        assert not [t for t in threading.enumerate() if t.name.startswith("mirror-lane")]
    finally:
        lanes.close()


def test_a_cancel_ends_every_lane_with_resumable_outcomes(srv, first, tmp_path):
    for path in FILES:  # slow bodies: the cancel lands while transfers are in flight
        srv.script(path, Step("stall", cut=1000, delay=5))
    cancel = threading.Event()

    def cancel_when_busy() -> None:
        while srv.in_flight < 3 and not cancel.wait(0.01):
            pass
        cancel.set()

    lanes = Lanes(first, 2)
    threading.Thread(target=cancel_when_busy, daemon=True).start()
    try:
        outcomes = list(lanes.run(jobs(srv, tmp_path), cancel=cancel))
    finally:
        lanes.close()
        cancel.set()
    assert outcomes and all(o.cancelled and o.transient for o in outcomes)
    assert not [t for t in threading.enumerate() if t.name.startswith("mirror-lane")]
