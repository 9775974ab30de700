"""The download engine: one thread drives many HTTP/1.1 transfers through pycurl's CurlMulti.

Why this shape: libcurl does keep-alive pooling, redirects, per-host limits and stall detection
in C. Body chunks land in a list through `list.append` itself (no Python frame per chunk); after
each round of socket events they go, in order, to one writer thread that writes, hashes and
fsyncs. `write` and `sha256.update` release the GIL, so disk and hashing overlap the network on a
second core. Waiting uses epoll via the socket API (`multi.select` only handles fds < 1024).
Results are plain `Outcome`s: the caller maps them to the project's errors and retries.
"""

from __future__ import annotations

import hashlib
import logging
import os
import select
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from queue import SimpleQueue
from typing import IO, Any

import pycurl

log = logging.getLogger("mirror")

ERROR_BODY_MAX = 64 * 1024  # error pages are kept in memory up to this size, never on disk
BACKLOG_MAX = 64 << 20  # bytes received but not yet written before the network loop waits
SLOW_FSYNC = 0.002  # seconds; after one slower fsync, fsyncs run in a pool (slow disks)
# curl codes worth retrying: resolve/connect/send/recv failures, timeouts, partial bodies, TLS
TRANSIENT_CURL = frozenset({5, 6, 7, 16, 18, 28, 35, 52, 55, 56, 92, 95})
TRANSIENT_STATUS = frozenset({408, 429})
_EPOLL_TO_CURL = ((select.EPOLLIN, pycurl.CSELECT_IN), (select.EPOLLOUT, pycurl.CSELECT_OUT),
                  (select.EPOLLERR | select.EPOLLHUP, pycurl.CSELECT_ERR))
_CURL_TO_EPOLL = {pycurl.POLL_IN: select.EPOLLIN, pycurl.POLL_OUT: select.EPOLLOUT,
                  pycurl.POLL_INOUT: select.EPOLLIN | select.EPOLLOUT}


@dataclass
class Download:
    """One file to fetch; `validator` guards a resume against a file that changed upstream."""

    key: object
    url: str
    dest: Path
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
    error_body: bytes = b""  # start of a non-2xx body (at most 64 KB), for messages
    curl_code: int = 0


class _Xfer:
    """One transfer. The network thread owns it until the writer gets its first chunks; from
    then on only the writer touches `file`, `hasher` and `oserror`."""

    __slots__ = ("job", "curl", "lines", "chunks", "offset", "restarted", "started", "began",
                 "status", "headers", "ok", "errbody", "file", "hasher", "oserror")

    def __init__(self, job: Download, curl: pycurl.Curl, restarted: bool) -> None:
        self.job, self.curl, self.restarted = job, curl, restarted
        self.started = time.perf_counter()
        self.lines: list[bytes] = []
        self.chunks: list[bytes] = []
        self.offset = 0
        self.began = self.ok = False
        self.status = 0
        self.headers: dict[str, str] = {}
        self.errbody = bytearray()
        self.file: IO[bytes] | None = None
        self.hasher = hashlib.sha256()
        self.oserror: OSError | None = None


_Work = list[tuple[_Xfer, list[bytes], Outcome | None, bool]]  # xfer, chunks, outcome, last


