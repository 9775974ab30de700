"""The daemon's live state, as `/mirror/state` and `mirror status` show it.

Written by the daemon's worker thread, read by the service's threads: every access holds a lock
and readers get a deep copy, so a reader never sees a half-updated source.
"""

from __future__ import annotations

import copy
import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

QUEUE_STATES = ("pending", "failed", "embargoed")


def iso(t: datetime | None) -> str | None:
    return t.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z") if t else None


class DaemonState:
    """Running since, current activity, per source: next run, last result and error, back-off,
    queue sizes. `now` is a seam for tests."""

    def __init__(self, config_file: str | None = None,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._now = now
        self._lock = threading.Lock()
        self._status: list[dict[str, Any]] = []
        started = iso(now())
        self._state: dict[str, Any] = {
            "pid": os.getpid(), "running_since": started, "config": config_file,
            "activity": "starting", "activity_since": started, "endpoint": None,
            "last_reload": None, "reload_error": None, "sources": {}}

    def activity(self, what: str) -> None:
        """What the daemon does right now ("syncing eso", "idle", ...)."""
        with self._lock:
            if self._state["activity"] != what:
                self._state["activity"], self._state["activity_since"] = what, iso(self._now())

    def set(self, **values: Any) -> None:
        with self._lock:
            self._state.update(values)

    def source(self, name: str, **values: Any) -> None:
        """Update one source's entry (created on first use)."""
        with self._lock:
            entry = self._state["sources"].setdefault(name, {
                "next_run": None, "interval": None, "last_run": None, "last_result": None,
                "last_error": None, "failures": 0, "backoff_seconds": 0.0, "runs": 0,
                "queue": dict.fromkeys(QUEUE_STATES, 0)})
            entry.update(values)

    def forget(self, names: list[str]) -> None:
        with self._lock:
            for name in names:
                self._state["sources"].pop(name, None)

    def set_status(self, rows: list[dict[str, Any]]) -> None:
        """Per-source status rows (as `Mirror.status`), computed by the writer after each run."""
        with self._lock:
            self._status = copy.deepcopy(rows)

    def status(self) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._status)

    def state(self) -> dict[str, Any]:
        """A snapshot for `/mirror/state`."""
        with self._lock:
            return copy.deepcopy(self._state)
