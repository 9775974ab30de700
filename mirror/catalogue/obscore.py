"""Each source's mirrored ObsCore rows: a table whose columns come from the service at run time.

Layout, as the ADQL layer sees it:

* `obscore_<source>`: every row ever harvested from the source, with four bookkeeping columns:
  `_row_hash` (change detection), `_withdrawn_at` (set when the record vanished upstream; rows
  are never deleted), `_run_id` and `_updated_at` (which sync wrote the row last).
* view `ivoa.obscore`: the union of all sources' current rows plus a `mirror_source` column:
  what the services show now, so the queries users send to the archives work unchanged.
* view `ivoa.obscore_withdrawn`: the withdrawn rows, with `withdrawn_at`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import pyarrow as pa
import sqlalchemy as sa

from mirror.catalogue.engine import raw, utcnow
from mirror.catalogue.models import source_columns
from mirror.catalogue.types import ColumnSpec, load_expression, local_type
from mirror.errors import SyncError

BOOKKEEPING = ("_row_hash", "_withdrawn_at", "_run_id", "_updated_at")
SOURCE_COLUMN = "mirror_source"


def q(name: str) -> str:
    """A DuckDB identifier, always quoted (service column names are not ours to trust)."""
    return '"' + name.replace('"', '""') + '"'


def data_table(source: str) -> str:
    return f"obscore_{source.lower()}"


@dataclass(frozen=True)
class PageCounts:
    """What applying one page did."""

    new: int = 0
    changed: int = 0
    unchanged: int = 0
    reappeared: int = 0

    def __add__(self, other: PageCounts) -> PageCounts:
        return PageCounts(self.new + other.new, self.changed + other.changed,
                          self.unchanged + other.unchanged, self.reappeared + other.reappeared)


def ensure_table(conn: sa.Connection, source: str, specs: Sequence[ColumnSpec]) -> None:
    """Create the source's table, or add the columns the service has started to publish."""
    table = data_table(source)
    existing = {r.column_name: r for r in conn.execute(
        sa.select(source_columns).where(source_columns.c.source == source))}
    if not existing:
        cols = ", ".join(f"{q(s.name)} {local_type(s)}" for s in specs)
        conn.exec_driver_sql(
            f"CREATE TABLE IF NOT EXISTS {table} ({cols}, _row_hash UBIGINT, "
            "_withdrawn_at TIMESTAMP, _run_id BIGINT, _updated_at TIMESTAMP)")
    now = utcnow()
    for pos, spec in enumerate(specs):
        old = existing.get(spec.name)
        if old is not None and old.local_type != local_type(spec):
            raise SyncError(
                f"source {source!r}: column {spec.name} changed type upstream "
                f"({old.local_type} -> {local_type(spec)})",
                f"rebuild the source: `mirror sync {source} --full --rebuild`")
        if old is None and existing:
            conn.exec_driver_sql(
                f"ALTER TABLE {table} ADD COLUMN {q(spec.name)} {local_type(spec)}")
        values = dict(position=pos, datatype=spec.datatype, arraysize=spec.arraysize,
                      xtype=spec.xtype, unit=spec.unit, ucd=spec.ucd, utype=spec.utype,
                      description=spec.description, null_value=spec.null_value,
                      local_type=local_type(spec))
        if old is None:
            conn.execute(source_columns.insert().values(source=source, column_name=spec.name,
                                                        added_at=now, **values))
        else:
            conn.execute(source_columns.update().where(
                (source_columns.c.source == source)
                & (source_columns.c.column_name == spec.name)).values(**values))
    rebuild_views(conn)


def stage_page(conn: sa.Connection, specs: Sequence[ColumnSpec], page: pa.Table) -> int:
    """Load a parsed CSV page into the temp table `_page`, typed, with a row hash."""
    duck = raw(conn)
    duck.register("_arrow_page", page)
    try:
        exprs = ", ".join(f"{load_expression(s, q(s.name))} AS {q(s.name)}" for s in specs)
        hashed = ", ".join(q(s.name) for s in specs)
        conn.exec_driver_sql(
            f"CREATE OR REPLACE TEMP TABLE _page AS SELECT *, hash({hashed}) AS _row_hash "
            f"FROM (SELECT {exprs} FROM _arrow_page)")
    finally:
        duck.unregister("_arrow_page")
    return page.num_rows


