"""The product queue: one row per selected data product (and ancillary link) with its state.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "products",
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
    )
    op.create_index("products_state", "products", ["source", "state"])


def downgrade() -> None:
    op.drop_index("products_state", "products")
    op.drop_table("products")