class Transport:
    """Concurrent HTTP downloads to files; see `run`. Not thread-safe: one `run` at a time."""

    def __init__(self, *, concurrency: int = 16, per_host: int = 8, connect_timeout: float = 10,
                 low_speed_time: float = 30, low_speed_limit: int = 1, fsync: bool = True,
                 user_agent: str = "mirror/0.1", chunk_hint: int = 1 << 16) -> None:
        self.concurrency = max(1, concurrency)
        self.fsync = fsync
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
        for opt, value in ((pycurl.M_MAX_TOTAL_CONNECTIONS, self.concurrency),
                           (pycurl.M_MAX_HOST_CONNECTIONS, max(1, per_host)),
                           (pycurl.M_MAXCONNECTS, self.concurrency), (pycurl.M_PIPELINING, 0),
                           (pycurl.M_SOCKETFUNCTION, self._on_socket),
                           (pycurl.M_TIMERFUNCTION, self._on_timer)):
            self._multi.setopt(opt, value)
        self._epoll = select.epoll()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll.register(self._wake, select.EPOLLIN)
        self._watched: dict[int, int] = {}
        self._deadline: float | None = None
        self._idle: list[pycurl.Curl] = []
        self._active: dict[pycurl.Curl, _Xfer] = {}
        self._ready: deque[Outcome] = deque()
        self._batch: _Work = []
        self._work: SimpleQueue[_Work | threading.Event | None] = SimpleQueue()
        self._done: SimpleQueue[Outcome] = SimpleQueue()
        self._progress = threading.Event()
        self._handed = self._written = 0  # bytes; `_written` is only ever set by the writer
        self._sealing = 0  # outcomes with the writer
        self._pool: ThreadPoolExecutor | None = None
        self._writer = threading.Thread(target=self._write_loop, name="mirror-writer",
                                        daemon=True)
        self._writer.start()

    # -- public ---------------------------------------------------------------------------------

    def run(self, jobs: Iterable[Download]) -> Iterator[Outcome]:
        """Download all jobs concurrently (at most `concurrency` at once, at most `per_host` per
        host), yielding each Outcome as soon as its transfer ends. Jobs are pulled lazily."""
        it, more = iter(jobs), True
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
                self._step()
        finally:
            self._abandon()

    def close(self) -> None:
        """Free handles, sockets and threads; the Transport is unusable afterwards."""
        if self._epoll.closed:
            return
        self._abandon()
        self._work.put(None)
        self._writer.join()
        if self._pool is not None:
            self._pool.shutdown()
        for c in self._idle:
            c.close()
        self._multi.close()
        self._epoll.close()
        os.close(self._wake)

    # -- the network thread ---------------------------------------------------------------------

    def _start(self, job: Download, *, restarted: bool) -> None:
        c = self._idle.pop() if self._idle else self._new_handle()
        x = _Xfer(job, c, restarted)
        headers = [f"{k}: {v}" for k, v in job.headers.items()]
        if job.resume_from > 0 and not restarted:
            try:
                kept = os.stat(job.dest).st_size
            except FileNotFoundError:
                kept = 0
            if kept >= job.resume_from:
                x.offset = job.resume_from  # the writer hashes this prefix before appending
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
        c.setopt(pycurl.HTTPHEADER, headers)
        c.setopt(pycurl.HEADERFUNCTION, x.lines.append)
        c.setopt(pycurl.WRITEFUNCTION, x.chunks.append)
        self._active[c] = x
        self._multi.add_handle(c)

    def _new_handle(self) -> pycurl.Curl:
        c = pycurl.Curl()
        for opt, value in self._opts:
            c.setopt(opt, value)
        return c

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
        """Wait for sockets, libcurl's timer or the writer; act on all that is due."""
        timeout = 1.0
        if self._deadline is not None:
            timeout = min(timeout, max(0.0, self._deadline - time.perf_counter()))
        multi = self._multi
        for fd, ev in self._epoll.poll(timeout):
            if fd == self._wake:
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
        for x in list(self._active.values()):
            if x.chunks and not self._drain(x):
                self._multi.remove_handle(x.curl)
                self._finish(x.curl, 23, "stopped by mirror")
        if self._batch:
            self._work.put(self._batch)
            self._batch = []
            while self._handed - self._written > BACKLOG_MAX:  # the disk is slower: wait
                self._progress.wait(0.1)
                self._progress.clear()

    def _drain(self, x: _Xfer) -> bool:
        """Pass received chunks on (2xx: to the writer, else: to memory); False: stop it."""
        if not x.began and not self._decide(x):
            return False
        chunks = x.chunks.copy()
        x.chunks.clear()  # the same list: libcurl's WRITEFUNCTION is its `append`
        if x.ok:
            if x.oserror is not None:
                return False
            self._handed += sum(map(len, chunks))
            self._batch.append((x, chunks, None, False))
        elif len(x.errbody) < ERROR_BODY_MAX:
            x.errbody += b"".join(chunks)[:ERROR_BODY_MAX - len(x.errbody)]
        return True

    def _decide(self, x: _Xfer) -> bool:
        """At the first body bytes (or the end): where does the body go? False: resume again."""
        x.began = True
        x.status, x.headers = status, hdrs = _parse_headers(x.lines)
        x.ok = 200 <= status < 300
        if not x.offset or not x.ok:
            return True
        if status != 206:  # Range ignored, or If-Range said the file changed: write from 0
            x.offset, x.restarted = 0, True
        elif _range_start(hdrs.get("content-range")) != x.offset:
            return False
        elif x.job.validator and _validator(hdrs, x.job.validator) not in (None,
                                                                           x.job.validator):
            return False
        return True

    def _finish(self, c: pycurl.Curl, code: int, msg: str) -> None:
        x = self._active.pop(c)
        self._multi.remove_handle(c)
        self._idle.append(c)
        resumable = x.offset > 0 and not x.restarted
        if (x.began or x.lines) and not self._drain(x) and resumable:
            return self._restart(x, "the partial file's validator or range does not match")
        if x.status == 416 and resumable:
            return self._restart(x, "416 on a resume")
        out = self._outcome(x, code, msg)
        if x.ok:  # the writer fills in size and sha256, fsyncs, and hands the outcome back
            self._sealing += 1
            self._batch.append((x, [], out, True))
        else:
            self._ready.append(out)

    def _restart(self, x: _Xfer, why: str) -> None:
        log.debug("%s: %s, downloading again from byte 0", x.job.url, why)
        self._start(x.job, restarted=True)

    def _outcome(self, x: _Xfer, code: int, msg: str) -> Outcome:
        if not x.began:
            x.status, x.headers = _parse_headers(x.lines)
        hdrs, status = x.headers, x.status or None
        error, transient = (f"curl {code}: {msg}", code in TRANSIENT_CURL) if code else (None,
                                                                                      False)
        if error is None and status is None:
            error, transient = "no response", True
        elif error is None and not x.ok:
            error = f"HTTP {status}"
            transient = status >= 500 or status in TRANSIENT_STATUS  # type: ignore[operator]
        size = 0
        if not x.ok:
            try:
                size = os.stat(x.job.dest).st_size
            except OSError:
                pass
        return Outcome(key=x.job.key, url=x.job.url, status=status, size=size,
                       expected_size=_expected_size(hdrs, x.offset) if x.ok else None,
                       sha256=None, headers=hdrs, error=error, transient=transient,
                       retry_after=(_retry_after(hdrs.get("retry-after"))
                                    if status in (429, 503) else None),
                       restarted=x.restarted, seconds=time.perf_counter() - x.started,
                       error_body=bytes(x.errbody), curl_code=code)

    def _collect(self) -> None:
        try:
            os.eventfd_read(self._wake)
        except BlockingIOError:
            pass
        while not self._done.empty():
            self._sealing -= 1
            self._ready.append(self._done.get())

    def _abandon(self) -> None:
        """Stop what is left when the consumer stops early; partial files stay as they are."""
        for c, x in list(self._active.items()):
            self._multi.remove_handle(c)
            self._idle.append(c)
            if x.ok:
                self._batch.append((x, [], None, True))
        self._active.clear()
        flushed = threading.Event()
        self._work.put(self._batch)
        self._work.put(flushed)
        self._batch = []
        flushed.wait()
        while not self._done.empty():
            self._done.get()
        self._sealing = 0
        self._ready.clear()

    # -- the writer thread ----------------------------------------------------------------------

    def _write_loop(self) -> None:
        while (work := self._work.get()) is not None:
            if isinstance(work, threading.Event):
                work.set()
                continue
            for x, chunks, out, last in work:
                if x.oserror is None:
                    try:
                        self._write(x, chunks)
                    except OSError as exc:
                        x.oserror = exc
                self._written += sum(map(len, chunks))
                if last:
                    self._seal(x, out)
            self._progress.set()
            os.eventfd_write(self._wake, 1)

    def _write(self, x: _Xfer, chunks: list[bytes]) -> None:
        f = x.file
        if f is None:
            if x.offset:
                f = x.file = open(x.job.dest, "r+b")  # noqa: SIM115 - closed in _seal
                left = x.offset
                while left:  # seed the hash with the kept prefix
                    block = f.read(min(left, 1 << 20))
                    if not block:
                        raise OSError(f"{x.job.dest} shrank below {x.offset} bytes")
                    x.hasher.update(block)
                    left -= len(block)
                f.truncate()
            else:
                f = x.file = open(x.job.dest, "wb")  # noqa: SIM115 - closed in _seal
        write, update = f.write, x.hasher.update
        for chunk in chunks:
            write(chunk)
            update(chunk)

    def _seal(self, x: _Xfer, out: Outcome | None) -> None:
        """Complete `out` with what is on disk, fsync, close, hand it back (None: just close)."""
        f = x.file
        try:
            if f is None and x.oserror is None and out is not None:
                self._write(x, [])  # an empty body still makes a file
                f = x.file
            if f is not None:
                f.flush()
                if out is not None:
                    out.size = f.tell()
        except OSError as exc:
            x.oserror = x.oserror or exc
        if out is not None:
            out.sha256 = x.hasher.hexdigest()
            if x.oserror is not None:
                out.error, out.transient = f"cannot write {x.job.dest}: {x.oserror}", False
            elif out.error is None and out.expected_size not in (None, out.size):
                out.error, out.transient = f"truncated: {out.size} of {out.expected_size}", True
        if f is None or out is None or not self.fsync:
            if f is not None:
                f.close()
            if out is not None:
                self._done.put(out)
            return
        if self._pool is not None:
            self._pool.submit(self._fsync, f, out, True)
            return
        t = time.perf_counter()
        self._fsync(f, out, False)
        if time.perf_counter() - t > SLOW_FSYNC:
            log.debug("fsync is slow here: syncing in a pool from now on")
            self._pool = ThreadPoolExecutor(4, thread_name_prefix="mirror-fsync")

    def _fsync(self, f: IO[bytes], out: Outcome, wake: bool) -> None:
        try:
            os.fsync(f.fileno())
        except OSError as exc:
            out.error, out.transient = out.error or f"fsync failed: {exc}", False
        finally:
            f.close()
        self._done.put(out)
        if wake:
            os.eventfd_write(self._wake, 1)


def _parse_headers(lines: list[bytes]) -> tuple[int, dict[str, str]]:
    """Status and headers of the last response (after redirects); names lower-cased, repeats
    joined. Parsed from the lines because pycurl forbids getinfo inside callbacks."""
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


def _retry_after(value: str | None) -> float | None:
    """Retry-After as seconds from now; it may be a number or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None
