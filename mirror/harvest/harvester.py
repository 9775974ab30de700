"""One sync of one source: keyset pages, a completeness proof, then withdrawals.

Pages commit in groups: a transaction holds whole pages with their window records and the
advanced cursor, so a kill at any instant resumes after the last committed page and ends with
the same catalogue as an uninterrupted run. A group closes at `COMMIT_ROWS` rows or after
`COMMIT_SECONDS`, and before any stop (a cancel, a failed page, the end of the pass).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import sqlalchemy as sa

from mirror.catalogue import obscore, runs
from mirror.catalogue.engine import Catalogue, utcnow
from mirror.catalogue.obscore import PageCounts
from mirror.config import SourceConfig
from mirror.errors import (
    CancelledError,
    ConfigError,
    MirrorError,
    PermanentError,
    WithdrawalCapError,
)
from mirror.harvest import plan
from mirror.harvest.examples import read_examples, replace_examples
from mirror.harvest.pages import parse_csv, parse_ids
from mirror.harvest.tap import TapClient
from mirror.harvest.tap_schema import replicate_tap_schema

log = logging.getLogger("mirror")
WATERMARK_CANDIDATES = ("last_mod_date", "last_modified")
REPAIR_BATCH = 200
PROOF_THREADS = 4  # COUNT(*) requests in flight at once: they are small, latency dominates
Progress = Callable[[dict[str, Any]], None]


@dataclass
class SyncReport:
    """What one sync of one source did; also what `--json` prints."""

    source: str
    run_id: int | None = None
    kind: str = "incremental"
    status: str = "running"
    dry_run: bool = False
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    reappeared: int = 0
    repaired: int = 0
    withdrawn: int = 0
    would_withdraw: list[str] = field(default_factory=list)
    windows: int = 0
    upstream_count: int | None = None
    local_count: int | None = None
    proof_ok: bool | None = None
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rows(self) -> int:
        return self.new + self.changed + self.unchanged + self.reappeared

    def add(self, counts: PageCounts) -> None:
        self.new += counts.new
        self.changed += counts.changed
        self.unchanged += counts.unchanged
        self.reappeared += counts.reappeared


def detect_watermark(setting: str, names: Sequence[str]) -> str | None:
    """The modification column: configured, or the first known one the service has."""
    by_lower = {n.lower(): n for n in names}
    if setting == "":
        return None
    if setting != "auto":
        if setting.lower() not in by_lower:
            raise ConfigError(f"watermark column {setting!r} is not published by the service",
                              f"use one of its columns, 'auto', or '' (full passes); it has: "
                              f"{', '.join(names[:12])}...")
        return by_lower[setting.lower()]
    return next((by_lower[c] for c in WATERMARK_CANDIDATES if c in by_lower), None)


def page_size(configured: int, hardlimit: int | None) -> int:
    """Rows per request: never above the service's hard limit."""
    return min(configured, hardlimit) if hardlimit else configured


