"""Retries for transient failures only: exponential backoff with jitter, honouring Retry-After."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from mirror.errors import RateLimitError, TransientError

log = logging.getLogger("mirror")
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry; `sleep` and `rng` are seams for tests."""

    attempts: int = 6
    base: float = 0.5
    cap: float = 60.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)
    rng: Callable[[], float] = field(default=random.random, repr=False)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before attempt `attempt + 1` (attempt counts from 1)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.cap)
        full = min(self.cap, self.base * 2 ** (attempt - 1))
        return full / 2 + full / 2 * self.rng()  # "equal jitter": never zero, never in lockstep

    def call(self, fn: Callable[[], T], what: str) -> T:
        """Run `fn`, retrying `TransientError`s; anything else propagates at once."""
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except TransientError as exc:
                if attempt == self.attempts:
                    raise
                wait = self.delay(attempt, exc.retry_after if isinstance(exc, RateLimitError)
                                  else None)
                log.warning("%s failed (%s); retry %d/%d in %.1f s", what, exc.message,
                            attempt, self.attempts - 1, wait)
                self.sleep(wait)
        raise AssertionError("unreachable")
