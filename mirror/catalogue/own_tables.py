"""The mirror's own tables as ADQL sees them: schema `mirror` (products, runs, profiles, replicas).

They are views in the local schema `mirror_meta` (a DuckDB schema cannot be called `mirror`: that
is the catalogue file's own name, and `mirror.x` would be ambiguous), described row by row in the
local TAP_SCHEMA so that `SELECT * FROM mirror.products` works and documents itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

SCHEMA = "mirror"          # the ADQL schema name
LOCAL_SCHEMA = "mirror_meta"  # the DuckDB schema holding the views
SCHEMA_DESCRIPTION = ("the mirror's own tables: sources, sync runs, products and their state, "
                      "data profiles, and each service's TAP_SCHEMA and examples as replicated")
TIMESTAMP = ("char", "*", "timestamp")


@dataclass(frozen=True)
class Col:
    """One column of an own table: its ADQL description and the SQL that computes it."""

    name: str
    datatype: str
    description: str
    unit: str | None = None
    ucd: str | None = None
    expr: str | None = None  # default: the column of the same name

    def typed(self) -> tuple[str, str | None, str | None]:
        if self.datatype == "timestamp":
            return TIMESTAMP
        return self.datatype, "*" if self.datatype == "char" else None, None


@dataclass(frozen=True)
class OwnTable:
    name: str            # ADQL name without schema
    source: str          # FROM clause over the catalogue's tables
    description: str
    columns: tuple[Col, ...]


def _c(name: str, dtype: str, text: str, **kw: str) -> Col:
    return Col(name, dtype, text, **kw)


_SRC = _c("source", "char", "the [[source]] name the row belongs to", ucd="meta.id")
_REPLICA = "replica of the service's TAP_SCHEMA.{}: {}"

TABLES: tuple[OwnTable, ...] = (
    OwnTable("sources", "main.sources", "one row per synced source, with its incremental cursor", (
        _c("name", "char", "the [[source]] name", ucd="meta.id;meta.main"),
        _c("url", "char", "the TAP service's base URL", ucd="meta.ref.url"),
        _c("table_name", "char", "the ObsCore table mirrored, as the service names it"),
        _c("id_column", "char", "the column identifying a record (keyset paging key)"),
        _c("watermark_column", "char", "the modification-time column used for incremental "
           "syncs; NULL: every sync is a full pass with row hashes"),
        _c("cursor_watermark", "char", "the last watermark value committed"),
        _c("last_sync_at", "timestamp", "when the last sync of this source ended (UTC)",
           ucd="time.processing"))),
    OwnTable("runs", "main.sync_runs", "history of sync runs: counts, completeness proof, errors", (
        _c("run_id", "long", "the run's number", ucd="meta.id;meta.main"),
        _SRC,
        _c("started_at", "timestamp", "when the run started (UTC)", ucd="time.start"),
        _c("ended_at", "timestamp", "when the run ended (UTC); NULL while it runs",
           ucd="time.end"),
        _c("status", "char", "running, ok, failed or interrupted", ucd="meta.code.status"),
        _c("kind", "char", "incremental or full pass"),
        _c("rows_new", "long", "records the run added", ucd="meta.number"),
        _c("rows_changed", "long", "records the run rewrote because they changed upstream",
           ucd="meta.number"),
        _c("rows_unchanged", "long", "records compared and found unchanged", ucd="meta.number"),
        _c("rows_withdrawn", "long", "records found gone upstream and marked withdrawn",
           ucd="meta.number"),
        _c("rows_repaired", "long", "records missing locally, fetched by ID", ucd="meta.number"),
        _c("windows", "int", "pages committed", ucd="meta.number"),
        _c("upstream_count", "long", "the service's own COUNT(*) at the end of the run",
           ucd="meta.number"),
        _c("local_count", "long", "the mirror's count of current rows at the end of the run",
           ucd="meta.number"),
        _c("proof_ok", "boolean", "the counts agree window by window and in total",
           expr="proof_ok"),
        _c("errors", "char", "the run's errors, one per line"))),
    OwnTable("products", "main.products",
             "the data products selected for fetching and their state in the store", (
        _SRC,
        _c("product_id", "char", "the record's publisher DID", ucd="meta.ref.ivoid"),
        _c("role", "char", "#this for the product, else the DataLink semantics of an "
           "ancillary file"),
        _c("state", "char", "pending, done, failed, embargoed or withdrawn",
           ucd="meta.code.status"),
        _c("access_url", "char", "the URL as published (access_url)", ucd="meta.ref.url"),
        _c("access_format", "char", "the published MIME type", ucd="meta.code.mime"),
        _c("url", "char", "the URL fetched (after DataLink resolution)", ucd="meta.ref.url"),
        _c("path", "char", "the file's path in the store, relative to [store] root",
           ucd="meta.file"),
        _c("estimated_size", "long", "the published access_estsize", unit="kbyte"),
        _c("size", "long", "bytes stored", unit="byte", ucd="phys.size;meta.file"),
        _c("sha256", "char", "SHA-256 of the stored file", ucd="meta.checksum"),
        _c("content_type", "char", "Content-Type the server sent", ucd="meta.code.mime"),
        _c("last_modified", "char", "Last-Modified or ETag the server sent (resume validator)"),
        _c("attempts", "int", "download attempts so far", ucd="meta.number"),
        _c("last_error", "char", "why the last attempt failed"),
        _c("embargo_until", "timestamp", "retry after this date (obs_release_date)",
           ucd="time.release"),
        _c("selected_at", "timestamp", "when the product was selected (UTC)"),
        _c("updated_at", "timestamp", "when the state last changed (UTC)"),
        _c("fetched_at", "timestamp", "when the file entered the store (UTC)"))),
    OwnTable("column_profiles", "main.column_profiles",
             "data profile of every column of the mirrored tables, computed after each sync", (
        _c("table_name", "char", "the table, as ADQL names it", ucd="meta.id;meta.table"),
        _c("column_name", "char", "the column", ucd="meta.id"),
        _c("local_type", "char", "the column's DuckDB type in the catalogue"),
        _c("row_count", "long", "rows in the table", ucd="meta.number"),
        _c("null_count", "long", "rows where the column is NULL", ucd="meta.number"),
        _c("null_fraction", "double", "null_count / row_count", ucd="arith.ratio"),
        _c("distinct_approx", "long", "approximate number of distinct values (HyperLogLog)",
           ucd="meta.number"),
        _c("min_value", "char", "the smallest value, as text", ucd="stat.min"),
        _c("max_value", "char", "the largest value, as text", ucd="stat.max"),
        _c("examples", "char", "a few distinct example values, a JSON list"),
        _c("computed_at", "timestamp", "when the profile was computed (UTC)"))),
    OwnTable("table_profiles", "main.table_profiles",
             "data profile of every mirrored table: rows, sky coverage, time range", (
        _c("table_name", "char", "the table, as ADQL names it", ucd="meta.id;meta.table"),
        _c("row_count", "long", "rows in the table", ucd="meta.number"),
        _c("column_count", "int", "columns profiled", ucd="meta.number"),
        _c("positions", "long", "rows with a position (s_ra, s_dec)", ucd="meta.number"),
        _c("moc", "char", "sky coverage of the positions: a MOC in its ASCII serialisation",
           ucd="pos.outline"),
        _c("moc_depth", "int", "the HEALPix depth (order) of the MOC"),
        _c("sky_fraction", "double", "share of the sky the MOC covers", ucd="arith.ratio"),
        _c("t_min_mjd", "double", "earliest t_min", unit="d", ucd="time.start;stat.min"),
        _c("t_max_mjd", "double", "latest t_max", unit="d", ucd="time.end;stat.max"),
        _c("t_min_iso", "char", "earliest t_min as ISO 8601 (UTC)", ucd="time.start;stat.min"),
        _c("t_max_iso", "char", "latest t_max as ISO 8601 (UTC)", ucd="time.end;stat.max"),
        _c("seconds", "double", "time the profile took to compute", unit="s"),
        _c("computed_at", "timestamp", "when the profile was computed (UTC)"))),
    OwnTable("tap_examples", "main.tap_examples",
             "each service's own example queries ({tap}/examples, DALI), replicated at sync", (
        _SRC,
        _c("seq", "int", "the example's order in the service's document"),
        _c("name", "char", "the example's title"),
        _c("description", "char", "what the example does, as the service explains it"),
        _c("query", "char", "the ADQL text"),
        _c("fetched_at", "timestamp", "when it was replicated (UTC)"))),
    OwnTable("tap_schemas", "main.tap_schemas", _REPLICA.format("schemas", "schemas"), (
        _SRC, _c("schema_name", "char", "schema name"), _c("utype", "char", "utype"),
        _c("description", "char", "the service's description"),
        _c("schema_index", "int", "recommended sort order"))),
    OwnTable("tap_tables", "main.tap_tables", _REPLICA.format("tables", "tables"), (
        _SRC, _c("schema_name", "char", "schema name"),
        _c("table_name", "char", "fully qualified table name"),
        _c("table_type", "char", "table or view"), _c("utype", "char", "utype"),
        _c("description", "char", "the service's description"),
        _c("table_index", "int", "recommended sort order"))),
    OwnTable("tap_columns", "main.tap_columns", _REPLICA.format("columns", "columns"), (
        _SRC, _c("table_name", "char", "the table"), _c("column_name", "char", "the column"),
        _c("datatype", "char", "ADQL/VOTable datatype"), _c("arraysize", "char", "arraysize"),
        _c("xtype", "char", "extended type"), _c("size", "int", "deprecated arraysize"),
        _c("description", "char", "the service's description"), _c("utype", "char", "utype"),
        _c("unit", "char", "VOUnit"), _c("ucd", "char", "UCD"),
        _c("indexed", "int", "1 if indexed"), _c("principal", "int", "1 if principal"),
        _c("std", "int", "1 if defined by a standard"),
        _c("column_index", "int", "recommended sort order"))),
    OwnTable("tap_keys", "main.tap_keys", _REPLICA.format("keys", "foreign keys"), (
        _SRC, _c("key_id", "char", "key identifier"), _c("from_table", "char", "from table"),
        _c("target_table", "char", "target table"), _c("utype", "char", "utype"),
        _c("description", "char", "the service's description"))),
    OwnTable("tap_key_columns", "main.tap_key_columns",
             _REPLICA.format("key_columns", "foreign key columns"), (
        _SRC, _c("key_id", "char", "key identifier"),
        _c("from_column", "char", "column in from_table"),
        _c("target_column", "char", "column in target_table"))),
    OwnTable("local_columns", "(SELECT * FROM mirror_meta._local_columns)",
             "each queryable column's type in the local DuckDB catalogue", (
        _c("table_name", "char", "the table, as ADQL names it", ucd="meta.id;meta.table"),
        _c("column_name", "char", "the column", ucd="meta.id"),
        _c("local_type", "char", "the DuckDB type"))),
)

# ADQL table -> (DuckDB schema, view), as mirror.query.tables.local_parts maps it, in SQL
_LOCAL_COLUMNS = f"""SELECT c.table_name, c.column_name, d.data_type AS local_type
  FROM "TAP_SCHEMA".columns c JOIN "TAP_SCHEMA".tables t USING (table_name)
  JOIN duckdb_columns() d ON d.database_name = current_database()
   AND lower(d.schema_name) = CASE WHEN lower(t.schema_name) IN ('ivoa', 'tap_schema')
         THEN lower(t.schema_name) WHEN lower(t.schema_name) = '{SCHEMA}' THEN '{LOCAL_SCHEMA}'
         ELSE 'source_obscore' END
   AND lower(d.table_name) = CASE WHEN lower(t.schema_name) IN ('ivoa', 'tap_schema', '{SCHEMA}')
         THEN lower(split_part(t.table_name, '.', 2)) ELSE lower(t.schema_name) END
   AND lower(d.column_name) = lower(CASE WHEN c.column_name LIKE '"%"'
         THEN replace(c.column_name[2:-2], '""', '"') ELSE c.column_name END)"""


def table_rows(start: int = 200) -> list[tuple[object, ...]]:
    """TAP_SCHEMA.tables rows: (schema, table, type, utype, description, index)."""
    return [(SCHEMA, f"{SCHEMA}.{t.name}", "view", None, t.description, start + i)
            for i, t in enumerate(TABLES)]


def column_rows() -> list[tuple[object, ...]]:
    """TAP_SCHEMA.columns rows, in its column order (table_name ... column_index)."""
    rows: list[tuple[object, ...]] = []
    for t in TABLES:
        for i, c in enumerate(t.columns):
            dtype, asize, xtype = c.typed()
            principal = int(i < 6)
            rows.append((f"{SCHEMA}.{t.name}", c.name, dtype, asize, xtype, None, c.description,
                         None, c.unit, c.ucd, 0, principal, 0, i))
    return rows


def create_views(conn: sa.Connection) -> None:
    """(Re)create the `mirror_meta` views (after the TAP_SCHEMA views: one reads them)."""
    conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {LOCAL_SCHEMA}")
    conn.exec_driver_sql(f"CREATE OR REPLACE VIEW {LOCAL_SCHEMA}._local_columns AS "
                         f"{_LOCAL_COLUMNS}")
    for t in TABLES:
        cols = ", ".join(f'{c.expr or _quoted(c.name)} AS {_quoted(c.name)}' for c in t.columns)
        conn.exec_driver_sql(f"CREATE OR REPLACE VIEW {LOCAL_SCHEMA}.{t.name} AS "
                             f"SELECT {cols} FROM {t.source}")


def _quoted(name: str) -> str:
    return '"' + name + '"'
