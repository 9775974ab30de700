"""Big downloads on two network loops: one Transport per lane, each on a thread of its own.

Why: a big body costs its network loop ~1 s of CPU per GB on this 2-core machine, nearly all of
it in the kernel (reading the socket, copying into the page cache). One loop is one thread, so
the rate stops at what one core does while the sealer and the server share the other. Two
loops each carry half of the transfers (libcurl works with the GIL released), and the kernel
work spreads over both cores: 20 x 50 MB from nginx in 1.25 s instead of 1.47 (curl 1.50).
For small files a loop's work is mostly Python per transfer, which two loops would contend
for: 2,000 x 100 KB took 0.55 s on two against 0.50 on one, so small products keep one lane
(1 MB: a draw; 5 MB: 0.51 against 0.60 s).

Each lane has its own handles, connections and sealer; the limits are shared out, so the
lanes together never open more connections, nor more to one host, than one Transport would.
"""

from __future__ import annotations

import os
import queue
import statistics
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from mirror.fetch.transport import Download, Flag, Outcome, Transport

LANES = 2  # as measured on 2 cores; more lanes than cores only contend
BIG = 2 << 20  # median estimated size (bytes) from which a pass runs on LANES loops


def lanes_for(sizes: Iterable[int | None], transport: Transport) -> int:
    """How many lanes suit products of these estimated sizes (None: unknown) on `transport`."""
    if _cores() < 2 or transport.per_host < 2 or transport.concurrency < 2:
        return 1
    known = [s for s in sizes if s]
    return LANES if known and statistics.median(known) >= BIG else 1


class Lanes:
    """`first` and siblings of it, `count` in all, behind Transport's `run`: each run shares
    `first`'s limits out among them and gives `first` its own back when it ends. `close` closes
    the siblings (the caller owns `first`)."""

    def __init__(self, first: Transport, count: int) -> None:
        self.first = first
        self.limits = (first.concurrency, first.per_host)
        self.transports = [first, *(first.sibling() for _ in range(count - 1))]
        for t in self.transports[1:]:
            t.start()  # their sealers start while the first lane's jobs are prepared

    def run(self, jobs: Iterable[Download],
            cancel: Flag | None = None) -> Iterator[Outcome]:
        """As `Transport.run`, the jobs pulled by whichever lane has room. When the consumer
        stops early or a lane fails, the other lanes abandon their transfers (as on cancel)."""
        source, lock = iter(jobs), threading.Lock()
        stop = _Stop(cancel)
        done = object()
        results: queue.SimpleQueue[Any] = queue.SimpleQueue()

        def pull() -> Iterator[Download]:
            while True:
                with lock:  # the jobs' generator runs in one lane at a time
                    job = next(source, None)
                if job is None:
                    return
                yield job

        def drive(t: Transport) -> None:
            try:
                for outcome in t.run(pull(), cancel=stop):
                    results.put(outcome)
            except BaseException as exc:  # noqa: BLE001 (re-raised in the consumer)
                results.put(exc)
            finally:
                results.put(done)

        for i, t in enumerate(self.transports):  # shared out for this run
            t.limit(*(_share(n, len(self.transports), i) for n in self.limits))
        threads = [threading.Thread(target=drive, args=(t,), name=f"mirror-lane-{i}",
                                    daemon=True) for i, t in enumerate(self.transports)]
        for thread in threads:
            thread.start()
        running = len(threads)
        try:
            while running:
                item = results.get()
                if item is done:
                    running -= 1
                elif isinstance(item, BaseException):  # a lane failed
                    raise item
                else:
                    yield item
        finally:
            stop.set()
            for thread in threads:
                thread.join()
            self.first.limit(*self.limits)

    def close(self) -> None:
        for t in self.transports[1:]:
            t.close()


class _Stop:
    """Set by the caller's cancel event or by `set` (the consumer left, a lane failed)."""

    def __init__(self, cancel: Flag | None) -> None:
        self.cancel = cancel
        self.own = threading.Event()

    def is_set(self) -> bool:
        return self.own.is_set() or (self.cancel is not None and self.cancel.is_set())

    def set(self) -> None:
        self.own.set()


def _cores() -> int:
    """The cores this process may run on (a container's CPU set, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _share(total: int, count: int, i: int) -> int:
    """Lane i's part of `total` split over `count` lanes (the parts add up to `total`)."""
    return total // count + (1 if i < total % count else 0)
