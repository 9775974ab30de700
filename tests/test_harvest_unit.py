"""Syncs against the fake TAP service (50 recorded DaCHS rows) into a temp catalogue.

The service's hard limit is 20 rows, or 7 (`SMALL_PAGES`) where page boundaries are the point;
either way every sync has to page past it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeSleep, FakeTap, Fault, dachs_error, write_config
from fakes.tapserver import parse_adql

from mirror.api import Mirror
from mirror.catalogue.types import ColumnSpec
from mirror.harvest.harvester import SyncReport
from mirror.harvest.plan import literal
from mirror.retry import RetryPolicy

ID = "obs_publisher_did"
PAGE = r"SELECT TOP \d+ dataproduct_type"  # a page of whole rows
IDS = rf"SELECT TOP \d+ {ID} FROM"  # a page of the ID pass
LATER = dt.datetime(2030, 1, 1)
SMALL_PAGES = pytest.mark.parametrize("tap", [7], indirect=True, ids=["limit7"])


@pytest.fixture
def tap(request: pytest.FixtureRequest) -> Iterator[FakeTap]:
    with FakeTap(hard_limit=getattr(request, "param", 20)).load_recorded() as server:
        yield server


class Harness:
    """A Mirror on a temp dir, syncing one source from a fake service."""

    def __init__(self, tmp_path: Path, tap: FakeTap, **source: Any) -> None:
        self.tap = tap
        self.sleep = FakeSleep()
        self.config = write_config(tmp_path, {"name": "fake", "url": tap.url, **source})
        self.mirror = Mirror.open(self.config)

    def sync(self, **kwargs: Any) -> SyncReport:
        policy = RetryPolicy(attempts=4, sleep=self.sleep, rng=lambda: 0.5)
        [report] = self.mirror.sync(policy=policy, **kwargs)
        return report

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with self.mirror.catalogue().begin() as conn:
            return [tuple(r) for r in conn.exec_driver_sql(query, params or ()).all()]

    def current_ids(self) -> list[str]:
        return [r[0] for r in self.sql(f"SELECT {ID} FROM ivoa.obscore ORDER BY 1")]

    def withdrawn_ids(self) -> list[str]:
        return [r[0] for r in self.sql(f"SELECT {ID} FROM ivoa.obscore_withdrawn ORDER BY 1")]

    def run_ids(self) -> dict[str, int]:
        return dict(self.sql(f"SELECT {ID}, _run_id FROM obscore_fake"))

    def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        tables = ["sources", "sync_runs", "sync_windows", "source_columns"]
        if self.sql("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'obscore_fake'"
                    )[0][0]:
            tables.append("obscore_fake")
        return {t: sorted(self.sql(f"SELECT * FROM {t}"), key=repr) for t in tables}

    def close(self) -> None:
        self.mirror.close()


@pytest.fixture
def harness(tmp_path: Path, tap: FakeTap) -> Iterator[Harness]:
    h = Harness(tmp_path, tap)
    yield h
    h.close()


def bump(tap: FakeTap, ids: list[str], *, snr: float | None = None,
         when: dt.datetime = LATER) -> None:
    """Change rows upstream as an archive does: new values and a newer last_modified."""
    for i, id_ in enumerate(ids):
        tap.execute(f"UPDATE ivoa.obscore SET last_modified = ?, snr = coalesce(?, snr) "
                    f"WHERE {ID} = ?", [when + dt.timedelta(seconds=i), snr, id_])


def add_copies(tap: FakeTap, template: str, new_ids: list[str],
               when: dt.datetime = LATER) -> None:
    for i, id_ in enumerate(new_ids):
        tap.execute(f"INSERT INTO ivoa.obscore SELECT * REPLACE (? AS {ID}, ? AS last_modified) "
                    f"FROM ivoa.obscore WHERE {ID} = ?",
                    [id_, when + dt.timedelta(minutes=1, seconds=i), template])


def delete(tap: FakeTap, ids: list[str]) -> None:
    for id_ in ids:
        tap.execute(f"DELETE FROM ivoa.obscore WHERE {ID} = ?", [id_])


def top_of(adql: str) -> int | None:
    limit = parse_adql(adql).args.get("limit")
    return int(limit.expression.this) if limit is not None else None


# -- full syncs --------------------------------------------------------------------------------


@SMALL_PAGES
def test_full_sync_past_the_hard_limit_stores_every_row_once(harness: Harness,
                                                             tap: FakeTap) -> None:
    assert tap.hard_limit is not None and tap.hard_limit < len(tap.ids())
    report = harness.sync()
    assert report.status == "ok", report.errors
    assert report.kind == "full"
    assert report.new == len(tap.ids()) and report.proof_ok is True
    assert report.upstream_count == report.local_count == len(tap.ids())
    assert harness.current_ids() == tap.ids()
    assert harness.sql("SELECT count(*), count(DISTINCT obs_publisher_did) FROM obscore_fake") == [
        (len(tap.ids()), len(tap.ids()))]
    for query in tap.queries(PAGE) + tap.queries(IDS):
        assert top_of(query) is not None and top_of(query) <= tap.hard_limit


@SMALL_PAGES
def test_full_sync_records_windows_whose_counts_match(harness: Harness, tap: FakeTap) -> None:
    report = harness.sync()
    windows = harness.sql("SELECT seq, rows_received, upstream_count, lower_id, upper_id "
                          "FROM sync_windows WHERE run_id = ? ORDER BY seq", report.run_id)
    assert len(windows) == report.windows >= -(-len(tap.ids()) // tap.hard_limit)
    assert sum(w[1] for w in windows) == len(tap.ids())
    for seq, received, counted, _, _ in windows:
        assert received == counted, f"window {seq}"
    for earlier, later in zip(windows, windows[1:], strict=False):
        assert later[3] == earlier[4]  # each window starts where the previous one ended
    assert harness.sql("SELECT windows, rows_new, proof_ok, status FROM sync_runs "
                       "WHERE run_id = ?", report.run_id) == [
        (report.windows, len(tap.ids()), True, "ok")]


def test_mirrored_values_equal_the_service_values(harness: Harness, tap: FakeTap) -> None:
    harness.sync()
    names = [s.name for s in tap.specs]
    cols = ", ".join(f'"{n}"' for n in names)
    upstream = tap.execute(f"SELECT {cols} FROM ivoa.obscore ORDER BY {ID}")
    local = harness.sql(f"SELECT {cols} FROM ivoa.obscore ORDER BY {ID}")
    assert local == upstream


def test_sync_with_unknown_limits_still_completes() -> None:
    with FakeTap(hard_limit=7, capabilities=False).load_recorded() as tap, \
            _harness(tap) as harness:
        report = harness.sync()
        assert report.status == "ok", report.errors
        assert harness.current_ids() == tap.ids()
        assert report.proof_ok is True
        # the service cut pages short (DaCHS answers limit + 1 rows to a larger TOP)
        assert any(top_of(q) and top_of(q) > tap.hard_limit for q in tap.queries(PAGE))


@SMALL_PAGES
def test_rows_sharing_a_watermark_across_page_boundaries_are_all_harvested(
        harness: Harness, tap: FakeTap) -> None:
    ids = tap.ids()
    for i, id_ in enumerate(ids):  # three watermarks for 50 rows
        tap.execute(f"UPDATE ivoa.obscore SET last_modified = ? WHERE {ID} = ?",
                    [dt.datetime(2020, 1, 1 + i % 3), id_])
    report = harness.sync()
    assert report.status == "ok", report.errors
    assert harness.current_ids() == ids and report.new == len(ids)


def test_rows_without_a_watermark_value_are_mirrored_too(harness: Harness,
                                                         tap: FakeTap) -> None:
    nulls = tap.ids()[10:13]
    for id_ in nulls:
        tap.execute(f"UPDATE ivoa.obscore SET last_modified = NULL WHERE {ID} = ?", [id_])
    report = harness.sync()
    assert report.status == "ok", report.errors
    assert harness.current_ids() == tap.ids()


def test_tap_schema_is_replicated_completely(harness: Harness, tap: FakeTap) -> None:
    assert tap.hard_limit is not None and len(tap.specs) > tap.hard_limit
    harness.sync()
    assert harness.sql("SELECT table_name FROM tap_tables WHERE source = 'fake'") == [
        ("ivoa.obscore",)]
    assert harness.sql("SELECT column_name FROM tap_columns WHERE source = 'fake' "
                       "ORDER BY column_index") == [(s.name,) for s in tap.specs]


# -- incremental syncs -------------------------------------------------------------------------


def test_incremental_sync_touches_only_changed_and_added_rows(harness: Harness,
                                                              tap: FakeTap) -> None:
    first = harness.sync()
    before = harness.run_ids()
    ids = tap.ids()
    changed, gone = ids[5:8], ids[20:22]
    added = ["ivo://eso-sim.test/ID?NEW.1", "ivo://eso-sim.test/ID?NEW.2"]
    bump(tap, changed, snr=42.5)
    add_copies(tap, ids[0], added)
    delete(tap, gone)

    second = harness.sync()
    assert second.status == "ok", second.errors
    assert second.kind == "incremental"
    assert (second.new, second.changed, second.withdrawn) == (len(added), len(changed), len(gone))
    assert second.rows == len(changed) + len(added)  # only rows after the cursor were read
    after = harness.run_ids()
    for id_, run in after.items():
        if id_ in changed or id_ in added:
            assert run == second.run_id, id_
        else:
            assert run == before[id_] == first.run_id, id_
    assert harness.sql(f"SELECT {ID}, snr FROM ivoa.obscore WHERE snr IS NOT NULL "
                       "ORDER BY 1") == [(i, 42.5) for i in sorted(changed)]
    assert harness.current_ids() == tap.ids()


def test_deleted_rows_are_withdrawn_never_deleted(harness: Harness, tap: FakeTap) -> None:
    harness.sync()
    gone = tap.ids()[30:33]
    delete(tap, gone)
    report = harness.sync()
    assert report.status == "ok", report.errors
    assert report.withdrawn == len(gone) and sorted(report.would_withdraw) == sorted(gone)
    assert harness.withdrawn_ids() == sorted(gone)
    assert not set(gone) & set(harness.current_ids())
    assert harness.sql("SELECT count(*) FROM obscore_fake") == [(len(tap.ids()) + len(gone),)]
    assert harness.sql("SELECT count(*) FROM obscore_fake WHERE _withdrawn_at IS NOT NULL") == [
        (len(gone),)]
    assert harness.sql("SELECT rows_withdrawn FROM sync_runs WHERE run_id = ?",
                       report.run_id) == [(len(gone),)]


def test_withdrawn_row_that_comes_back_is_current_again(harness: Harness, tap: FakeTap) -> None:
    harness.sync()
    victim = tap.ids()[12]
    saved = tap.execute(f"SELECT * FROM ivoa.obscore WHERE {ID} = ?", [victim])
    delete(tap, [victim])
    harness.sync()
    assert victim in harness.withdrawn_ids()
    marks = ", ".join("?" for _ in saved[0])
    tap.execute(f"INSERT INTO ivoa.obscore VALUES ({marks})", list(saved[0]))
    bump(tap, [victim])
    report = harness.sync()
    assert report.status == "ok", report.errors
    assert report.new == 0 and report.rows == 1
    assert report.changed + report.reappeared == 1
    assert victim in harness.current_ids() and victim not in harness.withdrawn_ids()
    assert harness.sql(f"SELECT count(*) FROM obscore_fake WHERE {ID} = ?", victim) == [(1,)]


def test_row_back_with_its_old_watermark_is_repaired_by_the_id_pass(harness: Harness,
                                                                    tap: FakeTap) -> None:
    harness.sync()
    victim = tap.ids()[3]
    saved = tap.execute(f"SELECT * FROM ivoa.obscore WHERE {ID} = ?", [victim])
    delete(tap, [victim])
    harness.sync()
    marks = ", ".join("?" for _ in saved[0])
    tap.execute(f"INSERT INTO ivoa.obscore VALUES ({marks})", list(saved[0]))  # below the cursor
    report = harness.sync()
    assert report.status == "ok", report.errors
    assert report.repaired == 1
    assert victim in harness.current_ids() and victim not in harness.withdrawn_ids()


def test_back_dated_rows_beyond_the_hard_limit_are_all_repaired(harness: Harness,
                                                                tap: FakeTap) -> None:
    harness.sync()
    assert tap.hard_limit is not None
    late = [f"ivo://eso-sim.test/ID?LATE.{i:02d}" for i in range(3 * tap.hard_limit)]
    add_copies(tap, tap.ids()[0], late, when=dt.datetime(2001, 1, 1))  # below the cursor
    report = harness.sync()
    assert harness.current_ids() == tap.ids()
    assert report.repaired == len(late)
    assert report.status == "ok", report.errors


def test_source_without_watermark_compares_row_hashes(tmp_path: Path, tap: FakeTap) -> None:
    harness = Harness(tmp_path, tap, watermark="")
    try:
        first = harness.sync()
        assert first.status == "ok", first.errors
        assert first.new == len(tap.ids())
        second = harness.sync()
        assert second.status == "ok", second.errors
        assert second.kind == "full"
        assert (second.new, second.changed, second.unchanged) == (0, 0, len(tap.ids()))
        before = harness.run_ids()
        target = tap.ids()[17]
        tap.execute(f"UPDATE ivoa.obscore SET snr = 3.25 WHERE {ID} = ?", [target])  # same wm
        third = harness.sync()
        assert third.status == "ok", third.errors
        assert (third.new, third.changed) == (0, 1)
        assert [i for i, run in harness.run_ids().items() if run != before[i]] == [target]
        assert harness.sql(f"SELECT snr FROM ivoa.obscore WHERE {ID} = ?", target) == [(3.25,)]
        for query in tap.queries(PAGE):
            assert "last_modified >" not in query
    finally:
        harness.close()


def test_new_upstream_column_is_added_to_the_local_table(harness: Harness, tap: FakeTap) -> None:
    harness.sync()
    column = ColumnSpec("exposure_count", "int", ucd="meta.number",
                        description="exposures in the product")
    tap.add_column(column, "42")
    target = tap.ids()[9]
    bump(tap, [target])
    report = harness.sync()
    assert report.status == "ok", report.errors
    assert harness.sql("SELECT data_type FROM information_schema.columns WHERE "
                       "table_name = 'obscore_fake' AND column_name = 'exposure_count'") == [
        ("INTEGER",)]
    assert harness.sql("SELECT ucd, description FROM source_columns WHERE "
                       "column_name = 'exposure_count'") == [(column.ucd, column.description)]
    assert harness.sql(f"SELECT exposure_count FROM ivoa.obscore WHERE {ID} = ?", target) == [
        (42,)]


# -- failures, caps and dry runs ------------------------------------------------------------------


def test_withdrawals_are_skipped_when_a_page_failed(harness: Harness, tap: FakeTap) -> None:
    harness.sync()
    gone = tap.ids()[40:42]
    delete(tap, gone)
    bump(tap, tap.ids()[:2])
    tap.inject(Fault(400, body=dachs_error("Query execution failed: canceled"), match=PAGE,
                     times=10))
    report = harness.sync()
    assert report.status != "ok" and report.errors
    assert report.withdrawn == 0
    assert set(gone) <= set(harness.current_ids())
    assert harness.withdrawn_ids() == []


def test_withdrawals_are_skipped_when_the_id_pass_failed(harness: Harness, tap: FakeTap) -> None:
    harness.sync()
    gone = tap.ids()[40:42]
    delete(tap, gone)
    tap.inject(Fault(400, body=dachs_error("Query execution failed: canceled"), match=IDS,
                     skip=2, times=10))
    report = harness.sync()
    assert report.status != "ok"
    assert any("ID" in e or "canceled" in e for e in report.errors), report.errors
    assert report.withdrawn == 0
    assert set(gone) <= set(harness.current_ids())
    assert harness.withdrawn_ids() == []


def test_withdrawals_above_max_withdrawals_are_refused(tmp_path: Path, tap: FakeTap) -> None:
    harness = Harness(tmp_path, tap, max_withdrawals=2)
    try:
        harness.sync()
        gone = tap.ids()[:3]
        delete(tap, gone)
        report = harness.sync()
        assert report.status != "ok"
        assert any("max_withdrawals" in e for e in report.errors), report.errors
        assert report.withdrawn == 0
        assert sorted(report.would_withdraw) == sorted(gone)
        assert set(gone) <= set(harness.current_ids())
        assert harness.withdrawn_ids() == []
    finally:
        harness.close()


def test_withdrawals_up_to_max_withdrawals_are_done(tmp_path: Path, tap: FakeTap) -> None:
    harness = Harness(tmp_path, tap, max_withdrawals=2)
    try:
        harness.sync()
        gone = tap.ids()[:2]
        delete(tap, gone)
        report = harness.sync()
        assert report.status == "ok", report.errors
        assert harness.withdrawn_ids() == sorted(gone)
    finally:
        harness.close()


def test_dry_run_writes_nothing_and_reports_what_a_sync_would_do(harness: Harness,
                                                                 tap: FakeTap) -> None:
    harness.sync()
    ids = tap.ids()
    changed, gone, added = ids[1:3], [ids[30]], ["ivo://eso-sim.test/ID?NEW.dry"]
    bump(tap, changed, snr=1.5)
    delete(tap, gone)
    add_copies(tap, ids[0], added)
    before = harness.snapshot()

    dry = harness.sync(dry_run=True)
    assert dry.status == "ok", dry.errors
    assert dry.dry_run and dry.run_id is None
    assert harness.snapshot() == before
    assert (dry.new, dry.changed, dry.withdrawn) == (len(added), len(changed), 0)
    assert dry.would_withdraw == gone

    real = harness.sync()
    assert real.status == "ok", real.errors
    assert (real.new, real.changed, real.withdrawn) == (dry.new, dry.changed,
                                                        len(dry.would_withdraw))


def test_dry_run_on_an_empty_catalogue_reports_every_row_new(harness: Harness,
                                                             tap: FakeTap) -> None:
    report = harness.sync(dry_run=True)
    assert report.status == "ok", report.errors
    assert report.new == len(tap.ids()) and report.upstream_count == len(tap.ids())
    assert harness.sql("SELECT count(*) FROM sources") == [(0,)]
    assert harness.sql("SELECT count(*) FROM sync_runs") == [(0,)]
    assert harness.sql("SELECT count(*) FROM duckdb_tables() WHERE table_name = "
                       "'obscore_fake'") == [(0,)]


@SMALL_PAGES
def test_transient_faults_while_paging_are_retried_and_the_sync_is_complete(
        harness: Harness, tap: FakeTap) -> None:
    tap.inject(Fault(500, match=PAGE, skip=2),
               Fault(429, headers={"Retry-After": "2"}, match=PAGE, skip=3),
               Fault(action="reset", match=IDS, skip=1),
               Fault(503, match="COUNT", skip=4))
    report = harness.sync()
    assert report.status == "ok", report.errors
    assert harness.current_ids() == tap.ids() and report.proof_ok is True
    assert tap.faults == [], "every injected fault should have fired"
    assert 2.0 in harness.sleep.delays
    assert len(harness.sleep.delays) == 4


@SMALL_PAGES
def test_sync_resumes_after_a_failed_page_from_the_last_committed_one(harness: Harness,
                                                                      tap: FakeTap) -> None:
    tap.inject(Fault(400, body=dachs_error("Query execution failed"), match=PAGE, skip=3,
                     times=1))
    first = harness.sync()
    assert first.status != "ok"
    assert first.windows == 3
    [(cursor,)] = harness.sql("SELECT upper_id FROM sync_windows WHERE run_id = ? "
                              "ORDER BY seq DESC LIMIT 1", first.run_id)
    asked_before = len(tap.queries(PAGE))
    second = harness.sync()
    assert second.status == "ok", second.errors
    assert second.kind == "incremental"
    assert harness.current_ids() == tap.ids()
    assert harness.sql("SELECT count(*) FROM obscore_fake") == [(len(tap.ids()),)]
    resumed = tap.queries(PAGE)[asked_before]  # the second sync's first page
    assert literal(cursor) in resumed  # it starts after the last committed page


def test_token_from_token_env_is_sent_to_the_service(tmp_path: Path, tap: FakeTap,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_TAP_TOKEN", "tok-abc-123")
    harness = Harness(tmp_path, tap, token_env="FAKE_TAP_TOKEN")
    try:
        report = harness.sync()
        assert report.status == "ok", report.errors
        sync_requests = [r for r in tap.received if r.path.endswith("/sync")]
        assert sync_requests and all(r.headers.get("Authorization") == "Bearer tok-abc-123"
                                     for r in sync_requests)
        dump = repr(harness.snapshot()) + harness.config.read_text()
        assert "tok-abc-123" not in dump
    finally:
        harness.close()


class _harness:  # noqa: N801 - a context manager for tests that build their own service
    def __init__(self, tap: FakeTap) -> None:
        import tempfile

        self._dir = tempfile.TemporaryDirectory()
        self.harness = Harness(Path(self._dir.name), tap)

    def __enter__(self) -> Harness:
        return self.harness

    def __exit__(self, *exc: object) -> None:
        self.harness.close()
        self._dir.cleanup()
