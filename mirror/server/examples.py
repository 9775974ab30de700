"""DALI examples (`/examples`): example queries as XHTML with RDFa, each checked to run here.

The schema catalogue's checked examples are used when that module is present; otherwise a
cone search around a position the catalogue holds, a count by collection and a TAP_SCHEMA
query. Every example is run once (TOP 1) before it is listed: a broken one is left out.
"""

from __future__ import annotations

import importlib
import re
import time
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

from mirror.errors import MirrorError
from mirror.server.context import ServiceContext


@dataclass(frozen=True)
class Example:
    """One example query: an identifier, a title, a sentence of description, the ADQL."""

    id: str
    name: str
    description: str
    query: str


_CACHE: dict[int, tuple[float, list[Example]]] = {}
CACHE_SECONDS = 60.0  # checking runs every example: not on each request


def examples(ctx: ServiceContext) -> list[Example]:
    """The examples that run on this catalogue now (checked at most once a minute)."""
    now = time.monotonic()
    cached = _CACHE.get(id(ctx))
    if cached is not None and now - cached[0] < CACHE_SECONDS:
        return cached[1]
    found = _from_schema(ctx) or [e for e in _builtin(ctx) if _runs(ctx, e.query)]
    _CACHE[id(ctx)] = (now, found)
    return found


def _from_schema(ctx: ServiceContext) -> list[Example]:
    """The schema catalogue's examples (the services' own, then generated), those that ran."""
    try:
        module = importlib.import_module("mirror.schema.examples")
    except ImportError:
        return []
    try:
        with ctx.runners.runner() as runner:
            items = module.checked_examples(runner.query)
    except (MirrorError, AttributeError, TypeError):
        return []
    out: list[Example] = []
    seen: set[str] = set()
    for item in items:
        if getattr(item, "error", None) or not getattr(item, "adql", None):
            continue
        ident = re.sub(r"[^a-z0-9]+", "-", item.name.lower()).strip("-") or "example"
        while ident in seen:
            ident += "-2"
        seen.add(ident)
        out.append(Example(ident, item.name, item.description or "", item.adql))
    return out


def _builtin(ctx: ServiceContext) -> list[Example]:
    ra, dec = 0.0, 0.0
    try:
        with ctx.runners.runner() as r:
            rows = r.query("SELECT TOP 1 s_ra, s_dec FROM ivoa.obscore WHERE s_ra IS NOT NULL",
                           maxrec=1).arrow.to_pylist()
        if rows:
            ra, dec = round(rows[0]["s_ra"], 4), round(rows[0]["s_dec"], 4)
    except MirrorError:
        pass
    return [
        Example("cone", "Cone search",
                "Observations whose position lies within half a degree of a point.",
                "SELECT TOP 100 obs_id, obs_collection, dataproduct_type, s_ra, s_dec, "
                "access_url\nFROM ivoa.obscore\nWHERE 1 = CONTAINS(POINT('ICRS', s_ra, s_dec), "
                f"CIRCLE('ICRS', {ra}, {dec}, 0.5))"),
        Example("collections", "Holdings by collection",
                "How many observations of each product type every collection holds.",
                "SELECT obs_collection, dataproduct_type, COUNT(*) AS n\nFROM ivoa.obscore\n"
                "GROUP BY obs_collection, dataproduct_type"),
        Example("columns", "Columns of the ObsCore table",
                "The columns of ivoa.obscore with their types, units and UCDs (TAP_SCHEMA).",
                "SELECT column_name, datatype, unit, ucd, description\nFROM TAP_SCHEMA.columns\n"
                "WHERE table_name = 'ivoa.obscore'"),
    ]


def _runs(ctx: ServiceContext, query: str) -> bool:
    try:
        with ctx.runners.runner() as r:
            r.query(query, maxrec=1)
    except MirrorError:
        return False
    return True


def document(items: list[Example]) -> str:
    """The DALI examples XHTML document."""
    body = "".join(
        f"<div typeof=\"example\" id={quoteattr(e.id)} resource={quoteattr('#' + e.id)}>"
        f"<h2 property=\"name\">{escape(e.name)}</h2><p>{escape(e.description)}</p>"
        f"<pre property=\"query\">{escape(e.query)}</pre></div>\n" for e in items)
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<!DOCTYPE html>\n'
            '<html xmlns="http://www.w3.org/1999/xhtml"><head><title>Examples</title></head>\n'
            '<body vocab="http://www.ivoa.net/rdf/examples#"><h1>Example queries</h1>\n'
            f"{body}</body></html>\n")
