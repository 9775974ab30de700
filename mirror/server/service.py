"""The service inside a process that holds the catalogue: uvicorn on a thread of its own.

The process that writes the catalogue (the daemon, `mirror serve`, a CLI `sync`/`fetch`) is the
only one DuckDB lets open it; it serves reads over HTTP on 127.0.0.1 and advertises the endpoint
in the catalogue's lock note, where the other processes' `Mirror` finds it.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn

from mirror.catalogue.engine import Catalogue, advertise, holder
from mirror.config import Config
from mirror.errors import ConfigError, MirrorError
from mirror.server.app import build_app
from mirror.server.context import ServiceContext
from mirror.server.guard import is_loopback

log = logging.getLogger("mirror")
START_SECONDS = 10.0
STOP_SECONDS = 5


class LocalService:
    """`start()` serves `ctx` in the background and returns the base URL; `stop()` ends it."""

    def __init__(self, ctx: ServiceContext, host: str = "127.0.0.1", port: int = 0) -> None:
        if not is_loopback(host) and not ctx.token:
            raise ConfigError(
                f"refusing to serve the catalogue on {host}, beyond this machine, without a "
                "token", "set [serve] token_env to a variable holding a long random token, "
                "or keep [serve] host = \"127.0.0.1\"")
        self.ctx = ctx
        self.host = host
        self.port = port
        self._sock: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""
        self._advertised = ""

    def start(self) -> str:
        """Bind (port 0: any free port), serve on a thread, advertise; returns the base URL."""
        self._sock = bind(self.host, self.port)
        port = self._sock.getsockname()[1]
        self.url = _public_url(self.host, port)
        if not self.ctx.base_url:  # what clients are given: [serve] public_url, else ours
            self.ctx.base_url = self.ctx.config.serve.public_url.rstrip("/") or self.url
        if not is_loopback(self.host):
            log.warning("serving the catalogue on %s: every client needs the bearer token",
                        self.url)
        config = uvicorn.Config(build_app(self.ctx), log_level="warning", access_log=False,
                                log_config=None, lifespan="off",
                                timeout_graceful_shutdown=STOP_SECONDS)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, args=([self._sock],),
                                        name="mirror-service", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_SECONDS
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise MirrorError(f"the local service on {self.url} did not start",
                                  "run with --debug to see why")
            time.sleep(0.01)
        if not self.ctx.catalogue.read_only:  # a read-only catalogue locks nobody out
            self._advertised = _reader_url(self.host, port)
            advertise(self.ctx.catalogue.path, self._advertised, self.ctx.token)
        return self.url

    def stop(self) -> None:
        """Withdraw the endpoint, finish the requests in flight (a few seconds at most)."""
        note = holder(self.ctx.catalogue.path) or {}
        if self._advertised and note.get("endpoint") == self._advertised:  # not another's
            advertise(self.ctx.catalogue.path, None)
        self._advertised = ""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(STOP_SECONDS + 1)
            if self._thread.is_alive():
                self._server.force_exit = True
                self._thread.join(2)
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        self._server = self._thread = self._sock = None

    def serve_forever(self) -> None:
        """`mirror serve`: serve in the foreground until SIGTERM or SIGINT, then stop."""
        stopping = threading.Event()
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, lambda *_: stopping.set())
        try:
            if not self.url:
                self.start()
            while not stopping.wait(0.5):
                if self._thread is None or not self._thread.is_alive():
                    raise MirrorError(f"the local service on {self.url} stopped unexpectedly",
                                      "run with --debug to see why")
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def __enter__(self) -> LocalService:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (0: a free port chosen by the system)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto named: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and without
    # it a keep-alive client waits 40 ms (delayed ACK) for each response's second segment
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise MirrorError(f"cannot listen on {host}:{port}: {exc.strerror}",
                          "use another port (0 picks a free one) or stop whatever uses it") \
            from exc
    return sock


@contextlib.contextmanager
def serving(catalogue: Catalogue, config: Config, *,
            status: Callable[[], list[dict[str, Any]]] | None = None,
            ) -> Iterator[LocalService | None]:
    """A LocalService on 127.0.0.1 (a free port) for the block: a CLI `sync`/`fetch`/`verify`
    holds the catalogue, and `mirror query` elsewhere reads through it. A service that cannot
    start costs the readers only: it is logged, and the block runs anyway."""
    ctx = ServiceContext(catalogue, config, token=config.serve.token(), status=status)
    service = LocalService(ctx)
    try:
        service.start()
    except MirrorError as exc:
        log.warning("other commands cannot read the catalogue meanwhile: %s", exc.message)
        ctx.close()
        yield None
        return
    try:
        yield service
    finally:
        service.stop()
        ctx.close()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _public_url(host: str, port: int) -> str:
    """The base URL clients are given (product links included): a wildcard bind answers on
    every address, so the machine's name stands for it."""
    if host in ("0.0.0.0", "", "::"):
        return f"http://{_url_host(socket.getfqdn())}:{port}"
    return f"http://{_url_host(host)}:{port}"


def _reader_url(host: str, port: int) -> str:
    """Where a process of this machine reaches the service (a wildcard bind is local too)."""
    if host in ("0.0.0.0", ""):
        return f"http://127.0.0.1:{port}"
    if host == "::":
        return f"http://[::1]:{port}"
    return f"http://{_url_host(host)}:{port}"
