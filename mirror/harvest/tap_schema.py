"""Replicating a service's TAP_SCHEMA (via VOTable: exact text, newlines included)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from astropy.table import Table

from mirror.errors import MirrorError
from mirror.harvest.tap import TapClient

log = logging.getLogger("mirror")
TAP_SCHEMA_TABLES = ("schemas", "tables", "columns", "keys", "key_columns")


def replicate_tap_schema(client: TapClient) -> dict[str, list[dict[str, Any]]]:
    """Every row of the five TAP_SCHEMA tables; a table the service lacks comes back empty."""
    out: dict[str, list[dict[str, Any]]] = {}
    for name in TAP_SCHEMA_TABLES:
        try:
            table = client.table(f"SELECT * FROM TAP_SCHEMA.{name}", maxrec=10_000_000)
        except MirrorError as exc:
            log.warning("could not read TAP_SCHEMA.%s of %s: %s", name, client.url, exc.message)
            out[name] = []
            continue
        out[name] = table_rows(table)
    return out


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
