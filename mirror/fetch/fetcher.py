"""Fetch the selected products of one source into the store.

select (queue new and changed records) -> resolve (DataLink #this) -> download (parallel,
resumable) -> verify (size, content, FITS checksums) -> commit (temp file in the target folder,
fsync, rename, fsync folder) -> record (batched). A kill at any instant leaves either no file or
a complete verified one; a file committed but not yet recorded is adopted on the next run.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from operator import itemgetter
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import requests
import sqlalchemy as sa

from mirror.catalogue import products
from mirror.catalogue.engine import Catalogue, utcnow
from mirror.config import Config, SourceConfig
from mirror.errors import AuthError, CollisionError, MirrorError
from mirror.fetch import datalink
from mirror.fetch.lanes import Lanes, lanes_for
from mirror.fetch.select import select
from mirror.fetch.transport import Download, Outcome, Transport
from mirror.http import make_session
from mirror.retry import RetryPolicy
from mirror.store.files import Store
from mirror.store.layout import sanitise_component
from mirror.store.verify import verify_file

log = logging.getLogger("mirror")
Progress = Callable[[dict[str, Any]], None]
# seconds between catalogue commits while downloading: each costs the network loop ~5-10 ms
# whatever its size, and a crash loses nothing (files stored but not recorded are adopted)
RECORD_EVERY = 2.0


@dataclass
class FetchReport:
    """What one fetch of one source did; also what `--json` prints."""

    source: str
    queued: int = 0
    skipped: int = 0
    done: int = 0
    adopted: int = 0
    failed: int = 0
    embargoed: int = 0
    withdrawn: int = 0
    bytes: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    status: str = "ok"


@dataclass
class _Job:
    row: sa.Row[Any]
    rel: str  # the store path as text: the store resolves it once and remembers it
    target: str = ""  # where the product goes, resolved inside the store
    temp: str = ""  # its download file beside it

    @property
    def key(self) -> dict[str, Any]:
        return {"source": self.row.source, "product_id": self.row.product_id,
                "role": self.row.role}


class Fetcher:
    """Fetch one source's selected products."""

    def __init__(self, catalogue: Catalogue, config: Config, source: SourceConfig, *,
                 transport: Transport | None = None, session: requests.Session | None = None,
                 policy: RetryPolicy | None = None, progress: Progress | None = None,
                 now: Callable[[], datetime] = utcnow,
                 cancel: threading.Event | None = None) -> None:
        self.cat = catalogue
        self.config = config
        self.src = source
        self.store = Store(config.store_root)
        self.token = source.token()
        self.host = urlsplit(source.url).hostname
        self.session = session or make_session(source.url, self.token)
        self.policy = policy or RetryPolicy(attempts=config.fetch.retries)
        self.transport = transport or Transport(
            concurrency=config.fetch.concurrency, per_host=config.fetch.per_host,
            low_speed_time=config.fetch.stall_seconds)
        self.lanes: Lanes | None = None  # big products: the transport and siblings of it
        self.progress = progress or (lambda event: None)
        self.listening = progress is not None  # per-file events are only built for a listener
        self.now = now
        self.folders: set[str] = set()  # renamed into, not yet fsynced
        self.cancel = cancel  # set: abandon transfers in flight (kept resumable) and return

    def run(self, *, retry_failed: bool = False) -> FetchReport:
        with _collector_skips_old_objects():
            return self._run(retry_failed)

    def _run(self, retry_failed: bool) -> FetchReport:
        started = time.monotonic()
        report = FetchReport(self.src.name)
        try:
            self.transport.start()  # its hashing process starts up while the selection runs
            with self.cat.begin() as conn:
                sel = select(conn, self.config, self.src, retry_failed=retry_failed)
                report.queued, report.skipped, report.withdrawn = (
                    sel.queued, sel.skipped, sel.withdrawn)
                report.errors.extend(sel.errors)
            waiting = None
            if not self._cancelled():
                with self.cat.begin() as conn:  # one read of the queue serves both steps
                    waiting = products.pending(conn, self.src.name)
                if self._resolve(report, [r for r in waiting if r.url is None]):
                    waiting = None  # links were resolved: the queue is read again
            if not self._cancelled():
                self._download(report, waiting)
        except AuthError as exc:
            report.errors.append(str(exc))
            report.status = "failed"
        except MirrorError as exc:
            report.errors.append(exc.message)
            report.status = "failed"
        finally:
            if self.lanes is not None:
                self.lanes.close()
            self.transport.close()
        report.seconds = time.monotonic() - started
        if self._cancelled() and report.status == "ok":
            report.status = "cancelled"
        elif report.failed and report.status == "ok":
            report.status = "incomplete"
        return report

    def _cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()

    # -- resolution ---------------------------------------------------------------------------

    def _resolve(self, report: FetchReport, todo: list[sa.Row[Any]]) -> bool:
        """Resolve the DataLink products among the pending `todo`; True if there were any."""
        if not todo:
            return False
        self.progress({"phase": "resolve", "source": self.src.name, "total": len(todo)})
        links = datalink.resolve([(r.product_id, r.access_url) for r in todo], self.session,
                                 self.policy)
        changes, aux = [], []
        for r in todo:
            found = links.get(r.product_id) or datalink.Links(error="not resolved")
            if found.this:
                changes.append(_outcome(r, state="pending", url=found.this,
                                        content_type=found.content_type))
                if self.src.fetch_ancillary:
                    aux.extend(_aux_rows(r, found.auxiliary))
            else:
                changes.append(_outcome(r, state="failed", attempts=r.attempts + 1,
                                        last_error=f"DataLink: {found.error}"))
                report.failed += 1
        with self.cat.begin() as conn:
            products.update(conn, changes)
            products.queue(conn, self.src.name, aux)
        return True

    # -- downloads ----------------------------------------------------------------------------

    def _download(self, report: FetchReport, pending: list[sa.Row[Any]] | None) -> None:
        """Passes over the pending products (`pending`: as just read, else read here);
        transient failures wait and go again."""
        for attempt in range(1, self.config.fetch.retries + 1):
            if pending is None:
                with self.cat.begin() as conn:
                    pending = products.pending(conn, self.src.name)
            rows, pending = [r for r in pending if r.url], None
            if not rows:
                return
            jobs = [_Job(r, r.path) for r in rows]
            again, hint = self._pass(jobs, report, final=attempt == self.config.fetch.retries)
            if not again or self._cancelled():
                return
            wait = self.policy.delay(attempt, hint)
            log.info("%s: retrying transient failures in %.1f s", self.src.name, wait)
            if self.cancel is not None:
                self.cancel.wait(wait)  # wakes at once on a stop request
            else:
                self.policy.sleep(wait)

    def _pass(self, jobs: list[_Job], report: FetchReport, *,
              final: bool) -> tuple[bool, float | None]:
        """One pass; returns whether something should be retried, and the longest Retry-After
        a server asked for (None: back off exponentially)."""
        pending_changes: list[dict[str, Any]] = []
        last_commit = time.monotonic()
        again_any, hint = False, None
        total = len(jobs)
        for n, (job, outcome) in enumerate(self._transfers(jobs, report), start=1):
            change, again = self._judge(job, outcome, report, final=final)
            pending_changes.append(change)
            if again:
                again_any = True
                if outcome is not None and outcome.retry_after is not None:
                    hint = max(hint or 0.0, outcome.retry_after)
            if time.monotonic() - last_commit > RECORD_EVERY:
                self._record(pending_changes)
                pending_changes, last_commit = [], time.monotonic()
            if self.listening:
                self.progress({"phase": "fetch", "source": self.src.name, "done": n,
                               "total": total, "bytes": report.bytes})
        self._record(pending_changes)
        return again_any, hint

    def _transfers(self, jobs: list[_Job],
                   report: FetchReport) -> Iterator[tuple[_Job, Outcome | None]]:
        """Adopt files already in place (committed before a crash), download the rest; jobs
        are prepared as the transport asks for them, so the first transfers start at once."""
        by_key: dict[int, _Job] = {}
        adopted: list[_Job] = []

        def downloads() -> Iterator[Download]:
            for i, job in enumerate(jobs):
                row = job.row
                job.target, job.temp = self.store.locate(job.rel)
                if row.sha256 is None and os.path.isfile(job.target):
                    adopted.append(job)
                    continue
                # resume only what a recorded validator vouches for (a kill -9 records none)
                validator = row.last_modified if row.sha256 is None else None
                resume = _size(job.temp) if validator else 0  # a stat only if it may resume
                by_key[i] = job
                yield Download(key=i, url=row.url, dest=job.temp, resume_from=resume,
                               validator=validator if resume else None,
                               headers=self._auth(row.url))

        for outcome in self._engine(jobs).run(downloads(), cancel=self.cancel):
            yield from self._adopt(adopted, report)
            yield by_key.pop(outcome.key), outcome  # type: ignore[call-overload]
        yield from self._adopt(adopted, report)

    def _engine(self, jobs: list[_Job]) -> Transport | Lanes:
        """The transport, or lanes of it when the products are big (see `mirror.fetch.lanes`)."""
        count = lanes_for((job.row.estimated_size for job in jobs), self.transport)
        if count == 1:
            return self.transport
        if self.lanes is None:
            self.lanes = Lanes(self.transport, count)
        return self.lanes

    @staticmethod
    def _adopt(adopted: list[_Job],
               report: FetchReport) -> Iterator[tuple[_Job, Outcome | None]]:
        while adopted:
            report.adopted += 1
            yield adopted.pop(), None

    def _auth(self, url: str) -> dict[str, str]:
        """The token, for the archive's own host only (any port: ESO serves files elsewhere
        on the same host); libcurl drops it on a redirect to another host."""
        if self.token and urlsplit(url).hostname == self.host:
            return {"Authorization": f"Bearer {self.token}"}
        return {}

    def _judge(self, job: _Job, out: Outcome | None, report: FetchReport, *,
               final: bool) -> tuple[dict[str, Any], bool]:
        """Turn a transfer's outcome into the product's new state; True: try again later."""
        row = job.row
        if out is None:  # adopt a file that reached its place before the crash
            return self._verify_and_commit(job, job.target, None, report,
                                           adopt=True)
        if out.error is None and out.status is not None and out.status < 300:
            return self._verify_and_commit(job, job.temp, out, report)
        validator = out.headers.get("last-modified") or out.headers.get("etag")
        if out.cancelled:  # abandoned on request: the validator lets the next run resume
            return _outcome(row, state="pending", last_modified=validator,
                            last_error="interrupted; resumes"), False
        if out.status == 401:
            release = self._release(row)
            if release is not None and release > self.now():
                report.embargoed += 1
                self._drop_partial(job)
                return _outcome(row, state="embargoed", embargo_until=release,
                                last_error=f"embargoed until {release:%Y-%m-%d}"), False
            if self.token:
                raise AuthError(
                    f"{urlsplit(out.url).hostname} refused the token in ${self.src.token_env} "
                    "(HTTP 401)", f"renew the token and run `mirror fetch {self.src.name}` again")
        if out.transient and not final:
            return _outcome(row, state="pending", attempts=row.attempts + 1,
                            last_modified=validator, last_error=out.error), True
        report.failed += 1
        self._drop_partial(job) if not out.transient else None
        reason = out.error or f"HTTP {out.status}"
        return _outcome(row, state="failed", attempts=row.attempts + 1, last_modified=validator,
                        last_error=reason), False

    def _verify_and_commit(self, job: _Job, path: str, out: Outcome | None,
                           report: FetchReport, adopt: bool = False) -> tuple[dict[str, Any], bool]:
        row = job.row
        content_type = out.headers.get("content-type") if out else row.content_type
        verdict = verify_file(path, expected_size=out.expected_size if out else None,
                              content_type=content_type,
                              access_format=row.content_type or row.access_format,
                              sha256=out.sha256 if out else None,
                              size=out.size if out else None, head=out.head if out else None)
        if not verdict.ok:
            if verdict.kind == "html" and self.token:
                _unlink(path)
                raise AuthError(
                    f"{urlsplit(row.url).hostname} sent an HTML page instead of data for "
                    f"{row.product_id}: the token in ${self.src.token_env} has probably expired",
                    "renew the token; nothing bad was stored")
            if adopt:  # not what we want in place: quarantine, then download again
                self.store.quarantine(job.rel, verdict.reason)
                return _outcome(row, state="pending", last_error=verdict.reason), True
            _unlink(path)
            # an error page served with 200 (maintenance, overload) may pass; bounded by retries
            transient = verdict.kind in ("truncated", "size-mismatch", "html")
            if transient and row.attempts + 1 < self.config.fetch.retries:
                return _outcome(row, state="pending", attempts=row.attempts + 1,
                                last_error=verdict.reason), True
            report.failed += 1
            return _outcome(row, state="failed", attempts=row.attempts + 1,
                            last_error=verdict.reason), False
        if not adopt:
            try:  # a product stored before (record changed upstream) replaces its old file
                self.store.commit(path, job.rel, replace=row.sha256 is not None, synced=True,
                                  sha256=verdict.sha256, folders=self.folders)
            except CollisionError as exc:
                report.failed += 1
                return _outcome(row, state="failed", attempts=row.attempts + 1,
                                last_error=f"{exc.message}; the download is kept at "
                                           f"{os.path.basename(path)}"), False
            report.done += 1
            report.bytes += verdict.size
        return _outcome(row, state="done", size=verdict.size, sha256=verdict.sha256,
                        content_type=content_type,
                        last_modified=(out.headers.get("last-modified") if out else None),
                        fetched_at=utcnow(), last_error=None), False

    def _release(self, row: sa.Row[Any]) -> datetime | None:
        with self.cat.begin() as conn:
            return products.release_date(conn, self.src.name, self.src.id_column,
                                         row.product_id)

    def _drop_partial(self, job: _Job) -> None:
        _unlink(job.temp)

    def _record(self, changes: list[dict[str, Any]]) -> None:
        """Folder fsyncs first, then the catalogue: "done" is only ever said of durable files."""
        self.store.sync_folders(self.folders)
        if changes:
            with self.cat.begin() as conn:
                products.update(conn, changes)


