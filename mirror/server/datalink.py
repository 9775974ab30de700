"""DataLink 1.1 `links` endpoint: `#this` is the stored copy when there is one, else the upstream.

`GET|POST /datalink?ID=<publisher DID>[&ID=...]` answers one VOTable; an ID that is not in the
catalogue gets a row with a `NotFoundFault` error message, as the standard asks.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from astropy.io.votable.tree import Field, Info, Resource, TableElement, VOTableFile
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mirror.catalogue.obscore import q, source_view
from mirror.errors import MirrorError
from mirror.server.products import (
    DATALINK_TYPE,
    is_datalink,
    lookups,
    product_url,
)

if TYPE_CHECKING:
    from mirror.server.context import ServiceContext

MAX_IDS = 1000

# DataLink 1.1, section 3.2: name, datatype, arraysize, ucd, unit
COLUMNS = (
    ("ID", "char", "*", "meta.id;meta.main", None),
    ("access_url", "char", "*", "meta.ref.url", None),
    ("service_def", "char", "*", "meta.ref", None),
    ("error_message", "char", "*", "meta.code.error", None),
    ("semantics", "char", "*", "meta.code", None),
    ("description", "char", "*", "meta.note", None),
    ("content_type", "char", "*", "meta.code.mime", None),
    ("content_length", "long", None, "phys.size;meta.file", "byte"),
    ("content_qualifier", "char", "*", "meta.code.class", None),
    ("local_semantics", "char", "*", "meta.code", None),
    ("link_auth", "char", "*", "meta.code", None),
    ("link_authorized", "boolean", None, "meta.code", None),
)


@dataclass
class Link:
    """One row of a DataLink answer."""

    id: str
    access_url: str | None = None
    error_message: str | None = None
    semantics: str | None = None
    description: str | None = None
    content_type: str | None = None
    content_length: int | None = None


def datalink_route(ctx: ServiceContext) -> Route:
    async def endpoint(request: Request) -> Response:
        params = list(request.query_params.multi_items())
        if request.method == "POST":
            params += [(k, str(v)) for k, v in (await request.form()).multi_items()]
        ids = [v for k, v in params if k.upper() == "ID"]
        fmt = next((v for k, v in params if k.upper() == "RESPONSEFORMAT"), None)
        if fmt and fmt.replace(" ", "").lower() not in ("votable", DATALINK_TYPE,
                                                         "application/x-votable+xml"):
            return _fault(f"UsageFault: RESPONSEFORMAT {fmt!r} is not supported; use votable")
        if not ids:
            return _fault("UsageFault: the ID parameter is required (a publisher DID)")
        if len(ids) > MAX_IDS:
            return _fault(f"UsageFault: at most {MAX_IDS} IDs per request")
        try:
            links = await run_in_threadpool(links_for, ctx, ids)
        except MirrorError as exc:
            return _fault(f"ServiceUnavailableFault: {exc.message}", status=503)
        return Response(to_votable(links), media_type=DATALINK_TYPE)

    return Route("/datalink", endpoint, methods=["GET", "POST"])


def links_for(ctx: ServiceContext, ids: list[str]) -> list[Link]:
    """The links of each ID, in the order asked; two catalogue queries for the lot."""
    found = lookups(ctx)
    wanted = list(dict.fromkeys(ids))
    products: dict[str, list[dict[str, Any]]] = {}
    for row in found.rows(
            "SELECT source, product_id, role, state, url, size, estimated_size, content_type, "
            "access_url, access_format, sha256 FROM products "
            "WHERE product_id IN (SELECT unnest(?::VARCHAR[])) ORDER BY source, role",
            [wanted]):
        products.setdefault(row["product_id"], []).append(row)
    records = _records(found, [i for i in wanted if not _stored(products.get(i, []))])
    out: list[Link] = []
    for pid in wanted:
        out.extend(_links(ctx, pid, products.get(pid, []), records.get(pid)))
    return out


def _stored(rows: list[dict[str, Any]]) -> bool:
    return any(r["role"] == "this" and r["state"] == "done" and r["sha256"] for r in rows)


def _records(found: Any, ids: list[str]) -> dict[str, dict[str, Any]]:
    """The current ObsCore records of `ids` (access_url, access_format, access_estsize)."""
    if not ids:
        return {}
    columns: dict[str, set[str]] = {}
    for row in found.rows("SELECT source, lower(column_name) AS c FROM source_columns", []):
        columns.setdefault(row["source"], set()).add(row["c"])
    out: dict[str, dict[str, Any]] = {}
    for src in found.rows("SELECT name, id_column FROM sources ORDER BY name", []):
        have = columns.get(src["name"], set())
        wanted = [c for c in ("access_url", "access_format", "access_estsize") if c in have]
        if src["id_column"].lower() not in have:
            continue
        idc = f"CAST({q(src['id_column'])} AS VARCHAR)"
        cols = "".join(f", {q(c)}" for c in wanted)
        for row in found.rows(f"SELECT {idc} AS _id{cols} FROM {source_view(src['name'])} "
                              f"WHERE {idc} IN (SELECT unnest(?::VARCHAR[]))", [ids]):
            out.setdefault(row["_id"], row)
    return out


def _links(ctx: ServiceContext, pid: str, rows: list[dict[str, Any]],
           record: dict[str, Any] | None) -> list[Link]:
    done = [r for r in rows if r["state"] == "done" and r["sha256"]]
    if any(r["role"] == "this" for r in done):
        return [Link(pid, product_url(ctx, r["source"], pid, r["role"]),
                     semantics="#this" if r["role"] == "this" else "#auxiliary",
                     description=("the copy stored by this mirror" if r["role"] == "this"
                                  else f"ancillary file ({r['role']}) stored by this mirror"),
                     content_type=r["content_type"], content_length=r["size"])
                for r in sorted(done, key=lambda r: r["role"] != "this")]
    main = next((r for r in rows if r["role"] == "this"), None)
    if main is not None and main["url"]:  # resolved upstream, not (yet) stored here
        return [Link(pid, main["url"], semantics="#this",
                     description="the archive's file (not stored by this mirror)",
                     content_type=main["content_type"], content_length=main["size"])]
    if record is None and main is None:
        return [Link(pid, error_message=f"NotFoundFault: {pid} is not known to this mirror")]
    upstream = record or main or {}
    url, fmt = upstream.get("access_url"), upstream.get("access_format")
    if not url:
        return [Link(pid, error_message=f"NotFoundFault: {pid} has no access_url")]
    if is_datalink(fmt):
        return [Link(pid, url, semantics="#auxiliary", content_type=DATALINK_TYPE,
                     description="the archive's own DataLink document (the product is not "
                                 "stored by this mirror)")]
    size = upstream.get("access_estsize")
    return [Link(pid, url, semantics="#this", content_type=fmt,
                 description="the archive's file (not stored by this mirror)",
                 content_length=int(size) * 1024 if isinstance(size, (int, float)) else None)]


def to_votable(links: list[Link]) -> bytes:
    """The DataLink VOTable: RESOURCE type=results with the standard columns."""
    vot = VOTableFile()
    resource = Resource()
    resource.type = "results"
    resource.infos.append(Info(name="standardID", value="ivo://ivoa.net/std/DataLink#links-1.1"))
    vot.resources.append(resource)
    table = TableElement(vot)
    resource.tables.append(table)
    for name, datatype, arraysize, ucd, unit in COLUMNS:
        table.fields.append(Field(vot, name=name, datatype=datatype, arraysize=arraysize,
                                  ucd=ucd, unit=unit))
    table.create_arrays(len(links))
    for i, link in enumerate(links):
        values = {"ID": link.id, "access_url": link.access_url,
                  "error_message": link.error_message, "semantics": link.semantics,
                  "description": link.description, "content_type": link.content_type,
                  "content_length": link.content_length}
        for name, *_ in COLUMNS:
            value = values.get(name)
            table.array[name][i] = value if value is not None else _EMPTY[name]
            table.array.mask[name][i] = value is None
    out = io.BytesIO()
    vot.to_xml(out, tabledata_format="tabledata")
    return out.getvalue()


_EMPTY: dict[str, Any] = {name: (0 if datatype == "long" else False if datatype == "boolean"
                                 else "") for name, datatype, *_ in COLUMNS}


def _fault(message: str, status: int = 400) -> Response:
    """A DALI error document: QUERY_STATUS ERROR with the fault's text."""
    vot = VOTableFile()
    resource = Resource()
    resource.type = "results"
    info = Info(name="QUERY_STATUS", value="ERROR")
    info.content = message
    resource.infos.append(info)
    vot.resources.append(resource)
    out = io.BytesIO()
    vot.to_xml(out)
    return Response(out.getvalue(), status_code=status, media_type="application/x-votable+xml")
