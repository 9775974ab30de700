"""A fault-injecting HTTP/1.1 file server on 127.0.0.1, for the download engine's unit tests.

Each path has a script: a list of `Step`s, one consumed per request, the last one repeating.

    with FaultServer() as srv:
        srv.script("/f", Step("status", status=500), Step("serve"))   # 500, then the file
        srv.files["/f"] = b"..."                                      # what "serve" sends

Actions of a `Step`:

* ``serve``: after `delay` seconds, the file from `files` with Content-Length, Last-Modified
  (`last_modified`) and ETag; a ``Range: bytes=N-`` request gets 206 with Content-Range, unless
  `ranges=False` (the server then ignores Range and answers 200). If-Range is honoured unless
  `if_range=False`: a validator that differs means 200 with the whole file. `range_limit`
  caps what a 206 sends (a server that answers a shorter range than asked for).
* ``status``: answer `status` with `headers` and `body` (e.g. 429 with Retry-After).
* ``reset``: send the headers and the first `cut` bytes, then a TCP reset.
* ``truncate``: send the headers (full Content-Length) and the first `cut` bytes, then close.
* ``stall``: send the headers and the first `cut` bytes, then sit silent for `delay` seconds.
* ``redirect``: 302 to `location`.
* ``call``: `handler(query)` with the request's query string returns (status, headers, body),
  e.g. a DataLink service that answers per ID.

Every request is recorded (`received`: path, headers, client port, query string) so tests
can check what was sent and over how many connections; `peak` is the most requests ever
answered at once.
"""

from __future__ import annotations

import hashlib
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

LAST_MODIFIED = "Wed, 21 Oct 2015 07:28:00 GMT"


@dataclass
class Step:
    """What the server does for one request to a path (see the module docstring)."""

    action: str = "serve"
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    cut: int = 0
    delay: float = 0.0
    location: str = ""
    ranges: bool = True
    if_range: bool = True
    range_limit: int | None = None
    last_modified: str = LAST_MODIFIED
    content_type: str = "application/octet-stream"
    handler: Callable[[str], tuple[int, dict[str, str], bytes]] | None = None


@dataclass(frozen=True)
class Received:
    """One request as the server saw it; header names lower-cased; `port`: the client's;
    `query`: the query string (without '?')."""

    path: str
    headers: dict[str, str]
    port: int
    query: str = ""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # broken connections are what this server is for


class FaultServer:
    """The server; a context manager that starts and stops it."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.scripts: dict[str, list[Step]] = {}
        self.received: list[Received] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.in_flight = self.peak = 0  # requests being answered now, and at most
        self.httpd = _Server(("127.0.0.1", 0), _Handler)
        self.httpd.fault = self  # type: ignore[attr-defined]
        self.port = int(self.httpd.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                        daemon=True)

    def __enter__(self) -> FaultServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stopping.set()  # wakes stalled handlers
        self.httpd.shutdown()
        self.httpd.server_close()

    def script(self, path: str, *steps: Step) -> str:
        """Set the steps for `path`; returns its full URL."""
        self.scripts[path] = list(steps)
        return self.url + path

    def requests(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path]

    def next_step(self, path: str) -> Step:
        with self.lock:
            steps = self.scripts.get(path) or [Step()]
            return steps.pop(0) if len(steps) > 1 else steps[0]


def etag_of(data: bytes) -> str:
    return '"' + hashlib.sha256(data).hexdigest()[:16] + '"'


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        srv: FaultServer = self.server.fault  # type: ignore[attr-defined]
        path, _, query = self.path.partition("?")
        with srv.lock:
            srv.received.append(Received(path, {k.lower(): v for k, v in self.headers.items()},
                                         self.client_address[1], query))
            srv.in_flight += 1
            srv.peak = max(srv.peak, srv.in_flight)
        try:
            self._do(srv, path, srv.next_step(path))
        finally:
            with srv.lock:
                srv.in_flight -= 1

    def _do(self, srv: FaultServer, path: str, step: Step) -> None:
        if step.action == "status":
            self._answer(step.status, step.body, {"Content-Type": "text/plain", **step.headers})
        elif step.action == "redirect":
            self._answer(302, b"moved", {"Location": step.location})
        elif step.action == "call":
            assert step.handler is not None, "a 'call' step needs a handler"
            status, headers, body = step.handler(self.path.partition("?")[2])
            self._answer(status, body, headers)
        elif step.action == "serve":
            if step.delay:
                srv.stopping.wait(step.delay)
            self._serve(srv.files.get(path), step)
        else:
            data = srv.files.get(path, b"")
            self.send_response(200)
            self._headers({"Content-Length": str(len(data)), "Content-Type": step.content_type,
                           "Last-Modified": step.last_modified})
            self.wfile.write(data[:step.cut])
            self.wfile.flush()
            if step.action == "stall":
                srv.stopping.wait(step.delay)
                self.close_connection = True
            elif step.action == "reset":
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           struct.pack("ii", 1, 0))
                self.connection.close()
                self.close_connection = True
            elif step.action == "truncate":
                self.close_connection = True
            else:
                raise ValueError(f"unknown action {step.action!r}")

    def _serve(self, data: bytes | None, step: Step) -> None:
        if data is None:
            self._answer(404, b"no such file", {"Content-Type": "text/plain"})
            return
        headers = {"Content-Type": step.content_type, "Last-Modified": step.last_modified,
                   "ETag": etag_of(data), "Accept-Ranges": "bytes" if step.ranges else "none"}
        wanted = self.headers.get("Range", "")
        validator = self.headers.get("If-Range")
        if step.if_range and validator and validator not in (step.last_modified, etag_of(data)):
            wanted = ""  # the file changed since the client's partial copy: send it whole
        if step.ranges and wanted.startswith("bytes=") and wanted.endswith("-"):
            start = int(wanted[6:-1])
            if start >= len(data):
                self._answer(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                return
            end = len(data) if step.range_limit is None else min(len(data),
                                                                 start + step.range_limit)
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
            self._answer(206, data[start:end], headers)
            return
        self._answer(200, data, headers)

    def _answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        self._headers({"Content-Length": str(len(body)), **headers})
        self.wfile.write(body)

    def _headers(self, headers: dict[str, str]) -> None:
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
