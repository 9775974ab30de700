"""`mirror daemon` as a process: one instance per catalogue, logs, the local service, watchers,
signals, and a clean exit.

The main thread only waits for signals; the worker thread does all catalogue writes; the service
(uvicorn, in its own thread) answers readers on their own cursors. SIGTERM/SIGINT set the stop
event: a harvest stops after its current window, downloads in flight are abandoned with their
partial files kept resumable, and the process exits within seconds. SIGHUP re-reads the config.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from mirror.api import Mirror
from mirror.catalogue import engine
from mirror.daemon import logs
from mirror.daemon.state import DaemonState
from mirror.daemon.watch import StoreNotes, Watchers
from mirror.daemon.worker import Worker
from mirror.errors import CatalogueBusyError, MirrorError

log = logging.getLogger("mirror.daemon")


class Daemon:
    """Everything `mirror daemon` runs; `main()` returns the exit code."""

    def __init__(self, mirror: Mirror, *, once: bool = False, log_format: str = "text",
                 debug: bool = False) -> None:
        self.mirror = mirror
        self.once = once
        self.log_format = log_format
        self.debug = debug
        self.state = DaemonState(str(mirror.config.file) if mirror.config.file else None)
        self.service: Any = None
        self.context: Any = None
        self.watchers: Watchers | None = None
        self.worker: Worker | None = None

    def main(self) -> int:
        logs.setup(self.log_format, lambda: logs.secrets_of(self.mirror.config),
                   debug=self.debug)
        self._open_catalogue()
        cfg = self.mirror.config
        notes = None
        if cfg.daemon.watch_store and not self.once:
            notes = StoreNotes(cfg.store_root, wake=lambda: self._wake())
        self.worker = Worker(self.mirror, self.state, once=self.once, notes=notes)
        previous = self._install_signals()
        try:
            self._start_service()
            if not self.once:
                self._start_watchers(notes)
            log.info("daemon started: %d sources, catalogue %s", len(cfg.sources),
                     cfg.catalogue_path, extra={"event": "daemon.start",
                                                "sources": [s.name for s in cfg.sources]})
            thread = threading.Thread(target=self.worker.run, name="mirror-worker")
            thread.start()
            while thread.is_alive():
                thread.join(0.5)  # short joins: signal handlers run in between
        finally:
            self._shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        # 1 lets systemd's Restart=on-failure start it again
        return 1 if self.worker and self.worker.crashed else 0

    def _wake(self) -> None:
        if self.worker is not None:
            self.worker.wake.set()

    def _open_catalogue(self) -> None:
        """Open the catalogue read-write: DuckDB's lock makes this process the only writer."""
        path = self.mirror.config.catalogue_path
        try:
            self.mirror.catalogue()
        except CatalogueBusyError as exc:
            note = engine.holder(path) or {}
            if "daemon" in str(note.get("command", "")):
                raise CatalogueBusyError(
                    f"another mirror daemon (pid {note.get('pid')}, since {note.get('started')}) "
                    f"already runs on {path}",
                    "one daemon per catalogue: stop the other one first "
                    "(`systemctl stop mirror-daemon` or `kill PID`); `mirror status` shows it"
                ) from exc
            raise

    def _start_service(self) -> None:
        """The local TAP service, so that `mirror query/status/schema` work meanwhile."""
        try:
            from mirror.server.context import ServiceContext
            from mirror.server.service import LocalService
        except ImportError as exc:  # the service is optional for the daemon's own work
            log.warning("no local service (%s): other commands cannot read the catalogue "
                        "while the daemon runs", exc, extra={"event": "service.missing"})
            return
        cfg = self.mirror.config
        self.context = ctx = ServiceContext(
            catalogue=self.mirror.catalogue(), config=cfg, token=cfg.serve.token(),
            status=self.state.status, state=self.state.state)
        self.service = LocalService(ctx, host=cfg.serve.host, port=cfg.serve.port)
        try:
            url = self.service.start()
        except MirrorError as exc:
            if cfg.serve.port == 0:
                raise
            # the configured port is taken (another mirror serve?): readers find the daemon
            # through the lock note, so any free port does
            log.warning("%s; serving on a free port instead", exc.message,
                        extra={"event": "service.port"})
            self.service = LocalService(ctx, host=cfg.serve.host, port=0)
            url = self.service.start()
        if self.worker is not None:  # a sync may add tables: readers reload their lists
            self.worker.synced = ctx.runners.refresh
        self.state.set(endpoint=url)
        log.info("serving the catalogue at %s", url, extra={"event": "service.start",
                                                            "endpoint": url})

    def _start_watchers(self, notes: StoreNotes | None) -> None:
        self.watchers = Watchers()
        file = self.mirror.config.file
        if file is not None:
            self.watchers.config(Path(file), self._config_changed)
        if notes is not None:
            self.watchers.store(notes)
        self.watchers.start()

    def _config_changed(self) -> None:
        if self.worker is not None:
            self.worker.request_reload()

    def _install_signals(self) -> dict[int, Any]:
        def stop(signum: int, frame: FrameType | None) -> None:
            log.info("%s: stopping (work in flight is left resumable)",
                     signal.Signals(signum).name, extra={"event": "daemon.stopping"})
            if self.worker is not None:
                self.worker.request_stop()

        def hup(signum: int, frame: FrameType | None) -> None:
            log.info("SIGHUP: reading the config again", extra={"event": "config.sighup"})
            self._config_changed()

        previous: dict[int, Any] = {}
        for sig, handler in ((signal.SIGTERM, stop), (signal.SIGINT, stop),
                             (signal.SIGHUP, hup)):
            previous[sig] = signal.signal(sig, handler)
        return previous

    def _shutdown(self) -> None:
        if self.worker is not None:
            self.worker.request_stop()
        if self.watchers is not None:
            self.watchers.stop()
        if self.service is not None:
            try:
                self.service.stop()
            except Exception as exc:  # stopping must go on: the catalogue still needs closing
                log.warning("stopping the service: %s", exc, extra={"event": "service.error"})
        if self.context is not None:
            self.context.close()
        log.info("daemon stopped", extra={"event": "daemon.stop"})
