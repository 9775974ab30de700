"""What every route of the service needs: the open catalogue, the settings, the readers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mirror.catalogue.engine import Catalogue
from mirror.config import Config
from mirror.server.pool import RunnerPool
from mirror.server.workers import QueryThreads

if TYPE_CHECKING:
    from starlette.requests import Request

# threads that run /sync queries off the event loop: as many as starlette's own thread pool, so
# a request beyond the runners waits for one in the runner pool (503 after queue_seconds), not
# in these threads' queue
QUERY_THREADS = 40


@dataclass
class ServiceContext:
    """One service's shared state; built by the process that holds the catalogue open."""

    catalogue: Catalogue
    config: Config
    base_url: str = ""
    token: str | None = None
    status: Callable[[], list[dict[str, Any]]] | None = None
    state: Callable[[], dict[str, Any]] | None = None
    runners: RunnerPool = field(default=None)  # type: ignore[assignment]
    closers: list[Callable[[], None]] = field(default_factory=list)  # e.g. the async job store
    # /sync's hop off the event loop: starlette's run_in_threadpool (anyio: cancel scopes, a
    # capacity limiter) and asyncio's run_in_executor cost several times its CPU per request
    workers: QueryThreads = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.runners is None:
            self.runners = RunnerPool.for_config(self.catalogue, self.config)
        self.workers = QueryThreads(QUERY_THREADS, "mirror-sync")

    def link_base(self, request: Request) -> str:
        """The base of every link the service hands out: `base_url` ([serve] public_url, or
        where it listens), else the address the request came to."""
        return self.base_url.rstrip("/") or str(request.base_url).rstrip("/")

    def close(self) -> None:
        """Stop the async workers, close the readers' connections (the catalogue belongs to
        whoever opened it)."""
        while self.closers:
            self.closers.pop()()
        self.workers.close()
        self.runners.close()