_RECORD = ("source", "product_id", "role", *products.OUTCOME)


def _outcome(row: sa.Row[Any], **values: Any) -> dict[str, Any]:
    """A full outcome record: the row's current values, overridden by `values` (read by
    position: a dict through the row's mapping costs twice as much, attribute access more)."""
    fields = row._fields
    pick = _PICKS.get(fields)
    if pick is None:
        pick = _PICKS[fields] = itemgetter(*(fields.index(c) for c in _RECORD))
    out = dict(zip(_RECORD, pick(row), strict=True))
    out.update(values)
    return out


_PICKS: dict[tuple[str, ...], Callable[[Any], tuple[Any, ...]]] = {}


@contextmanager
def _collector_skips_old_objects() -> Iterator[None]:
    """Objects alive before the fetch (modules, engines, caches) are hidden from Python's
    cyclic collector while it runs: the fetch's many short-lived rows otherwise trigger full
    collections over all of them (0.13 s of a 0.55 s 2,000-file fetch in bench/fetch.py).
    Only collection work is skipped: unfreeze hands them back, and garbage is found then."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _unlink(path: str) -> None:
    if path:  # a job adopted in place has no temp file
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def _aux_rows(row: sa.Row[Any], urls: list[str]) -> list[dict[str, Any]]:
    """Ancillary links stored beside the product: `<name>.aux1<ext of the link's file>`."""
    main = PurePosixPath(row.path)
    out = []
    for i, url in enumerate(urls, start=1):
        suffix = PurePosixPath(urlsplit(url).path).suffix[:10]
        name = sanitise_component(f"{main.stem}.aux{i}{suffix}")
        out.append({"product_id": row.product_id, "role": f"aux{i}", "url": url,
                    "access_url": url, "access_format": None, "path": str(main.with_name(name))})
    return out
