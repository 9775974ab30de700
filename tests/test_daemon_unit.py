"""The daemon's parts without a daemon: live state, config reload, logs (redaction, JSON),
and the store watcher's idea of what was changed by hand."""

from __future__ import annotations

import io
import json
import logging
import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mirror.config import load_config
from mirror.daemon import logs
from mirror.daemon.reload import reload
from mirror.daemon.state import DaemonState
from mirror.daemon.watch import ConfigNotes, StoreNotes, Watchers, store_path
from mirror.store.files import Store

SOURCE = '[[source]]\nname = "{name}"\nurl = "http://127.0.0.1:1/tap"\n{extra}'


def write_config(path: Path, *sources: tuple[str, str]) -> Path:
    body = '[catalogue]\npath = "data/m.duckdb"\n[store]\nroot = "data/store"\n'
    body += "".join(SOURCE.format(name=n, extra=e) for n, e in sources)
    path.write_text(body)
    return path


# -- state ----------------------------------------------------------------------------------


def test_state_snapshot_is_a_copy_with_sources_activity_and_queues() -> None:
    clock = iter([datetime(2026, 1, 1, 12, 0, tzinfo=UTC), datetime(2026, 1, 1, 12, 0, 5,
                                                                    tzinfo=UTC)])
    last = datetime(2026, 1, 1, 12, 1, tzinfo=UTC)
    st = DaemonState("/etc/mirror.toml", now=lambda: next(clock, last))
    st.activity("syncing eso")
    st.source("eso", next_run="2026-01-01T13:00:00Z", failures=2, last_error="down")
    st.source("eso", queue={"pending": 3, "failed": 1, "embargoed": 0})
    snap = st.state()
    assert snap["running_since"] == "2026-01-01T12:00:00Z"
    assert snap["activity"] == "syncing eso" and snap["activity_since"] == "2026-01-01T12:00:05Z"
    assert snap["config"] == "/etc/mirror.toml" and snap["pid"] == os.getpid()
    eso = snap["sources"]["eso"]
    assert eso["failures"] == 2 and eso["last_error"] == "down"
    assert eso["queue"] == {"pending": 3, "failed": 1, "embargoed": 0}
    snap["sources"]["eso"]["failures"] = 99  # a reader cannot change the daemon's state
    assert st.state()["sources"]["eso"]["failures"] == 2
    st.forget(["eso"])
    assert st.state()["sources"] == {}
    json.dumps(st.state())  # what /mirror/state serves


def test_state_is_consistent_under_concurrent_readers() -> None:
    st = DaemonState()
    done = threading.Event()
    seen: list[bool] = []

    def read() -> None:
        while not done.is_set():
            s = st.state()["sources"].get("a")
            if s is not None:
                seen.append(s["runs"] == s["failures"])

    readers = [threading.Thread(target=read) for _ in range(3)]
    for r in readers:
        r.start()
    for i in range(2000):
        st.source("a", runs=i, failures=i)
    done.set()
    for r in readers:
        r.join()
    assert seen and all(seen)


# -- config reload --------------------------------------------------------------------------


def test_a_good_edit_reports_added_removed_and_changed_sources(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "m.toml", ("a", ""), ("b", ""))
    old = load_config(cfg)
    write_config(cfg, ("a", 'where = "x > 1"\n'), ("c", ""))
    result = reload(cfg, old)
    assert result.error is None and result.config is not None
    assert (result.added, result.removed, result.changed) == (["c"], ["b"], ["a"])
    assert [s.name for s in result.config.sources] == ["a", "c"]
    assert result.summary == "added c; removed b; changed a"


@pytest.mark.parametrize("bad", [
    "[[source]\nname = 'broken toml'\n",
    '[[source]]\nname = "a"\nurl = "ftp://nope"\n',
    '[[source]]\nname = "a"\nurl = "http://127.0.0.1:1/tap"\nintervall = 3.0\n',
    '[daemon]\ninterval = -1.0\n',
])
def test_a_bad_edit_is_refused_with_a_reason_and_no_config(tmp_path: Path, bad: str) -> None:
    cfg = write_config(tmp_path / "m.toml", ("a", ""))
    old = load_config(cfg)
    cfg.write_text(bad)
    result = reload(cfg, old)
    assert result.config is None
    assert result.error and str(cfg) in result.error


