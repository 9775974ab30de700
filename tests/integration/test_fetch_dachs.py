"""The fetcher against the real DaCHS upstream: real FITS products over HTTP, DataLink for the
images, HTTP 401 for embargoed products. Ground truth: the upstream's files on its own disk."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import duckdb
import pytest

from mirror import Mirror
from mirror.fetch import lanes as fetch_lanes

from .test_harvest_dachs import make_config

pytestmark = pytest.mark.integration
UPSTREAM_FILES = Path("/var/gavo/inputs")


def products(db: Path) -> dict[str, dict]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        cur = con.execute("SELECT * FROM products WHERE role = 'this'")
        names = [d[0] for d in cur.description]
        return {r[1]: dict(zip(names, r, strict=True)) for r in cur.fetchall()}
    finally:
        con.close()


def upstream_sha(url: str) -> str:
    return hashlib.sha256((UPSTREAM_FILES / url.split("/getproduct/", 1)[1]).read_bytes()
                          ).hexdigest()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def release_dates(db: Path) -> dict[str, datetime]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return dict(con.execute("SELECT obs_publisher_did, obs_release_date FROM ivoa.obscore"
                                ).fetchall())
    finally:
        con.close()


@pytest.mark.parametrize("lanes", [1, 2])
def test_fetch_stores_every_product_byte_identical_and_embargoes_the_rest(upstream, tmp_path,
                                                                         lanes, monkeypatch):
    if lanes == 2:  # the upstream's products are small: two network loops only when forced
        monkeypatch.setattr(fetch_lanes, "BIG", 1)
    made: list[int] = []
    real = fetch_lanes.Lanes.__init__

    def spy(self: fetch_lanes.Lanes, first: object, count: int) -> None:
        made.append(count)
        real(self, first, count)  # type: ignore[arg-type]

    monkeypatch.setattr(fetch_lanes.Lanes, "__init__", spy)
    cfg = make_config(tmp_path, upstream)
    with Mirror.open(cfg) as m:
        assert m.sync()[0].status == "ok"
        [report] = m.fetch()
    db, store = tmp_path / "data/m.duckdb", tmp_path / "data/store"
    rows, released = products(db), release_dates(db)
    now = datetime.utcnow()
    embargoed = {pid for pid, when in released.items() if when and when > now}
    assert embargoed, "the upstream always has some products under embargo"
    assert {p for p, r in rows.items() if r["state"] == "embargoed"} == embargoed
    assert all(rows[p]["embargo_until"] == released[p] for p in embargoed)
    done = {p: r for p, r in rows.items() if r["state"] == "done"}
    assert set(done) == set(released) - embargoed
    assert report.done == len(done) and report.failed == 0
    images = [r for r in done.values() if "datalink" in (r["access_format"] or "")]
    assert images and all("/getproduct/" in r["url"] for r in images), "DataLink #this used"
    for r in done.values():
        stored = store / r["path"]
        assert stored.resolve().is_relative_to(store.resolve())
        assert sha(stored) == r["sha256"] == upstream_sha(r["url"])
    assert not [p for p in store.rglob("*") if p.name.endswith(".part")]
    assert made == ([2] if lanes == 2 else [])


def test_modified_products_are_fetched_again_and_withdrawn_ones_kept(upstream, evolve, tmp_path):
    cfg = make_config(tmp_path, upstream)
    with Mirror.open(cfg) as m:
        m.sync()
        m.fetch()
    db, store = tmp_path / "data/m.duckdb", tmp_path / "data/store"
    before = products(db)
    reprocessed = {c["obs_publisher_did"] for c in evolve("modify", 12)
                   if c.get("kind") == "reprocess"}
    deleted = {c["obs_publisher_did"] for c in evolve("delete", 3)} - reprocessed
    with Mirror.open(cfg) as m:
        assert m.sync()[0].status == "ok"
        [report] = m.fetch()
    after = products(db)
    assert report.failed == 0
    for pid in reprocessed:
        if before[pid]["state"] == "done":
            assert after[pid]["sha256"] != before[pid]["sha256"]
            assert after[pid]["sha256"] == upstream_sha(after[pid]["url"])
    for pid in deleted:
        assert after[pid]["state"] == "withdrawn"
        if before[pid]["state"] == "done":
            assert sha(store / after[pid]["path"]) == before[pid]["sha256"], "file kept"


def test_kill_9_mid_fetch_then_resume_completes_without_refetching(upstream, tmp_path):
    cfg = make_config(tmp_path, upstream)
    cfg.write_text(cfg.read_text().replace("[[source]]", "[fetch]\nconcurrency = 2\n"
                                                          "per_host = 2\n[[source]]"))
    with Mirror.open(cfg) as m:
        m.sync()
    env = {**os.environ, "MIRROR_CONFIG": str(cfg)}
    proc = subprocess.Popen([sys.executable, "-m", "mirror.cli", "--quiet", "fetch"], env=env)
    store = tmp_path / "data/store"
    deadline = time.monotonic() + 60
    while len(list(store.rglob("*.fits"))) < 30 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the fetch finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    first = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in store.rglob("*.fits")}
    assert first, "some products were stored before the kill"
    with Mirror.open(cfg) as m:
        audit = m.verify(repair=False)
        assert not audit.corrupt and not audit.unknown, "no partial or corrupt file in the store"
        [report] = m.fetch()
    assert report.failed == 0 and report.status == "ok"
    rows = products(tmp_path / "data/m.duckdb")
    by_path = {store / r["path"]: r for r in rows.values() if r["state"] == "done"}
    for path, stamp in first.items():
        assert (path.stat().st_ino, path.stat().st_mtime_ns) == stamp, "not downloaded again"
        assert by_path[path]["sha256"] == sha(path) == upstream_sha(by_path[path]["url"])
    assert not [p for p in store.rglob("*") if p.name.endswith(".part")]


def test_verify_finds_a_file_corrupted_on_disk_and_fetch_repairs_it(upstream, tmp_path):
    cfg = make_config(tmp_path, upstream, fetch_where="obs_collection = 'HARPS'")
    with Mirror.open(cfg) as m:
        m.sync()
        m.fetch()
    victim = next(r for r in products(tmp_path / "data/m.duckdb").values()
                  if r["state"] == "done")
    path = tmp_path / "data/store" / victim["path"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with Mirror.open(cfg) as m:
        audit = m.verify()
        assert audit.corrupt == [victim["path"]]
        assert list((tmp_path / "data/store/.quarantine").rglob(path.name))
        [report] = m.fetch()
    assert report.done == 1
    assert sha(path) == victim["sha256"]
