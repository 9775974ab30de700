"""The product queue: batched inserts, re-queues and outcome records give the rows one would
write one statement at a time."""

from __future__ import annotations

from pathlib import Path

from mirror.catalogue import products
from mirror.catalogue.engine import Catalogue


def test_requeued_products_are_pending_again_with_their_new_values_only(tmp_path: Path) -> None:
    with Catalogue.open(tmp_path / "m.duckdb") as cat:
        with cat.begin() as conn:
            products.queue(conn, "s", [
                {"product_id": f"p{i}", "access_url": f"u{i}", "url": f"u{i}", "path": f"a/p{i}",
                 "estimated_size": i} for i in range(5)])
            products.queue(conn, "other", [{"product_id": "p1", "url": "x", "path": "b/p1"}])
            products.update(conn, [
                {"source": "s", "product_id": f"p{i}", "role": "this",
                 **dict.fromkeys(products.OUTCOME), "state": "failed", "url": f"u{i}",
                 "path": f"a/p{i}", "attempts": 3, "last_error": "HTTP 404"} for i in range(5)])
        with cat.begin() as conn:  # a changed record with a new path; a retry with no new values
            assert products.queue(conn, "s", [
                {"product_id": "p1", "access_url": "v1", "url": "v1", "path": "a/q1",
                 "estimated_size": 10},
                {"product_id": "p2", "url": "v2"},
                {"product_id": "p9", "url": "v9", "path": "a/p9"}]) == 3
        with cat.begin() as conn:
            rows = {r.product_id: r for r in products.in_state(conn, "s", "pending")}
            failed = {r.product_id for r in products.in_state(conn, "s", "failed")}
            theirs = products.in_state(conn, "other", "pending")
    assert set(rows) == {"p1", "p2", "p9"} and failed == {"p0", "p3", "p4"}
    p1, p2 = rows["p1"], rows["p2"]
    assert (p1.url, p1.access_url, p1.path, p1.estimated_size) == ("v1", "v1", "a/q1", 10)
    assert (p2.url, p2.access_url, p2.path, p2.estimated_size) == ("v2", "u2", "a/p2", 2)
    assert all(r.attempts == 0 and r.last_error is None for r in (p1, p2))
    assert [(r.url, r.path) for r in theirs] == [("x", "b/p1")]  # another source's p1: untouched