def test_catalogue_and_store_locations_are_kept_until_a_restart(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "m.toml", ("a", ""))
    old = load_config(cfg)
    cfg.write_text(cfg.read_text().replace("data/m.duckdb", "other.duckdb")
                   .replace("data/store", "elsewhere"))
    result = reload(cfg, old)
    assert result.config is not None
    assert result.config.catalogue_path == old.catalogue_path
    assert result.config.store_root == old.store_root
    assert result.kept == ["[catalogue] path", "[store] root"]


# -- logs -----------------------------------------------------------------------------------


def capture(fmt: str, secrets: list[str]) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter() if fmt == "json" else logs.TextFormatter())
    handler.addFilter(logs.SourceFilter())
    handler.addFilter(logs.RedactFilter(lambda: secrets))
    logger = logging.getLogger(f"test.daemon.{fmt}.{id(stream)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, stream


def test_a_token_never_reaches_the_log_in_any_part_of_a_record() -> None:
    token = "s3cr3t-t0ken-value"
    logger, stream = capture("text", [token])
    logger.info("asking with Bearer %s", token, extra={"source": "eso", "url": f"x?{token}"})
    logger.warning(f"token in the message itself: {token}")
    try:
        raise RuntimeError(f"failed with {token}")
    except RuntimeError:
        logger.exception("boom")
    text = stream.getvalue()
    assert token not in text
    assert text.count(logs.MASK) == 3  # two messages and the exception's text
    assert "eso: asking with Bearer ***" in text


def test_json_logs_are_one_object_per_line_with_time_level_event_source() -> None:
    token = "abcd-1234-efgh"
    logger, stream = capture("json", [token])
    logger.info("synced %d rows", 12, extra={"event": "sync.done", "source": "eso", "new": 12})
    logger.error("plain message with %s", token, extra={"url": f"http://x/?t={token}"})
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["event"] == "sync.done" and first["source"] == "eso" and first["new"] == 12
    assert first["level"] == "info" and first["message"] == "synced 12 rows"
    assert datetime.fromisoformat(first["time"].replace("Z", "+00:00")).tzinfo is not None
    assert second["level"] == "error" and second["source"] is None
    assert token not in lines[1] and "***" in second["message"]
    assert second["url"] == "http://x/?t=***"


def test_records_logged_during_a_sources_run_carry_its_name_in_that_thread_only() -> None:
    logger, stream = capture("json", [])
    text_logger, text = capture("text", [])
    with logs.for_source("eso"):
        logger.info("eso: window 3 committed")  # the harvester names the source itself
        text_logger.info("eso: window 3 committed")
        text_logger.info("retrying")
        logger.info("explicit", extra={"source": "other"})
        worker = threading.Thread(target=lambda: logger.info("from a server thread"))
        worker.start()
        worker.join()
    logger.info("after the run")
    other = [json.loads(line)["source"] for line in stream.getvalue().splitlines()]
    assert other == ["eso", "other", None, None]
    assert text.getvalue().count("eso: ") == 2 and "eso: eso:" not in text.getvalue()
    assert "eso: retrying" in text.getvalue()


def test_secrets_of_reads_every_configured_token(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIRROR_T_A", "token-of-a-source")
    monkeypatch.setenv("MIRROR_T_S", "token-of-the-service")
    cfg = write_config(tmp_path / "m.toml", ("a", 'token_env = "MIRROR_T_A"\n'))
    cfg.write_text(cfg.read_text() + '[serve]\ntoken_env = "MIRROR_T_S"\n')
    assert set(logs.secrets_of(load_config(cfg))) == {"token-of-a-source",
                                                      "token-of-the-service"}


# -- the store watcher ----------------------------------------------------------------------


def test_store_path_ignores_the_stores_own_files(tmp_path: Path) -> None:
    assert store_path(tmp_path, str(tmp_path / "HARPS/spectrum/a.fits")) == "HARPS/spectrum/a.fits"
    assert store_path(tmp_path, str(tmp_path / "HARPS/.a.fits.x1.part")) is None
    assert store_path(tmp_path, str(tmp_path / ".quarantine/t/HARPS/a.fits")) is None
    assert store_path(tmp_path, "/elsewhere/a.fits") is None


def wait_for(predicate, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def collect(notes: StoreNotes, expected: set[str], timeout: float = 10.0) -> set[str]:
    """Every path noted until `expected` are all in (inotify events lag on a loaded machine),
    plus whatever else arrives in a short grace period after: a stray note must show."""
    seen: set[str] = set()
    end = time.monotonic() + timeout
    while not expected <= seen and time.monotonic() < end:
        seen |= notes.take()[0]
        time.sleep(0.05)
    time.sleep(0.5)
    return seen | notes.take()[0]


def test_watcher_notes_hand_edits_but_not_the_stores_own_writes(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = Store(root)
    store.put("HARPS/keep.fits", b"x" * 100)
    store.put("HARPS/gone.fits", b"y" * 100)
    store.put("HARPS/edited.fits", b"z" * 100)
    woken = threading.Event()
    notes = StoreNotes(root, wake=woken.set)
    watchers = Watchers()
    watchers.store(notes)
    watchers.start()
    try:
        time.sleep(0.2)
        store.put("VHS/new.fits", b"n" * 100)  # the fetcher's way: .part, fsync, link
        store.put("HARPS/keep.fits", b"k" * 100, replace=True)  # re-fetch: .part, rename
        store.quarantine("HARPS/edited.fits", "test")  # wait: quarantine is a move away
        own = collect(notes, {"HARPS/edited.fits"})
        (root / "HARPS/gone.fits").unlink()
        with open(root / "VHS/new.fits", "ab") as f:
            f.write(b"tampered")
        assert wait_for(lambda: woken.is_set())
        by_hand = collect(notes, {"HARPS/gone.fits", "VHS/new.fits"})
    finally:
        watchers.stop()
    # own writes: only the quarantine's move (a removal from the product's path) is noted
    assert own == {"HARPS/edited.fits"}
    assert by_hand == {"HARPS/gone.fits", "VHS/new.fits"}


def test_config_watcher_sees_in_place_writes_and_renames_over(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "m.toml", ("a", ""))
    changed = threading.Event()
    watchers = Watchers()
    watchers.observer.schedule(ConfigNotes(cfg, changed.set), str(tmp_path), recursive=False)
    watchers.start()
    try:
        time.sleep(0.2)
        (tmp_path / "other.toml").write_text("x")
        time.sleep(0.3)
        assert not changed.is_set()
        cfg.write_text(cfg.read_text() + "\n")
        assert wait_for(changed.is_set)
        changed.clear()
        tmp = tmp_path / ".m.toml.swp"
        tmp.write_text(cfg.read_text())
        os.replace(tmp, cfg)
        assert wait_for(changed.is_set)
    finally:
        watchers.stop()


# -- deployment -----------------------------------------------------------------------------


def test_the_systemd_unit_runs_the_daemon_unprivileged_and_hardened() -> None:
    import configparser
    import shutil
    import subprocess

    unit = Path(__file__).resolve().parents[1] / "contrib" / "mirror-daemon.service"
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(unit.read_text())
    service = parser["Service"]
    assert service["User"] == "mirror" and service["Group"] == "mirror"
    assert "mirror daemon" in service["ExecStart"]
    assert service["Restart"] == "on-failure" and service["RestartPreventExitStatus"] == "2"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    for option, value in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                          ("ProtectHome", "yes"), ("PrivateTmp", "yes"),
                          ("CapabilityBoundingSet", "")):
        assert service[option] == value, option
    assert service["ReadWritePaths"] == "/var/lib/mirror"
    if shutil.which("systemd-analyze"):  # Debian has it; the unit must parse without warnings
        done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                              text=True, timeout=60)
        assert "mirror-daemon.service" not in done.stderr, done.stderr
