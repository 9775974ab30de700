"""A fixed number of query runners, each on its own DuckDB cursor: the service's concurrent
readers. A request waits briefly for a free one, then is told to come back (HTTP 503)."""

from __future__ import annotations

import contextlib
import queue
from collections.abc import Iterator

from mirror.catalogue.engine import Catalogue
from mirror.config import Config
from mirror.errors import MirrorError
from mirror.query import Runner


class PoolBusyError(MirrorError):
    """Every runner is busy: the service answers 503 with Retry-After."""

    retry_after = 2


class RunnerPool:
    """`with pool.runner() as r: r.query(...)`: at most `size` queries run at once."""

    def __init__(self, catalogue: Catalogue, size: int = 4, *, timeout: float = 60.0,
                 maxrec: int = 100_000, wait: float = 5.0) -> None:
        self.size = max(1, size)
        self.wait = wait
        self.timeout = timeout
        self.maxrec = maxrec
        self._all = [Runner(catalogue, timeout=timeout, maxrec=maxrec) for _ in range(self.size)]
        self._free: queue.LifoQueue[Runner] = queue.LifoQueue()
        for r in self._all:  # LIFO: the warmest runner (macros loaded, tables cached) first
            self._free.put(r)

    @classmethod
    def for_config(cls, catalogue: Catalogue, config: Config) -> RunnerPool:
        return cls(catalogue, size=config.serve.max_queries, timeout=config.query.timeout,
                   maxrec=config.query.maxrec, wait=config.serve.queue_seconds)

    @contextlib.contextmanager
    def runner(self, wait: float | None = None) -> Iterator[Runner]:
        """A free runner for the block; PoolBusyError if none frees up within `wait` seconds."""
        try:
            r = self._free.get(timeout=self.wait if wait is None else wait)
        except queue.Empty:
            raise PoolBusyError(
                f"all {self.size} query slots are busy",
                "retry in a few seconds, or raise [serve] max_queries") from None
        try:
            yield r
        finally:
            self._free.put(r)

    def refresh(self) -> None:
        """Forget cached table lists (a sync added a source): runners reload them lazily."""
        for r in self._all:
            r._tables = None

    def close(self) -> None:
        for r in self._all:
            r.close()
