"""The download engine: one thread drives many HTTP/1.1 transfers through pycurl's CurlMulti.

Why this shape: libcurl does keep-alive pooling, redirects, per-host limits and stall detection
in C, and Python stays off the per-chunk path. Each pooled handle owns a file-descriptor "slot"
that libcurl writes bodies to with libc's `fwrite` through a large stdio buffer (`_cwrite.py`;
where that cannot be set up, a WRITEFUNCTION `partial(os.write, slot)`). When a response's
headers end, a small header callback decides where the body goes and `dup2`s the destination
file (or /dev/null, or a memfd for a short error page) onto the slot; the buffer is flushed
before every such switch and when a transfer ends. A helper process (`_sealer.py`)
hashes each file from the page cache as it grows, then fsyncs it: sha256 runs on another core,
no body bytes are held in Python, and no GIL is shared (a hashing thread would hand it back and
forth with this loop several times per file). Waiting uses epoll via the socket API
(`multi.select` only handles fds below 1024). Results are plain `Outcome`s: the caller maps them
to the project's errors and decides on retries.
"""

from __future__ import annotations

import fcntl
import itertools
import logging
import os
import select
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import pycurl

from mirror.errors import StoreError
from mirror.fetch import _cwrite
from mirror.http import retry_after_seconds

log = logging.getLogger("mirror")

ERROR_BODY_MAX = 64 * 1024  # error pages up to this size are kept (in a memfd), never in dest
SEALER = str(Path(__file__).with_name("_sealer.py"))
# curl codes worth retrying: resolve/connect/send/recv failures, timeouts, partial bodies, TLS
TRANSIENT_CURL = frozenset({5, 6, 7, 16, 18, 28, 35, 52, 55, 56, 92, 95})
TRANSIENT_STATUS = frozenset({408, 429})
_EPOLL_TO_CURL = ((select.EPOLLIN, pycurl.CSELECT_IN), (select.EPOLLOUT, pycurl.CSELECT_OUT),
                  (select.EPOLLERR | select.EPOLLHUP, pycurl.CSELECT_ERR))
_CURL_TO_EPOLL = {pycurl.POLL_IN: select.EPOLLIN, pycurl.POLL_OUT: select.EPOLLOUT,
                  pycurl.POLL_INOUT: select.EPOLLIN | select.EPOLLOUT}


class Flag(Protocol):
    """What `run` reads a stop request from: a `threading.Event`, or anything with `is_set`."""

    def is_set(self) -> bool: ...


@dataclass
class Download:
    """One file to fetch; `validator` guards a resume against a file that changed upstream."""

    key: object
    url: str
    dest: str | Path  # text is cheaper where thousands are made a second
    resume_from: int = 0
    validator: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Outcome:
    """What became of one `Download`; `error` is None only for a complete 2xx body."""

    key: object
    url: str
    status: int | None
    size: int
    expected_size: int | None
    sha256: str | None
    headers: dict[str, str]
    error: str | None
    transient: bool
    retry_after: float | None
    restarted: bool = False
    seconds: float = 0.0
    error_body: bytes = b""  # a non-2xx body of at most 64 KB (with a Content-Length), for messages
    curl_code: int = 0
    cancelled: bool = False  # abandoned on request; the partial file stays, resumable
    head: bytes = b""  # the body's first bytes as stored (read back by the sealer)


class _Xfer:
    """One transfer; `ident` names it to the sealer process."""

    __slots__ = ("job", "ident", "slot", "writer", "lines", "offset", "restarted", "started",
                 "decided", "status", "headers", "fd", "errfd", "retry", "oserror")

    def __init__(self, job: Download, ident: int, slot: int, writer: _cwrite.CWriter | None,
                 restarted: bool) -> None:
        self.job, self.ident, self.slot, self.restarted = job, ident, slot, restarted
        self.writer = writer
        self.started = time.perf_counter()
        self.lines: list[bytes] = []
        self.offset = self.status = 0
        self.decided = False
        self.headers: dict[str, str] = {}
        self.fd: int | None = None
        self.errfd: int | None = None
        self.retry: str | None = None  # why this resume must be redone from byte 0
        self.oserror: OSError | None = None


