"""Example ADQL queries, each checked by running it locally: the services' own (`{tap}/examples`,
replicated at sync) and generated ones built from the local data (a cone around a real position,
counts per collection, a time range, TAP_SCHEMA). A failing example is shown with its error,
never hidden. `checked_examples` is what a TAP service's `/examples` endpoint can serve.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass
from typing import Any

from mirror.catalogue.engine import Catalogue
from mirror.errors import MirrorError
from mirror.query import Runner
from mirror.schema.load import QueryFn, rows

CHECK_MAXREC = 1000


@dataclass
class Example:
    """One example query and what running it locally gave."""

    name: str
    description: str | None
    adql: str
    origin: str                 # "service <source>" or "generated"
    rows: int | None = None     # rows returned (at most CHECK_MAXREC)
    overflow: bool = False      # more rows matched than were returned
    error: str | None = None
    seconds: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def id(self) -> str:
        """An identifier for the example (DALI examples name each one)."""
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-") or "example"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def service_examples(query: QueryFn) -> list[Example]:
    """The examples each service publishes, as replicated (none on an older catalogue)."""
    try:
        found = rows(query, "SELECT source, seq, name, description, query "
                            "FROM mirror.tap_examples ORDER BY source, seq")
    except MirrorError:
        return []
    return [Example(r["name"], r["description"], r["query"].strip(), f"service {r['source']}")
            for r in found]


def generated_examples(query: QueryFn) -> list[Example]:
    """Queries built from what the catalogue holds: real positions, collections, times."""
    tables = {r["table_name"].lower() for r in rows(query, "SELECT table_name FROM "
                                                           "TAP_SCHEMA.tables")}
    out = [Example(
        "Columns of ivoa.obscore with units and UCDs",
        "Discovery as pyvo and TOPCAT do it: the local TAP_SCHEMA describes every table.",
        "SELECT column_name, datatype, unit, ucd, description\nFROM TAP_SCHEMA.columns\n"
        "WHERE table_name = 'ivoa.obscore'\nORDER BY column_index", "generated")]
    if "ivoa.obscore" in tables:
        out += _obscore_examples(query)
    if "mirror.products" in tables:
        out.append(Example(
            "Products per state", "How many data products are stored, pending or failed.",
            "SELECT source, state, COUNT(*) AS n\nFROM mirror.products\n"
            "GROUP BY source, state\nORDER BY source, state", "generated"))
    return out


def _obscore_examples(query: QueryFn) -> list[Example]:
    names = {r["column_name"].lower() for r in rows(
        query, "SELECT column_name FROM TAP_SCHEMA.columns WHERE table_name = 'ivoa.obscore'")}
    out = []
    if "obs_collection" in names:
        out.append(Example(
            "Records per collection", "How many records each collection holds, largest first.",
            "SELECT obs_collection, COUNT(*) AS n\nFROM ivoa.obscore\n"
            "GROUP BY obs_collection\nORDER BY n DESC", "generated"))
    if {"s_ra", "s_dec"} <= names:
        spot = rows(query, "SELECT TOP 1 s_ra, s_dec FROM ivoa.obscore "
                           "WHERE s_ra IS NOT NULL AND s_dec IS NOT NULL ORDER BY obs_publisher_did"
                    if "obs_publisher_did" in names else
                    "SELECT TOP 1 s_ra, s_dec FROM ivoa.obscore WHERE s_ra IS NOT NULL")
        if spot:
            ra, dec = spot[0]["s_ra"], spot[0]["s_dec"]
            out.append(Example(
                "Cone search", f"Records within 0.5 degrees of (RA, Dec) = ({ra:.4f}, {dec:.4f}), "
                "a position taken from the data, nearest first.",
                "SELECT TOP 100 obs_publisher_did, dataproduct_type, s_ra, s_dec,\n"
                f"  DISTANCE(POINT('ICRS', s_ra, s_dec), POINT('ICRS', {ra:.6f}, {dec:.6f})) "
                "AS dist\nFROM ivoa.obscore\n"
                f"WHERE 1 = CONTAINS(POINT('ICRS', s_ra, s_dec), CIRCLE('ICRS', {ra:.6f}, "
                f"{dec:.6f}, 0.5))\nORDER BY dist", "generated"))
    if {"t_min", "t_max"} <= names:
        span = rows(query, "SELECT MIN(t_min) AS lo, MAX(t_max) AS hi FROM ivoa.obscore")
        lo, hi = (span[0]["lo"], span[0]["hi"]) if span else (None, None)
        if lo is not None and hi is not None:
            end = lo + min(30.0, max(hi - lo, 1.0))
            out.append(Example(
                "Observations in a time range", f"Records observed between MJD {lo:.1f} and "
                f"{end:.1f} (t_min and t_max are MJD, days).",
                "SELECT TOP 100 obs_publisher_did, t_min, t_max, t_exptime\nFROM ivoa.obscore\n"
                f"WHERE t_min >= {lo:.5f} AND t_max <= {end:.5f}\nORDER BY t_min", "generated"))
    if "mirror_source" in names and "dataproduct_type" in names:
        out.append(Example(
            "Product types per source", "What each mirrored service offers.",
            "SELECT mirror_source, dataproduct_type, COUNT(*) AS n\nFROM ivoa.obscore\n"
            "GROUP BY mirror_source, dataproduct_type\nORDER BY mirror_source, n DESC",
            "generated"))
    return out


def check(example: Example, query: QueryFn) -> Example:
    """Run the example locally; record its row count or its error."""
    started = time.perf_counter()
    try:
        result = query(example.adql, maxrec=CHECK_MAXREC)
        example.rows, example.overflow = result.arrow.num_rows, bool(result.overflow)
        example.error = None
    except MirrorError as exc:
        example.error = exc.message
    example.seconds = time.perf_counter() - started
    return example


def checked_examples(query: QueryFn | Catalogue) -> list[Example]:
    """Every example (the services' first), each run locally with its outcome. `query` is
    `Mirror.query` or a runner's; given an open catalogue, a runner of its own is used."""
    if isinstance(query, Catalogue):
        runner = Runner(query)
        try:
            return checked_examples(runner.query)
        finally:
            runner.close()
    candidates = service_examples(query)
    try:
        candidates += generated_examples(query)
    except MirrorError as exc:  # a catalogue without ivoa.obscore yet still has its own tables
        candidates.append(Example("Generated examples", None, "", "generated", error=exc.message))
    return [check(e, query) if e.adql else e for e in candidates]
