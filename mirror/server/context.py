"""What every route of the service needs: the open catalogue, the settings, the readers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mirror.catalogue.engine import Catalogue
from mirror.config import Config
from mirror.server.pool import RunnerPool


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

    def __post_init__(self) -> None:
        if self.runners is None:
            self.runners = RunnerPool.for_config(self.catalogue, self.config)

    def close(self) -> None:
        """Stop the async workers, close the readers' connections (the catalogue belongs to
        whoever opened it)."""
        while self.closers:
            self.closers.pop()()
        self.runners.close()
