"""The threads that run /sync queries off the event loop, each result handed straight back.

asyncio's `run_in_executor` wraps every call in a concurrent Future chained to an asyncio one
(two callbacks, the executor's lock and idle semaphore): 50-90 us of CPU per call on this
service's 2-core machine, against ~1 ms of service overhead for a small cone search. Here a call
is one queue put, and its result one `call_soon_threadsafe`: ~30 us.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
IDLE_CHECK_SECONDS = 1.0  # how often an idle thread looks whether the program is ending
_Job = tuple[Callable[[], Any], asyncio.AbstractEventLoop, "asyncio.Future[Any]"]


class QueryThreads:
    """`await threads.run(call)`: `call()` on one of at most `limit` threads, started as needed
    (a call beyond them waits in the queue)."""

    def __init__(self, limit: int, name: str = "mirror-sync") -> None:
        self.limit = max(1, limit)
        self.name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0  # threads waiting for a job
        self._queued = 0  # jobs no thread took yet
        self._closed = False

    async def run(self, call: Callable[[], T]) -> T:
        """The result of `call()`, run on a worker thread; its exception if it raised."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the query threads are closed")
            self._queued += 1
            if self._queued > self._idle and len(self._threads) < self.limit:
                self._start()
        self._jobs.put((call, loop, future))
        return await future

    def close(self) -> None:
        """Cancel the calls no thread took yet; each thread ends after its current call."""
        with self._lock:
            self._closed = True
            threads = len(self._threads)
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                _hand_back(job[1], job[2].cancel)
        for _ in range(threads):
            self._jobs.put(None)

    def _start(self) -> None:
        # not daemon threads: a query still running when the program ends finishes first, as
        # it did in the executor this replaces (a daemon thread would be stopped inside DuckDB)
        thread = threading.Thread(target=self._work, name=f"{self.name}_{len(self._threads)}")
        self._threads.append(thread)
        thread.start()

    def _work(self) -> None:
        while (job := self._next()) is not None:
            call, loop, future = job
            result: Any = None
            error: BaseException | None = None
            try:
                result = call()
            except BaseException as exc:  # noqa: BLE001 (the awaiting request re-raises it)
                error = exc
            _hand_back(loop, _settle, future, result, error)
            del job, call, future, result, error  # hold nothing of it while idle

    def _next(self) -> _Job | None:
        """The next call; None once closed, or once the main thread has ended without closing
        (an idle thread would otherwise keep the process alive)."""
        with self._lock:
            self._idle += 1
        job = None
        try:
            while job is None:
                try:
                    job = self._jobs.get(timeout=IDLE_CHECK_SECONDS)
                except queue.Empty:
                    if not threading.main_thread().is_alive():
                        break
                    continue
                if job is None:  # closed
                    break
        finally:
            with self._lock:
                self._idle -= 1
                if job is not None:
                    self._queued -= 1
        return job


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.done():  # the request was cancelled meanwhile
        return
    if exc is None:
        future.set_result(result)
    else:
        future.set_exception(exc)


def _hand_back(loop: asyncio.AbstractEventLoop, callback: Callable[..., Any], *args: Any) -> None:
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:  # the loop is closed: nobody waits for the answer any more
        pass
