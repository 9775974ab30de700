"""Stored products served by the service: `/products/{key}` streams a catalogued file (HTTP Range,
ETag, Last-Modified), `/datalink` answers DataLink, and `localise` points query results at both.

A key is opaque to clients and names a catalogue row (source, product id, role), never a path:
the file's path comes from the catalogue and is resolved by `mirror.store`, so nothing a
request says can reach a file outside the store, nor one the catalogue does not call done.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import logging
import mimetypes
import stat
import threading
import weakref
from datetime import UTC
from email.utils import formatdate
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from mirror.errors import MirrorError, StoreError
from mirror.query.runner import duckdb_errors
from mirror.store.files import Store

if TYPE_CHECKING:
    from mirror.server.context import ServiceContext

log = logging.getLogger("mirror")
DATALINK_TYPE = "application/x-votable+xml;content=datalink"
_SEP = "\n"


def product_key(source: str, product_id: str, role: str = "this") -> str:
    """The URL key of a product: its catalogue key, base64url-encoded (no padding)."""
    raw = _SEP.join((source, role, product_id)).encode("utf-8", "surrogatepass")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def parse_key(key: str) -> tuple[str, str, str] | None:
    """(source, product_id, role) of a key, or None for anything `product_key` cannot make."""
    if not key or len(key) > 4096 or not key.isascii():
        return None
    try:
        text = base64.urlsafe_b64decode(key + "=" * (-len(key) % 4)).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    parts = text.split(_SEP, 2)
    if len(parts) != 3 or not all(parts) or product_key(parts[0], parts[2], parts[1]) != key:
        return None
    return parts[0], parts[2], parts[1]


class Lookups:
    """The catalogue reads behind products and DataLink: short queries on a connection of their
    own (so they never wait for a slot of the query pool, nor touch the writer's)."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.catalogue = ctx.catalogue
        self._con: duckdb.DuckDBPyConnection | None = None
        self._lock = threading.Lock()  # one statement at a time on the connection
        self.store = Store(ctx.config.store_root)
        self.store_lock = threading.Lock()  # Store caches resolved paths in plain dicts

    def rows(self, sql: str, params: list[Any]) -> list[dict[str, Any]]:
        """Our own fixed SELECTs (never user SQL: no translator, no READ ONLY transaction
        needed), a few milliseconds at most, so no watchdog either."""
        with self._lock, duckdb_errors(60.0):
            cur = self._cursor().execute(sql, params)
            names = [d[0] for d in cur.description or ()]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def stored(self, source: str, product_id: str, role: str) -> dict[str, Any] | None:
        """The catalogue row of a product stored and verified (state done), if any."""
        found = self.rows(
            "SELECT path, size, sha256, content_type, access_format, last_modified, fetched_at "
            "FROM products WHERE source = ? AND product_id = ? AND role = ? AND state = 'done' "
            "AND path IS NOT NULL AND sha256 IS NOT NULL", [source, product_id, role])
        return found[0] if found else None

    def by_access_url(self, urls: pa.Array) -> list[dict[str, Any]]:
        """Stored main products whose upstream access_url is one of `urls` (one query; the
        URLs go in as Arrow, not as a bound list: 100,000 of them cost ~10x less)."""
        with self._lock, duckdb_errors(60.0):
            con = self._cursor()
            con.register("_result_urls", pa.table({"u": urls}))
            try:
                cur = con.execute(
                    "SELECT p.access_url, p.source, p.product_id, p.access_format "
                    "FROM products p JOIN _result_urls r ON p.access_url = r.u "
                    "WHERE p.role = 'this' AND p.state = 'done' AND p.sha256 IS NOT NULL")
                names = [d[0] for d in cur.description or ()]
                return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
            finally:
                con.unregister("_result_urls")

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            self._con = self.catalogue.cursor()
        return self._con

    def close(self) -> None:
        with self._lock:
            if self._con is not None:
                with contextlib.suppress(duckdb.Error):
                    self._con.close()
                self._con = None


_LOOKUPS: dict[int, Lookups] = {}
_LOOKUPS_LOCK = threading.Lock()


def lookups(ctx: ServiceContext) -> Lookups:
    """The Lookups of a service context, made on first use, closed when the context goes."""
    with _LOOKUPS_LOCK:
        found = _LOOKUPS.get(id(ctx))
        if found is None:
            found = _LOOKUPS[id(ctx)] = Lookups(ctx)
            ctx.closers.append(functools.partial(_drop, id(ctx)))
            weakref.finalize(ctx, _drop, id(ctx))  # a context dropped without close()
        return found


def _drop(key: int) -> None:
    with _LOOKUPS_LOCK:
        gone = _LOOKUPS.pop(key, None)
    if gone is not None:
        gone.close()


def product_url(ctx: ServiceContext, source: str, product_id: str, role: str = "this") -> str:
    return f"{ctx.base_url.rstrip('/')}/products/{product_key(source, product_id, role)}"


def datalink_url(ctx: ServiceContext, product_id: str) -> str:
    return f"{ctx.base_url.rstrip('/')}/datalink?ID={quote(product_id, safe='')}"


def is_datalink(access_format: str | None) -> bool:
    return "content=datalink" in (access_format or "").replace(" ", "").lower()


# -- /products/{key} ------------------------------------------------------------------------------


def routes(ctx: ServiceContext) -> list[BaseRoute]:
    """Routes serving stored products (`/products/{key}`) and DataLink (`/datalink`)."""
    from mirror.server.datalink import datalink_route

    async def product(request: Request) -> Response:
        parts = parse_key(request.path_params["key"])
        if parts is None:
            return _not_found()
        found = lookups(ctx)
        try:
            row = await run_in_threadpool(found.stored, *parts)
        except MirrorError as exc:
            log.warning("product lookup failed: %s", exc.message)
            return PlainTextResponse("the catalogue could not be read; try again", 503,
                                     headers={"Retry-After": "2"})
        if row is None:
            return _not_found()
        return await run_in_threadpool(_file_response, found, row, request)

    return [Route("/products/{key}", product, methods=["GET", "HEAD"]), datalink_route(ctx)]


def _file_response(found: Lookups, row: dict[str, Any], request: Request) -> Response:
    """The stored file, if it is still the one the catalogue vouches for (same size)."""
    try:
        with found.store_lock:
            path = found.store.resolve(row["path"])
        info = path.stat()
    except (StoreError, OSError) as exc:
        log.warning("stored product %s is not servable: %s", row["path"], exc)
        return _not_found()
    if not stat.S_ISREG(info.st_mode) or info.st_size != row["size"]:
        log.warning("stored product %s changed on disk; not served until verified", row["path"])
        return _not_found()
    etag = f'"{row["sha256"]}"'
    headers = {"ETag": etag, "Last-Modified": _last_modified(row, info),
               "Cache-Control": "private, no-transform"}
    if etag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
        return Response(status_code=304, headers=headers)
    return _Stream(path, headers=headers, media_type=_media_type(row, path.name),
                   stat_result=info, filename=path.name, content_disposition_type="inline")


class _Stream(FileResponse):
    chunk_size = 1 << 20  # starlette's 64 KiB halves the rate for files of many MB


def _not_found() -> Response:
    return PlainTextResponse("no stored product under this key", status_code=404)


def _media_type(row: dict[str, Any], name: str) -> str:
    for candidate in (row.get("content_type"), row.get("access_format")):
        if candidate and not is_datalink(candidate) and "/" in candidate:
            return str(candidate)
    if name.lower().endswith((".fits", ".fit", ".fts", ".fits.gz", ".fits.fz")):
        return "application/fits"
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def _last_modified(row: dict[str, Any], info: Any) -> str:
    """The upstream's own Last-Modified when it sent one, else when the file was fetched."""
    if row.get("last_modified"):
        return str(row["last_modified"])
    fetched = row.get("fetched_at")
    if fetched is None:
        return formatdate(info.st_mtime, usegmt=True)
    if fetched.tzinfo is None:  # the catalogue stores naive UTC
        fetched = fetched.replace(tzinfo=UTC)
    return formatdate(fetched.timestamp(), usegmt=True)


# -- localise -------------------------------------------------------------------------------------


def localise(table: pa.Table, ctx: ServiceContext) -> pa.Table:
    """Point `access_url` of rows whose product is stored at this service's copy (the file, or
    a DataLink document when the upstream row was DataLink, `access_format` saying so); rows
    not fetched keep the upstream URL. One catalogue query per result."""
    col = _index(table, "access_url")
    if col is None or table.num_rows == 0 or not ctx.base_url:
        return table
    urls = table.column(col)
    if not (pa.types.is_string(urls.type) or pa.types.is_large_string(urls.type)):
        return table
    distinct = pc.unique(urls.drop_null())
    if len(distinct) == 0:
        return table
    hits = lookups(ctx).by_access_url(distinct)
    if not hits:
        return table
    keys, local, linked = [], [], []
    for hit in hits:
        dl = is_datalink(hit["access_format"])
        keys.append(hit["access_url"])
        local.append(datalink_url(ctx, hit["product_id"]) if dl
                     else product_url(ctx, hit["source"], hit["product_id"]))
        linked.append(dl)
    idx = pc.index_in(urls, value_set=pa.array(keys, urls.type))
    found = pc.is_valid(idx)
    replaced = pc.if_else(found, pc.take(pa.array(local, urls.type), idx), urls)
    table = table.set_column(col, table.schema.field(col), replaced)
    fmt = _index(table, "access_format")
    if fmt is not None and any(linked) and pa.types.is_string(table.column(fmt).type):
        is_dl = pc.fill_null(pc.take(pa.array(linked), idx), False)
        value = pa.scalar(DATALINK_TYPE, table.column(fmt).type)
        table = table.set_column(fmt, table.schema.field(fmt),
                                 pc.if_else(is_dl, value, table.column(fmt)))
    return table


def _index(table: pa.Table, name: str) -> int | None:
    for i, n in enumerate(table.column_names):
        if n.lower() == name:
            return i
    return None
