"""Sources, their incremental cursors, and the run history (portable SQL through SQLAlchemy)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import sqlalchemy as sa

from mirror.catalogue.engine import utcnow
from mirror.catalogue.models import TAP_SCHEMA_REPLICAS, sources, sync_runs, sync_windows


def upsert_source(conn: sa.Connection, name: str, **values: Any) -> None:
    """Create or update a source's row."""
    exists = conn.execute(sa.select(sources.c.name).where(sources.c.name == name)).first()
    if exists:
        conn.execute(sources.update().where(sources.c.name == name).values(**values))
    else:
        conn.execute(sources.insert().values(name=name, **values))


def get_source(conn: sa.Connection, name: str) -> sa.Row[Any] | None:
    return conn.execute(sa.select(sources).where(sources.c.name == name)).first()


def set_cursor(conn: sa.Connection, name: str, watermark: str | None, id_: str | None) -> None:
    conn.execute(sources.update().where(sources.c.name == name)
                 .values(cursor_watermark=watermark, cursor_id=id_))


def start_run(conn: sa.Connection, source: str, kind: str) -> int:
    """Record a run as started; returns its id."""
    return int(conn.execute(
        sync_runs.insert().values(source=source, started_at=utcnow(), status="running",
                                  kind=kind, pid=os.getpid())
        .returning(sync_runs.c.run_id)).scalar_one())


def mark_interrupted(conn: sa.Connection) -> int:
    """Runs still 'running' when a writer opens the catalogue were killed: say so."""
    return conn.execute(sync_runs.update().where(sync_runs.c.status == "running")
                        .values(status="interrupted")).rowcount


def add_counts(conn: sa.Connection, run_id: int, **deltas: int) -> None:
    """Add to a run's counters in the same transaction as the rows they count."""
    conn.execute(sync_runs.update().where(sync_runs.c.run_id == run_id).values(
        **{k: getattr(sync_runs.c, k) + v for k, v in deltas.items()}))


def record_window(conn: sa.Connection, run_id: int, seq: int, lower: tuple[Any, Any] | None,
                  upper: tuple[Any, Any], rows: int) -> None:
    conn.execute(sync_windows.insert().values(
        run_id=run_id, seq=seq, rows_received=rows, committed_at=utcnow(),
        lower_watermark=_text(lower[0]) if lower else None, lower_id=lower[1] if lower else None,
        upper_watermark=_text(upper[0]), upper_id=upper[1]))
    add_counts(conn, run_id, windows=1)


def set_window_count(conn: sa.Connection, run_id: int, seq: int, count: int,
                     rows: int | None = None) -> None:
    values: dict[str, Any] = {"upstream_count": count}
    if rows is not None:
        values["rows_received"] = rows
    conn.execute(sync_windows.update().where(
        (sync_windows.c.run_id == run_id) & (sync_windows.c.seq == seq)).values(**values))


def windows(conn: sa.Connection, run_id: int) -> list[sa.Row[Any]]:
    return list(conn.execute(sa.select(sync_windows).where(sync_windows.c.run_id == run_id)
                             .order_by(sync_windows.c.seq)))


def finish_run(conn: sa.Connection, run_id: int, status: str, **values: Any) -> None:
    conn.execute(sync_runs.update().where(sync_runs.c.run_id == run_id)
                 .values(status=status, ended_at=utcnow(), **values))


def runs(conn: sa.Connection, source: str | None = None, limit: int = 20) -> list[sa.Row[Any]]:
    query = sa.select(sync_runs).order_by(sync_runs.c.run_id.desc()).limit(limit)
    if source:
        query = query.where(sync_runs.c.source == source)
    return list(conn.execute(query))


def replace_tap_schema(conn: sa.Connection, source: str,
                       tables: Mapping[str, Iterable[Mapping[str, Any]]]) -> None:
    """Replace a source's TAP_SCHEMA replica (`tables` maps 'columns' etc. to rows)."""
    for name, table in TAP_SCHEMA_REPLICAS.items():
        conn.execute(table.delete().where(table.c.source == source))
        known = [c.name for c in table.columns if c.name != "source"]
        rows = [{"source": source, **{k: row.get(k) for k in known}}
                for row in tables.get(name, [])]
        if rows:
            conn.execute(table.insert(), rows)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
