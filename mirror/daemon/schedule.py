"""When each source runs next: interval with jitter, idle back-off, failure back-off.

Pure: the clock and the random source are passed in, so the rules are tested without sleeping.

- a run that changed something (new, changed or withdrawn records, fetched files), or the first
  run that works after failures, sets the wait back to the source's interval;
- a run that changed nothing doubles the wait, up to `idle_max` (a quiet archive is asked less);
- a failed run (service down) waits `interval * 2**failures`, up to `backoff_max`: a failing
  service is never hammered, and the daemon never crash-loops.
Every wait is varied by +-`jitter` (a fraction) so that sources do not run in lockstep.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from mirror.config import Config

IDLE_GROWTH = 2.0
Rng = Callable[[], float]


@dataclass(frozen=True)
class Timing:
    """The schedule settings of one source."""

    interval: float
    jitter: float = 0.0
    idle_max: float = 21600.0
    backoff_max: float = 3600.0


def timings(config: Config) -> dict[str, Timing]:
    """Per source its timing: `[daemon]` settings, the source's own interval if it sets one."""
    d = config.daemon
    out = {}
    for src in config.sources:
        interval = src.interval or d.interval
        out[src.name] = Timing(interval=interval, jitter=d.jitter,
                               idle_max=max(d.idle_max, interval),
                               backoff_max=max(d.backoff_max, interval))
    return out


def jittered(seconds: float, jitter: float, rng: Rng) -> float:
    """`seconds` varied uniformly by +-`jitter` of itself (never negative)."""
    return max(0.0, seconds * (1.0 + jitter * (2.0 * rng() - 1.0)))


@dataclass
class SourceClock:
    """One source's place in the schedule."""

    timing: Timing
    next_at: float
    wait: float = 0.0  # the current un-jittered wait (grows while idle or failing)
    failures: int = 0

    def __post_init__(self) -> None:
        self.wait = self.wait or self.timing.interval

    def succeeded(self, now: float, *, changed: bool, rng: Rng) -> float:
        """After a run that worked: back to the interval if it changed something, else idle."""
        if changed or self.failures:  # a recovery starts again from the interval
            self.wait = self.timing.interval
        else:
            self.wait = min(self.wait * IDLE_GROWTH, self.timing.idle_max)
        self.failures = 0
        return self._plan(now, rng)

    def failed(self, now: float, *, rng: Rng) -> float:
        """After a failed run: exponential back-off, capped."""
        self.failures += 1
        self.wait = min(self.timing.interval * 2.0 ** self.failures, self.timing.backoff_max)
        return self._plan(now, rng)

    def _plan(self, now: float, rng: Rng) -> float:
        self.next_at = now + jittered(self.wait, self.timing.jitter, rng)
        return self.next_at

    @property
    def backing_off(self) -> bool:
        return self.failures > 0


class Schedule:
    """All sources' clocks; `due` says which run now, `next_due` when to wake up."""

    def __init__(self, timing: dict[str, Timing], now: float,
                 rng: Rng = random.random) -> None:
        self.rng = rng
        self.clocks: dict[str, SourceClock] = {}
        self.update(timing, now)

    def update(self, timing: dict[str, Timing], now: float) -> tuple[list[str], list[str],
                                                                     list[str]]:
        """Apply a (re)loaded config: new sources are due now, removed ones forgotten, changed
        timings apply from the next run. Returns (added, removed, retimed)."""
        added = [n for n in timing if n not in self.clocks]
        removed = [n for n in self.clocks if n not in timing]
        retimed = [n for n in timing if n in self.clocks and self.clocks[n].timing != timing[n]]
        for name in removed:
            del self.clocks[name]
        for name in added:
            self.clocks[name] = SourceClock(timing[name], next_at=now)
        for name in retimed:
            clock = self.clocks[name]
            clock.timing, clock.wait = timing[name], timing[name].interval
            clock.next_at = min(clock.next_at, now + timing[name].interval)
        return added, removed, retimed

    def due(self, now: float) -> list[str]:
        """Sources whose time has come, the most overdue first."""
        ready = [(c.next_at, n) for n, c in self.clocks.items() if c.next_at <= now]
        return [n for _, n in sorted(ready)]

    def next_due(self) -> float | None:
        return min((c.next_at for c in self.clocks.values()), default=None)

    def poke(self, names: Iterable[str], now: float) -> None:
        """Run these sources as soon as possible (store damage noticed, SIGHUP)."""
        for name in names:
            if name in self.clocks:
                self.clocks[name].next_at = min(self.clocks[name].next_at, now)

    def succeeded(self, name: str, now: float, *, changed: bool) -> float:
        return self.clocks[name].succeeded(now, changed=changed, rng=self.rng)

    def failed(self, name: str, now: float) -> float:
        return self.clocks[name].failed(now, rng=self.rng)