class Harvester:
    """Sync one source into the catalogue."""

    def __init__(self, catalogue: Catalogue, source: SourceConfig, client: TapClient,
                 progress: Progress | None = None,
                 cancel: threading.Event | None = None) -> None:
        self.cat = catalogue
        self.src = source
        self.client = client
        self.progress = progress or (lambda event: None)
        self.cancel = cancel  # set: stop at the next window boundary (nothing half-committed)
        self.seen: set[str] = set()
        self.append_only = False  # a first pass into an empty table: plain appends

    def run(self, *, dry_run: bool = False, full: bool = False) -> SyncReport:
        started = time.monotonic()
        report = SyncReport(self.src.name, dry_run=dry_run)
        try:
            self._run(report, dry_run=dry_run, full=full)
        except CancelledError as exc:
            report.errors.append(exc.message)
            report.status = "cancelled"
            log.info("sync of %s stopped on request after %d windows", self.src.name,
                     report.windows)
        except MirrorError as exc:
            report.errors.append(exc.message)
            report.status = "failed"
            log.error("sync of %s failed: %s", self.src.name, exc.message)
        if not dry_run and report.run_id is not None:
            self._recluster(report)
        report.seconds = time.monotonic() - started
        if report.status == "running":
            report.status = "ok" if not report.errors else "failed"
        if report.run_id is not None:
            with self.cat.begin() as conn:
                runs.finish_run(conn, report.run_id, report.status,
                                upstream_count=report.upstream_count,
                                local_count=report.local_count, proof_ok=report.proof_ok,
                                errors="\n".join(report.errors) or None)
        return report

    def _stopping(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()

    def _check_cancel(self) -> None:
        """Raise at a safe point (after a committed window) when asked to stop."""
        if self._stopping():
            raise CancelledError("stopped on request", "the next sync resumes from its cursor")

    def _recluster(self, report: SyncReport) -> None:
        """Keep rows ordered by `_hpx` once a run appended many (unordered) ones; a failure
        here costs query speed only, never rows, so it is logged, not reported."""
        written = report.new + report.changed + report.reappeared + report.repaired
        try:
            with self.cat.begin() as conn:
                if obscore.recluster(conn, self.src.name, written):
                    log.info("%s: rows re-clustered by HEALPix index", self.src.name)
        except sa.exc.DBAPIError as exc:
            log.warning("%s: re-clustering failed (%s); queries stay correct, only slower",
                        self.src.name, str(exc.orig).splitlines()[0])

    # -- the steps ---------------------------------------------------------------------------

    def _run(self, report: SyncReport, *, dry_run: bool, full: bool) -> None:
        specs = self.client.columns(self.src.table)
        names = [s.name for s in specs]
        if self.src.id_column not in names:
            raise ConfigError(f"source {self.src.name!r}: the service has no column "
                              f"{self.src.id_column!r} in {self.src.table}",
                              "set id_column to the column that identifies a record")
        self.specs, self.wm = specs, detect_watermark(self.src.watermark, names)
        limits = self.client.limits()
        self.page = page_size(self.src.page_size, limits.hardlimit)
        self.limit_known = limits.hardlimit is not None
        with ThreadPoolExecutor(1, thread_name_prefix="mirror-tap-schema") as side:
            # TAP_SCHEMA is read while the rows are paged, and written at the end
            tap_schema = side.submit(replicate_tap_schema, self.client, self.page,
                                     cancel=self.cancel)
            examples = side.submit(lambda: [] if self._stopping() else read_examples(self.client))
            start = self._prepare(report, dry_run=dry_run, full=full)
            self._pages(report, start, dry_run=dry_run)
            self._check_cancel()
            if not report.errors:
                self._prove(report, dry_run=dry_run)
            self._reconcile_ids(report, dry_run=dry_run)
            if not dry_run:
                with self.cat.begin() as conn:
                    runs.replace_tap_schema(conn, self.src.name, tap_schema.result())
                    replace_examples(conn, self.src.name, examples.result())
        self._count(report)

    def _prepare(self, report: SyncReport, *, dry_run: bool, full: bool) -> plan.Key | None:
        with self.cat.begin() as conn:
            row = runs.get_source(conn, self.src.name)
            fresh = (full or row is None or row.watermark_column != self.wm
                     or row.table_name != self.src.table)
            start = None
            if not fresh and row is not None and row.cursor_id is not None:
                start = plan.Key(row.cursor_watermark if self.wm else None, row.cursor_id)
            report.kind = "incremental" if self.wm and start else "full"
            self.table_exists = row is not None
            if dry_run:
                return start
            obscore.ensure_table(conn, self.src.name, self.specs)
            self.table_exists = True
            runs.upsert_source(conn, self.src.name, url=self.src.url, table_name=self.src.table,
                               data_table=obscore.data_table(self.src.name),
                               id_column=self.src.id_column, watermark_column=self.wm)
            if fresh and start is None:
                runs.set_cursor(conn, self.src.name, None, None)
            report.run_id = runs.start_run(conn, self.src.name, report.kind)
            self.append_only = start is None and obscore.total_count(conn, self.src.name) == 0
        return start

    def _pages(self, report: SyncReport, start: plan.Key | None, *, dry_run: bool) -> None:
        """Keyset pages from `start` to the end, committed in groups (`PageGroup`)."""
        self.windows: list[tuple[plan.Key | None, plan.Key, int]] = []
        key = start
        t0 = time.monotonic()
        # the next page is fetched and parsed while this one is written (HTTP, CSV parsing and
        # DuckDB all release the GIL)
        with ThreadPoolExecutor(1, thread_name_prefix="mirror-page") as ahead, \
                PageGroup(self.cat, self.src.name) as group:
            upcoming = ahead.submit(self._fetch_page, key)
            while True:
                try:
                    table = upcoming.result()
                except MirrorError as exc:
                    report.errors.append(f"page after {key}: {exc.message}")
                    return  # the pages before it commit as the group closes
                if table.num_rows == 0:
                    break
                last = self._last_key(table)
                more = table.num_rows >= self.page or not self.limit_known
                if more:
                    upcoming = ahead.submit(self._fetch_page, last)
                self._page_done(report, table, key, last, t0, dry_run=dry_run,
                                conn=group.conn())
                # commit while the next page is still on its way (the wait is free), else
                # keep writing into the same transaction up to the group's size or age
                group.added(table.num_rows,
                            None if dry_run else (report.windows - 1, table.num_rows, last.id),
                            waiting=more and not upcoming.done())
                key = last
                if self._stopping():
                    group.commit()
                    self._check_cancel()
                if not more:
                    break
        if report.rows:  # the rate once the last group is committed, not before
            self._rows_progress(report, t0)
        if not dry_run and not self.wm and not report.errors:
            with self.cat.begin() as conn:  # a completed full pass starts over next time
                runs.set_cursor(conn, self.src.name, None, None)

    def _fetch_page(self, key: plan.Key | None) -> pa.Table:
        query = plan.page_query(self.src.table, [s.name for s in self.specs], self.src.where,
                                self.wm, self.src.id_column, key, self.page)
        return parse_csv(self.client.csv(query, maxrec=self.page, bulk=True), self.specs,
                         self.client.url)

    def _page_done(self, report: SyncReport, table: pa.Table, key: plan.Key | None,
                   last: plan.Key, t0: float, *, dry_run: bool,
                   conn: sa.Connection | None = None) -> None:
        counts = self._apply(table, report, dry_run=dry_run, window=(key, last), conn=conn)
        report.add(counts)
        self.windows.append((key, last, table.num_rows))
        report.windows += 1
        self._rows_progress(report, t0)

    def _rows_progress(self, report: SyncReport, t0: float) -> None:
        self.progress({"phase": "rows", "source": self.src.name, "rows": report.rows,
                       "windows": report.windows,
                       "rate": report.rows / max(time.monotonic() - t0, 1e-9)})

    def _apply(self, table: pa.Table, report: SyncReport, *, dry_run: bool,
               window: tuple[plan.Key | None, plan.Key] | None = None,
               conn: sa.Connection | None = None) -> PageCounts:
        """Write one page in `conn`'s transaction (a page group's), else in one of its own."""
        if dry_run:
            self.seen.update(table.column(self.src.id_column).to_pylist())
        in_group = conn  # a page group's transaction logs its windows when it commits
        with contextlib.nullcontext(conn) if conn is not None else self.cat.begin() as conn:
            if self.append_only and window is not None and not dry_run:
                # first pass into an empty table: every row is new, skip the comparison
                counts = PageCounts(new=obscore.append_page(
                    conn, self.src.name, self.specs, table, report.run_id or 0))
            else:
                obscore.stage_page(conn, self.specs, table)
                if not self.table_exists:
                    return PageCounts(new=table.num_rows)
                counts = obscore.apply_page(conn, self.src.name, self.specs,
                                            self.src.id_column, report.run_id or 0,
                                            dry_run=dry_run)
            if dry_run or report.run_id is None:
                return counts
            runs.add_counts(conn, report.run_id, rows_new=counts.new,
                            rows_changed=counts.changed + counts.reappeared,
                            rows_unchanged=counts.unchanged)
            if window is not None:
                lower, upper = window
                runs.record_window(conn, report.run_id, report.windows,
                                   (lower.watermark, lower.id) if lower else None,
                                   (upper.watermark, upper.id), table.num_rows)
                if self.wm:
                    runs.set_cursor(conn, self.src.name, _text(upper.watermark), upper.id)
                else:
                    runs.set_cursor(conn, self.src.name, None, upper.id)
                if in_group is None:
                    log.info("%s: window %d committed, %d rows up to %s", self.src.name,
                             report.windows, table.num_rows, upper.id)
        return counts

    def _last_key(self, table: pa.Table) -> plan.Key:
        last = table.slice(table.num_rows - 1)
        wm = last.column(self.wm)[0].as_py() if self.wm else None
        return plan.Key(wm, last.column(self.src.id_column)[0].as_py())

    def _prove(self, report: SyncReport, *, dry_run: bool) -> None:
        """Compare each window's rows with the service's own COUNT(*); re-fetch a window once
        when they differ (a record changed while we paged), then record the proof."""
        ok = True
        proven: list[tuple[int, int, int]] = []
        with ThreadPoolExecutor(PROOF_THREADS, thread_name_prefix="mirror-proof") as pool:
            counts = list(pool.map(lambda w: self._window_count(w[0], w[1]), self.windows))
        for seq, ((lower, upper, received), count) in enumerate(zip(self.windows, counts,
                                                                   strict=True)):
            if count != received:
                log.info("window %d of %s: %d rows received, service counts %d; re-fetching",
                         seq, self.src.name, received, count)
                received = self._refetch_window(report, lower, upper, dry_run=dry_run)
                count = self._window_count(lower, upper)
            if count != received:
                ok = False
                report.errors.append(f"window {seq} ({lower} .. {upper}): received {received} "
                                     f"rows, the service counts {count}")
            proven.append((seq, count, received))
        if not dry_run and report.run_id is not None:
            with self.cat.begin() as conn:  # one commit for all windows
                for seq, count, received in proven:
                    runs.set_window_count(conn, report.run_id, seq, count, received)
        report.proof_ok = ok

    def _window_count(self, lower: plan.Key | None, upper: plan.Key) -> int:
        query = plan.window_count_query(self.src.table, self.src.where, self.wm,
                                        self.src.id_column, lower, upper)
        return _scalar(self.client.csv(query))

    def _refetch_window(self, report: SyncReport, lower: plan.Key | None, upper: plan.Key, *,
                        dry_run: bool) -> int:
        key, total = lower, 0
        bound = plan.at_or_before(upper, self.wm, self.src.id_column)
        where = f"({self.src.where}) AND {bound}" if self.src.where else bound
        while True:
            query = plan.page_query(self.src.table, [s.name for s in self.specs], where,
                                    self.wm, self.src.id_column, key, self.page)
            table = parse_csv(self.client.csv(query, maxrec=self.page, bulk=True), self.specs,
                              self.client.url)
            if table.num_rows == 0:
                return total
            report.add(self._apply(table, report, dry_run=dry_run))
            total += table.num_rows
            key = self._last_key(table)

    def _reconcile_ids(self, report: SyncReport, *, dry_run: bool) -> None:
        """Compare ID sets: fetch records missing here, withdraw those gone upstream."""
        if not self.table_exists:
            return
        with self.cat.begin() as conn:
            conn.exec_driver_sql("CREATE OR REPLACE TEMP TABLE _upstream_ids (id VARCHAR)")
        start: str | None = None
        try:
            while True:
                self._check_cancel()
                query = plan.ids_query(self.src.table, self.src.where, self.src.id_column,
                                       start, self.page)
                body = self.client.csv(query, maxrec=self.page, bulk=True)
                ids = parse_ids(body, self.client.url)
                if len(ids) == 0:
                    break
                with self.cat.begin() as conn:
                    obscore.append_upstream_ids(conn, ids)
                start = ids[-1].as_py()
                self.progress({"phase": "ids", "source": self.src.name, "ids": start})
                if len(ids) < self.page and self.limit_known:
                    break
        except CancelledError:
            raise
        except MirrorError as exc:
            report.errors.append(f"ID pass: {exc.message}")
            return
        with self.cat.begin() as conn:
            missing = obscore.missing_ids(conn, self.src.name, self.src.id_column)
        if dry_run:  # a dry run wrote nothing, so what its pages saw is not "missing"
            missing = [i for i in missing if i not in self.seen]
        self._repair(report, missing, dry_run=dry_run)
        with self.cat.begin() as conn:
            gone = obscore.vanished_ids(conn, self.src.name, self.src.id_column)
        self._withdraw(report, gone, dry_run=dry_run)

    def _repair(self, report: SyncReport, ids: list[str], *, dry_run: bool) -> None:
        """Fetch records by ID; a batch the service truncated puts its unanswered IDs back."""
        names = [s.name for s in self.specs]
        todo, size = list(ids), min(REPAIR_BATCH, self.page)
        while todo:
            self._check_cancel()
            batch, todo = todo[:size], todo[size:]
            query = plan.rows_by_id_query(self.src.table, names, self.src.where,
                                          self.src.id_column, batch)
            try:
                table = parse_csv(self.client.csv(query, maxrec=len(batch)), self.specs,
                                  self.client.url)
            except MirrorError as exc:
                report.errors.append(f"repairing {len(batch)} records: {exc.message}")
                return
            got = set(table.column(self.src.id_column).to_pylist())
            short = [i for i in batch if i not in got]
            if short and 0 < table.num_rows < len(batch):  # truncated: ask the rest again
                todo, size = short + todo, table.num_rows
            counts = self._apply(table, report, dry_run=dry_run)
            report.repaired += counts.new + counts.changed + counts.reappeared
            if not dry_run and report.run_id is not None:
                with self.cat.begin() as conn:
                    runs.add_counts(conn, report.run_id,
                                    rows_repaired=counts.new + counts.changed + counts.reappeared)

    def _withdraw(self, report: SyncReport, gone: list[str], *, dry_run: bool) -> None:
        report.would_withdraw = gone
        if not gone:
            return
        if report.errors:
            log.warning("%s: %d records look withdrawn, but the pass had errors: none withdrawn",
                        self.src.name, len(gone))
            return
        if len(gone) > self.src.max_withdrawals:
            err = WithdrawalCapError(
                f"{len(gone)} records of {self.src.name!r} vanished upstream, more than "
                f"max_withdrawals = {self.src.max_withdrawals}; none withdrawn",
                f"check with `mirror sync {self.src.name} --dry-run`, then raise max_withdrawals")
            report.errors.append(err.message)
            return
        if dry_run:
            return
        with self.cat.begin() as conn:
            report.withdrawn = obscore.withdraw(conn, self.src.name, self.src.id_column, gone,
                                                utcnow())
            if report.run_id is not None:
                runs.add_counts(conn, report.run_id, rows_withdrawn=report.withdrawn)

    def _count(self, report: SyncReport) -> None:
        """Totals: the service's count of the selection against ours, recorded with the run."""
        try:
            report.upstream_count = _scalar(self.client.csv(
                plan.count_query(self.src.table, self.src.where)))
        except MirrorError as exc:
            report.errors.append(f"final count: {exc.message}")
            return
        if self.table_exists and not report.dry_run:
            with self.cat.begin() as conn:
                report.local_count = obscore.active_count(conn, self.src.name)
                if report.run_id is not None:
                    conn.execute(sa.text("UPDATE sources SET last_sync_at = :t WHERE name = :n"),
                                 {"t": utcnow(), "n": self.src.name})
            if report.local_count != report.upstream_count:
                report.proof_ok = False
                report.errors.append(f"the service counts {report.upstream_count} rows, the "
                                     f"mirror holds {report.local_count}")


class PageGroup:
    """One open transaction over consecutive pages, committed when the next page is still
    being fetched (the commit overlaps the wait), else every `COMMIT_ROWS` rows or
    `COMMIT_SECONDS`, and when the group closes without an exception (rolled back with one).

    Fewer, larger commits where pages arrive faster than they are written: a commit per
    10,000-row page cost ~15 % of the ingest (WAL flush and fsync each time), and a
    transaction of more than a row group (122,880 rows) lets DuckDB write whole row groups to
    the file instead of through the WAL. Each window's "committed" log line is written after
    its commit, never before."""

    COMMIT_ROWS = 50_000
    COMMIT_SECONDS = 5.0

    def __init__(self, catalogue: Catalogue, source: str) -> None:
        self.cat = catalogue
        self.source = source
        self._open: contextlib.ExitStack | None = None
        self._conn: sa.Connection | None = None
        self._rows = 0
        self._since = 0.0
        self._windows: list[tuple[int, int, object]] = []

    def conn(self) -> sa.Connection:
        if self._conn is None:
            self._open = contextlib.ExitStack()
            self._conn = self._open.enter_context(self.cat.begin())
            self._rows, self._since = 0, time.monotonic()
        return self._conn

    def added(self, rows: int, window: tuple[int, int, object] | None, *,
              waiting: bool) -> None:
        """A page of `rows` was written as `window` (seq, rows, last id; None: nothing to log)."""
        self._rows += rows
        if window is not None:
            self._windows.append(window)
        if (waiting or self._rows >= self.COMMIT_ROWS
                or time.monotonic() - self._since >= self.COMMIT_SECONDS):
            self.commit()

    def commit(self) -> None:
        if self._open is not None:
            opened, self._open, self._conn = self._open, None, None
            opened.close()
            for seq, rows, last in self._windows:
                log.info("%s: window %d committed, %d rows up to %s", self.source, seq, rows,
                         last)
        self._windows = []

    def __enter__(self) -> PageGroup:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: Any) -> None:
        if kind is None:
            self.commit()
        elif self._open is not None:
            opened, self._open, self._conn, self._windows = self._open, None, None, []
            opened.__exit__(kind, exc, tb)  # rolls the open group back


def _scalar(body: bytes) -> int:
    lines = [ln for ln in body.decode("utf-8", "replace").splitlines() if ln.strip()]
    try:
        return int(float(lines[1].split(",")[0]))
    except (IndexError, ValueError) as exc:
        raise PermanentError(f"expected a count, got {body[:200]!r}") from exc


def _text(value: object) -> str | None:
    return None if value is None else str(value)
