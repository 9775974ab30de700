"""The schema catalogue's tables: data profiles per column and per table, services' TAP examples.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "column_profiles",
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
    )
    op.create_table(
        "table_profiles",
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
    )
    op.create_table(
        "tap_examples",
        sa.Column("source", sa.String, primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("description", sa.Text),
        sa.Column("query", sa.Text, nullable=False),
        sa.Column("fetched_at", sa.DateTime, nullable=False),
    )


def downgrade() -> None:
    for name in ("tap_examples", "table_profiles", "column_profiles"):
        op.drop_table(name)
