"""`mirror verify`: re-check the store against the catalogue, and repair what can be repaired.

missing file -> re-queued; corrupt file (sha256 or content) -> quarantined and re-queued;
a file nobody claims -> adopted if a queued product expects exactly that path and it verifies,
else reported.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import sqlalchemy as sa

from mirror.catalogue import products
from mirror.catalogue.engine import Catalogue, utcnow
from mirror.catalogue.models import products as products_table
from mirror.store.files import Store
from mirror.store.verify import verify_file


@dataclass
class AuditReport:
    checked: int = 0
    ok: int = 0
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    partials: int = 0
    repaired: bool = False


def audit(catalogue: Catalogue, store: Store, *, repair: bool = True) -> AuditReport:
    """Check every stored product's size, sha256 and content; find files nobody claims."""
    report = AuditReport(repaired=repair)
    with catalogue.begin() as conn:
        rows = list(conn.execute(sa.select(products_table).where(
            products_table.c.path.is_not(None))))
    claimed = {r.path: r for r in rows}
    changes: list[dict[str, Any]] = []
    for r in rows:
        _check(r, store, report, changes, repair=repair)
    for rel in store.walk():
        owner = claimed.get(str(rel))
        if owner is None:
            report.unknown.append(str(rel))
        elif owner.state == "pending" and owner.sha256 is None:
            verdict = verify_file(store.resolve(rel), expected_size=None,
                                  content_type=owner.content_type,
                                  access_format=owner.access_format)
            if verdict.ok:
                report.adopted.append(str(rel))
                changes.append(_done(owner, verdict.size, verdict.sha256))
            else:
                report.unknown.append(str(rel))
    report.partials = sum(1 for _ in store.partials())
    if repair and changes:
        with catalogue.begin() as conn:
            products.update(conn, changes)
    return report


def recheck(catalogue: Catalogue, store: Store, paths: Iterable[str]) -> AuditReport:
    """Check only the stored products at `paths` (files the daemon saw deleted or changed by
    hand); a missing or changed one is quarantined and re-queued, so the next fetch restores it."""
    report = AuditReport(repaired=True)
    wanted = sorted(set(paths))
    if not wanted:
        return report
    with catalogue.begin() as conn:
        rows = list(conn.execute(sa.select(products_table).where(
            products_table.c.path.in_(wanted))))
    changes: list[dict[str, Any]] = []
    for r in rows:
        _check(r, store, report, changes, repair=True)
    if changes:
        with catalogue.begin() as conn:
            products.update(conn, changes)
    return report


def _check(r: sa.Row[Any], store: Store, report: AuditReport, changes: list[dict[str, Any]], *,
           repair: bool) -> None:
    """One stored product against its record: ok, missing (re-queued) or corrupt."""
    if r.state not in ("done", "withdrawn") or r.sha256 is None:
        return
    report.checked += 1
    rel = PurePosixPath(r.path)
    if not store.exists(rel):
        report.missing.append(r.path)
        if r.state == "done":
            changes.append(_requeue(r, "file missing from the store"))
        return
    verdict = verify_file(store.resolve(rel), expected_size=r.size,
                          content_type=r.content_type, access_format=r.access_format)
    if not verdict.ok or verdict.sha256 != r.sha256:
        reason = verdict.reason if not verdict.ok else "sha256 differs from the catalogue"
        report.corrupt.append(r.path)
        if repair:
            store.quarantine(rel, reason)
            if r.state == "done":
                changes.append(_requeue(r, f"quarantined: {reason}"))
        return
    report.ok += 1


def _base(r: sa.Row[Any]) -> dict[str, Any]:
    out = {c: getattr(r, c) for c in products.OUTCOME}
    out.update(source=r.source, product_id=r.product_id, role=r.role)
    return out


def _requeue(r: sa.Row[Any], reason: str) -> dict[str, Any]:
    return {**_base(r), "state": "pending", "sha256": None, "size": None, "attempts": 0,
            "last_error": reason}


def _done(r: sa.Row[Any], size: int, sha256: str | None) -> dict[str, Any]:
    return {**_base(r), "state": "done", "size": size, "sha256": sha256,
            "fetched_at": utcnow(), "last_error": None}
