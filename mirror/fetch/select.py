"""Choosing what to fetch: the source's `fetch_where` over its current rows, the size caps,
and a store path per product from the layout template (collisions reported, never overwritten).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
import sqlglot
from sqlglot import exp

from mirror.catalogue import products
from mirror.config import Config, SourceConfig
from mirror.errors import ConfigError
from mirror.fetch.datalink import is_datalink
from mirror.store.layout import extension_for, render_text, template_fields


@dataclass
class Selection:
    queued: int = 0
    skipped: int = 0
    withdrawn: int = 0
    errors: list[str] = field(default_factory=list)


def check_where(where: str, source: str) -> str:
    """`fetch_where` must be one SQL condition (no statements, subqueries or comments)."""
    if not where.strip():
        return ""
    try:
        tree = sqlglot.parse_one(f"SELECT 1 FROM t WHERE {where}", read="duckdb")
    except sqlglot.errors.ParseError as exc:
        raise ConfigError(f"source {source!r}: fetch_where is not a valid condition: "
                          f"{str(exc).splitlines()[0]}",
                          "e.g. fetch_where = \"dataproduct_type = 'spectrum'\"") from exc
    nested = [n for n in tree.find_all(exp.Select) if n is not tree]
    if not isinstance(tree, exp.Select) or nested or tree.args.get("from_") is None:
        raise ConfigError(f"source {source!r}: fetch_where must be a plain condition",
                          "no subqueries or statements; e.g. fetch_where = \"snr > 50\"")
    return where


def extension(access_format: str | None, url: str | None) -> str:
    """The product's file extension; DataLink products are named as FITS (the #this file at
    the archives we know) since the link is only resolved after selection."""
    return extension_for(access_format, url=url) or (".fits" if is_datalink(access_format)
                                                     else "")


def select(conn: sa.Connection, config: Config, src: SourceConfig, *,
           retry_failed: bool = False) -> Selection:
    """Queue the products the source's selection chooses; mark withdrawn ones."""
    sel = Selection()
    sel.withdrawn = products.mark_withdrawn(conn, src.name, src.id_column)
    where = check_where(src.fetch_where, src.name)
    try:
        chosen = products.candidates(conn, src.name, src.id_column, where, retry_failed,
                                     columns=template_fields(config.layout) | _USED)
    except sa.exc.DBAPIError as exc:
        raise ConfigError(f"source {src.name!r}: fetch_where failed on the mirrored rows: "
                          f"{str(exc.orig).splitlines()[0]}",
                          "use the column names of ivoa.obscore (`mirror status`)") from exc
    budget = src.max_total_gb * 1024 ** 3 or float("inf")
    used = sum(size for state, (n, size) in products.counts(conn).get(src.name, {}).items()
               if state in ("done", "pending")) if src.max_total_gb else 0
    planned: list[tuple[Any, str | None, str | None, float, str]] = []
    for cand in chosen:
        est = (cand.row.get("access_estsize") or 0) * 1024
        if src.max_file_mb and est > src.max_file_mb * 1024 ** 2:
            sel.skipped += 1
            continue
        if not cand.requeue and used + est > budget:
            sel.skipped += 1
            continue
        used += est
        url, fmt = cand.row.get("access_url"), cand.row.get("access_format")
        planned.append((cand, url, fmt, est, render_text(config.layout, cand.row,
                                                         extension(fmt, url))))
    taken = products.path_owners(conn, {rel for *_, rel in planned})
    rows: list[dict[str, Any]] = []
    for cand, url, fmt, est, rel in planned:
        owner = taken.get(rel)
        if owner is not None and owner != (src.name, cand.product_id):
            sel.errors.append(f"{cand.product_id}: its store path {rel} is already used by "
                              f"{owner[1]}; not fetched (change [store] layout)")
            continue
        taken[rel] = (src.name, cand.product_id)
        rows.append({"product_id": cand.product_id, "role": "this", "access_url": url,
                     "access_format": fmt, "url": None if is_datalink(fmt) else url,
                     "path": rel, "estimated_size": int(est) or None})
    sel.queued = products.queue(conn, src.name, rows)
    return sel


_USED = {"access_url", "access_format", "access_estsize"}  # what select reads besides the layout

