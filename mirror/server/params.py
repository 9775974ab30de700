"""TAP/DALI request parameters: names case-insensitive, values checked, errors a client can act on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from starlette.requests import Request

from mirror.errors import MirrorError
from mirror.server.formats import Format, lookup, names

LANGS = ("ADQL", "ADQL-2.0", "ADQL-2.1")


class BadRequest(MirrorError):
    """A malformed request (HTTP 400): a parameter missing, unknown or out of range."""

    status = 400


class TooLarge(MirrorError):
    """A request body beyond [serve] max_body_kb (HTTP 413)."""

    status = 413


@dataclass(frozen=True)
class TapQuery:
    """A checked doQuery request."""

    query: str
    maxrec: int
    format: Format
    maxrec_given: bool = False


async def read_params(request: Request) -> dict[str, str]:
    """GET query string and POST form fields, names lower-cased; a name's first value wins."""
    items = list(request.query_params.multi_items())
    if request.method == "POST":
        kind = request.headers.get("content-type", "")
        if kind.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            form = await request.form(max_files=0)
            items += [(k, v) for k, v in form.multi_items() if isinstance(v, str)]
    out: dict[str, str] = {}
    for key, value in items:
        out.setdefault(key.lower(), value)
    return out


def tap_query(params: Mapping[str, str], hard_maxrec: int) -> TapQuery:
    """The doQuery request in `params`, or BadRequest saying what to fix."""
    request = params.get("request")
    if request is not None and request.strip().lower() != "doquery":
        raise BadRequest(f"REQUEST={request!r} is not supported",
                         "give REQUEST=doQuery (or leave it out)")
    lang = params.get("lang")
    if lang is None:
        raise BadRequest("LANG is missing", "give LANG=ADQL")
    if lang.strip().upper() not in LANGS:
        raise BadRequest(f"LANG={lang!r} is not supported", "this service speaks LANG=ADQL")
    if "upload" in params:
        raise BadRequest("UPLOAD is not supported by this service",
                         "query the catalogue's own tables (see /tables)")
    query = params.get("query", "")
    if not query.strip():
        raise BadRequest("QUERY is missing or empty",
                         "give QUERY=<ADQL>, e.g. SELECT TOP 10 * FROM ivoa.obscore")
    maxrec, given = hard_maxrec, "maxrec" in params
    if given:
        text = params["maxrec"].strip()
        if not text.isdigit():
            raise BadRequest(f"MAXREC={params['maxrec']!r} is not a non-negative integer",
                             f"give MAXREC=N with 0 <= N <= {hard_maxrec}")
        maxrec = min(int(text), hard_maxrec)
    name = params.get("responseformat") or params.get("format")
    fmt = lookup(name)
    if fmt is None:
        raise BadRequest(f"RESPONSEFORMAT={name!r} is not offered",
                         f"give one of {names()} (or a MIME type listed in /capabilities)")
    return TapQuery(query, maxrec, fmt, given)
