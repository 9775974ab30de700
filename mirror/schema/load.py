"""Loading the schema catalogue through ADQL: the local TAP_SCHEMA, `mirror.*` profiles, counts.

Everything goes through a query function (`Mirror.query`), so the same code reads an open
catalogue or, routed by `Mirror`, a catalogue held by a running daemon or `mirror serve`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from mirror.errors import MirrorError
from mirror.schema.model import (
    Catalogue,
    Column,
    ColumnProfile,
    Table,
    TableProfile,
    bare,
)
from mirror.schema.standards import defining_standard

QueryFn = Callable[..., Any]   # (adql, *, maxrec=...) -> a result with `.arrow`
MAXREC = 10_000_000


def rows(query: QueryFn, adql: str) -> list[dict[str, Any]]:
    """A query's rows as dicts (lower-case keys)."""
    result = query(adql, maxrec=MAXREC)
    return [{k.lower(): v for k, v in r.items()} for r in result.arrow.to_pylist()]


def load(query: QueryFn, *, counts: bool = True) -> Catalogue:
    """Every table the local TAP_SCHEMA lists, with columns, types, profiles and row counts."""
    notes: list[str] = []
    tables = [Table(r["table_name"], r["schema_name"], r["description"], r["table_type"],
                    r["utype"], r["table_index"] or 0)
              for r in rows(query, "SELECT * FROM TAP_SCHEMA.tables")]
    by_name = {t.name.lower(): t for t in tables}
    types = _optional(query, "SELECT * FROM mirror.local_columns", notes)
    local = {(r["table_name"].lower(), bare(r["column_name"]).lower()): r["local_type"]
             for r in types}
    for r in rows(query, "SELECT * FROM TAP_SCHEMA.columns"):
        table = by_name.get(r["table_name"].lower())
        if table is not None:
            table.columns.append(_column(r, table, local))
    for t in tables:
        t.columns.sort(key=lambda c: c.index)
    _add_sources(tables)
    _add_profiles(query, by_name, notes)
    if counts:
        _add_counts(query, [t for t in tables if t.rows is None], notes)
    tables.sort(key=lambda t: (t.index, t.name))
    return Catalogue(tables, notes)


def _column(r: dict[str, Any], table: Table, local: dict[tuple[str, str], str]) -> Column:
    name = bare(r["column_name"])  # the name; ADQL delimits it where it is a reserved word
    return Column(
        table.name, name, r["datatype"], r["arraysize"] or None, r["xtype"] or None,
        local.get((table.name.lower(), name.lower())), r["unit"] or None, r["ucd"] or None,
        r["utype"] or None, r["description"], bool(r["principal"]), bool(r["indexed"]),
        bool(r["std"]), defining_standard(table.name, table.utype, name),
        index=r["column_index"] or 0)


def _add_sources(tables: list[Table]) -> None:
    """Which sources publish each column: `<source>.obscore` tables, and for the union views
    every source table that has the column."""
    reserved = {"ivoa", "tap_schema", "mirror"}
    per_source = [t for t in tables if t.schema.lower() not in reserved]
    have = {t.schema: {c.name.lower() for c in t.columns} for t in per_source}
    for t in tables:
        for c in t.columns:
            if t.schema.lower() not in reserved:
                c.sources = [t.schema]
            elif t.schema.lower() == "ivoa":
                c.sources = [s for s, names in have.items() if c.name.lower() in names]


def _add_profiles(query: QueryFn, by_name: dict[str, Table], notes: list[str]) -> None:
    for r in _optional(query, "SELECT * FROM mirror.table_profiles", notes):
        table = by_name.get(r["table_name"].lower())
        if table is not None:
            table.rows = r["row_count"]
            table.profile = TableProfile(
                r["row_count"], r["positions"], r["moc"], r["moc_depth"], r["sky_fraction"],
                r["t_min_mjd"], r["t_max_mjd"], r["t_min_iso"], r["t_max_iso"], r["seconds"],
                _text(r["computed_at"]))
    for r in _optional(query, "SELECT * FROM mirror.column_profiles", notes):
        table = by_name.get(r["table_name"].lower())
        column = table.column(r["column_name"]) if table else None
        if column is not None:
            column.profile = ColumnProfile(
                r["row_count"], r["null_count"], r["null_fraction"], r["distinct_approx"],
                r["min_value"], r["max_value"], json.loads(r["examples"] or "[]"),
                _text(r["computed_at"]))


def _add_counts(query: QueryFn, tables: list[Table], notes: list[str]) -> None:
    """Row counts of the tables without a profile, in one query."""
    if not tables:
        return
    union = " UNION ALL ".join(f"SELECT '{t.name}' AS t, COUNT(*) AS n FROM {t.name}"
                               for t in tables)
    by_name = {t.name: t for t in tables}
    for r in _optional(query, union, notes):
        by_name[r["t"]].rows = r["n"]


def _optional(query: QueryFn, adql: str, notes: list[str]) -> list[dict[str, Any]]:
    """Rows of a query whose tables an older catalogue may lack: a note instead of an error."""
    try:
        return rows(query, adql)
    except MirrorError as exc:
        notes.append(f"{exc.message} (run `mirror init` to add the schema catalogue's tables)")
        return []


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
