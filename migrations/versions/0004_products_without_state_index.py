"""The product queue without its (source, state) index.

Why: DuckDB turns an UPDATE of an indexed column into a delete and re-insert of the whole row,
and every outcome the fetcher records sets `state`: with 200,000 products a batch of 2,000
outcomes took ~300 ms instead of ~10 ms, on the network thread. The index served no query:
DuckDB scans (with zone maps) for filters that match thousands of rows.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("products_state", "products")


def downgrade() -> None:
    op.create_index("products_state", "products", ["source", "state"])