class Transport:
    """Concurrent HTTP downloads to files; see `run`. Not thread-safe: one `run` at a time.

    A stall is less than `low_speed_limit` bytes/s for `low_speed_time` s (libcurl averages over
    about 5 s, so a stall after some bytes is noticed a few seconds later). `chunk_hint` is
    libcurl's receive buffer and the stdio buffer bodies go through (libcurl hands bodies over in
    16 KiB pieces): 2 MiB, where the fetching process needs ~10% less CPU per GB on loopback than
    with 1 MiB (and ~40% less than with 64 KiB); more gains nothing measurable.
    Use it as a context manager or call `close` (it owns a process).
    """

    def __init__(self, *, concurrency: int = 16, per_host: int = 8, connect_timeout: float = 10,
                 low_speed_time: float = 30, low_speed_limit: int = 1, fsync: bool = True,
                 user_agent: str = "mirror/0.1", chunk_hint: int = 2 << 20) -> None:
        self.concurrency = max(1, concurrency)
        self.per_host = max(1, per_host)
        self.fsync = fsync
        self._settings: dict[str, Any] = dict(  # what a sibling is made with
            connect_timeout=connect_timeout, low_speed_time=low_speed_time,
            low_speed_limit=low_speed_limit, fsync=fsync, user_agent=user_agent,
            chunk_hint=chunk_hint)
        self._opts: list[tuple[int, Any]] = [
            (pycurl.NOSIGNAL, 1), (pycurl.FOLLOWLOCATION, 1), (pycurl.MAXREDIRS, 5),
            (pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS),
            (pycurl.REDIR_PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS),
            (pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_1_1),
            (pycurl.CONNECTTIMEOUT_MS, int(connect_timeout * 1000)),
            (pycurl.LOW_SPEED_LIMIT, max(1, low_speed_limit)),
            (pycurl.LOW_SPEED_TIME, max(1, round(low_speed_time))),
            (pycurl.USERAGENT, user_agent), (pycurl.BUFFERSIZE, chunk_hint)]
        self._multi = pycurl.CurlMulti()
        for opt, value in ((pycurl.M_PIPELINING, 0), (pycurl.M_SOCKETFUNCTION, self._on_socket),
                           (pycurl.M_TIMERFUNCTION, self._on_timer)):
            self._multi.setopt(opt, value)
        self.limit(self.concurrency, self.per_host)
        self._devnull = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        self._epoll = select.epoll()
        self._watched: dict[int, int] = {}
        self._deadline: float | None = None
        self._chunk = chunk_hint
        self._idle: list[tuple[pycurl.Curl, int, _cwrite.CWriter | None]] = []
        self._active: dict[pycurl.Curl, _Xfer] = {}
        self._ready: deque[Outcome] = deque()
        self._ids = itertools.count()
        self._to_seal: list[str] = []  # lines for the sealer, sent once per loop turn
        self._sealing: dict[str, Outcome] = {}  # outcomes waiting for size and sha256
        self._answers = b""
        self._sealer: subprocess.Popen[bytes] | None = None  # see `start`
        self._from_sealer = -1

    # -- public ---------------------------------------------------------------------------------

    def limit(self, concurrency: int, per_host: int) -> None:
        """At most `concurrency` transfers at once, `per_host` to one host (between runs)."""
        self.concurrency, self.per_host = max(1, concurrency), max(1, per_host)
        for opt, value in ((pycurl.M_MAX_TOTAL_CONNECTIONS, self.concurrency),
                           (pycurl.M_MAX_HOST_CONNECTIONS, self.per_host),
                           (pycurl.M_MAXCONNECTS, self.concurrency)):
            self._multi.setopt(opt, value)

    def sibling(self) -> Transport:
        """A new Transport with this one's settings (and its own loop, handles and sealer)."""
        return Transport(concurrency=self.concurrency, per_host=self.per_host, **self._settings)

    def start(self) -> None:
        """Start the hashing process now (the first `run` does otherwise): its ~30 ms of
        start-up then overlap whatever the caller does before downloading."""
        if self._sealer is None:
            # a process group of its own: a Ctrl-C in the terminal reaches this process, which
            # winds the transfers down with the sealer's help, and not the sealer itself
            self._sealer = subprocess.Popen(
                [sys.executable, "-I", "-S", SEALER, str(int(self.fsync))],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, process_group=0)
            self._from_sealer = self._sealer.stdout.fileno()  # type: ignore[union-attr]
            try:  # room for thousands of lines while the sealer hashes a long stretch
                fcntl.fcntl(self._sealer.stdin.fileno(),  # type: ignore[union-attr]
                            fcntl.F_SETPIPE_SZ, 1 << 20)
            except OSError:
                pass  # the default 64 KiB: the loop then may wait a little now and then
            os.set_blocking(self._from_sealer, False)
            self._epoll.register(self._from_sealer, select.EPOLLIN)

    def run(self, jobs: Iterable[Download],
            cancel: Flag | None = None) -> Iterator[Outcome]:
        """Download all jobs concurrently (at most `concurrency` at once, at most `per_host` per
        host), yielding each Outcome as soon as its transfer ends. Jobs are pulled lazily.
        When `cancel` is set, transfers in flight are abandoned (checked at least once a second):
        each started body yields a `cancelled` Outcome with its headers, so it can resume."""
        it, more = iter(jobs), True
        self.start()
        try:
            while True:
                while more and len(self._active) < self.concurrency:
                    job = next(it, None)
                    if job is None:
                        more = False
                    else:
                        self._start(job, restarted=False)
                while self._ready:
                    yield self._ready.popleft()
                if not (more or self._active or self._sealing):
                    return
                if cancel is not None and cancel.is_set():
                    yield from self._cancelled()
                    return
                self._step()
        finally:
            self._abandon()

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Free handles, sockets and the sealer process; the Transport is unusable afterwards."""
        if self._epoll.closed:
            return
        if self._sealer is not None:
            self._abandon()
            self._sealer.stdin.close()  # type: ignore[union-attr]
            try:
                self._sealer.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._sealer.kill()
            self._sealer.stdout.close()  # type: ignore[union-attr]
        for c, slot, writer in self._idle:
            c.close()
            if writer is not None:
                writer.close()  # and its slot
            else:
                os.close(slot)
        self._multi.close()
        self._epoll.close()
        os.close(self._devnull)

    # -- the network thread ---------------------------------------------------------------------

    def _start(self, job: Download, *, restarted: bool) -> None:
        if self._idle:
            c, slot, writer = self._idle.pop()
        else:
            c = pycurl.Curl()
            for opt, value in self._opts:
                c.setopt(opt, value)
            writer = _cwrite.attach(c, self._devnull, self._chunk)  # the whole per-chunk path
            if writer is not None:
                slot = writer.fd
            else:  # a Python call per 16 KiB piece
                slot = os.dup(self._devnull)
                c.setopt(pycurl.WRITEFUNCTION, partial(os.write, slot))
        x = _Xfer(job, next(self._ids), slot, writer, restarted)
        headers = [f"{k}: {v}" for k, v in job.headers.items()]
        if job.resume_from > 0 and not restarted:
            try:
                kept = os.stat(job.dest).st_size
            except OSError:  # missing (or unreadable: opening it will say why)
                kept = 0
            if kept >= job.resume_from:
                x.offset = job.resume_from
            else:
                x.restarted = True
        if x.offset:
            c.setopt(pycurl.RANGE, f"{x.offset}-")
            v = job.validator
            if v and not v.startswith("W/"):  # If-Range: the server itself sends 200 if changed
                headers.append(f"If-Range: {v}")
        else:
            c.unsetopt(pycurl.RANGE)
        c.setopt(pycurl.URL, job.url)
        if headers:
            c.setopt(pycurl.HTTPHEADER, headers)
        else:  # setopt(HTTPHEADER, []) is a no-op in pycurl: pooled handles keep old headers
            c.unsetopt(pycurl.HTTPHEADER)
        c.setopt(pycurl.HEADERFUNCTION, self._header_callback(x))
        self._active[c] = x
        self._multi.add_handle(c)

    def _header_callback(self, x: _Xfer) -> Callable[[bytes], int | None]:
        lines = x.lines

        def on_header(line: bytes) -> int | None:
            lines.append(line)
            if len(line) > 2 or x.decided:  # not the empty line that ends a header block
                return None
            return self._decide(x)

        return on_header

    def _decide(self, x: _Xfer) -> int | None:
        """At the end of a response's headers: point the slot where the body belongs.
        Returns 0 to abort the transfer (the resume must be redone from byte 0)."""
        status, hdrs = _parse_headers(x.lines)
        if status < 200 or (300 <= status < 400 and "location" in hdrs):
            return None  # an interim or redirect response: libcurl goes on
        x.decided, x.status, x.headers = True, status, hdrs
        if x.writer is not None:
            x.writer.flush()  # bytes of an earlier response go where that one's went
        if not 200 <= status < 300:
            length = hdrs.get("content-length", "")
            if length.isdigit() and int(length) <= ERROR_BODY_MAX:
                try:
                    x.errfd = os.memfd_create("mirror-error", os.MFD_CLOEXEC)
                    os.dup2(x.errfd, x.slot)
                except OSError:
                    pass  # then the message is lost, not the transfer
            return None
        if x.offset:
            if status != 206:  # Range ignored, or If-Range said the file changed: write from 0
                x.offset, x.restarted = 0, True
            elif _range_start(hdrs.get("content-range")) != x.offset:
                x.retry = "the server answered a different range"
                return 0
            elif x.job.validator and _validator(hdrs, x.job.validator) not in (
                    None, x.job.validator):
                x.retry = "the file changed upstream since the partial download"
                return 0
        try:
            fd = os.open(x.job.dest, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
                         | (0 if x.offset else os.O_TRUNC), 0o644)
            if x.offset:
                os.ftruncate(fd, x.offset)
                os.lseek(fd, x.offset, os.SEEK_SET)
        except OSError as exc:
            x.oserror = exc
            return 0
        x.fd = fd
        os.dup2(fd, x.slot)  # from now on the WRITEFUNCTION appends to dest
        self._to_seal.append(f"O\t{x.ident}\t{os.fsencode(x.job.dest).hex()}\n")
        return None

    def _on_socket(self, what: int, fd: int, multi: object, socketp: object) -> None:
        if what == pycurl.POLL_REMOVE:
            if self._watched.pop(fd, None) is not None:
                try:
                    self._epoll.unregister(fd)
                except OSError:
                    pass  # already closed: epoll forgot it by itself
            return
        mask = _CURL_TO_EPOLL[what]
        try:
            if fd in self._watched:
                self._epoll.modify(fd, mask)
            else:
                self._epoll.register(fd, mask)
        except FileNotFoundError:  # closed and reused without a REMOVE
            self._epoll.register(fd, mask)
        except FileExistsError:
            self._epoll.modify(fd, mask)
        self._watched[fd] = mask

    def _on_timer(self, ms: int) -> None:
        self._deadline = None if ms < 0 else time.perf_counter() + ms / 1000

    def _step(self) -> None:
        """Wait for sockets, libcurl's timer or the sealer; act on all that is due."""
        timeout = 1.0
        if self._deadline is not None:
            timeout = min(timeout, max(0.0, self._deadline - time.perf_counter()))
        multi = self._multi
        for fd, ev in self._epoll.poll(timeout):
            if fd == self._from_sealer:
                self._collect()
                continue
            flags = 0
            for epoll_bit, curl_bit in _EPOLL_TO_CURL:
                if ev & epoll_bit:
                    flags |= curl_bit
            multi.socket_action(fd, flags)
        if self._deadline is not None and self._deadline <= time.perf_counter():
            self._deadline = None
            multi.socket_action(pycurl.SOCKET_TIMEOUT, 0)
        while True:
            queued, ok, failed = multi.info_read()
            for c in ok:
                self._finish(c, 0, "")
            for c, code, msg in failed:
                self._finish(c, code, msg)
            if not queued:
                break
        if self._to_seal:
            self._send()

    def _finish(self, c: pycurl.Curl, code: int, msg: str) -> None:
        x = self._active.pop(c)
        self._multi.remove_handle(c)
        if x.writer is not None:
            failed = x.writer.flush()
            if failed is not None and x.fd is not None and x.oserror is None:
                x.oserror = failed
        os.dup2(self._devnull, x.slot)  # detach dest (or the memfd) from the handle
        self._idle.append((c, x.slot, x.writer))
        if x.errfd is not None:
            error_body = os.pread(x.errfd, ERROR_BODY_MAX, 0)
            os.close(x.errfd)
        else:
            error_body = b""
        if x.offset and not x.restarted and (x.retry or x.status == 416):
            log.debug("%s: %s; downloading again from byte 0", x.job.url,
                      x.retry or "416 on a resume")
            self._start(x.job, restarted=True)
            return
        out = self._outcome(x, code, msg, error_body)
        if x.fd is not None:  # the sealer fills in size and sha256, fsyncs, and answers
            os.close(x.fd)
            self._sealing[str(x.ident)] = out
            self._to_seal.append(f"E\t{x.ident}\n")
        else:
            self._ready.append(out)

    def _outcome(self, x: _Xfer, code: int, msg: str, error_body: bytes) -> Outcome:
        if not x.decided:
            x.status, x.headers = _parse_headers(x.lines)
        hdrs, status = x.headers, x.status or None
        ok = x.fd is not None
        error, transient = (f"curl {code}: {msg}", code in TRANSIENT_CURL) if code else (None,
                                                                                      False)
        if x.oserror is not None:
            error, transient = f"cannot write {x.job.dest}: {x.oserror}", False
        elif x.retry:
            error, transient = f"resume failed: {x.retry}", True
        elif error is None and status is None:
            error, transient = "no response", True
        elif error is None and not ok:
            error = f"HTTP {status}"
            transient = status >= 500 or status in TRANSIENT_STATUS  # type: ignore[operator]
        size = 0
        if not ok:
            try:
                size = os.stat(x.job.dest).st_size
            except OSError:
                pass
        return Outcome(key=x.job.key, url=x.job.url, status=status, size=size,
                       expected_size=_expected_size(hdrs, x.offset) if ok else None,
                       sha256=None, headers=hdrs, error=error, transient=transient,
                       retry_after=(retry_after_seconds(hdrs.get("retry-after"))
                                    if status in (429, 503) else None),
                       restarted=x.restarted, seconds=time.perf_counter() - x.started,
                       error_body=error_body, curl_code=code)

    def _send(self) -> None:
        data = "".join(self._to_seal).encode()
        self._to_seal.clear()
        stdin = self._sealer.stdin  # type: ignore[union-attr]
        assert stdin is not None
        try:
            while data:  # the sealer drains its input every turn (at most a few ms apart)
                data = data[stdin.write(data) or 0:]
        except BrokenPipeError as exc:
            raise _sealer_died(self._sealer.poll()) from exc  # type: ignore[union-attr]

    def _collect(self, block: bool = False) -> list[str]:
        """Read the sealer's answers; complete and queue the outcomes they are for."""
        chunk = b""
        try:
            os.set_blocking(self._from_sealer, block)
            chunk = os.read(self._from_sealer, 1 << 16)
        except BlockingIOError:
            pass
        finally:
            os.set_blocking(self._from_sealer, False)
        if not chunk and (block or self._sealer.poll() is not None):  # type: ignore[union-attr]
            raise _sealer_died(self._sealer.poll())  # type: ignore[union-attr]
        *lines, self._answers = (self._answers + chunk).split(b"\n")
        barriers = []
        for line in lines:
            ident, size, digest, head, error = line.decode().split("\t")
            out = self._sealing.pop(ident, None)
            if ident == "P" or out is None:
                barriers.append(size)
                continue
            out.size, out.sha256 = int(size), None if digest == "-" else digest
            out.head = bytes.fromhex(head)
            if error:
                out.error, out.transient = error, False
            elif out.error is None and out.expected_size not in (None, out.size):
                out.error = f"truncated: {out.size} of {out.expected_size} bytes"
                out.transient = True
            self._ready.append(out)
        return barriers

    def _cancelled(self) -> list[Outcome]:
        """Abandon the transfers in flight (their files stay, each with a `cancelled` Outcome
        carrying its headers); bodies already complete are sealed and returned as usual."""
        out = [Outcome(key=x.job.key, url=x.job.url, status=x.status or None, size=0,
                       expected_size=None, sha256=None, headers=x.headers,
                       error="cancelled", transient=True, retry_after=None, cancelled=True)
               for x in self._active.values() if x.fd is not None]
        self._abandon(keep_sealed=True)
        sealed = list(self._ready)
        self._ready.clear()
        return sealed + out

    def _abandon(self, keep_sealed: bool = False) -> None:
        """Stop what is left when the consumer stops early; partial files stay as they are."""
        for c, x in list(self._active.items()):
            self._multi.remove_handle(c)
            if x.writer is not None:
                x.writer.flush()  # what arrived stays in the partial file
            os.dup2(self._devnull, x.slot)
            self._idle.append((c, x.slot, x.writer))
            for fd in (x.errfd, x.fd):
                if fd is not None:
                    os.close(fd)
            if x.fd is not None:
                self._to_seal.append(f"D\t{x.ident}\n")
        self._active.clear()
        if self._sealing or self._to_seal:  # wait until the sealer is done with every file
            barrier = str(next(self._ids))
            self._to_seal.append(f"P\t{barrier}\n")
            self._send()
            while barrier not in self._collect(block=True):
                pass
        self._sealing.clear()
        if not keep_sealed:
            self._ready.clear()


