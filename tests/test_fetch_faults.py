"""`Mirror.fetch` against a fault-injecting file server (tests/fakes/faultserver.py).

The metadata comes from the fake TAP service (recorded DaCHS ObsCore rows) whose access_url
columns are rewritten to point at the FaultServer, which serves real FITS files (written by
astropy with CHECKSUM/DATASUM). Each test syncs, fetches and then checks the `products` table
(read from the DuckDB file after the Mirror is closed), the store folder and the requests the
server received.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

import duckdb
import numpy as np
import pytest
from astropy.io import fits
from fakes import FakeSleep, FakeTap, write_config
from fakes.faultserver import LAST_MODIFIED, FaultServer, Step

from mirror.api import Mirror
from mirror.cli import main
from mirror.fetch import lanes as fetch_lanes
from mirror.fetch.fetcher import FetchReport
from mirror.retry import RetryPolicy

ID = "obs_publisher_did"
DATALINK = "application/x-votable+xml;content=datalink"
FITS = "application/fits"
CUT = 20_000  # where a broken transfer stops: inside the data of every product
HTML = (b"<!DOCTYPE html>\n<html><head><title>Archive maintenance</title></head>"
        b"<body>Back soon.</body></html>")
CHANGED = "Thu, 01 Jan 2026 00:00:00 GMT"
TOKEN_ENV = "MIRROR_TEST_FETCH_TOKEN"
TOKEN = "s3cret-t0ken"


# -- products --------------------------------------------------------------------------------------


def image(seed: int) -> bytes:
    """A small FITS image (about 43 KB) with CHECKSUM/DATASUM."""
    data = np.random.default_rng(seed).normal(size=(100, 100)).astype(">f4")
    hdu = fits.PrimaryHDU(data)
    hdu.header["OBJECT"] = f"target {seed}"
    out = io.BytesIO()
    hdu.writeto(out, checksum=True)
    return out.getvalue()


def spectrum(seed: int) -> bytes:
    """An ESO-like 1D spectrum: an empty primary HDU and one binary-table row of arrays."""
    rng = np.random.default_rng(seed)
    n = 2500
    wave = np.linspace(3800.0, 6900.0, n)
    cols = [fits.Column("WAVE", f"{n}D", "angstrom", array=wave[None, :]),
            fits.Column("FLUX", f"{n}E", "adu", array=rng.normal(100, 5, (1, n))),
            fits.Column("ERR", f"{n}E", "adu", array=rng.uniform(1, 2, (1, n)))]
    primary = fits.PrimaryHDU()
    primary.header["INSTRUME"] = "HARPS"
    table = fits.BinTableHDU.from_columns(cols, name="SPECTRUM")
    out = io.BytesIO()
    fits.HDUList([primary, table]).writeto(out, checksum=True)
    return out.getvalue()


def product(i: int) -> bytes:
    return spectrum(i) if i % 3 == 0 else image(i)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def ok(**kwargs: Any) -> Step:
    """The good answer: the whole file (or the asked-for range), typed as FITS."""
    return Step("serve", content_type=FITS, **kwargs)


# -- the rig ---------------------------------------------------------------------------------------


class Rig:
    """A fake TAP service with `n` products served by a FaultServer, and a Mirror config.

    Product i (1..n) is the i-th row by publisher DID; its file is served at `/p/<i>.fits`.
    """

    def __init__(self, tmp_path: Path, tap: FakeTap, srv: FaultServer, *, n: int = 4,
                 source: dict[str, Any] | None = None, fetch: dict[str, Any] | None = None,
                 layout: str | None = None, datalink: bool = False) -> None:
        self.tmp, self.tap, self.srv = tmp_path, tap, srv
        self.key = (n, datalink)  # what the synced catalogue depends on
        tap.execute(f"DELETE FROM {tap.table} WHERE {ID} NOT IN "
                    f"(SELECT {ID} FROM {tap.table} ORDER BY {ID} LIMIT {n})")
        self.ids = [r[0] for r in tap.execute(f"SELECT {ID} FROM {tap.table} ORDER BY {ID}")]
        assert len(self.ids) == n
        for i, pid in enumerate(self.ids, start=1):
            if datalink:  # the recorded DataLink URLs, on the FaultServer
                tap.execute(f"UPDATE {tap.table} SET access_url = replace(access_url, "
                            f"'http://127.0.0.1:8080', ?) WHERE {ID} = ?", [srv.url, pid])
            else:
                tap.execute(f"UPDATE {tap.table} SET access_url = ?, access_format = ? "
                            f"WHERE {ID} = ?", [f"{srv.url}/p/{i}.fits", FITS, pid])
            srv.files[self.path(i)] = product(i)
            srv.script(self.path(i), ok())
        self.sleep = FakeSleep()
        self.config = write_config(
            tmp_path, {"name": "fake", "url": tap.url, **(source or {})}, layout=layout,
            fetch={"stall_seconds": 1.0, "concurrency": 8, "per_host": 8, **(fetch or {})})
        self.store = tmp_path / "store"

    @staticmethod
    def path(i: int) -> str:
        return f"/p/{i}.fits"

    def pid(self, i: int) -> str:
        return self.ids[i - 1]

    def policy(self) -> RetryPolicy:
        return RetryPolicy(attempts=3, sleep=self.sleep, rng=lambda: 0.5)

    def sync(self, cache: Path | None = None) -> None:
        """Harvest the fake service; with `cache`, reuse a catalogue synced before from the
        same rows (a sync costs more than most fetches here)."""
        done = cache / "-".join(map(str, self.key)) if cache is not None else None
        if done is not None and done.exists():
            shutil.copytree(done, self.tmp / "cat")
            return
        with Mirror.open(self.config) as m:
            [report] = m.sync(policy=RetryPolicy(attempts=2, sleep=FakeSleep()))
        assert report.status == "ok", report.errors
        assert report.local_count == len(self.ids)
        if done is not None:
            shutil.copytree(self.tmp / "cat", done)

    def fetch(self, **kwargs: Any) -> FetchReport:
        with Mirror.open(self.config) as m:
            [report] = m.fetch(policy=self.policy(), **kwargs)
        return report

    def products(self) -> dict[str, dict[str, Any]]:
        """product_id -> the row of `products`, read once the Mirror is closed."""
        con = duckdb.connect(str(self.tmp / "cat" / "mirror.duckdb"), read_only=True)
        try:
            cur = con.execute("SELECT * FROM products WHERE role = 'this'")
            names = [d[0] for d in cur.description]
            return {r[names.index("product_id")]: dict(zip(names, r, strict=True))
                    for r in cur.fetchall()}
        finally:
            con.close()

    def hits(self, i: int) -> int:
        return len(self.srv.requests(self.path(i)))

    def stored(self) -> dict[str, bytes]:
        """Every regular file under the store root (products, temp files, quarantine)."""
        return {p.relative_to(self.store).as_posix(): p.read_bytes()
                for p in self.store.rglob("*") if p.is_file()}

    def partials(self) -> list[Path]:
        return [p for p in self.store.rglob("*") if p.name.endswith(".part")]

    def assert_done(self, *which: int) -> dict[str, dict[str, Any]]:
        """Products `which` are done: stored byte for byte as served, with their sha256."""
        rows = self.products()
        for i in which:
            row = rows[self.pid(i)]
            served = self.srv.files[self.path(i)]
            assert row["state"] == "done", (i, row["state"], row["last_error"])
            assert row["last_error"] is None
            stored = (self.store / row["path"]).read_bytes()
            assert stored == served, f"product {i} differs from what the server sends"
            assert row["sha256"] == sha(stored) and row["size"] == len(served)
        return rows


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeTap, FaultServer,
                                                                        Path]]:
    """One fake TAP service and one FaultServer for the module (their URLs are in the synced
    catalogues that tests share), reset before each test."""
    with FakeTap(hard_limit=20) as tap, FaultServer() as srv:
        yield tap, srv, tmp_path_factory.mktemp("synced")


@pytest.fixture
def tap(servers: tuple[FakeTap, FaultServer, Path]) -> FakeTap:
    return servers[0].load_recorded()  # the 50 recorded rows again


@pytest.fixture
def srv(servers: tuple[FakeTap, FaultServer, Path]) -> FaultServer:
    server = servers[1]
    with server.lock:
        server.files.clear()
        server.scripts.clear()
        server.received.clear()
        server.peak = 0
    return server


@pytest.fixture
def rig_factory(tmp_path: Path, tap: FakeTap, srv: FaultServer,
                servers: tuple[FakeTap, FaultServer, Path]) -> Callable[..., Rig]:
    """`make(sync=False, ...)` leaves the sync to the test (after it changed the rows)."""
    def make(*, sync: bool = True, **kwargs: Any) -> Rig:
        rig = Rig(tmp_path, tap, srv, **kwargs)
        if sync:
            rig.sync(cache=servers[2])
        return rig
    return make


# -- 1. the six faults, each followed by a good answer ---------------------------------------------


def html_step() -> Step:
    return Step("status", status=200, headers={"Content-Type": "text/html; charset=utf-8"},
                body=HTML)


FAULTS: dict[str, Callable[[], Step]] = {
    "500": lambda: Step("status", status=500, body=b"database on fire"),
    "429": lambda: Step("status", status=429, headers={"Retry-After": "7"}, body=b"slow down"),
    "reset": lambda: Step("reset", cut=CUT),
    "truncate": lambda: Step("truncate", cut=CUT),
    "stall": lambda: Step("stall", cut=0, delay=30),  # headers, then silence
    "html200": html_step,
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_each_fault_then_a_good_answer_ends_with_every_product_done(rig_factory, fault):
    rig = rig_factory(n=4)
    make = FAULTS[fault]
    rig.srv.script(rig.path(1), make(), ok())  # one fault, then the file
    rig.srv.script(rig.path(2), make(), make(), ok())  # two faults, then the file
    report = rig.fetch()
    assert (report.status, report.queued, report.done, report.failed) == ("ok", 4, 4, 0), report
    rows = rig.assert_done(1, 2, 3, 4)
    assert not rig.partials()
    assert [rig.hits(i) for i in (1, 2, 3, 4)] == [2, 3, 1, 1]
    assert [rows[rig.pid(i)]["attempts"] for i in (1, 2, 3, 4)] == [1, 2, 0, 0]
    if fault == "429":
        assert rig.sleep.delays and min(rig.sleep.delays) >= 7
    if fault == "truncate":  # the server sends Last-Modified: the rest is asked for with Range
        for i in (1, 2):
            second = rig.srv.requests(rig.path(i))[1].headers
            assert second.get("range") == f"bytes={CUT}-"
            assert second.get("if-range") == LAST_MODIFIED
    if fault == "reset":  # whatever arrived before the reset is kept and resumed
        second = rig.srv.requests(rig.path(1))[1].headers
        if "range" in second:
            start = int(second["range"].removeprefix("bytes=").rstrip("-"))
            assert 0 < start <= CUT and second.get("if-range") == LAST_MODIFIED


@pytest.mark.parametrize("lanes", [1, 2])
def test_all_six_faults_at_once_every_product_ends_stored_and_verified(rig_factory, lanes,
                                                                      monkeypatch):
    rig = rig_factory(n=8)
    for i, make in enumerate(FAULTS.values(), start=1):
        rig.srv.script(rig.path(i), make(), ok())
    made = []  # the lanes the fetch ran on (the products here are small: one lane unless
    if lanes == 2:  # "big" starts at 1 byte)
        monkeypatch.setattr(fetch_lanes, "BIG", 1)
    monkeypatch.setattr(fetch_lanes.Lanes, "__init__", _spy(fetch_lanes.Lanes.__init__, made))
    report = rig.fetch()
    assert [count for _, count in made] == ([2] if lanes == 2 else [])  # one Lanes, reused
    assert (report.status, report.done, report.failed) == ("ok", 8, 0), report
    rig.assert_done(*range(1, 9))
    assert report.bytes == sum(len(rig.srv.files[rig.path(i)]) for i in range(1, 9))
    assert not rig.partials()
    assert [rig.hits(i) for i in range(1, 9)] == [2] * 6 + [1, 1]
    assert max(rig.sleep.delays) >= 7  # the 429's Retry-After
    truncated = rig.srv.requests(rig.path(4))[1].headers
    assert truncated.get("range") == f"bytes={CUT}-"
    stored = rig.stored()
    assert len(stored) == 8 and not any(b"<html" in data.lower() for data in stored.values())


def _spy(init: Callable[..., None], calls: list[tuple[Any, ...]]) -> Callable[..., None]:
    def spied(self: Any, *args: Any) -> None:
        calls.append(args)
        init(self, *args)
    return spied


def test_transient_failures_back_off_before_the_next_pass(rig_factory):
    rig = rig_factory(n=2)
    rig.srv.script(rig.path(1), FAULTS["500"](), FAULTS["500"](), ok())
    report = rig.fetch()
    assert report.done == 2 and rig.hits(1) == 3
    assert len(rig.sleep.delays) == 2
    # without a Retry-After the policy's exponential backoff applies: never a 0 s hammering
    assert all(d > 0 for d in rig.sleep.delays), rig.sleep.delays
    assert rig.sleep.delays == sorted(rig.sleep.delays)


class ChangeUpstream(FakeSleep):
    """While the fetcher waits between passes, the file changes upstream."""

    def __init__(self, srv: FaultServer, path: str, data: bytes) -> None:
        super().__init__()
        self.srv, self.path, self.data = srv, path, data

    def __call__(self, seconds: float) -> None:
        super().__call__(seconds)
        self.srv.files[self.path] = self.data


@pytest.mark.parametrize("if_range", [True, False], ids=["server-checks", "client-checks"])
def test_a_resume_after_the_file_changed_upstream_restarts_from_zero(rig_factory, if_range):
    rig = rig_factory(n=2)
    old, new = rig.srv.files[rig.path(1)], image(99)
    assert len(new) == len(old) and new != old
    rig.srv.script(rig.path(1), Step("truncate", cut=CUT),
                   ok(last_modified=CHANGED, if_range=if_range))
    rig.sleep = ChangeUpstream(rig.srv, rig.path(1), new)
    report = rig.fetch()
    assert report.done == 2, report
    rig.assert_done(1, 2)
    assert (rig.store / rig.products()[rig.pid(1)]["path"]).read_bytes() == new
    assert rig.products()[rig.pid(1)]["last_modified"] == CHANGED
    sent = [(r.headers.get("range"), r.headers.get("if-range"))
            for r in rig.srv.requests(rig.path(1))]
    resumed = (f"bytes={CUT}-", LAST_MODIFIED)
    assert sent == ([(None, None), resumed] if if_range else
                    [(None, None), resumed, (None, None)])
    assert not rig.partials()


# -- 2. an HTML page with status 200 ---------------------------------------------------------------


def test_an_html_page_instead_of_data_is_never_stored_without_a_token(rig_factory):
    rig = rig_factory(n=3, fetch={"retries": 3})
    rig.srv.script(rig.path(2), html_step())  # always
    report = rig.fetch()
    assert report.done == 2 and report.failed == 1 and report.status == "incomplete"
    rows = rig.assert_done(1, 3)
    row = rows[rig.pid(2)]
    assert row["state"] in ("failed", "pending") and row["sha256"] is None
    assert "HTML" in row["last_error"]
    assert 1 <= rig.hits(2) <= 3  # bounded by [fetch] retries
    assert not (rig.store / row["path"]).exists()
    assert not rig.partials()
    assert not any(b"<html" in data.lower() for data in rig.stored().values())


def test_an_html_page_with_a_token_configured_stops_the_fetch_about_the_token(
        rig_factory, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    rig = rig_factory(n=3, source={"token_env": TOKEN_ENV})
    rig.srv.script(rig.path(2), html_step())
    report = rig.fetch()
    assert report.status == "failed", report
    said = " ".join(report.errors)
    assert "token" in said and f"${TOKEN_ENV}" in said and "HTML" in said
    assert TOKEN not in said
    assert rig.srv.requests(rig.path(2))[0].headers.get("authorization") == f"Bearer {TOKEN}"
    rows = rig.products()
    assert rows[rig.pid(2)]["state"] != "done" and rows[rig.pid(2)]["sha256"] is None
    assert not (rig.store / rows[rig.pid(2)]["path"]).exists()
    assert not any(b"<html" in data.lower() for data in rig.stored().values())
    assert all(TOKEN not in (r["last_error"] or "") for r in rows.values())
    # once the archive sends data again, the next fetch completes
    rig.srv.script(rig.path(2), ok())
    again = rig.fetch()
    assert again.status == "ok", again
    rig.assert_done(1, 2, 3)


def test_the_token_goes_only_to_the_host_of_the_source(rig_factory, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    rig = rig_factory(n=3, sync=False, source={"token_env": TOKEN_ENV},
                      fetch={"concurrency": 1, "per_host": 1})  # one connection, in turn
    other = f"http://127.1:{rig.srv.port}"  # 127.0.0.1 on the wire, another host by name
    for i in (2, 3):
        rig.tap.execute(f"UPDATE {rig.tap.table} SET access_url = ? WHERE {ID} = ?",
                        [other + rig.path(i), rig.pid(i)])
    rig.sync()
    report = rig.fetch()
    assert (report.status, report.done) == ("ok", 3), report
    rig.assert_done(1, 2, 3)
    assert rig.srv.requests(rig.path(1))[0].headers.get("authorization") == f"Bearer {TOKEN}"
    for i in (2, 3):
        assert "authorization" not in rig.srv.requests(rig.path(i))[0].headers, \
            f"the token was sent to {other}"


# -- 3. permanent errors ---------------------------------------------------------------------------


def test_permanent_errors_fail_at_once_and_retry_failed_tries_them_again(rig_factory):
    rig = rig_factory(n=4)
    del rig.srv.files[rig.path(1)]  # the FaultServer answers 404
    rig.srv.script(rig.path(2), Step("status", status=410, body=b"gone"))
    rig.srv.script(rig.path(3), Step("status", status=403, body=b"forbidden"))
    report = rig.fetch()
    assert (report.status, report.done, report.failed) == ("incomplete", 1, 3), report
    rows = rig.products()
    for i, status in ((1, 404), (2, 410), (3, 403)):
        row = rows[rig.pid(i)]
        assert row["state"] == "failed" and str(status) in row["last_error"]
        assert row["attempts"] == 1 and row["sha256"] is None
        assert rig.hits(i) == 1, f"HTTP {status} was retried"
    assert rig.sleep.delays == []  # nothing transient: no waiting either
    assert not rig.partials() and len(rig.stored()) == 1
    # a plain fetch leaves failed products alone
    again = rig.fetch()
    assert (again.queued, again.done, again.failed) == (0, 0, 0)
    assert [rig.hits(i) for i in (1, 2, 3, 4)] == [1, 1, 1, 1]
    # --retry-failed tries them again, and the archive now serves them
    rig.srv.files[rig.path(1)] = product(1)
    rig.srv.script(rig.path(2), ok())
    rig.srv.script(rig.path(3), ok())
    retried = rig.fetch(retry_failed=True)
    assert (retried.status, retried.queued, retried.done, retried.failed) == ("ok", 3, 3, 0)
    rows = rig.assert_done(1, 2, 3, 4)
    assert [rig.hits(i) for i in (1, 2, 3, 4)] == [2, 2, 2, 1]
    assert all(rows[rig.pid(i)]["attempts"] == 0 for i in (1, 2, 3))


# -- 4. embargoes ----------------------------------------------------------------------------------


def test_a_401_before_the_release_date_is_an_embargo_and_after_it_a_failure(rig_factory):
    rig = rig_factory(n=3, sync=False)
    future = dt.datetime(2099, 1, 1, 12, 0)
    for i, when in ((1, future), (2, dt.datetime(2001, 1, 1))):
        rig.tap.execute(f"UPDATE {rig.tap.table} SET obs_release_date = ? WHERE {ID} = ?",
                        [when, rig.pid(i)])
        rig.srv.script(rig.path(i), Step("status", status=401, body=b"login required",
                                         headers={"WWW-Authenticate": "Bearer"}))
    rig.sync()
    report = rig.fetch()
    assert (report.done, report.embargoed, report.failed) == (1, 1, 1), report
    rows = rig.assert_done(3)
    embargoed, refused = rows[rig.pid(1)], rows[rig.pid(2)]
    assert embargoed["state"] == "embargoed" and embargoed["embargo_until"] == future
    assert "2099-01-01" in embargoed["last_error"] and embargoed["sha256"] is None
    assert refused["state"] == "failed" and "401" in refused["last_error"]
    assert [rig.hits(i) for i in (1, 2, 3)] == [1, 1, 1]  # a 401 is not retried
    assert not (rig.store / embargoed["path"]).exists()
    assert not (rig.store / refused["path"]).exists()
    assert not rig.partials() and len(rig.stored()) == 1
    # before its release date an embargoed product is not asked for again
    again = rig.fetch()
    assert (again.queued, again.embargoed) == (0, 0) and rig.hits(1) == 1


# -- 5. hostile IDs --------------------------------------------------------------------------------


def hostile_ids(outside: Path) -> list[str]:
    return ["ivo://x/../../../../tmp/evil", "/etc/passwd", "..\\..\\x",
            "ivo://x/tab\there\x01ctrl\x1f and a\nnewline\r", "%2e%2e/%2e%2e/x",
            "ivo://x/" + "A" * 300, "ivo://x/..\uff0f..\uff0f\uff0e\uff0ewide",
            "ivo://x/..", f"{outside}/pwned", "ivo://x/CON", "ivo://x/-rf --no-preserve-root",
            "ivo://x/.hidden"]


HOSTILE_FOLDERS = ["../..", "/", "..\\..", ".", "\n", "~", "%2e%2e", "\uff0e\uff0e", "NUL",
                   "..", "-", "a/../../b"]


@pytest.mark.parametrize("layout", [None, "{obs_collection}/{target_name}/{obs_publisher_did}{ext}",
                                    "{dataproduct_type}/{obs_publisher_did|basename}{ext}"],
                         ids=["default", "whole-did", "by-type"])
def test_hostile_ids_never_escape_the_store(rig_factory, tmp_path, layout):
    outside = tmp_path / "outside"
    outside.mkdir()
    ids = hostile_ids(outside)
    rig = rig_factory(n=len(ids), sync=False, layout=layout)
    for i, (new, folder) in enumerate(zip(ids, HOSTILE_FOLDERS, strict=True), start=1):
        rig.tap.execute(f"UPDATE {rig.tap.table} SET {ID} = ?, obs_collection = ?, "
                        "target_name = ?, dataproduct_type = ? WHERE access_url = ?",
                        [new, folder, folder[::-1], HOSTILE_FOLDERS[-i],
                         rig.srv.url + rig.path(i)])
    rig.ids = ids
    rig.sync()
    report = rig.fetch()
    assert (report.status, report.done, report.failed, report.errors) == ("ok", len(ids), 0, [])
    rows = rig.assert_done(*range(1, len(ids) + 1))
    root = rig.store.resolve()
    paths = [rows[pid]["path"] for pid in ids]
    assert len(set(paths)) == len(ids)
    for rel in paths:
        real = (rig.store / rel).resolve()
        assert real.is_relative_to(root) and real.parent != real
        for part in Path(rel).parts:
            assert part not in (".", "..") and not part.startswith((".", "-", "~"))
            assert not any(ord(c) < 32 or c in "\\/\x7f" for c in part)
            assert len(part.encode()) <= 200
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) \
        == sorted(paths)
    assert list(outside.iterdir()) == []
    others = {p.relative_to(tmp_path).parts[0] for p in tmp_path.rglob("*")}
    assert others == {"cat", "store", "outside", "mirror.toml"}


def test_a_symlink_planted_in_the_store_never_leads_a_download_outside(rig_factory, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    rig = rig_factory(n=2)
    rig.store.mkdir(parents=True, exist_ok=True)
    (rig.store / "VHS").symlink_to(outside, target_is_directory=True)  # the default layout's
    report = rig.fetch()
    assert (report.status, report.done) == ("failed", 0), report
    assert any("symbolic link" in e for e in report.errors), report.errors
    assert list(outside.iterdir()) == []
    assert all(r["state"] != "done" for r in rig.products().values())
    assert sum(rig.hits(i) for i in (1, 2)) == 0


# -- 6. resuming across runs -----------------------------------------------------------------------


def part_of(rig: Rig, i: int) -> Path:
    rel = Path(rig.products()[rig.pid(i)]["path"])
    return rig.store / rel.parent / f".{rel.name}.part"


def test_a_transfer_dropped_past_the_retry_budget_is_resumed_by_a_later_fetch(rig_factory):
    rig = rig_factory(n=3, fetch={"retries": 1})
    rig.srv.script(rig.path(1), Step("truncate", cut=CUT), ok())
    rig.srv.script(rig.path(2), Step("truncate", cut=CUT + 2880), ok())
    first = rig.fetch()
    assert (first.done, first.failed) == (1, 2), first
    rows = rig.assert_done(3)
    for i, cut in ((1, CUT), (2, CUT + 2880)):
        assert rows[rig.pid(i)]["state"] == "failed" and rows[rig.pid(i)]["last_error"]
        assert part_of(rig, i).read_bytes() == rig.srv.files[rig.path(i)][:cut]
    second = rig.fetch(retry_failed=True)
    assert (second.status, second.done, second.failed) == ("ok", 2, 0), second
    rig.assert_done(1, 2, 3)
    assert [rig.hits(i) for i in (1, 2, 3)] == [2, 2, 1]  # the finished one is not fetched again
    for i, cut in ((1, CUT), (2, CUT + 2880)):
        resumed = rig.srv.requests(rig.path(i))[1].headers
        assert resumed.get("range") == f"bytes={cut}-"
        assert resumed.get("if-range") == LAST_MODIFIED
    assert not rig.partials()


class CtrlC(FakeSleep):
    """Ctrl-C while the fetcher waits to retry transient failures."""

    def __call__(self, seconds: float) -> None:
        super().__call__(seconds)
        raise KeyboardInterrupt


def test_a_fetch_interrupted_while_waiting_to_retry_is_resumed_by_the_next_fetch(rig_factory):
    rig = rig_factory(n=3)
    rig.srv.script(rig.path(1), Step("truncate", cut=CUT), ok())
    rig.srv.script(rig.path(2), Step("stall", cut=0, delay=30), ok())
    rig.sleep = CtrlC()
    with pytest.raises(KeyboardInterrupt):
        rig.fetch()
    assert len(rig.sleep.delays) == 1  # the first pass ended, its outcomes were recorded
    rows = rig.assert_done(3)
    assert rows[rig.pid(1)]["state"] == rows[rig.pid(2)]["state"] == "pending"
    assert part_of(rig, 1).read_bytes() == rig.srv.files[rig.path(1)][:CUT]
    rig.sleep = FakeSleep()
    report = rig.fetch()  # a plain fetch, as after Ctrl-C
    assert (report.status, report.done, report.failed) == ("ok", 2, 0), report
    rig.assert_done(1, 2, 3)
    assert [rig.hits(i) for i in (1, 2, 3)] == [2, 2, 1]  # product 3 is not fetched again
    resumed = rig.srv.requests(rig.path(1))[1].headers
    assert resumed.get("range") == f"bytes={CUT}-"
    assert resumed.get("if-range") == LAST_MODIFIED
    assert not rig.partials()


def interrupted_fetch(rig: Rig) -> None:
    """A fetch stopped by Ctrl-C as soon as the first product has arrived, before anything
    about the transfers still running could be recorded."""
    def progress(event: dict[str, Any]) -> None:
        if event["phase"] == "fetch":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), Mirror.open(rig.config) as m:
        m.fetch(policy=rig.policy(), progress=progress)


@pytest.mark.parametrize("changed", [False, True], ids=["same-file", "changed-upstream"])
def test_a_partial_without_a_recorded_validator_is_downloaded_again_never_spliced(
        rig_factory, changed):
    rig = rig_factory(n=3)
    for i in (1, 2):  # mid-body when the fetch is interrupted
        rig.srv.script(rig.path(i), Step("stall", cut=CUT, delay=30),
                       ok(last_modified=CHANGED if changed else LAST_MODIFIED))
    rig.srv.script(rig.path(3), ok(delay=0.3))  # arrives while 1 and 2 stall
    interrupted_fetch(rig)
    for i in (1, 2):
        assert part_of(rig, i).read_bytes() == rig.srv.files[rig.path(i)][:CUT]
        if changed:  # replaced upstream while the mirror was stopped
            rig.srv.files[rig.path(i)] = image(90 + i)
    report = rig.fetch()
    assert (report.status, report.failed) == ("ok", 0), report
    rig.assert_done(1, 2, 3)  # byte for byte what the server has now
    assert [rig.hits(i) for i in (1, 2, 3)] == [2, 2, 1]  # product 3 is kept, not fetched again
    for i in (1, 2):  # nothing vouches for the partial: it is not resumed
        assert "range" not in rig.srv.requests(rig.path(i))[1].headers
    assert not rig.partials()


@pytest.mark.parametrize("lanes", [1, 2])
def test_ctrl_c_in_a_terminal_stops_the_cli_fetch_cleanly_and_the_next_one_resumes(
        rig_factory, lanes):
    """A terminal's Ctrl-C goes to the whole foreground process group: the fetch winds down
    (exit 130, no traceback) with its sealers still alive to answer, never killed with it."""
    rig = rig_factory(n=3)
    for i in (1, 2):  # mid-body when Ctrl-C comes
        rig.srv.script(rig.path(i), Step("stall", cut=CUT, delay=30), ok())
    env = {**os.environ, "MIRROR_TEST_LANES_BIG": "1" if lanes == 2 else ""}
    proc = subprocess.Popen([sys.executable, "-c", _CLI_WITH_LANES, "--config",
                             str(rig.config), "fetch"], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 30
    while len(rig.partials()) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert len(rig.partials()) >= 2, "both stalled products were mid-body"
    os.killpg(proc.pid, signal.SIGINT)
    output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130, output
    assert "interrupted" in output and "Traceback" not in output and "sealer" not in output
    report = rig.fetch()
    assert (report.status, report.failed) == ("ok", 0), report
    rig.assert_done(1, 2, 3)
    assert not rig.partials()


# the CLI, with "big" products starting at MIRROR_TEST_LANES_BIG bytes when that is set
_CLI_WITH_LANES = """
import os, sys
from mirror.fetch import lanes
if os.environ.get("MIRROR_TEST_LANES_BIG"):
    lanes.BIG = int(os.environ["MIRROR_TEST_LANES_BIG"])
