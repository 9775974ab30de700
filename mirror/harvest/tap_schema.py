"""Replicating a service's TAP_SCHEMA (via VOTable: exact text, newlines included)."""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np
from astropy.table import Table

from mirror.errors import MirrorError
from mirror.harvest import plan
from mirror.harvest.tap import TapClient

log = logging.getLogger("mirror")
TAP_SCHEMA_TABLES = ("schemas", "tables", "columns", "keys", "key_columns")


# keyset per table: (first key column or None, last key column)
KEYS = {"schemas": (None, "schema_name"), "tables": (None, "table_name"),
        "columns": ("table_name", "column_name"), "keys": (None, "key_id"),
        "key_columns": ("key_id", "from_column")}


def replicate_tap_schema(client: TapClient, page: int, *,
                         cancel: threading.Event | None = None) -> dict[str, list[dict[str, Any]]]:
    """Every row of the five TAP_SCHEMA tables, paged past the service's row limit; a table
    the service lacks comes back empty. Once `cancel` is set it stops asking (the harvest that
    wanted the result is stopping and will not use it)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for name in TAP_SCHEMA_TABLES:
        if cancel is not None and cancel.is_set():
            break
        try:
            out[name] = _read(client, f"TAP_SCHEMA.{name}", KEYS[name], page, cancel)
        except MirrorError as exc:
            log.warning("could not read TAP_SCHEMA.%s of %s: %s", name, client.url, exc.message)
            out[name] = []
    return out


def _read(client: TapClient, table: str, key: tuple[str | None, str],
          page: int, cancel: threading.Event | None = None) -> list[dict[str, Any]]:
    names = [c.name for c in client.columns(table)]
    first, last = key
    rows: list[dict[str, Any]] = []
    start: plan.Key | None = None
    while cancel is None or not cancel.is_set():
        query = plan.page_query(table, names, "", first, last, start, page)
        batch = table_rows(client.table(query, maxrec=page))
        if not batch:
            return rows
        rows.extend(batch)
        tail = batch[-1]
        start = plan.Key(tail.get(first.lower()) if first else None, tail[last.lower()])
    return rows


def table_rows(table: Table) -> list[dict[str, Any]]:
    """Astropy rows as plain dicts, masked values as None, names lower-cased."""
    names = table.colnames
    rows = []
    for row in table:
        rows.append({n.lower(): _plain(row[n]) for n in names})
    return rows


def _plain(value: Any) -> Any:
    if value is np.ma.masked or (isinstance(value, np.ma.core.MaskedConstant)):
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    return value