def _parse_headers(lines: list[bytes]) -> tuple[int, dict[str, str]]:
    """Status and headers of the last response block; names lower-cased, repeats joined."""
    start, status = 0, 0
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith(b"HTTP/"):
            parts = lines[i].split(None, 2)
            start, status = i + 1, int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
            break
    out: dict[str, str] = {}
    for raw in lines[start:]:
        name, sep, value = raw.decode("latin-1").partition(":")
        if sep:
            name, value = name.strip().lower(), value.strip()
            out[name] = f"{out[name]}, {value}" if name in out else value
    return status, out


def _range_start(content_range: str | None) -> int | None:
    try:
        return int(content_range.split()[1].split("-")[0])  # type: ignore[union-attr]
    except (AttributeError, IndexError, ValueError):
        return None


def _validator(hdrs: dict[str, str], wanted: str) -> str | None:
    """The server's validator of the same kind as `wanted` (ETags are quoted, dates are not)."""
    return hdrs.get("etag") if wanted.startswith(('"', "W/")) else hdrs.get("last-modified")


def _expected_size(hdrs: dict[str, str], offset: int) -> int | None:
    total = (hdrs.get("content-range") or "").rpartition("/")[2]
    if total.isdigit():
        return int(total)
    length = hdrs.get("content-length")
    return offset + int(length) if length and length.isdigit() else None


def _sealer_died(code: int | None) -> StoreError:
    """The hashing process is gone (a file it mapped was truncated under it: SIGBUS, or it was
    killed): no file it had not answered for is committed, so the run can simply start over."""
    how = f"with signal {-code}" if code is not None and code < 0 else f"with code {code}"
    return StoreError(f"mirror's hashing process (the sealer) ended unexpectedly {how}; "
                      "files it had not checked were not stored",
                      "run the command again: stored files are kept and partial ones resume; "
                      "if it recurs, check that nothing else writes into the store")
