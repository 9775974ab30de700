"""Hashes and fsyncs the files `mirror.fetch.transport` writes, in a process of its own.

Why a process: in a thread, every hash and fsync call hands the GIL back and forth with the
network loop, which costs more than the hashing itself for small files. Run as
``python -I -S _sealer.py FSYNC`` (stdlib only). Protocol, one tab-separated line each:

    in   O <id> <path as hex>   the file is being written: hash it as it grows
         E <id>                 writing has ended: hash the rest, fsync, answer
         D <id>                 forget the file (the transfer was dropped)
         P <id>                 answer "P <id> - - " once everything before it is answered
    out  <id> <size> <sha256 hex> <first HEAD bytes as hex> <error or nothing>

The first bytes come back so that the parent can tell data from an error page without opening
the file again.

New stretches of a file are hashed from a read-only mapping of its pages (copying them out
with `preadv` cost ~0.5 s of CPU per GB, a third of the sealer's work); the transport only ever
appends to a file while it is open here, so a mapping never reaches past the end of the file.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import select
import sys
import threading
import time

TYPE_CHECKING = False  # as typing's (mypy reads it so), without importing typing: 20 ms
if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

TICK = 0.005  # seconds between catch-ups on files still growing
# a new stretch at least this long is hashed from a mapping, not read: break-even on tmpfs is
# ~40 KB; at 100 KB the mapping costs ~25% less CPU than copying out, at 4 KB twice as much
MAP_MIN = 48 << 10
MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # map the whole stretch in one go, not per page
HEAD = 64  # first bytes sent back with a file's sums
# an ended file with at least this much still to hash is finished on a thread: at the end of a
# run of big files the loop is often hundreds of MB behind, and one thread hashed it alone
BIG_END = 4 << 20
SLOW_FSYNC = 0.002  # when fsyncs take longer on average, they run in a pool (slow disks)


class Sealer:
    def __init__(self, fsync: bool) -> None:
        self.fsync = fsync
        self.files: dict[str, list] = {}  # id -> [fd, hasher, hashed bytes]
        self.view = memoryview(bytearray(1 << 20))
        self.lock = threading.Lock()
        self.out: list[str] = []
        self.pool: ThreadPoolExecutor | None = None
        self.avg = 0.0

    def answer(self, line: str) -> None:
        if threading.current_thread() is threading.main_thread():
            self.out.append(line)  # sent with the others of this turn by `send`
            return
        with self.lock:  # an fsync thread of the pool
            _write_all(f"{line}\n".encode())

    def send(self) -> None:
        """One write for all answers of a turn of the main loop (one wake-up of the parent)."""
        if self.out:
            data = ("\n".join(self.out) + "\n").encode()
            self.out.clear()
            with self.lock:
                _write_all(data)

    def catch_up(self, entry: list) -> int:
        fd, hasher, hashed = entry
        size = os.fstat(fd).st_size
        if size - hashed >= MAP_MIN:  # hash the page cache in place: no copy into a buffer
            start = hashed - hashed % mmap.ALLOCATIONGRANULARITY
            with mmap.mmap(fd, size - start, flags=mmap.MAP_SHARED | MAP_POPULATE,
                           prot=mmap.PROT_READ, offset=start) as window:
                with memoryview(window) as view:
                    hasher.update(view[hashed - start:])
            hashed = size
        while hashed < size:
            n = os.preadv(fd, [self.view[:size - hashed]], hashed)
            if n <= 0:
                break
            hasher.update(self.view[:n])
            hashed += n
        entry[2] = hashed
        return hashed

    def handle(self, kind: str, ident: str, rest: list[str]) -> None:
        if kind == "O":
            try:
                fd = os.open(bytes.fromhex(rest[0]), os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                self.files[ident] = [None, str(exc)]
                return
            self.files[ident] = [fd, hashlib.sha256(), 0]
        elif kind == "D":
            entry = self.files.pop(ident, None)
            if entry and entry[0] is not None:
                os.close(entry[0])
        elif kind == "P":
            if self.pool is not None:
                self.pool.shutdown()  # everything before the barrier is answered
                self.pool = None
            self.answer(f"P\t{ident}\t-\t\t")
        elif kind == "E":
            self.end(ident, self.files.pop(ident))

    def end(self, ident: str, entry: list) -> None:
        fd = entry[0]
        if fd is None:
            self.answer(f"{ident}\t0\t-\t\tcannot read back: {entry[1]}")
            return
        try:
            left = os.fstat(fd).st_size - entry[2]
        except OSError:
            left = 0  # `finish` reports it
        if left >= BIG_END:  # a backlog (this loop fell behind a fast download): on a thread,
            self.threads().submit(self.finish, ident, entry, False)  # beside other files
        else:
            self.finish(ident, entry, True)

    def finish(self, ident: str, entry: list, inline: bool) -> None:
        """Hash the rest of an ended file, fsync it and answer; `inline` on the main loop,
        else on a pool thread (there the rest is at least BIG_END: hashed from a mapping,
        never through the main loop's shared buffer)."""
        fd = entry[0]
        try:
            size = self.catch_up(entry)
            sums = f"{size}\t{entry[1].hexdigest()}\t{os.pread(fd, HEAD, 0).hex()}"
        except OSError as exc:
            os.close(fd)
            self.answer(f"{ident}\t0\t-\t\tcannot read back: {exc}")
            return
        if not self.fsync:
            os.close(fd)
            self.answer(f"{ident}\t{sums}\t")
        elif not inline:
            self.sync(fd, ident, sums)
        elif self.pool is not None:
            self.pool.submit(self.sync, fd, ident, sums)
        else:  # inline while fsync is cheap (tmpfs, idle SSD); a moving average of its time
            t = time.perf_counter()
            self.sync(fd, ident, sums)
            self.avg += (time.perf_counter() - t - self.avg) / 16
            if self.avg > SLOW_FSYNC:
                self.threads()

    def threads(self) -> ThreadPoolExecutor:
        """The pool for slow fsyncs and big backlogs, started when first needed."""
        if self.pool is None:
            from concurrent.futures import ThreadPoolExecutor  # 18 ms of imports: when due

            self.pool = ThreadPoolExecutor(8)
        return self.pool

    def sync(self, fd: int, ident: str, sums: str) -> None:
        error = ""
        try:
            os.fsync(fd)
        except OSError as exc:
            error = f"fsync failed: {exc}".replace("\t", " ").replace("\n", " ")
        finally:
            os.close(fd)
        self.answer(f"{ident}\t{sums}\t{error}")


def _write_all(data: bytes) -> None:
    while data:
        data = data[os.write(1, data):]


def main() -> None:
    try:  # a batch task: woken by the parent's lines, it must not preempt the network loop
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except (AttributeError, OSError):
        pass  # not Linux: the default policy
    sealer = Sealer(fsync=sys.argv[1] == "1")
    os.set_blocking(0, False)
    waiter = select.poll()
    waiter.register(0, select.POLLIN)
    pending, ended = b"", False
    while not ended:
        growing = any(e[0] is not None for e in sealer.files.values())
        if waiter.poll(TICK * 1000 if growing else None):
            while True:  # all there is: the parent never waits on a full pipe for long
                try:
                    chunk = os.read(0, 1 << 20)
                except BlockingIOError:
                    break
                if not chunk:
                    ended = True
                    break
                pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                kind, ident, *rest = line.decode().split("\t")
                sealer.handle(kind, ident, rest)
        for entry in sealer.files.values():
            if entry[0] is not None:
                try:
                    sealer.catch_up(entry)
                except OSError:
                    pass  # reported when the file ends
        sealer.send()
    if sealer.pool is not None:
        sealer.pool.shutdown()


if __name__ == "__main__":
    try:
        main()
    except BrokenPipeError:  # the parent is gone (killed): nobody is left to answer
        pass
    os._exit(0)  # every answer is written (unbuffered fd 1): skip the interpreter's teardown
