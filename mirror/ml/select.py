"""Which stored products an export reads: ADQL over `ivoa.obscore`, then the product queue.

The records come from the local ADQL layer (`Mirror.query`), so `--where` is the same language
as `mirror query`; the files come from the catalogue's product queue (path, sha256: the ADQL
table `mirror.products`, so an export runs beside a daemon that holds the catalogue) and are
resolved through the store, which refuses any path that would leave it. A selected record whose
product is not stored is kept, with the reason, for the rejects table: nothing is dropped
silently.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Protocol

import pyarrow as pa

from mirror.catalogue.engine import Catalogue
from mirror.config import Config
from mirror.errors import ExportError, StoreError
from mirror.query import QueryResult
from mirror.store.files import Store

ALL_ROWS = 2 ** 40  # an export wants every selected row, not the interactive cap
LOOKUP_BATCH = 500  # product IDs per ADQL IN list
IDENTITY = ("dp_id", "obs_id", "last_modified", "last_mod_date")  # kept when a source has them
DEFAULT_WHERE = "dataproduct_type = 'spectrum'"  # what `mirror export spectra` reads
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Mirrored(Protocol):
    """What the exports need of a `mirror.Mirror`: its config, ADQL and the catalogue."""

    config: Config

    def query(self, adql: str, *, maxrec: int | None = None,
              timeout: float | None = None) -> QueryResult: ...

    def catalogue(self, *, write: bool = True) -> Catalogue: ...


@dataclass(frozen=True)
class Item:
    """One selected record: its file in the store, or the reason it has none."""

    row: int
    did: str
    source: str
    path: Path | None
    sha256: str | None
    reason: str | None = None
    modified: str | None = None  # the product's HTTP Last-Modified when it was fetched


@dataclass
class Selection:
    """The selected records in a stable order (`table`) and their files (`items`)."""

    table: pa.Table
    items: list[Item]


def obscore_columns(mirror: Mirrored) -> list[str]:
    """The columns `ivoa.obscore` has here (from the local TAP_SCHEMA)."""
    result = mirror.query("SELECT column_name FROM TAP_SCHEMA.columns "
                          "WHERE table_name = 'ivoa.obscore'", maxrec=ALL_ROWS)
    return [str(c) for c in result.arrow.column("column_name").to_pylist()]


def wanted_columns(mirror: Mirrored, asked: Sequence[str], *, extra: Sequence[str] = ()
                   ) -> list[str]:
    """The DID, source, identity columns present, `extra` and the user's columns, once each."""
    have = {c.lower(): c for c in obscore_columns(mirror)}
    for name in asked:
        if not _NAME.match(name):
            raise ExportError(f"{name!r} is not a column name", "e.g. --columns snr,s_ra,s_dec")
        if name.lower() not in have:
            raise ExportError(f"ivoa.obscore has no column {name!r}",
                              "`mirror query \"SELECT column_name FROM TAP_SCHEMA.columns "
                              "WHERE table_name = 'ivoa.obscore'\"` lists them")
    ids = {s.id_column for s in mirror.config.sources}
    base = ["obs_publisher_did", "mirror_source", *sorted(ids), *IDENTITY, *extra, *asked]
    out: list[str] = []
    for name in base:
        real = have.get(name.lower())
        if real is not None and real not in out:
            out.append(real)
    return out


def select(mirror: Mirrored, where: str, columns: Sequence[str]) -> Selection:
    """The records `where` selects in ivoa.obscore, ordered by DID and source, with files."""
    cond = f"WHERE {where}" if where.strip() else ""
    result = mirror.query(f"SELECT {', '.join(columns)} FROM ivoa.obscore {cond} "
                          "ORDER BY obs_publisher_did, mirror_source", maxrec=ALL_ROWS)
    if result.overflow:  # cannot happen below 2**40 rows; never export a cut selection
        raise ExportError("the selection was cut by maxrec", "narrow --where")
    table = result.arrow
    return Selection(table, locate(mirror, table))


def locate(mirror: Mirrored, table: pa.Table) -> list[Item]:
    """Each selected record's stored file (path resolved in the store) or why it has none."""
    dids = table.column("obs_publisher_did").to_pylist()
    sources = table.column("mirror_source").to_pylist()
    ids_of = {s.name: s.id_column for s in mirror.config.sources}
    keys = [_product_id(table, i, ids_of.get(src, "obs_publisher_did"), did)
            for i, (did, src) in enumerate(zip(dids, sources, strict=True))]
    found: dict[str, dict[str, Any]] = {}
    for src in sorted(set(sources)):
        wanted = sorted({k for k, s in zip(keys, sources, strict=True) if s == src})
        found[src] = stored(mirror, src, wanted)
    store = Store(mirror.config.store_root)
    return [_item(i, did, src, found[src].get(key), store)
            for i, (did, src, key) in enumerate(zip(dids, sources, keys, strict=True))]


def stored(mirror: Mirrored, source: str, product_ids: Sequence[str]) -> dict[str, Any]:
    """The queue rows (state, path, sha256, last_modified) of these products, by ID, read
    through ADQL (`mirror.products`): an export also runs while a daemon holds the catalogue."""
    out: dict[str, Any] = {}
    for i in range(0, len(product_ids), LOOKUP_BATCH):
        ids = ", ".join(_adql_text(p) for p in product_ids[i:i + LOOKUP_BATCH])
        result = mirror.query(
            "SELECT product_id, state, path, sha256, last_modified FROM mirror.products "
            f"WHERE source = {_adql_text(source)} AND role = 'this' AND product_id IN ({ids})",
            maxrec=ALL_ROWS)
        for row in result.arrow.to_pylist():
            out[row["product_id"]] = SimpleNamespace(**row)
    return out


def _adql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _product_id(table: pa.Table, i: int, id_column: str, did: str) -> str:
    if id_column == "obs_publisher_did" or id_column not in table.column_names:
        return did
    return str(table.column(id_column)[i].as_py())


def _item(i: int, did: str, source: str, row: Any, store: Store) -> Item:
    if row is None:
        return Item(i, did, source, None, None, "not selected for fetching (fetch_where)")
    if row.state != "done" or not row.path:
        return Item(i, did, source, None, None, f"not stored (product state {row.state})")
    try:
        path = store.resolve(row.path)
    except StoreError as exc:
        return Item(i, did, source, None, None, exc.message)
    return Item(i, did, source, path, row.sha256, modified=row.last_modified)
