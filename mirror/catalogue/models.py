"""The mirror's own tables (SQLAlchemy Core), owned by alembic revisions in `migrations/`.

Portable SQL only, so the operational tables can move to PostgreSQL when a mirror outgrows one
machine. The mirrored ObsCore rows are not here: their columns come from each service at run time
(see `mirror.catalogue.obscore`) and are recorded in `source_columns`.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

sources = sa.Table(
    "sources", metadata,
    sa.Column("name", sa.String, primary_key=True),
    sa.Column("url", sa.String, nullable=False),
    sa.Column("table_name", sa.String, nullable=False),
    sa.Column("data_table", sa.String, nullable=False),
    sa.Column("id_column", sa.String, nullable=False),
    sa.Column("watermark_column", sa.String),
    sa.Column("cursor_watermark", sa.String),
    sa.Column("cursor_id", sa.String),
    sa.Column("last_sync_at", sa.DateTime),
    comment="one row per configured TAP source, with its incremental cursor",
)

sync_runs = sa.Table(
    "sync_runs", metadata,
    sa.Column("run_id", sa.BigInteger, sa.Sequence("sync_run_ids"),
              server_default=sa.text("nextval('sync_run_ids')"), primary_key=True),
    sa.Column("source", sa.String, nullable=False),
    sa.Column("started_at", sa.DateTime, nullable=False),
    sa.Column("ended_at", sa.DateTime),
    sa.Column("status", sa.String, nullable=False),
    sa.Column("kind", sa.String, nullable=False),
    sa.Column("rows_new", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("rows_changed", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("rows_unchanged", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("rows_withdrawn", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("rows_repaired", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("windows", sa.Integer, nullable=False, server_default="0"),
    sa.Column("upstream_count", sa.BigInteger),
    sa.Column("local_count", sa.BigInteger),
    sa.Column("proof_ok", sa.Boolean),
    sa.Column("errors", sa.Text),
    sa.Column("pid", sa.Integer),
    comment="history of sync runs: counts, completeness proof and errors",
)

sync_windows = sa.Table(
    "sync_windows", metadata,
    sa.Column("run_id", sa.BigInteger, primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("lower_watermark", sa.String),
    sa.Column("lower_id", sa.String),
    sa.Column("upper_watermark", sa.String),
    sa.Column("upper_id", sa.String),
    sa.Column("rows_received", sa.BigInteger, nullable=False),
    sa.Column("upstream_count", sa.BigInteger),
    sa.Column("committed_at", sa.DateTime, nullable=False),
    comment="each committed page of a run: key range, rows received, the service's own count",
)

source_columns = sa.Table(
    "source_columns", metadata,
    sa.Column("source", sa.String, primary_key=True),
    sa.Column("column_name", sa.String, primary_key=True),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("datatype", sa.String),
    sa.Column("arraysize", sa.String),
    sa.Column("xtype", sa.String),
    sa.Column("unit", sa.String),
    sa.Column("ucd", sa.String),
    sa.Column("utype", sa.String),
    sa.Column("description", sa.Text),
    sa.Column("null_value", sa.String),
    sa.Column("local_type", sa.String, nullable=False),
    sa.Column("added_at", sa.DateTime, nullable=False),
    comment="the columns of each source's data table, as the service described them",
)


def _tap(name: str, *columns: sa.Column, comment: str) -> sa.Table:
    return sa.Table(name, metadata, sa.Column("source", sa.String, nullable=False), *columns,
                    comment=comment)


tap_schemas = _tap(
    "tap_schemas",
    sa.Column("schema_name", sa.String), sa.Column("utype", sa.String),
    sa.Column("description", sa.Text), sa.Column("schema_index", sa.Integer),
    comment="replica of each source's TAP_SCHEMA.schemas")
tap_tables = _tap(
    "tap_tables",
    sa.Column("schema_name", sa.String), sa.Column("table_name", sa.String),
    sa.Column("table_type", sa.String), sa.Column("utype", sa.String),
    sa.Column("description", sa.Text), sa.Column("table_index", sa.Integer),
    comment="replica of each source's TAP_SCHEMA.tables")
tap_columns = _tap(
    "tap_columns",
    sa.Column("table_name", sa.String), sa.Column("column_name", sa.String),
    sa.Column("datatype", sa.String), sa.Column("arraysize", sa.String),
    sa.Column("xtype", sa.String), sa.Column("size", sa.Integer),
    sa.Column("description", sa.Text), sa.Column("utype", sa.String),
    sa.Column("unit", sa.String), sa.Column("ucd", sa.String),
    sa.Column("indexed", sa.Integer), sa.Column("principal", sa.Integer),
    sa.Column("std", sa.Integer), sa.Column("column_index", sa.Integer),
    comment="replica of each source's TAP_SCHEMA.columns")
tap_keys = _tap(
    "tap_keys",
    sa.Column("key_id", sa.String), sa.Column("from_table", sa.String),
    sa.Column("target_table", sa.String), sa.Column("utype", sa.String),
    sa.Column("description", sa.Text),
    comment="replica of each source's TAP_SCHEMA.keys")
tap_key_columns = _tap(
    "tap_key_columns",
    sa.Column("key_id", sa.String), sa.Column("from_column", sa.String),
    sa.Column("target_column", sa.String),
    comment="replica of each source's TAP_SCHEMA.key_columns")

TAP_SCHEMA_REPLICAS = {
    "schemas": tap_schemas, "tables": tap_tables, "columns": tap_columns,
    "keys": tap_keys, "key_columns": tap_key_columns,
}

products = sa.Table(
    "products", metadata,
    sa.Column("source", sa.String, primary_key=True),
    sa.Column("product_id", sa.String, primary_key=True),
    sa.Column("role", sa.String, primary_key=True),
    sa.Column("state", sa.String, nullable=False),
    sa.Column("access_url", sa.String),
    sa.Column("access_format", sa.String),
    sa.Column("url", sa.String),
    sa.Column("path", sa.String),
    sa.Column("estimated_size", sa.BigInteger),
    sa.Column("size", sa.BigInteger),
    sa.Column("sha256", sa.String),
    sa.Column("content_type", sa.String),
    sa.Column("last_modified", sa.String),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_error", sa.Text),
    sa.Column("embargo_until", sa.DateTime),
    sa.Column("selected_at", sa.DateTime, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    sa.Column("fetched_at", sa.DateTime),
    comment="the data products chosen for fetching and their state "
            "(pending, done, failed, embargoed, withdrawn)",
)

column_profiles = sa.Table(
    "column_profiles", metadata,
    sa.Column("table_name", sa.String, primary_key=True),
    sa.Column("column_name", sa.String, primary_key=True),
    sa.Column("local_type", sa.String),
    sa.Column("row_count", sa.BigInteger, nullable=False),
    sa.Column("null_count", sa.BigInteger, nullable=False),
    sa.Column("null_fraction", sa.Float),
    sa.Column("distinct_approx", sa.BigInteger),
    sa.Column("min_value", sa.Text),
    sa.Column("max_value", sa.Text),
    sa.Column("examples", sa.Text),
    sa.Column("computed_at", sa.DateTime, nullable=False),
    comment="data profile of each column of the mirrored tables (mirror.schema.profiles)",
)

table_profiles = sa.Table(
    "table_profiles", metadata,
    sa.Column("table_name", sa.String, primary_key=True),
    sa.Column("row_count", sa.BigInteger, nullable=False),
    sa.Column("column_count", sa.Integer, nullable=False),
    sa.Column("positions", sa.BigInteger),
    sa.Column("moc", sa.Text),
    sa.Column("moc_depth", sa.Integer),
    sa.Column("sky_fraction", sa.Float),
    sa.Column("t_min_mjd", sa.Float),
    sa.Column("t_max_mjd", sa.Float),
    sa.Column("t_min_iso", sa.String),
    sa.Column("t_max_iso", sa.String),
    sa.Column("seconds", sa.Float),
    sa.Column("computed_at", sa.DateTime, nullable=False),
    comment="data profile of each mirrored table: rows, sky coverage (MOC), time range",
)

tap_examples = sa.Table(
    "tap_examples", metadata,
    sa.Column("source", sa.String, primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("description", sa.Text),
    sa.Column("query", sa.Text, nullable=False),
    sa.Column("fetched_at", sa.DateTime, nullable=False),
    comment="each service's DALI examples document ({tap}/examples), replicated at sync",
)
