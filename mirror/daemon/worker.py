"""The daemon's worker thread: the one catalogue writer. Runs due sources (sync, then fetch),
applies config edits and store notes, and records what it does in the `DaemonState`."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from mirror.api import Mirror
from mirror.catalogue.models import products as products_table
from mirror.daemon import logs
from mirror.daemon.reload import reload
from mirror.daemon.schedule import Schedule, timings
from mirror.daemon.state import QUEUE_STATES, DaemonState, iso
from mirror.daemon.watch import StoreNotes
from mirror.errors import CancelledError
from mirror.fetch.audit import audit, recheck
from mirror.retry import RetryPolicy
from mirror.store.files import Store

log = logging.getLogger("mirror.daemon")
MAX_ERRORS = 5  # unexpected errors in a row (not source failures) before the daemon gives up
SETTLE = 0.3  # seconds to let a burst of file events (an editor saving, rm -r) finish


@dataclass
class Outcome:
    """What one run of one source amounted to, for the schedule."""

    changed: bool
    failed: bool
    error: str | None = None


class Worker:
    """Runs the schedule until `stop` is set; `once`: every source one time, then return."""

    def __init__(self, mirror: Mirror, state: DaemonState, *, once: bool = False,
                 notes: StoreNotes | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.mirror = mirror
        self.state = state
        self.once = once
        self.notes = notes
        self.clock = clock
        self.stop = threading.Event()  # also the cancel signal handed to sync and fetch
        self.wake = threading.Event()
        self.reload_wanted = threading.Event()
        self.schedule = Schedule(timings(mirror.config), clock())
        self.ran: set[str] = set()
        self.crashed = False
        self.synced: Callable[[], None] = lambda: None  # e.g. the service forgets cached tables

    # -- requests from other threads ---------------------------------------------------------

    def request_stop(self) -> None:
        self.stop.set()
        self.wake.set()

    def request_reload(self) -> None:
        self.reload_wanted.set()
        self.wake.set()

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> None:
        """The thread's body: a failing source backs off; anything else unexpected is logged
        and retried a few times before the daemon gives up (and systemd restarts it)."""
        errors = 0
        self._publish()
        while not self.stop.is_set():
            try:
                if self._turn():
                    break
                errors = 0
            except Exception as exc:
                errors += 1
                log.exception("unexpected error (%d in a row): %s", errors, exc,
                              extra={"event": "daemon.error"})
                if errors >= MAX_ERRORS:
                    self.crashed = True
                    break
                self.stop.wait(min(60.0, 2.0 ** errors))
        self.state.activity("stopping")

    def _turn(self) -> bool:
        """One turn of the loop; True when a `once` daemon is done."""
        if self.reload_wanted.is_set():
            self._reload()
        self._store_notes()
        for name in self.schedule.due(self.clock()):
            if self.stop.is_set():
                return False
            self._run_source(name)
        if self.once and self.ran >= set(self.schedule.clocks):
            return True
        self._publish()
        self.state.activity("idle")
        self._sleep_until_due()
        return False

    def _sleep_until_due(self) -> None:
        due = self.schedule.next_due()
        wait = 60.0 if due is None else max(0.0, due - self.clock())
        if self.wake.wait(min(wait, 60.0)):
            self.wake.clear()
            time.sleep(SETTLE)

    def _run_source(self, name: str) -> None:
        started = datetime.now(UTC)
        with logs.for_source(name):
            outcome = self._cycle(name)
        if self.stop.is_set() or name not in self.schedule.clocks:
            return  # stopped midway, or removed by a reload while it ran: nothing to plan
        now = self.clock()
        if outcome.failed:
            at = self.schedule.failed(name, now)
            log.warning("next try in %.0f s (back-off after %d failures): %s", at - now,
                        self.schedule.clocks[name].failures, outcome.error,
                        extra={"event": "source.backoff", "source": name,
                               "failures": self.schedule.clocks[name].failures})
        else:
            self.schedule.succeeded(name, now, changed=outcome.changed)
        self.ran.add(name)
        clock = self.schedule.clocks[name]
        self.state.source(name, last_run=iso(started), last_result=(
            "failed" if outcome.failed else "changed" if outcome.changed else "unchanged"),
            last_error=outcome.error if outcome.failed else None, failures=clock.failures,
            backoff_seconds=round(clock.wait, 1) if clock.backing_off else 0.0,
            runs=self.state.state()["sources"].get(name, {}).get("runs", 0) + 1)

    def _cycle(self, name: str) -> Outcome:
        """Sync one source, then fetch what it newly selected."""
        try:
            src = self.mirror.config.source(name)
            self.state.activity(f"syncing {name}")
            [sync] = self.mirror.sync(name, cancel=self.stop, policy=RetryPolicy(
                attempts=src.retries, sleep=self._pause))
            self.synced()
            if sync.status == "cancelled" or self.stop.is_set():
                return Outcome(changed=False, failed=False)
            changed = bool(sync.new or sync.changed or sync.reappeared or sync.repaired
                           or sync.withdrawn)
            log.info("synced: %d new, %d changed, %d withdrawn, %d repaired (%s)", sync.new,
                     sync.changed + sync.reappeared, sync.withdrawn, sync.repaired, sync.status,
                     extra={"event": "sync.done", "source": name, "status": sync.status,
                            "new": sync.new, "changed": sync.changed + sync.reappeared,
                            "withdrawn": sync.withdrawn, "seconds": round(sync.seconds, 2)})
            if sync.status != "ok":
                return Outcome(changed=changed, failed=True, error="; ".join(sync.errors)[:500])
            fetched = self._fetch(name)
            return Outcome(changed=changed or fetched.changed, failed=fetched.failed,
                           error=fetched.error)
        except Exception as exc:  # a bug or a broken disk must not end the daemon: back off
            log.exception("run failed: %s", exc, extra={"event": "source.error", "source": name})
            return Outcome(changed=False, failed=True, error=str(exc)[:500])

    def _fetch(self, name: str) -> Outcome:
        self.state.activity(f"fetching {name}")
        [f] = self.mirror.fetch(name, cancel=self.stop, policy=RetryPolicy(
            attempts=self.mirror.config.fetch.retries, sleep=self._pause))
        if f.queued or f.done or f.failed or f.embargoed:
            log.info("fetched %d products (%.1f MB), %d adopted, %d failed, %d embargoed (%s)",
                     f.done, f.bytes / 1e6, f.adopted, f.failed, f.embargoed, f.status,
                     extra={"event": "fetch.done", "source": name, "status": f.status,
                            "done": f.done, "failed": f.failed, "bytes": f.bytes})
        # failed products wait for `mirror fetch --retry-failed`; only a failed run backs off
        failed = f.status == "failed" and not self.stop.is_set()
        return Outcome(changed=bool(f.done or f.adopted), failed=failed,
                       error="; ".join(f.errors)[:500] if failed else None)

    def _pause(self, seconds: float) -> None:
        """The retry policy's sleep: wakes at once on a stop request, and then gives up."""
        if self.stop.wait(seconds):
            raise CancelledError("stopped on request")

    # -- config edits and store notes -----------------------------------------------------------

    def _reload(self) -> None:
        self.reload_wanted.clear()
        file = self.mirror.config.file
        if file is None:
            return
        result = reload(Path(file), self.mirror.config)
        if result.config is None:
            log.error("config edit refused, the old config stays in force: %s", result.error,
                      extra={"event": "config.refused"})
            self.state.set(reload_error=result.error)
            return
        self.mirror.config = result.config
        added, removed, _ = self.schedule.update(timings(result.config), self.clock())
        self.state.forget(removed)
        self.ran -= set(removed)
        for setting in result.kept:
            log.warning("%s changed: that takes a restart; the running daemon keeps the old one",
                        setting, extra={"event": "config.kept"})
        log.info("config reloaded: %s", result.summary,
                 extra={"event": "config.reloaded", "added": result.added,
                        "removed": result.removed, "changed": result.changed})
        self.state.set(reload_error=None, last_reload=iso(datetime.now(UTC)))
        self._publish()  # new sources show in the state at once, with their next run

    def _store_notes(self) -> None:
        """Re-check product files changed by hand; re-queued ones are fetched right away."""
        if self.notes is None:
            return
        paths, folders = self.notes.take()
        if not (paths or folders):
            return
        cat, store = self.mirror.catalogue(), Store(self.mirror.config.store_root)
        self.state.activity("checking the store")
        report = audit(cat, store) if folders else recheck(cat, store, paths)
        damaged = report.missing + report.corrupt
        if not damaged:
            return
        log.warning("%d product files were deleted or changed by hand: re-queued",
                    len(damaged), extra={"event": "store.damaged", "paths": damaged[:50]})
        with cat.begin() as conn:
            names = sorted(conn.execute(sa.select(products_table.c.source).where(
                products_table.c.path.in_(damaged)).distinct()).scalars())
        for name in names:
            if name in self.schedule.clocks and not self.stop.is_set():
                self._fetch(name)

    # -- what readers see ------------------------------------------------------------------------

    def _publish(self) -> None:
        """Per-source status rows and queue sizes, next runs: computed here, by the writer."""
        try:
            rows = [s.as_dict() for s in self.mirror.status()]
        except Exception as exc:  # status is for show: never let it stop the daemon
            log.warning("cannot read the status: %s", exc, extra={"event": "status.error"})
            return
        self.state.set_status(rows)
        wall, mono = datetime.now(UTC), self.clock()
        for row in rows:
            clock = self.schedule.clocks.get(row["name"])
            if clock is None:
                continue
            self.state.source(
                row["name"], interval=clock.timing.interval,
                next_run=iso(wall + timedelta(seconds=max(0.0, clock.next_at - mono))),
                queue={s: row["products"].get(s, 0) for s in QUEUE_STATES})
