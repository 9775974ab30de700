"""Alembic environment: runs revisions on the connection `mirror` hands over (or a URL)."""

from __future__ import annotations

from alembic import context
from alembic.ddl.impl import DefaultImpl
from sqlalchemy import create_engine, pool

from mirror.catalogue.models import metadata


class DuckDBImpl(DefaultImpl):
    """Alembic ships no DuckDB implementation; DuckDB speaks close enough to PostgreSQL."""

    __dialect__ = "duckdb"


def run_migrations() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=metadata)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = context.config.get_main_option("sqlalchemy.url")
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.begin() as conn:
        context.configure(connection=conn, target_metadata=metadata)
        with context.begin_transaction():
            context.run_migrations()


run_migrations()
