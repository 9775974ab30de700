"""The product queue: which data products to fetch, and what became of each.

States: `pending` (to fetch), `done` (stored and verified), `failed` (permanent error, or
transient ones past the retry budget), `embargoed` (HTTP 401 before `obs_release_date`; retried
after that date), `withdrawn` (the record vanished upstream; a stored file is kept).
Updates are batched: per-row commits would cap a fast fetcher at about 1,000 files/s.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from operator import itemgetter
from typing import Any

import pyarrow as pa
import sqlalchemy as sa

from mirror.catalogue.engine import arrow_view, utcnow
from mirror.catalogue.models import products
from mirror.catalogue.obscore import data_table, q

STATES = ("pending", "done", "failed", "embargoed", "withdrawn")


@dataclass(frozen=True)
class Candidate:
    """A current row of a source that the selection chose, with what the layout needs."""

    product_id: str
    row: dict[str, Any]
    requeue: bool  # already known: its record changed since it was selected


def candidates(conn: sa.Connection, source: str, id_column: str, where: str,
               retry_failed: bool = False,
               columns: Collection[str] | None = None) -> list[Candidate]:
    """Current rows matching `where` that are not queued yet, or whose record changed since;
    each with `columns` (those the table has; all if None)."""
    table, idc = data_table(source), q(id_column)
    wanted = "d.*"
    if columns is not None:
        have = conn.exec_driver_sql(f"SELECT * FROM {table} LIMIT 0").keys()
        wanted = ", ".join(f"d.{q(c)}" for c in have if c in columns or c == id_column)
    cond = f"AND ({where})" if where.strip() else ""
    retry = " OR p.state = 'failed'" if retry_failed else ""
    result = conn.exec_driver_sql(
        f"SELECT {wanted}, p.product_id IS NOT NULL AS _known FROM {table} d "
        f"LEFT JOIN products p ON p.source = ? AND p.product_id = d.{idc} AND p.role = 'this' "
        f"WHERE d._withdrawn_at IS NULL {cond} AND (p.product_id IS NULL "
        f"OR d._updated_at > p.selected_at{retry} "
        "OR (p.state = 'embargoed' AND p.embargo_until <= ?)) "
        f"ORDER BY d.{idc}", (source, utcnow()))
    keys = list(result.keys())  # rows as tuples: a mapping per row costs twice as much
    keep = [i for i, k in enumerate(keys) if not k.startswith("_")]
    names, pick = [keys[i] for i in keep], itemgetter(*keep)
    ident, known = keys.index(id_column), keys.index("_known")
    out = []
    for r in result:
        values = pick(r)
        row = dict(zip(names, values if len(keep) > 1 else (values,), strict=True))
        out.append(Candidate(str(r[ident]), row, bool(r[known])))
    return out


def queue(conn: sa.Connection, source: str, rows: Sequence[Mapping[str, Any]]) -> int:
    """Queue products as pending: new ones inserted, known ones (changed records, failed ones
    retried, embargoes that ended) set back to pending with a fresh retry budget."""
    if not rows:
        return 0
    now = utcnow()
    known = _known(conn, source, {r["product_id"] for r in rows})
    fresh = [r for r in rows if (r["product_id"], r.get("role", "this")) not in known]
    if fresh:
        _insert(conn, [{"source": source, "role": "this", "state": "pending", "attempts": 0,
                        "selected_at": now, "updated_at": now, **r} for r in fresh])
    again = [r for r in rows if (r["product_id"], r.get("role", "this")) in known]
    if again and conn.dialect.name == "duckdb":  # one statement per set of columns given
        groups: dict[tuple[str, ...], list[Mapping[str, Any]]] = {}
        for r in again:
            groups.setdefault(tuple(sorted(set(r) - {"product_id", "role"})), []).append(r)
        for cols, group in groups.items():
            _requeue_duckdb(conn, source, cols, group, now)
        return len(rows)
    for r in again:
        conn.execute(products.update().where(
            (products.c.source == source) & (products.c.product_id == r["product_id"])
            & (products.c.role == r.get("role", "this"))).values(
                state="pending", attempts=0, last_error=None, embargo_until=None,
                selected_at=now, updated_at=now,
                **{k: v for k, v in r.items() if k not in ("product_id", "role")}))
    return len(rows)


def _requeue_duckdb(conn: sa.Connection, source: str, cols: tuple[str, ...],
                    rows: Sequence[Mapping[str, Any]], now: datetime) -> None:
    """Known products back to pending in one UPDATE ... FROM an Arrow batch (a statement per
    product cost ~2 ms each: 20 s for 10,000 changed records)."""
    batch = pa.table({"product_id": pa.array([r["product_id"] for r in rows], pa.string()),
                      "role": pa.array([r.get("role", "this") for r in rows], pa.string()),
                      **{c: pa.array([r[c] for r in rows], _ARROW.get(c, pa.string()))
                         for c in cols}})
    sets = "".join(f", {c} = v.{c}" for c in cols)
    with arrow_view(conn, "_requeued", batch):
        conn.exec_driver_sql(
            "UPDATE products SET state = 'pending', attempts = 0, last_error = NULL, "
            f"embargo_until = NULL, selected_at = ?, updated_at = ?{sets} FROM _requeued v "
            "WHERE products.source = ? AND products.product_id = v.product_id "
            "AND products.role = v.role", (now, now, source))


def path_owners(conn: sa.Connection, paths: set[str]) -> dict[str, tuple[str, str]]:
    """(source, product_id) of the product queued or stored at each of `paths` that has one:
    a selection checks the paths it renders against these, not against every stored path (a
    million of them on each of a daemon's fetches)."""
    if not paths:
        return {}
    if conn.dialect.name != "duckdb":
        return {r.path: (r.source, r.product_id) for r in conn.execute(
            sa.select(products.c.path, products.c.source, products.c.product_id).where(
                products.c.path.in_(paths)))}
    with arrow_view(conn, "_paths", pa.table({"path": pa.array(list(paths), pa.string())})):
        return {path: (source, pid) for path, source, pid in conn.exec_driver_sql(
            "SELECT p.path, p.source, p.product_id FROM products p JOIN _paths USING (path)")}


def _known(conn: sa.Connection, source: str, ids: set[str]) -> set[tuple[str, str]]:
    """(product_id, role) of the queued products among `ids`; on DuckDB the ids go in as one
    Arrow column joined to the queue (an IN list of 2,000 bound values costs 6x as much)."""
    if conn.dialect.name != "duckdb":
        return {(r.product_id, r.role) for r in conn.execute(
            sa.select(products.c.product_id, products.c.role).where(
                (products.c.source == source) & products.c.product_id.in_(ids)))}
    with arrow_view(conn, "_queued_ids", pa.table({"product_id": pa.array(ids, pa.string())})):
        return {(pid, role) for pid, role in conn.exec_driver_sql(
            "SELECT p.product_id, p.role FROM products p JOIN _queued_ids q "
            "ON p.product_id = q.product_id WHERE p.source = ?", (source,))}


def mark_withdrawn(conn: sa.Connection, source: str, id_column: str) -> int:
    """Products whose record was withdrawn upstream: kept on disk, marked."""
    table, idc = data_table(source), q(id_column)
    return conn.exec_driver_sql(
        f"UPDATE products SET state = 'withdrawn', updated_at = ? WHERE source = ? "
        f"AND state <> 'withdrawn' AND product_id IN "
        f"(SELECT {idc} FROM {table} WHERE _withdrawn_at IS NOT NULL)", (utcnow(), source)
    ).rowcount


def pending(conn: sa.Connection, source: str) -> list[sa.Row[Any]]:
    """Pending products (those without a download URL yet wait for DataLink resolution)."""
    cond = (products.c.source == source) & (products.c.state == "pending")
    return list(conn.execute(sa.select(products).where(cond)
                             .order_by(products.c.product_id, products.c.role)))


def in_state(conn: sa.Connection, source: str | None, state: str) -> list[sa.Row[Any]]:
    query = sa.select(products).where(products.c.state == state)
    if source:
        query = query.where(products.c.source == source)
    return list(conn.execute(query.order_by(products.c.source, products.c.product_id)))


OUTCOME = ("state", "url", "path", "size", "sha256", "content_type", "last_modified",
           "attempts", "last_error", "embargo_until", "fetched_at")
_KEY = ("source", "product_id", "role")


def update(conn: sa.Connection, changes: Sequence[Mapping[str, Any]]) -> None:
    """Record a batch of outcomes in one statement (UPDATE ... FROM VALUES, portable).

    Every change carries the key columns and all of `OUTCOME`."""
    if not changes:
        return
    now = utcnow()
    if conn.dialect.name == "duckdb":  # Arrow in, one UPDATE ... FROM: ~100x less overhead
        _update_duckdb(conn, changes, now)
        return
    cols = [sa.column(c, products.c[c].type) for c in (*_KEY, *OUTCOME)]
    v = sa.values(*cols, name="v").data([tuple(ch[c] for c in (*_KEY, *OUTCOME))
                                         for ch in changes])
    conn.execute(products.update().where(
        (products.c.source == v.c.source) & (products.c.product_id == v.c.product_id)
        & (products.c.role == v.c.role)).values(updated_at=now,
                                                **{c: v.c[c] for c in OUTCOME}))


def _insert(conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
    if conn.dialect.name != "duckdb":
        conn.execute(products.insert(), rows)
        return
    cols = [c.name for c in products.columns if any(c.name in r for r in rows)]
    batch = pa.table({c: pa.array([r.get(c) for r in rows], _ARROW.get(c, pa.string()))
                      for c in cols})
    with arrow_view(conn, "_new_products", batch):
        conn.exec_driver_sql(f"INSERT INTO products ({', '.join(cols)}) "
                             f"SELECT {', '.join(cols)} FROM _new_products")


_ARROW = {"size": pa.int64(), "estimated_size": pa.int64(), "attempts": pa.int32(),
          "embargo_until": pa.timestamp("us"), "fetched_at": pa.timestamp("us"),
          "selected_at": pa.timestamp("us"), "updated_at": pa.timestamp("us")}


def _update_duckdb(conn: sa.Connection, changes: Sequence[Mapping[str, Any]],
                   now: datetime) -> None:
    batch = pa.table({c: pa.array([ch[c] for ch in changes], _ARROW.get(c, pa.string()))
                      for c in (*_KEY, *OUTCOME)})
    sets = ", ".join(f"{c} = v.{c}" for c in OUTCOME)
    with arrow_view(conn, "_outcomes", batch):
        conn.exec_driver_sql(
            f"UPDATE products SET {sets}, updated_at = ? FROM _outcomes v "
            "WHERE products.source = v.source AND products.product_id = v.product_id "
            "AND products.role = v.role", (now,))


def counts(conn: sa.Connection) -> dict[str, dict[str, tuple[int, int]]]:
    """Per source and state: (products, bytes stored)."""
    out: dict[str, dict[str, tuple[int, int]]] = {}
    for src, state, n, size in conn.execute(
            sa.select(products.c.source, products.c.state, sa.func.count(),
                      sa.func.coalesce(sa.func.sum(products.c.size), 0))
            .group_by(products.c.source, products.c.state)):
        out.setdefault(src, {})[state] = (int(n), int(size))
    return out


def release_date(conn: sa.Connection, source: str, id_column: str,
                 product_id: str) -> datetime | None:
    """The record's obs_release_date, if the source publishes one."""
    try:
        value = conn.exec_driver_sql(
            f"SELECT obs_release_date FROM {data_table(source)} WHERE {q(id_column)} = ?",
            (product_id,)).scalar()
    except sa.exc.DBAPIError:
        return None
    return value if isinstance(value, datetime) else None
