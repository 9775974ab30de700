"""Each source's mirrored ObsCore rows: a table whose columns come from the service at run time.

Layout, as the ADQL layer sees it:

* `obscore_<source>`: every row ever harvested from the source, with four bookkeeping columns:
  `_row_hash` (change detection), `_withdrawn_at` (set when the record vanished upstream; rows
  are never deleted), `_run_id` and `_updated_at` (which sync wrote the row last), and the
  internal helper `_hpx`: the HEALPix NESTED index at depth 29 of (s_ra, s_dec), computed on
  ingest. Rows are kept ordered by `_hpx` (`recluster`), so a cone's HEALPix ranges let DuckDB
  skip whole row groups by their min/max.
* view `ivoa.obscore`: the union of all sources' current rows plus a `mirror_source` column:
  what the services show now, so the queries users send to the archives work unchanged.
* view `ivoa.obscore_withdrawn`: the withdrawn rows, with `withdrawn_at`.
* view `source_obscore.<source>`: one source's current rows (ADQL `<source>.obscore`).
* schema `TAP_SCHEMA`: views describing all of these (`mirror.catalogue.tap_schema_views`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from mirror.catalogue import tap_schema_views
from mirror.catalogue.engine import arrow_view, raw, utcnow
from mirror.catalogue.models import source_columns
from mirror.catalogue.types import ColumnSpec, load_expression, local_type
from mirror.errors import SyncError

BOOKKEEPING = ("_row_hash", "_withdrawn_at", "_run_id", "_updated_at")
SOURCE_COLUMN = "mirror_source"
SOURCE_SCHEMA = "source_obscore"  # local views of one source each, ADQL `<source>.obscore`
HPX_COLUMN, HPX_DEPTH = "_hpx", 29  # must equal mirror.adql's (a test checks)
# re-cluster after a sync that wrote more than this many rows, or this share of the table
RECLUSTER_ROWS, RECLUSTER_SHARE = 100_000, 0.10
# Below this a table is a handful of DuckDB row groups (122,880 rows each): a cone scans it in
# milliseconds anyway, and a rewrite would only cost time and memory.
RECLUSTER_MIN_TABLE = 500_000


def q(name: str) -> str:
    """A DuckDB identifier, always quoted (service column names are not ours to trust)."""
    return '"' + name.replace('"', '""') + '"'


def data_table(source: str) -> str:
    return f"obscore_{source.lower()}"


def source_view(source: str) -> str:
    """The local view of one source's current rows (ADQL name `<source>.obscore`)."""
    return f"{SOURCE_SCHEMA}.{q(source.lower())}"


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
            "_withdrawn_at TIMESTAMP, _run_id BIGINT, _updated_at TIMESTAMP, "
            f"{HPX_COLUMN} BIGINT)")
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


def healpix_index(ra: pa.Array | pa.ChunkedArray, dec: pa.Array | pa.ChunkedArray,
                  null_values: tuple[str | None, str | None] = (None, None)) -> pa.Array:
    """HEALPix NESTED index at depth 29 of each (ra, dec) in degrees, vectorised; NULL where
    either is missing, a null sentinel, or not a position on the sphere."""
    ra_deg, dec_deg = (_degrees(a, null) for a, null in zip((ra, dec), null_values, strict=True))
    valid = np.isfinite(ra_deg) & np.isfinite(dec_deg) & (np.abs(dec_deg) <= 90)
    out = np.zeros(len(ra_deg), dtype=np.int64)
    if valid.any():
        # imported here: astropy.coordinates costs 0.2 s of every command's start-up
        import astropy.units as u
        from astropy.coordinates import Latitude, Longitude
        from cdshealpix.nested import lonlat_to_healpix

        out[valid] = lonlat_to_healpix(Longitude(ra_deg[valid], u.deg),
                                       Latitude(dec_deg[valid], u.deg), HPX_DEPTH).astype(np.int64)
    return pa.array(out, pa.int64(), mask=~valid)


