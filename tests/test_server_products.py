"""Stored products over HTTP: `/products/{key}` (Range, ETag, 404 for anything not catalogued and
done), `/datalink`, and `localise` in query results (starlette's TestClient, no network).

The catalogue is synced from the fake TAP service (recorded DaCHS rows); three products are then
stored through `mirror.store` and recorded done in `products` the way the fetcher records them:
a direct FITS file, a DataLink product (resolved elsewhere) with an ancillary file, and one
product that is queued but not fetched.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

import numpy as np
import pytest
from astropy.io import fits
from fakes import FakeSleep, FakeTap, write_config
from pyvo.dal.adhoc import DatalinkResults
from starlette.testclient import TestClient

from mirror.api import Mirror
from mirror.catalogue import products
from mirror.catalogue.engine import utcnow
from mirror.retry import RetryPolicy
from mirror.server.app import build_app
from mirror.server.context import ServiceContext
from mirror.server.products import DATALINK_TYPE, localise, parse_key, product_key
from mirror.store.files import Store

BASE = "http://testserver"
FITS = "application/fits"


def fits_bytes(seed: int) -> bytes:
    data = np.random.default_rng(seed).normal(size=(120, 120)).astype(">f4")
    out = io.BytesIO()
    fits.PrimaryHDU(data).writeto(out, checksum=True)
    return out.getvalue()


class Rig:
    """A synced catalogue with stored products, and a service over it."""

    def __init__(self, tmp: Path, tap: FakeTap) -> None:
        self.ids = tap.ids()
        self.direct, self.unfetched, self.linked = self.ids[0], self.ids[1], self.ids[3]
        for i, pid in enumerate((self.direct, self.unfetched), start=1):
            tap.execute(f"UPDATE {tap.table} SET access_url = ?, access_format = ? "
                        "WHERE obs_publisher_did = ?", [f"http://127.0.0.1:9/p/{i}.fits",
                                                        FITS, pid])
        self.config = write_config(tmp, {"name": "fake", "url": tap.url})
        self.mirror = Mirror.open(self.config)
        [report] = self.mirror.sync(policy=RetryPolicy(attempts=2, sleep=FakeSleep()))
        assert report.status == "ok", report.errors
        self.cat = self.mirror.catalogue()
        self.store = Store(tmp / "store")
        self.files: dict[tuple[str, str], bytes] = {}
        with self.cat.begin() as conn:
            urls = dict(conn.exec_driver_sql(
                "SELECT obs_publisher_did, access_url FROM obscore_fake").fetchall())
            formats = dict(conn.exec_driver_sql(
                "SELECT obs_publisher_did, access_format FROM obscore_fake").fetchall())
            self.urls = urls
            rows = [{"product_id": pid, "access_url": urls[pid], "access_format": formats[pid],
                     "path": f"HARPS/spectrum/p{n}.fits"}
                    for n, pid in enumerate((self.direct, self.unfetched, self.linked))]
            products.queue(conn, "fake", rows)
            products.queue(conn, "fake", [{"product_id": self.linked, "role": "aux1",
                                           "access_url": "http://127.0.0.1:9/aux.fits",
                                           "url": "http://127.0.0.1:9/aux.fits",
                                           "path": "HARPS/spectrum/p2.aux1.fits"}])
            done = [self._store(self.direct, "this", "HARPS/spectrum/p0.fits", 1,
                                url=urls[self.direct]),
                    self._store(self.linked, "this", "HARPS/spectrum/p2.fits", 2,
                                url="http://127.0.0.1:9/resolved/p2.fits"),
                    self._store(self.linked, "aux1", "HARPS/spectrum/p2.aux1.fits", 3,
                                url="http://127.0.0.1:9/aux.fits")]
            products.update(conn, done)
        self.ctx = ServiceContext(self.cat, self.mirror.config, base_url=BASE)
        self.client = TestClient(build_app(self.ctx))

    def _store(self, pid: str, role: str, rel: str, seed: int, url: str) -> dict[str, Any]:
        data = fits_bytes(seed)
        self.store.put(PurePosixPath(rel), data)
        self.files[(pid, role)] = data
        return {"source": "fake", "product_id": pid, "role": role, "state": "done",
                "url": url, "path": rel, "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(), "content_type": FITS,
                "last_modified": "Wed, 21 Oct 2015 07:28:00 GMT", "attempts": 1,
                "last_error": None, "embargo_until": None, "fetched_at": utcnow()}

    def url(self, pid: str, role: str = "this") -> str:
        return f"/products/{product_key('fake', pid, role)}"

    def close(self) -> None:
        self.client.close()
        self.ctx.close()
        self.mirror.close()


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    with FakeTap(hard_limit=20) as tap:
        tap.load_recorded()
        rig = Rig(tmp_path_factory.mktemp("products"), tap)
        try:
            yield rig
        finally:
            rig.close()


# -- keys -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("pid", ["ivo://eso.org/ID?ADP.2014-09-25T03:38:28.268", "a/../../b",
                                 "x\ny", "é/ünï"])
def test_a_key_names_its_catalogue_row_and_nothing_else(pid: str) -> None:
    key = product_key("src", pid, "aux1")
    assert parse_key(key) == ("src", pid, "aux1")
    assert "/" not in key and "." not in key
    assert parse_key(key + "!") is None and parse_key(key + "=") is None
    assert parse_key(key[:-1]) != ("src", pid, "aux1")


# -- streaming ------------------------------------------------------------------------------------


def test_a_stored_product_is_served_byte_for_byte_with_etag_and_type(rig: Rig) -> None:
    data = rig.files[(rig.direct, "this")]
    r = rig.client.get(rig.url(rig.direct))
    assert r.status_code == 200 and r.content == data
    assert r.headers["etag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    assert r.headers["last-modified"] == "Wed, 21 Oct 2015 07:28:00 GMT"
    assert r.headers["content-type"] == FITS and r.headers["accept-ranges"] == "bytes"
    assert int(r.headers["content-length"]) == len(data)
    again = rig.client.get(rig.url(rig.direct), headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    head = rig.client.head(rig.url(rig.direct))
    assert head.status_code == 200 and head.content == b""


def test_range_requests_give_the_asked_bytes(rig: Rig) -> None:
    data = rig.files[(rig.direct, "this")]
    first = rig.client.get(rig.url(rig.direct), headers={"Range": "bytes=0-2879"})
    assert first.status_code == 206 and first.content == data[:2880]
    assert first.headers["content-range"] == f"bytes 0-2879/{len(data)}"
    suffix = rig.client.get(rig.url(rig.direct), headers={"Range": "bytes=-100"})
    assert suffix.status_code == 206 and suffix.content == data[-100:]
    rest = rig.client.get(rig.url(rig.direct), headers={"Range": f"bytes={len(data) - 7}-"})
    assert rest.status_code == 206 and rest.content == data[-7:]
    beyond = rig.client.get(rig.url(rig.direct), headers={"Range": f"bytes={len(data)}-"})
    assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{len(data)}"
    assert data[:100] not in beyond.content


def test_a_stale_if_range_gets_the_whole_file(rig: Rig) -> None:
    data = rig.files[(rig.direct, "this")]
    r = rig.client.get(rig.url(rig.direct), headers={"Range": "bytes=0-9", "If-Range": '"old"'})
    assert r.status_code == 200 and r.content == data


@pytest.mark.parametrize("path", [
    "/products/../../etc/passwd", "/products/%2e%2e/%2e%2e/etc/passwd",
    "/products/%2e%2e%2f%2e%2e%2fetc%2fpasswd", "/products//etc/passwd",
    "/products/%2Fetc%2Fpasswd", "/products/HARPS/spectrum/p0.fits",
    "/products/HARPS%2Fspectrum%2Fp0.fits", "/products/" + product_key("fake", "no-such-id"),
    "/products/" + product_key("other", "x"), "/products/not-base64!", "/products/",
    "/products/" + product_key("fake", "../../../../etc/passwd"),
])
def test_anything_but_a_known_key_is_404_and_serves_nothing(rig: Rig, path: str) -> None:
    r = rig.client.get(path)
    assert r.status_code == 404
    assert b"root:" not in r.content and b"SIMPLE" not in r.content
    assert str(rig.store.root) not in r.text


def test_a_product_not_done_is_not_served_even_if_its_file_exists(rig: Rig) -> None:
    rig.store.put(PurePosixPath("HARPS/spectrum/p1.fits"), b"SIMPLE  = T")  # queued, pending
    assert rig.client.get(rig.url(rig.unfetched)).status_code == 404


def test_a_catalogued_path_leading_out_of_the_store_is_refused(rig: Rig, tmp_path: Path) -> None:
    secret = tmp_path / "secret.fits"
    secret.write_bytes(b"SIMPLE  = T secret")
    evil = [("fake", "evil-1", "../../" * 8 + str(secret).lstrip("/")),
            ("fake", "evil-2", str(secret))]
    link = rig.store.root / "HARPS" / "link.fits"
    link.symlink_to(secret)
    evil.append(("fake", "evil-3", "HARPS/link.fits"))
    with rig.cat.begin() as conn:
        products.queue(conn, "fake", [{"product_id": pid, "access_url": "x", "path": path}
                                      for _, pid, path in evil])
        products.update(conn, [{"source": "fake", "product_id": pid, "role": "this",
                                "state": "done", "url": "x", "path": path, "size": 18,
                                "sha256": "0" * 64, "content_type": FITS, "last_modified": None,
                                "attempts": 1, "last_error": None, "embargo_until": None,
                                "fetched_at": utcnow()} for _, pid, path in evil])
    try:
        for _, pid, _ in evil:
            r = rig.client.get(rig.url(pid))
            assert r.status_code == 404 and b"secret" not in r.content, pid
    finally:
        link.unlink()


def test_a_file_changed_on_disk_is_not_served(rig: Rig) -> None:
    path = rig.store.root / "HARPS/spectrum/p2.aux1.fits"
    original = path.read_bytes()
    path.write_bytes(original + b"tampered")
    try:
        assert rig.client.get(rig.url(rig.linked, "aux1")).status_code == 404
    finally:
        path.write_bytes(original)
    assert rig.client.get(rig.url(rig.linked, "aux1")).content == original


# -- DataLink -------------------------------------------------------------------------------------


def datalink(rig: Rig, *ids: str) -> DatalinkResults:
    r = rig.client.get("/datalink", params=[("ID", i) for i in ids])
    assert r.status_code == 200 and r.headers["content-type"].startswith(
        "application/x-votable+xml")
    from astropy.io.votable import parse
    return DatalinkResults(parse(io.BytesIO(r.content)), url=BASE + "/datalink")


def test_datalink_this_is_the_stored_copy_with_its_ancillary_file(rig: Rig) -> None:
    links = datalink(rig, rig.linked)
    this = next(links.bysemantics("#this", include_narrower=False))
    data = rig.files[(rig.linked, "this")]
    assert this["access_url"] == BASE + rig.url(rig.linked)
    assert int(this["content_length"]) == len(data) and this["content_type"] == FITS
    assert rig.client.get(this["access_url"]).content == data
    [aux] = list(links.bysemantics("#auxiliary", include_narrower=False))
    assert rig.client.get(aux["access_url"]).content == rig.files[(rig.linked, "aux1")]


def test_datalink_of_an_unfetched_product_points_upstream(rig: Rig) -> None:
    links = datalink(rig, rig.unfetched)
    this = next(links.bysemantics("#this", include_narrower=False))
    assert this["access_url"] == rig.urls[rig.unfetched]
    upstream_dl = rig.ids[5]  # a DataLink row never selected: the archive's own document
    [row] = list(datalink(rig, upstream_dl))
    assert row["access_url"] == rig.urls[upstream_dl] and row["content_type"] == DATALINK_TYPE


def test_datalink_of_an_unknown_id_is_a_not_found_fault_row(rig: Rig) -> None:
    links = datalink(rig, "ivo://nowhere/ID?nothing", rig.direct)
    rows = list(links)
    assert [str(r["ID"]) for r in rows] == ["ivo://nowhere/ID?nothing", rig.direct]
    assert str(rows[0]["error_message"]).startswith("NotFoundFault")
    assert rows[1]["access_url"] == BASE + rig.url(rig.direct)


def test_datalink_without_id_is_a_usage_fault(rig: Rig) -> None:
    r = rig.client.get("/datalink")
    assert r.status_code == 400 and b"UsageFault" in r.content


# -- localise -------------------------------------------------------------------------------------


def test_query_results_point_at_the_stored_copies_only(rig: Rig) -> None:
    result = rig.mirror.query("SELECT obs_publisher_did, access_url, access_format "
                              "FROM ivoa.obscore ORDER BY obs_publisher_did")
    out = localise(result.arrow, rig.ctx).to_pylist()
    by_id = {r["obs_publisher_did"]: r for r in out}
    assert by_id[rig.direct]["access_url"] == BASE + rig.url(rig.direct)
    assert by_id[rig.direct]["access_format"] == FITS
    assert by_id[rig.linked]["access_url"] == f"{BASE}/datalink?ID={quote(rig.linked, safe='')}"
    assert by_id[rig.linked]["access_format"] == DATALINK_TYPE
    assert by_id[rig.unfetched]["access_url"] == rig.urls[rig.unfetched]
    others = [r for pid, r in by_id.items() if pid not in (rig.direct, rig.linked)]
    assert all(r["access_url"] == rig.urls[r["obs_publisher_did"]] for r in others)
    assert len(out) == len(rig.ids)
    field = localise(result.arrow, rig.ctx).schema.field("access_url")
    assert field.metadata == result.arrow.schema.field("access_url").metadata


def test_localise_leaves_results_without_access_url_alone(rig: Rig) -> None:
    result = rig.mirror.query("SELECT obs_publisher_did FROM ivoa.obscore")
    assert localise(result.arrow, rig.ctx) is result.arrow