from mirror.cli import main
sys.exit(main(sys.argv[1:]))
"""


# -- 7. mirror verify ------------------------------------------------------------------------------


def test_verify_quarantines_corrupt_files_requeues_missing_ones_and_fetch_restores_them(
        rig_factory):
    rig = rig_factory(n=4)
    assert rig.fetch().done == 4
    rows = rig.products()
    rel1, rel2 = rows[rig.pid(1)]["path"], rows[rig.pid(2)]["path"]
    bad = bytearray((rig.store / rel1).read_bytes())
    bad[CUT] ^= 0x55  # one flipped byte in the data: same size, wrong content
    (rig.store / rel1).write_bytes(bytes(bad))
    (rig.store / rel2).unlink()
    stranger = (rig.store / rel1).parent / "stranger.fits"
    stranger.write_bytes(image(77))
    with Mirror.open(rig.config) as m:
        report = m.verify()
    assert (report.checked, report.ok) == (4, 2)
    assert report.corrupt == [rel1] and report.missing == [rel2]
    assert report.unknown == [stranger.relative_to(rig.store).as_posix()]
    [moved] = [p for p in (rig.store / ".quarantine").rglob(Path(rel1).name)]
    assert moved.read_bytes() == bytes(bad) and not (rig.store / rel1).exists()
    assert moved.with_name(moved.name + ".reason").read_text()
    rows = rig.products()
    for i in (1, 2):
        assert rows[rig.pid(i)]["state"] == "pending" and rows[rig.pid(i)]["sha256"] is None
    fetched = rig.fetch()
    assert (fetched.status, fetched.done, fetched.failed) == ("ok", 2, 0), fetched
    rig.assert_done(1, 2, 3, 4)
    assert [rig.hits(i) for i in (1, 2, 3, 4)] == [2, 2, 1, 1]
    with Mirror.open(rig.config) as m:
        after = m.verify()
    assert (after.checked, after.ok, after.corrupt, after.missing) == (4, 4, [], [])
    assert after.unknown == report.unknown and stranger.exists()  # reported, never deleted


# -- 8. DataLink -----------------------------------------------------------------------------------

DATALINK_FIELDS = ("ID", "access_url", "service_def", "error_message", "semantics",
                   "description", "content_type", "content_length")


def datalink_document(rows: list[tuple[str, ...]]) -> bytes:
    fields = "".join(
        f'<FIELD name="{name}" datatype="long"/>' if name == "content_length" else
        f'<FIELD name="{name}" datatype="char" arraysize="*"/>' for name in DATALINK_FIELDS)
    body = "".join("<TR>" + "".join(f"<TD>{escape(v)}</TD>" for v in row) + "</TR>"
                   for row in rows)
    return ('<?xml version="1.0" encoding="utf-8"?>\n'
            '<VOTABLE version="1.3" xmlns="http://www.ivoa.net/xml/VOTable/v1.3">'
            '<RESOURCE type="results">'
            '<INFO name="standardID" value="ivo://ivoa.net/std/DataLink#links-1.0"/>'
            f"<TABLE>{fields}<DATA><TABLEDATA>{body}</TABLEDATA></DATA></TABLE>"
            "</RESOURCE></VOTABLE>").encode()


def datalink_service(rig: Rig, known: list[str], *,
                     first_only: bool) -> Callable[[str], tuple[int, dict[str, str], bytes]]:
    """Links for the `known` IDs; `first_only` answers only the first ID asked (as DaCHS'
    //obscore#dl, which redirects on the first ID)."""
    def answer(query: str) -> tuple[int, dict[str, str], bytes]:
        asked = parse_qs(query, keep_blank_values=True).get("ID", [])
        rows = []
        for lid in asked[:1] if first_only else asked:
            if lid not in known:
                rows.append((lid, "", "", f"NotFoundFault: {lid} is unknown here", "#this",
                             "", "", "0"))
                continue
            i = rig.ids.index(lid) + 1
            rows.append((lid, rig.srv.url + rig.path(i), "", "", "#this", "the product",
                         "application/fits", str(len(rig.srv.files[rig.path(i)]))))
            rows.append((lid, f"{rig.srv.url}/preview/{i}.jpg", "", "", "#preview",
                         "a preview", "image/jpeg", "1234"))
        return 200, {"Content-Type": DATALINK}, datalink_document(rows)
    return answer


@pytest.mark.parametrize("first_only", [True, False], ids=["dachs-quirk", "whole-batch"])
def test_datalink_products_are_resolved_in_batches_and_fetched(rig_factory, first_only):
    rig = rig_factory(n=6, datalink=True)
    known = rig.ids[:-1]  # the service does not know the last product
    service = "/sdp/q/dl/dlmeta"
    rig.srv.script(service, Step("status", status=503, body=b"busy"),
                   Step("call", handler=datalink_service(rig, known, first_only=first_only)))
    report = rig.fetch()
    assert (report.done, report.failed) == (5, 1), report
    rows = rig.assert_done(1, 2, 3, 4, 5)
    for i in range(1, 6):
        row = rows[rig.pid(i)]
        assert row["url"] == rig.srv.url + rig.path(i) and row["path"].endswith(".fits")
        assert row["access_format"] == DATALINK and row["content_type"] == "application/fits"
    lost = rows[rig.pid(6)]
    assert lost["state"] == "failed" and "NotFoundFault" in lost["last_error"]
    assert [rig.hits(i) for i in range(1, 7)] == [1, 1, 1, 1, 1, 0]
    assert not any(r.path.startswith("/preview/") for r in rig.srv.received)
    asked = [parse_qs(r.query).get("ID", []) for r in rig.srv.requests(service)]
    assert asked[0] == asked[1] == rig.ids  # one batch (retried after the 503)
    assert len(rig.sleep.delays) == 1  # the 503 was waited for
    if first_only:  # the unanswered IDs are asked again, one per request
        assert asked[2:] == [[pid] for pid in rig.ids[1:]]
    else:  # one request answered the whole batch, the unknown ID with an error row
        assert len(asked) == 2 < len(rig.ids)


# -- 9. the command line ---------------------------------------------------------------------------


def test_cli_fetch_json_reports_counts_and_status_json_shows_products_per_state(rig_factory,
                                                                               capsys):
    rig = rig_factory(n=3)
    del rig.srv.files[rig.path(3)]  # 404: permanent, so no retry waits in the real policy
    code = main(["--config", str(rig.config), "fetch", "--json"])
    [report] = json.loads(capsys.readouterr().out)
    assert code == 1
    assert (report["source"], report["status"]) == ("fake", "incomplete")
    assert (report["queued"], report["done"], report["failed"]) == (3, 2, 1)
    assert report["bytes"] == sum(len(rig.srv.files[rig.path(i)]) for i in (1, 2))
    assert "errors" in report and "seconds" in report
    code = main(["--config", str(rig.config), "status", "--json"])
    [status] = json.loads(capsys.readouterr().out)["sources"]
    assert code == 0 and status["name"] == "fake" and status["rows"] == 3
    assert status["products"] == {"done": 2, "failed": 1}
    assert status["product_bytes"] == report["bytes"]
    rig.srv.files[rig.path(3)] = product(3)
    code = main(["--config", str(rig.config), "fetch", "--retry-failed", "--json"])
    [retried] = json.loads(capsys.readouterr().out)
    assert code == 0 and (retried["status"], retried["done"], retried["failed"]) == ("ok", 1, 0)
    main(["--config", str(rig.config), "status", "--json"])
    [status] = json.loads(capsys.readouterr().out)["sources"]
    assert status["products"] == {"done": 3}
    rig.assert_done(1, 2, 3)
