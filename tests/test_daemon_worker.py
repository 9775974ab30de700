"""The worker loop with a scripted stand-in for `Mirror` (real config, fake clock): what it runs,
how failures back off and show in the state, config edits, and unexpected errors."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from mirror.api import SourceStatus
from mirror.config import Config, load_config
from mirror.daemon.state import DaemonState
from mirror.daemon.worker import Worker
from mirror.fetch.fetcher import FetchReport
from mirror.harvest.harvester import SyncReport


def config_file(path: Path, names: list[str], interval: float = 10.0) -> Path:
    body = (f'[catalogue]\npath = "m.duckdb"\n[daemon]\ninterval = {interval}\njitter = 0.0\n'
            'idle_max = 40.0\nbackoff_max = 100.0\n')
    body += "".join(f'[[source]]\nname = "{n}"\nurl = "http://127.0.0.1:1/tap"\n' for n in names)
    path.write_text(body)
    return path


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class StandIn:
    """Answers like `Mirror`; `script[name]` lists what its next syncs return."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.script: dict[str, list[Any]] = {}
        self.calls: list[tuple[str, str]] = []

    def sync(self, name: str, **kw: Any) -> list[SyncReport]:
        self.calls.append(("sync", name))
        queue = self.script.get(name)
        step = queue.pop(0) if queue else "same"
        if isinstance(step, Exception):
            raise step
        report = SyncReport(name, status="failed" if step == "down" else "ok")
        if step == "down":
            report.errors.append("connection refused")
        report.new = 1 if step == "new" else 0
        return [report]

    def fetch(self, name: str, **kw: Any) -> list[FetchReport]:
        self.calls.append(("fetch", name))
        return [FetchReport(name)]

    def status(self) -> list[SourceStatus]:
        return [SourceStatus(s.name, s.url, products={"pending": 2}) for s in self.config.sources]

    def catalogue(self) -> Any:
        raise AssertionError("not used without store notes")


def worker(tmp_path: Path, names: list[str]) -> tuple[Worker, StandIn, Clock]:
    mirror = StandIn(load_config(config_file(tmp_path / "m.toml", names)))
    clock = Clock()
    w = Worker(mirror, DaemonState(), clock=clock)  # type: ignore[arg-type]
    w._sleep_until_due = lambda: None  # type: ignore[method-assign]
    return w, mirror, clock


def test_due_sources_are_synced_then_fetched_and_planned(tmp_path: Path) -> None:
    w, m, clock = worker(tmp_path, ["a", "b"])
    m.script["a"] = ["new"]
    w._turn()
    assert m.calls == [("sync", "a"), ("fetch", "a"), ("sync", "b"), ("fetch", "b")]
    state = w.state.state()["sources"]
    assert state["a"]["last_result"] == "changed" and state["b"]["last_result"] == "unchanged"
    assert state["a"]["queue"] == {"pending": 2, "failed": 0, "embargoed": 0}
    assert w.schedule.clocks["a"].next_at == 1010.0  # changed: the interval
    assert w.schedule.clocks["b"].next_at == 1020.0  # unchanged: idle back-off
    m.calls.clear()
    w._turn()
    assert m.calls == []  # nothing due yet
    clock.now = 1010.0
    w._turn()
    assert m.calls == [("sync", "a"), ("fetch", "a")]


def test_a_failing_source_backs_off_shows_it_and_recovers(tmp_path: Path) -> None:
    w, m, clock = worker(tmp_path, ["a"])
    m.script["a"] = ["down", "down", "down", "same"]
    waits = []
    for _ in range(3):
        w._turn()
        waits.append(w.schedule.clocks["a"].next_at - clock.now)
        clock.now = w.schedule.clocks["a"].next_at
    assert waits == [20.0, 40.0, 80.0]
    assert ("fetch", "a") not in m.calls  # no fetch after a failed sync
    s = w.state.state()["sources"]["a"]
    assert s["failures"] == 3 and s["backoff_seconds"] == 80.0
    assert s["last_result"] == "failed" and "connection refused" in s["last_error"]
    w._turn()
    s = w.state.state()["sources"]["a"]
    assert s["failures"] == 0 and s["last_error"] is None and s["backoff_seconds"] == 0.0
    assert w.schedule.clocks["a"].next_at - clock.now == 10.0


def test_an_exception_in_a_run_is_a_failure_not_the_end(tmp_path: Path) -> None:
    w, m, _ = worker(tmp_path, ["a"])
    m.script["a"] = [RuntimeError("disk on fire")]
    w._turn()
    s = w.state.state()["sources"]["a"]
    assert s["failures"] == 1 and "disk on fire" in s["last_error"]


def test_a_config_edit_adds_and_removes_sources_and_a_bad_one_changes_nothing(
        tmp_path: Path) -> None:
    w, m, clock = worker(tmp_path, ["a", "b"])
    w._turn()
    file = tmp_path / "m.toml"
    file.write_text(file.read_text().replace('name = "b"', 'name = "bad name"'))
    w.request_reload()
    w._turn()
    assert set(w.schedule.clocks) == {"a", "b"} and w.state.state()["reload_error"]
    assert [s.name for s in m.config.sources] == ["a", "b"]
    config_file(file, ["a", "c"])
    w.request_reload()
    m.calls.clear()
    w._turn()
    assert set(w.schedule.clocks) == {"a", "c"} and set(w.state.state()["sources"]) == {"a", "c"}
    assert m.calls == [("sync", "c"), ("fetch", "c")]  # the new one runs at once
    assert w.state.state()["reload_error"] is None


def test_once_runs_every_source_one_time_and_stop_ends_the_loop(tmp_path: Path) -> None:
    w, m, _ = worker(tmp_path, ["a", "b"])
    w.once = True
    w.run()
    assert m.calls == [("sync", "a"), ("fetch", "a"), ("sync", "b"), ("fetch", "b")]
    w2, m2, _ = worker(tmp_path, ["a"])
    w2.request_stop()
    t = threading.Thread(target=w2.run)
    t.start()
    t.join(5)
    assert not t.is_alive() and m2.calls == []
    assert w2.state.state()["activity"] == "stopping"


def test_repeated_unexpected_errors_end_the_loop_as_crashed(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    w, _, _ = worker(tmp_path, ["a"])

    def broken() -> bool:
        raise OSError("catalogue disk gone")

    monkeypatch.setattr(w, "_turn", broken)
    monkeypatch.setattr(w.stop, "wait", lambda seconds: False)  # no real back-off sleeps
    w.run()
    assert w.crashed