def _degrees(values: pa.Array | pa.ChunkedArray, null_value: str | None) -> np.ndarray:
    try:
        floats = pc.cast(values, pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # text that is not a number
        return np.full(len(values), np.nan)
    out = np.array(pc.fill_null(floats, np.nan).to_numpy(zero_copy_only=False), dtype=float)
    try:
        sentinel = float(null_value) if null_value else None
    except ValueError:  # a text sentinel cannot equal a number
        sentinel = None
    if sentinel is not None:
        out[out == sentinel] = np.nan
    return out


def _position_columns(specs: Sequence[ColumnSpec]) -> tuple[ColumnSpec, ColumnSpec] | None:
    by_lower = {s.name.lower(): s for s in specs}
    ra, dec = by_lower.get("s_ra"), by_lower.get("s_dec")
    return (ra, dec) if ra is not None and dec is not None else None


def page_healpix(specs: Sequence[ColumnSpec], page: pa.Table) -> pa.Array:
    """`_hpx` of every row of a parsed page (all NULL when the service has no s_ra/s_dec)."""
    pos = _position_columns(specs)
    if pos is None:
        return pa.nulls(page.num_rows, pa.int64())
    ra, dec = pos
    return healpix_index(page.column(ra.name), page.column(dec.name),
                         (ra.null_value, dec.null_value))


def stage_page(conn: sa.Connection, specs: Sequence[ColumnSpec], page: pa.Table) -> int:
    """Load a parsed CSV page into the temp table `_page`, typed, with a row hash and `_hpx`
    (computed here, on the Arrow page, so the catalogue never needs a HEALPix function)."""
    exprs = ", ".join(f"{load_expression(s, q(s.name))} AS {q(s.name)}" for s in specs)
    hashed = ", ".join(q(s.name) for s in specs)
    with arrow_view(conn, "_arrow_page",
                    page.append_column(HPX_COLUMN, page_healpix(specs, page))):
        conn.exec_driver_sql(
            f"CREATE OR REPLACE TEMP TABLE _page AS SELECT *, hash({hashed}) AS _row_hash "
            f"FROM (SELECT {exprs}, {HPX_COLUMN} FROM _arrow_page)")
    return page.num_rows


def append_page(conn: sa.Connection, source: str, specs: Sequence[ColumnSpec], page: pa.Table,
                run_id: int) -> int:
    """Insert a parsed page as new rows, straight from Arrow (the first sync of a source: no
    row can exist yet, so nothing needs comparing)."""
    cols = ", ".join(q(s.name) for s in specs)
    exprs = ", ".join(f"{load_expression(s, q(s.name))} AS {q(s.name)}" for s in specs)
    with arrow_view(conn, "_arrow_page",
                    page.append_column(HPX_COLUMN, page_healpix(specs, page))):
        conn.exec_driver_sql(
            f"INSERT INTO {data_table(source)} ({cols}, {HPX_COLUMN}, _row_hash, _withdrawn_at, "
            f"_run_id, _updated_at) SELECT *, hash({cols}), NULL, ?, ? FROM "
            f"(SELECT {exprs}, {HPX_COLUMN} FROM _arrow_page)", (run_id, utcnow()))
    return page.num_rows


def total_count(conn: sa.Connection, source: str) -> int:
    return int(conn.exec_driver_sql(f"SELECT count(*) FROM {data_table(source)}").scalar_one())


def apply_page(conn: sa.Connection, source: str, specs: Sequence[ColumnSpec], id_column: str,
               run_id: int, *, dry_run: bool = False) -> PageCounts:
    """Upsert `_page` by ID, touching only new, changed and re-appeared rows."""
    table, idc = data_table(source), q(id_column)
    conn.exec_driver_sql(
        f"CREATE OR REPLACE TEMP TABLE _page_class AS SELECT p.{idc} AS id, CASE "
        f"WHEN t.{idc} IS NULL THEN 'new' WHEN t._row_hash IS DISTINCT FROM p._row_hash "
        "THEN 'changed' WHEN t._withdrawn_at IS NOT NULL THEN 'reappeared' ELSE 'unchanged' END "
        f"AS cls FROM _page p LEFT JOIN {table} t ON t.{idc} = p.{idc}")
    counts: dict[str, int] = dict(conn.exec_driver_sql(
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
        f"INSERT INTO {table} ({cols}, _row_hash, _withdrawn_at, _run_id, _updated_at, "
        f"{HPX_COLUMN}) SELECT {', '.join('p.' + q(s.name) for s in specs)}, p._row_hash, "
        f"NULL, ?, ?, p.{HPX_COLUMN} "
        f"FROM _page p JOIN _page_class c ON c.id = p.{idc} WHERE c.cls <> 'unchanged'",
        (run_id, utcnow()))
    return result


def append_upstream_ids(conn: sa.Connection, ids: pa.Array) -> None:
    """Add a page of the upstream's IDs to the temp table `_upstream_ids`."""
    with arrow_view(conn, "_arrow_ids", pa.table({"id": ids})):
        conn.exec_driver_sql("INSERT INTO _upstream_ids SELECT id FROM _arrow_ids")


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
    with arrow_view(conn, "_arrow_gone", pa.table({"id": pa.array(ids, pa.string())})):
        conn.exec_driver_sql(
            f"UPDATE {data_table(source)} SET _withdrawn_at = ? WHERE _withdrawn_at IS NULL "
            f"AND {q(id_column)} IN (SELECT id FROM _arrow_gone)", (when,))
    return len(ids)


def active_count(conn: sa.Connection, source: str) -> int:
    return int(conn.exec_driver_sql(
        f"SELECT count(*) FROM {data_table(source)} WHERE _withdrawn_at IS NULL").scalar_one())


def rebuild_views(conn: sa.Connection) -> None:
    """(Re)create `ivoa.obscore`, `ivoa.obscore_withdrawn`, the per-source views and the local
    TAP_SCHEMA over every source's table (adding `_hpx` to tables from before it existed)."""
    rows = conn.execute(sa.select(source_columns.c.source, source_columns.c.column_name)
                        .order_by(source_columns.c.source, source_columns.c.position)).all()
    by_source: dict[str, list[str]] = {}
    for src, col in rows:
        by_source.setdefault(src, []).append(col)
    current, gone = [], []
    if by_source:
        conn.exec_driver_sql("CREATE SCHEMA IF NOT EXISTS ivoa")
        conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {SOURCE_SCHEMA}")
    for src, cols in by_source.items():
        if _add_healpix(conn, src, cols):
            _rewrite_clustered(conn, src)
        own = ", ".join(q(c) for c in cols)
        tag = "" if SOURCE_COLUMN in cols else f", '{src}' AS {SOURCE_COLUMN}"
        body = f"{own}{tag}, {HPX_COLUMN}"
        current.append(f"SELECT {body} FROM {data_table(src)} WHERE _withdrawn_at IS NULL")
        gone.append(f"SELECT {body}, _withdrawn_at AS withdrawn_at FROM {data_table(src)} "
                    "WHERE _withdrawn_at IS NOT NULL")
        conn.exec_driver_sql(f"CREATE OR REPLACE VIEW {source_view(src)} AS SELECT {own}, "
                             f"{HPX_COLUMN} FROM {data_table(src)} WHERE _withdrawn_at IS NULL")
    if by_source:
        conn.exec_driver_sql("CREATE OR REPLACE VIEW ivoa.obscore AS "
                             + " UNION ALL BY NAME ".join(current))
        conn.exec_driver_sql("CREATE OR REPLACE VIEW ivoa.obscore_withdrawn AS "
                             + " UNION ALL BY NAME ".join(gone))
    tap_schema_views.refresh(conn)


def _add_healpix(conn: sa.Connection, source: str, columns: Sequence[str]) -> bool:
    """Add and back-fill `_hpx` on a table created before it existed; True if it did."""
    table = data_table(source)
    have = {r[0].lower() for r in conn.exec_driver_sql(
        "SELECT column_name FROM duckdb_columns() WHERE schema_name = 'main' "
        "AND table_name = ?", (table,))}
    if not have or HPX_COLUMN in have:
        return False
    conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {HPX_COLUMN} BIGINT")
    by_lower = {c.lower(): c for c in columns}
    if "s_ra" in by_lower and "s_dec" in by_lower:
        pos = raw(conn).sql(f"SELECT rowid AS rid, {q(by_lower['s_ra'])} AS ra, "
                            f"{q(by_lower['s_dec'])} AS dec FROM {table}").to_arrow_table()
        hpx = pa.table({"rid": pos["rid"], "hpx": healpix_index(pos["ra"], pos["dec"])})
        with arrow_view(conn, "_arrow_hpx", hpx):
            conn.exec_driver_sql(f"UPDATE {table} SET {HPX_COLUMN} = h.hpx FROM _arrow_hpx h "
                                 f"WHERE {table}.rowid = h.rid")
    return True


def needs_recluster(written: int, total: int) -> bool:
    """Whether a sync wrote enough rows (appended unordered) to be worth a clustered rewrite."""
    if written <= 0 or total < RECLUSTER_MIN_TABLE:
        return False
    return written > RECLUSTER_ROWS or written > RECLUSTER_SHARE * total


def recluster(conn: sa.Connection, source: str, written: int | None = None) -> bool:
    """Rewrite the source's table ordered by `_hpx` when `written` rows call for it (always when
    None); in the caller's transaction, so a crash mid-rewrite leaves the old table intact."""
    if written is not None:
        if written <= 0:
            return False
        total = int(conn.exec_driver_sql(
            f"SELECT count(*) FROM {data_table(source)}").scalar_one())
        if not needs_recluster(written, total):
            return False
    _rewrite_clustered(conn, source)
    rebuild_views(conn)
    return True


def _rewrite_clustered(conn: sa.Connection, source: str) -> None:
    # CREATE AS copies no index, and an index forbids the RENAME: keep their SQL, drop, recreate
    table = data_table(source)
    new = f"{table}__clustered"
    indexes = [(name, sql) for name, sql in conn.exec_driver_sql(
        "SELECT index_name, sql FROM duckdb_indexes() WHERE schema_name = 'main' "
        "AND table_name = ?", (table,)) if sql]
    for name, _ in indexes:
        conn.exec_driver_sql(f"DROP INDEX {q(name)}")
    conn.exec_driver_sql(f"DROP TABLE IF EXISTS {new}")
    conn.exec_driver_sql(f"CREATE TABLE {new} AS SELECT * FROM {table} "
                         f"ORDER BY {HPX_COLUMN} NULLS LAST")
    conn.exec_driver_sql(f"DROP TABLE {table}")
    conn.exec_driver_sql(f"ALTER TABLE {new} RENAME TO {table}")
    for _, sql in indexes:
        conn.exec_driver_sql(sql)
