"""The daemon's schedule: pure rules over an injected clock and random source (no sleeping)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mirror.config import load_config
from mirror.daemon.schedule import Schedule, SourceClock, Timing, jittered, timings

T = Timing(interval=10.0, jitter=0.0, idle_max=80.0, backoff_max=100.0)


def mid() -> float:
    return 0.5  # the middle of the jitter range: no variation


def test_a_new_source_is_due_at_once_and_then_after_its_interval() -> None:
    s = Schedule({"a": T}, now=1000.0, rng=mid)
    assert s.due(1000.0) == ["a"]
    assert s.succeeded("a", 1000.0, changed=True) == 1010.0
    assert s.due(1009.9) == []
    assert s.due(1010.0) == ["a"]
    assert s.next_due() == 1010.0


def test_idle_runs_double_the_wait_up_to_idle_max_and_a_change_resets_it() -> None:
    c = SourceClock(T, next_at=0.0)
    waits = []
    now = 0.0
    for _ in range(6):
        nxt = c.succeeded(now, changed=False, rng=mid)
        waits.append(nxt - now)
        now = nxt
    assert waits == [20.0, 40.0, 80.0, 80.0, 80.0, 80.0]
    assert c.succeeded(now, changed=True, rng=mid) - now == 10.0


def test_failures_back_off_exponentially_up_to_backoff_max_and_success_resets() -> None:
    c = SourceClock(T, next_at=0.0)
    waits = [c.failed(0.0, rng=mid) for _ in range(6)]
    assert waits == [20.0, 40.0, 80.0, 100.0, 100.0, 100.0]
    assert c.failures == 6 and c.backing_off
    assert c.succeeded(500.0, changed=False, rng=mid) == 500.0 + 10.0  # back to interval
    assert c.failures == 0 and not c.backing_off


@pytest.mark.parametrize("r", [0.0, 0.25, 0.5, 0.99])
def test_jitter_stays_within_its_fraction(r: float) -> None:
    value = jittered(100.0, 0.1, lambda: r)
    assert 90.0 <= value <= 110.0
    assert value == pytest.approx(100.0 * (1 + 0.1 * (2 * r - 1)))


def test_jitter_spreads_two_sources_started_together() -> None:
    values = iter([0.1, 0.9])
    s = Schedule({"a": Timing(100.0, jitter=0.2), "b": Timing(100.0, jitter=0.2)}, 0.0,
                 rng=lambda: next(values))
    assert s.succeeded("a", 0.0, changed=True) != s.succeeded("b", 0.0, changed=True)


def test_due_lists_the_most_overdue_first_and_poke_makes_a_source_due() -> None:
    s = Schedule({"a": T, "b": T}, now=0.0, rng=mid)
    s.succeeded("a", 0.0, changed=True)  # a at 10
    s.succeeded("b", 5.0, changed=True)  # b at 15
    assert s.due(20.0) == ["a", "b"]
    assert s.due(9.0) == []
    s.poke(["b"], 9.0)
    assert s.due(9.0) == ["b"]


def test_update_adds_removes_and_retimes_sources() -> None:
    s = Schedule({"a": T, "b": T}, now=0.0, rng=mid)
    s.succeeded("a", 0.0, changed=True)
    s.succeeded("b", 0.0, changed=True)
    faster = Timing(interval=2.0, jitter=0.0, idle_max=80.0, backoff_max=100.0)
    added, removed, retimed = s.update({"a": faster, "c": T}, now=1.0)
    assert (added, removed, retimed) == (["c"], ["b"], ["a"])
    assert set(s.clocks) == {"a", "c"}
    assert s.due(1.0) == ["c"]  # new: due at once
    assert s.clocks["a"].next_at == 3.0  # the shorter interval applies from now


def test_timings_read_daemon_settings_and_per_source_interval(tmp_path: Path) -> None:
    cfg = tmp_path / "m.toml"
    cfg.write_text('[daemon]\ninterval = 30.0\njitter = 0.2\nidle_max = 600.0\n'
                   'backoff_max = 120.0\n'
                   '[[source]]\nname = "a"\nurl = "http://127.0.0.1:1/tap"\n'
                   '[[source]]\nname = "b"\nurl = "http://127.0.0.1:1/tap"\ninterval = 5.0\n')
    t = timings(load_config(cfg))
    assert t["a"] == Timing(30.0, 0.2, 600.0, 120.0)
    assert t["b"] == Timing(5.0, 0.2, 600.0, 120.0)
