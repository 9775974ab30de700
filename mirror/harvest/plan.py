"""Pure ADQL builders for harvesting: keyset pages, window counts, ID passes.

Paging is keyset paging on (watermark, id): each page asks for the rows strictly after the last
key it has seen, ordered by that key, with `TOP` no larger than the service's limit. Any prefix
of such a page is a valid page, so a service that silently truncates (MAXREC, a hard limit,
DaCHS' m+1 quirk) cannot make rows go missing: the next page starts where this one stopped.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from mirror.adql.checks import RESERVED as ADQL_RESERVED

_REGULAR = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
# ADQL 2.1 reserved words (one list, the translator's); FILTER is reserved in SQL:2003 and
# by some services
RESERVED = ADQL_RESERVED | {"filter"}


@dataclass(frozen=True)
class Key:
    """A position in the (watermark, id) order; watermark is None for ID-only paging."""

    watermark: str | float | None
    id: str


def ident(name: str) -> str:
    """An ADQL identifier, delimited when it is not regular or is a reserved word."""
    if _REGULAR.match(name) and name.lower() not in RESERVED:
        return name
    return '"' + name.replace('"', '""') + '"'


def literal(value: str | float | int) -> str:
    """An ADQL literal; strings are quoted with '' escaping, numbers written exactly."""
    if isinstance(value, bool):
        raise TypeError("booleans have no ADQL literal")
    if isinstance(value, (int, float)):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def after(key: Key | None, watermark: str | None, id_column: str) -> str | None:
    """Condition for rows strictly after `key` in (watermark, id) order."""
    if key is None:
        return None
    idc = ident(id_column)
    if watermark is None or key.watermark is None:
        return f"{idc} > {literal(key.id)}"
    wm, w = ident(watermark), literal(key.watermark)
    return f"({wm} > {w} OR ({wm} = {w} AND {idc} > {literal(key.id)}))"


def at_or_before(key: Key, watermark: str | None, id_column: str) -> str:
    """Condition for rows at or before `key` in (watermark, id) order."""
    idc = ident(id_column)
    if watermark is None or key.watermark is None:
        return f"{idc} <= {literal(key.id)}"
    wm, w = ident(watermark), literal(key.watermark)
    return f"({wm} < {w} OR ({wm} = {w} AND {idc} <= {literal(key.id)}))"


def _where(*conditions: str | None) -> str:
    parts = [f"({c})" for c in conditions if c]
    return f" WHERE {' AND '.join(parts)}" if parts else ""


def page_query(table: str, columns: Sequence[str], where: str, watermark: str | None,
               id_column: str, start: Key | None, top: int) -> str:
    """The next page of rows after `start`, in (watermark, id) order."""
    order = [ident(c) for c in (watermark, id_column) if c]
    cols = ", ".join(ident(c) for c in columns)
    return (f"SELECT TOP {int(top)} {cols} FROM {table}"
            f"{_where(where, after(start, watermark, id_column))} ORDER BY {', '.join(order)}")


def window_count_query(table: str, where: str, watermark: str | None, id_column: str,
                       lower: Key | None, upper: Key) -> str:
    """The service's own count of the rows in the window (lower, upper]."""
    window = (after(lower, watermark, id_column), at_or_before(upper, watermark, id_column))
    return f"SELECT COUNT(*) AS n FROM {table}{_where(where, *window)}"


def count_query(table: str, where: str) -> str:
    return f"SELECT COUNT(*) AS n FROM {table}{_where(where)}"


def ids_query(table: str, where: str, id_column: str, start: str | None, top: int) -> str:
    """A page of IDs only, for finding withdrawn and missing records."""
    idc = ident(id_column)
    cond = f"{idc} > {literal(start)}" if start is not None else None
    return f"SELECT TOP {int(top)} {idc} FROM {table}{_where(where, cond)} ORDER BY {idc}"


def rows_by_id_query(table: str, columns: Sequence[str], where: str, id_column: str,
                     ids: Sequence[str]) -> str:
    """Whole rows for a batch of IDs (repairing records the keyset pass could not see)."""
    cols = ", ".join(ident(c) for c in columns)
    in_list = ", ".join(literal(i) for i in ids)
    return f"SELECT {cols} FROM {table}{_where(where, f'{ident(id_column)} IN ({in_list})')}"


def metadata_query(table: str) -> str:
    """No rows, all columns: the VOTable header describes every column the service publishes."""
    return f"SELECT TOP 0 * FROM {table}"