def apply_page(conn: sa.Connection, source: str, specs: Sequence[ColumnSpec], id_column: str,
               run_id: int, *, dry_run: bool = False) -> PageCounts:
    """Upsert `_page` by ID, touching only new, changed and re-appeared rows."""
    table, idc = data_table(source), q(id_column)
    conn.exec_driver_sql(
        f"CREATE OR REPLACE TEMP TABLE _page_class AS SELECT p.{idc} AS id, CASE "
        f"WHEN t.{idc} IS NULL THEN 'new' WHEN t._row_hash IS DISTINCT FROM p._row_hash "
        "THEN 'changed' WHEN t._withdrawn_at IS NOT NULL THEN 'reappeared' ELSE 'unchanged' END "
        f"AS cls FROM _page p LEFT JOIN {table} t ON t.{idc} = p.{idc}")
    counts = dict(conn.exec_driver_sql(
        "SELECT cls, count(*) FROM _page_class GROUP BY cls").fetchall())
    result = PageCounts(counts.get("new", 0), counts.get("changed", 0),
                        counts.get("unchanged", 0), counts.get("reappeared", 0))
    if dry_run or result.new + result.changed + result.reappeared == 0:
        return result
    if result.changed + result.reappeared:
        conn.exec_driver_sql(
            f"DELETE FROM {table} WHERE {idc} IN "
            "(SELECT id FROM _page_class WHERE cls IN ('changed', 'reappeared'))")
    cols = ", ".join(q(s.name) for s in specs)
    conn.exec_driver_sql(
        f"INSERT INTO {table} ({cols}, _row_hash, _withdrawn_at, _run_id, _updated_at) "
        f"SELECT {', '.join('p.' + q(s.name) for s in specs)}, p._row_hash, NULL, ?, ? "
        f"FROM _page p JOIN _page_class c ON c.id = p.{idc} WHERE c.cls <> 'unchanged'",
        (run_id, utcnow()))
    return result


def append_upstream_ids(conn: sa.Connection, ids: pa.Array) -> None:
    """Add a page of the upstream's IDs to the temp table `_upstream_ids`."""
    duck = raw(conn)
    duck.register("_arrow_ids", pa.table({"id": ids}))
    try:
        conn.exec_driver_sql("INSERT INTO _upstream_ids SELECT id FROM _arrow_ids")
    finally:
        duck.unregister("_arrow_ids")


def missing_ids(conn: sa.Connection, source: str, id_column: str) -> list[str]:
    """IDs the upstream has that are not current here (missed, or withdrawn and back)."""
    table, idc = data_table(source), q(id_column)
    return [r[0] for r in conn.exec_driver_sql(
        f"SELECT u.id FROM _upstream_ids u LEFT JOIN {table} t ON t.{idc} = u.id "
        f"WHERE t.{idc} IS NULL OR t._withdrawn_at IS NOT NULL ORDER BY u.id")]


def vanished_ids(conn: sa.Connection, source: str, id_column: str) -> list[str]:
    """Current IDs here that the upstream no longer has."""
    table, idc = data_table(source), q(id_column)
    return [r[0] for r in conn.exec_driver_sql(
        f"SELECT t.{idc} FROM {table} t ANTI JOIN _upstream_ids u ON u.id = t.{idc} "
        f"WHERE t._withdrawn_at IS NULL ORDER BY 1")]


def withdraw(conn: sa.Connection, source: str, id_column: str, ids: Sequence[str],
             when: datetime) -> int:
    """Mark records withdrawn (never delete them)."""
    if not ids:
        return 0
    raw(conn).register("_arrow_gone", pa.table({"id": pa.array(ids, pa.string())}))
    try:
        conn.exec_driver_sql(
            f"UPDATE {data_table(source)} SET _withdrawn_at = ? WHERE _withdrawn_at IS NULL "
            f"AND {q(id_column)} IN (SELECT id FROM _arrow_gone)", (when,))
    finally:
        raw(conn).unregister("_arrow_gone")
    return len(ids)


def active_count(conn: sa.Connection, source: str) -> int:
    return int(conn.exec_driver_sql(
        f"SELECT count(*) FROM {data_table(source)} WHERE _withdrawn_at IS NULL").scalar_one())


def rebuild_views(conn: sa.Connection) -> None:
    """(Re)create `ivoa.obscore` and `ivoa.obscore_withdrawn` over every source's table."""
    rows = conn.execute(sa.select(source_columns.c.source, source_columns.c.column_name)
                        .order_by(source_columns.c.source, source_columns.c.position)).all()
    by_source: dict[str, list[str]] = {}
    for src, col in rows:
        by_source.setdefault(src, []).append(col)
    if not by_source:
        return
    current, gone = [], []
    for src, cols in by_source.items():
        tag = "" if SOURCE_COLUMN in cols else f", '{src}' AS {SOURCE_COLUMN}"
        body = f"{', '.join(q(c) for c in cols)}{tag}"
        current.append(f"SELECT {body} FROM {data_table(src)} WHERE _withdrawn_at IS NULL")
        gone.append(f"SELECT {body}, _withdrawn_at AS withdrawn_at FROM {data_table(src)} "
                    "WHERE _withdrawn_at IS NOT NULL")
    conn.exec_driver_sql("CREATE SCHEMA IF NOT EXISTS ivoa")
    conn.exec_driver_sql("CREATE OR REPLACE VIEW ivoa.obscore AS "
                         + " UNION ALL BY NAME ".join(current))
    conn.exec_driver_sql("CREATE OR REPLACE VIEW ivoa.obscore_withdrawn AS "
                         + " UNION ALL BY NAME ".join(gone))
