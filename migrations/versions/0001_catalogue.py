"""The mirror's own tables: sources, sync runs and windows, source columns, TAP_SCHEMA replicas.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _tap(name: str, *columns: sa.Column) -> None:
    op.create_table(name, sa.Column("source", sa.String, nullable=False), *columns)


def upgrade() -> None:
    op.create_table(
        "sources",
        sa.Column("name", sa.String, primary_key=True),
        sa.Column("url", sa.String, nullable=False),
        sa.Column("table_name", sa.String, nullable=False),
        sa.Column("data_table", sa.String, nullable=False),
        sa.Column("id_column", sa.String, nullable=False),
        sa.Column("watermark_column", sa.String),
        sa.Column("cursor_watermark", sa.String),
        sa.Column("cursor_id", sa.String),
        sa.Column("last_sync_at", sa.DateTime),
    )
    op.execute(sa.schema.CreateSequence(sa.Sequence("sync_run_ids")))
    op.create_table(
        "sync_runs",
        sa.Column("run_id", sa.BigInteger, primary_key=True,
                  server_default=sa.text("nextval('sync_run_ids')")),
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
    )
    op.create_table(
        "sync_windows",
        sa.Column("run_id", sa.BigInteger, primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("lower_watermark", sa.String),
        sa.Column("lower_id", sa.String),
        sa.Column("upper_watermark", sa.String),
        sa.Column("upper_id", sa.String),
        sa.Column("rows_received", sa.BigInteger, nullable=False),
        sa.Column("upstream_count", sa.BigInteger),
        sa.Column("committed_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "source_columns",
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
    )
    _tap("tap_schemas", sa.Column("schema_name", sa.String), sa.Column("utype", sa.String),
         sa.Column("description", sa.Text), sa.Column("schema_index", sa.Integer))
    _tap("tap_tables", sa.Column("schema_name", sa.String), sa.Column("table_name", sa.String),
         sa.Column("table_type", sa.String), sa.Column("utype", sa.String),
         sa.Column("description", sa.Text), sa.Column("table_index", sa.Integer))
    _tap("tap_columns", sa.Column("table_name", sa.String), sa.Column("column_name", sa.String),
         sa.Column("datatype", sa.String), sa.Column("arraysize", sa.String),
         sa.Column("xtype", sa.String), sa.Column("size", sa.Integer),
         sa.Column("description", sa.Text), sa.Column("utype", sa.String),
         sa.Column("unit", sa.String), sa.Column("ucd", sa.String),
         sa.Column("indexed", sa.Integer), sa.Column("principal", sa.Integer),
         sa.Column("std", sa.Integer), sa.Column("column_index", sa.Integer))
    _tap("tap_keys", sa.Column("key_id", sa.String), sa.Column("from_table", sa.String),
         sa.Column("target_table", sa.String), sa.Column("utype", sa.String),
         sa.Column("description", sa.Text))
    _tap("tap_key_columns", sa.Column("key_id", sa.String), sa.Column("from_column", sa.String),
         sa.Column("target_column", sa.String))


def downgrade() -> None:
    for name in ("tap_key_columns", "tap_keys", "tap_columns", "tap_tables", "tap_schemas",
                 "source_columns", "sync_windows", "sync_runs", "sources"):
        op.drop_table(name)
    op.execute(sa.schema.DropSequence(sa.Sequence("sync_run_ids")))
