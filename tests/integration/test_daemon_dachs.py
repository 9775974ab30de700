"""`mirror daemon` against the real DaCHS upstream, run as a subprocess like in production.

One daemon serves most tests of this module (it is slow to start: a first full sync). It reaches
DaCHS's TAP service through a TCP proxy of the test's own, so "the upstream is down" is the
proxy switched off: DaCHS itself keeps running for everyone else. While the daemon runs it holds
the catalogue, so the tests read it the way a user would: through the daemon's local service.
Ground truth comes from PostgreSQL and the upstream's files.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest

from tests.fakes.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
UPSTREAM_FILES = Path("/var/gavo/inputs")
INTERVAL = 1.5
# a handful of existing products is fetched; every record added during the test run too
PICKED = ("200100036", "200129935", "200141658")


def psql(sql: str) -> list[list[str]]:
    out = subprocess.run(["runuser", "-u", "postgres", "--", "psql", "-d", "gavo", "-AtF",
                          "\t", "-c", sql], check=True, capture_output=True, text=True).stdout
    return [line.split("\t") for line in out.splitlines() if line]


def upstream_file(access_url: str) -> Path:
    return UPSTREAM_FILES / urllib.parse.unquote(access_url.split("/getproduct/", 1)[1])


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def wait_until(what: str, check: Callable[[], Any], timeout: float = 60.0,
               every: float = 0.2) -> Any:
    end = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < end:
        try:
            last = check()
        except (OSError, ValueError, KeyError) as exc:  # service not up yet, file half-written
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")


class DaemonProcess:
    """`python -m mirror.cli daemon` with JSON logs captured to a file."""

    def __init__(self, config: Path, name: str = "daemon", *args: str) -> None:
        self.config = config
        self.log = config.parent / f"{name}.log"
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> DaemonProcess:
        self.log_file = open(self.log, "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mirror.cli", "daemon", "--config", str(self.config),
             "--log-format", "json", *self.args], cwd=REPO, stdout=self.log_file,
            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        return self

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
        return out

    def endpoint(self) -> str:
        return wait_until("the daemon's service", lambda: next(
            (e["endpoint"] for e in self.events() if e.get("event") == "service.start"), None))

    def state(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.endpoint() + "/mirror/state", timeout=10) as r:
            return json.load(r)

    def adql(self, query: str) -> list[dict[str, str]]:
        data = urllib.parse.urlencode({"REQUEST": "doQuery", "LANG": "ADQL", "QUERY": query,
                                       "FORMAT": "csv", "MAXREC": "100000"}).encode()
        with urllib.request.urlopen(self.endpoint() + "/sync", data=data, timeout=60) as r:
            return list(csv.DictReader(io.StringIO(r.read().decode())))

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> float:
        """SIGTERM; returns the seconds until the process ended."""
        assert self.proc is not None
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        self.log_file.close()
        return time.monotonic() - t0


def mirror_cli(config: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mirror.cli", "--config", str(config), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)


def write_config(path: Path, sources: list[dict[str, Any]], **sections: dict[str, Any]) -> None:
    def table(values: dict[str, Any]) -> str:
        return "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())

    body = '[catalogue]\npath = "data/m.duckdb"\n[store]\nroot = "data/store"\n'
    for name, values in {"serve": {"port": 0}, **sections}.items():
        body += f"[{name}]\n{table(values)}"
    for src in sources:
        body += f"[[source]]\n{table(src)}"
    tmp = path.with_name(".edit.tmp")
    tmp.write_text(body)
    os.replace(tmp, path)  # as editors save: the watcher sees one complete file


DAEMON = {"interval": INTERVAL, "jitter": 0.0, "idle_max": 3.0, "backoff_max": 4.0}


@pytest.fixture(scope="module")
def proxy(upstream: str) -> Iterator[TcpProxy]:
    url = urllib.parse.urlsplit(upstream)
    p = TcpProxy(url.hostname or "127.0.0.1", url.port or 80)
    p.start()
    yield p
    p.close()


@pytest.fixture(scope="module")
def started_at() -> str:
    """DIDs of records added from now on sort after this (the upstream names them by time)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")


@pytest.fixture(scope="module")
def main_source(proxy: TcpProxy, started_at: str) -> dict[str, Any]:
    picked = ", ".join(f"'{p}'" for p in PICKED)
    return {"name": "dachs", "url": f"http://127.0.0.1:{proxy.port}/tap", "retries": 2,
            "fetch_where": f"obs_id IN ({picked}) OR obs_publisher_did > "
                           f"'ivo://eso-sim.test/ID?ADP.{started_at}'"}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory,
           main_source: dict[str, Any]) -> Iterator[DaemonProcess]:
    home = tmp_path_factory.mktemp("daemon")
    config = home / "mirror.toml"
    write_config(config, [main_source], daemon=DAEMON)
    d = DaemonProcess(config).start()
    wait_until("the first sync and fetch", lambda: d.state()["sources"]["dachs"]["runs"] >= 1,
               timeout=180)
    yield d
    d.stop()


def local_dids(d: DaemonProcess, view: str = "ivoa.obscore") -> dict[str, str]:
    return {r["obs_publisher_did"]: r["last_modified"] for r in d.adql(
        f"SELECT obs_publisher_did, last_modified FROM {view}")}


def upstream_dids(where: str = "") -> dict[str, str]:
    return dict(psql(f"SELECT obs_publisher_did, last_modified FROM ivoa.obscore {where}"))


def same_time(a: str, b: str) -> bool:
    def parse(v: str) -> datetime:
        return datetime.fromisoformat(v.replace("Z", "").replace(" ", "T"))
    return parse(a) == parse(b)


def products(d: DaemonProcess, source: str = "dachs") -> dict[str, dict[str, str]]:
    return {r["product_id"]: r for r in d.adql(
        "SELECT product_id, state, path, sha256, url, fetched_at FROM mirror.products "
        f"WHERE source = '{source}' AND role = 'this'")}


def test_the_daemon_mirrors_the_archive_and_fetches_the_selection(daemon: DaemonProcess):
    up = upstream_dids()
    local = wait_until("the mirror to match PostgreSQL",
                       lambda: (lambda got: got if set(got) == set(up) else None)(
                           local_dids(daemon)), timeout=60)
    assert all(same_time(local[k], up[k]) for k in up)
    stored = products(daemon)
    assert {p["state"] for p in stored.values()} <= {"done", "embargoed"}
    done = [p for p in stored.values() if p["state"] == "done"]
    assert done, "the picked products are fetched"
    for p in done:
        assert sha(daemon.config.parent / "data/store" / p["path"]) == p["sha256"]
        assert p["sha256"] == sha(upstream_file(p["url"]))
    state = daemon.state()
    assert state["pid"] == daemon.proc.pid and state["endpoint"]
    assert state["sources"]["dachs"]["next_run"] and state["sources"]["dachs"]["failures"] == 0


def test_a_second_daemon_on_the_same_catalogue_refuses_to_start(daemon: DaemonProcess):
    t0 = time.monotonic()
    second = subprocess.run([sys.executable, "-m", "mirror.cli", "daemon", "--config",
                             str(daemon.config)], cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert second.returncode == 2, second.stderr
    assert "another mirror daemon" in second.stderr
    assert f"pid {daemon.proc.pid}" in second.stderr
    assert time.monotonic() - t0 < 30
    assert daemon.proc.poll() is None  # the first one is unharmed
    assert daemon.state()["sources"]["dachs"]


def test_added_records_and_their_products_appear_within_an_interval(daemon: DaemonProcess,
                                                                    evolve, record_property):
    added = evolve("add", 3)
    t0 = time.monotonic()
    dids = {c["obs_publisher_did"] for c in added}
    assert len(dids) == 3

    def arrived() -> bool:
        got = products(daemon)
        return all(d in got and got[d]["state"] in ("done", "embargoed") for d in dids)

    wait_until("the added records' products", arrived, timeout=60, every=0.1)
    seconds = time.monotonic() - t0
    record_property("evolve_add_seconds", round(seconds, 2))
    print(f"\nevolve add -> records and products local in {seconds:.1f} s")
    assert dids <= set(local_dids(daemon))
    got = products(daemon)
    for did in dids:
        if got[did]["state"] == "done":
            stored = daemon.config.parent / "data/store" / got[did]["path"]
            assert sha(stored) == sha(upstream_file(got[did]["url"]))
    # one interval plus one sync and fetch (the ID pass and the proof take a few seconds)
    assert seconds < INTERVAL + 30


def test_modified_and_deleted_records_are_followed(daemon: DaemonProcess, evolve):
    modified = {c["obs_publisher_did"] for c in evolve("modify", 2)}
    deleted = {c["obs_publisher_did"] for c in evolve("delete", 2)}
    assert modified and deleted

    def followed() -> bool:
        local, up = local_dids(daemon), upstream_dids()
        return set(local) == set(up) and all(same_time(local[d], up[d]) for d in modified)

    wait_until("the catalogue to follow modify and delete", followed, timeout=60)
    assert not deleted & set(local_dids(daemon))
    assert deleted <= set(local_dids(daemon, "ivoa.obscore_withdrawn"))


def settled(d: DaemonProcess) -> dict[str, dict[str, str]]:
    """The products once two runs in a row changed none of them (earlier evolve steps may
    still be being fetched)."""
    def runs() -> int:
        return sum(1 for e in d.events() if e.get("event") == "sync.done"
                   and e.get("source") == "dachs")

    before = products(d)
    for _ in range(10):
        n = runs()
        wait_until("two more runs", lambda n=n: runs() >= n + 2, timeout=60)
        after = products(d)
        if after == before:
            return after
        before = after
    raise AssertionError("the products never settled")


def test_a_deleted_stored_file_is_fetched_again(daemon: DaemonProcess):
    done = {k: p for k, p in settled(daemon).items() if p["state"] == "done"}
    victim_id, victim = sorted(done.items())[0]
    others = {k: p["fetched_at"] for k, p in done.items() if k != victim_id}
    path = daemon.config.parent / "data/store" / victim["path"]
    path.unlink()
    t0 = time.monotonic()
    wait_until("the deleted file to come back", path.is_file, timeout=30, every=0.1)
    wait_until("its record to say done",
               lambda: products(daemon)[victim_id]["state"] == "done", timeout=30)
    print(f"\nhand-deleted file fetched again in {time.monotonic() - t0:.1f} s")
    assert sha(path) == victim["sha256"] == sha(upstream_file(victim["url"]))
    events = [e for e in daemon.events() if e.get("event") == "store.damaged"]
    assert events and victim["path"] in events[-1]["paths"]
    time.sleep(INTERVAL * 2)  # the re-fetch's own writes must not trigger anything more
    now = products(daemon)
    assert {k: now[k]["fetched_at"] for k in others} == others
    assert [e for e in daemon.events() if e.get("event") == "store.damaged"] == events


def test_a_config_edit_adds_a_source_without_restart_and_a_bad_one_is_refused(
        daemon: DaemonProcess, main_source: dict[str, Any], upstream: str):
    pid = daemon.proc.pid
    good_before = daemon.config.read_text()
    daemon.config.write_text(good_before + "[[source]]\nname = 'broken\n")
    wait_until("a refused edit", lambda: any(
        e.get("event") == "config.refused" for e in daemon.events()), timeout=20)
    refused = [e for e in daemon.events() if e.get("event") == "config.refused"]
    assert str(daemon.config) in refused[-1]["message"] and refused[-1]["level"] == "error"
    assert daemon.state()["reload_error"]
    harps = {"name": "dachs_harps", "url": upstream, "where": "obs_collection = 'HARPS'",
             "fetch_where": "1 = 0"}
    write_config(daemon.config, [main_source, harps], daemon=DAEMON)
    expected = upstream_dids("WHERE obs_collection = 'HARPS'")

    def second_source() -> bool:
        rows = daemon.adql("SELECT obs_publisher_did FROM dachs_harps.obscore")
        return {r["obs_publisher_did"] for r in rows} == set(expected)

    wait_until("the second source to be mirrored", second_source, timeout=90, every=0.5)
    assert daemon.proc.pid == pid and daemon.proc.poll() is None
    state = daemon.state()
    assert state["reload_error"] is None and set(state["sources"]) == {"dachs", "dachs_harps"}
    reloaded = [e for e in daemon.events() if e.get("event") == "config.reloaded"]
    assert reloaded and reloaded[-1]["added"] == ["dachs_harps"]
    daemon.signal(signal.SIGHUP)  # `systemctl reload`: the same file read again, nothing new
    wait_until("SIGHUP to reload", lambda: len([
        e for e in daemon.events() if e.get("event") == "config.reloaded"]) > len(reloaded))
    last = [e for e in daemon.events() if e.get("event") == "config.reloaded"][-1]
    assert last["added"] == last["removed"] == last["changed"] == []
    assert daemon.proc.poll() is None


def test_upstream_down_backs_off_shows_it_and_recovers(daemon: DaemonProcess, proxy: TcpProxy):
    proxy.stop()
    try:
        failing = wait_until("a failure and back-off", lambda: (lambda s: s if s["failures"] >= 2
                                                               else None)(
            daemon.state()["sources"]["dachs"]), timeout=60)
        assert failing["last_result"] == "failed" and failing["backoff_seconds"] > INTERVAL
        assert failing["last_error"]
        status = mirror_cli(daemon.config, "status")
        assert status.returncode == 0, status.stderr
        assert "backing off" in status.stdout and "dachs" in status.stdout
        as_json = json.loads(mirror_cli(daemon.config, "status", "--json").stdout)
        assert as_json["daemon"]["sources"]["dachs"]["failures"] >= 2
        assert daemon.state()["sources"]["dachs_harps"]["failures"] == 0  # not through the proxy
        # back-off, not a crash loop: few attempts while down, and the process lives
        assert daemon.proc.poll() is None
    finally:
        proxy.start()
    t0 = time.monotonic()
    wait_until("recovery", lambda: daemon.state()["sources"]["dachs"]["failures"] == 0,
               timeout=60)
    print(f"\nrecovered {time.monotonic() - t0:.1f} s after the upstream returned")
    assert daemon.state()["sources"]["dachs"]["last_result"] in ("changed", "unchanged")


def test_idle_cpu_is_low(daemon: DaemonProcess, record_property):
    """Not a timed assertion of speed: a daemon waiting between syncs must not spin."""
    def cpu() -> float:
        fields = Path(f"/proc/{daemon.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    # a long interval, so the daemon is idle (it applies the edit at once)
    config = daemon.config.read_text().replace(f"interval = {INTERVAL}", "interval = 3600.0")
    config = config.replace("idle_max = 3.0", "idle_max = 3600.0")
    tmp = daemon.config.with_name(".edit.tmp")
    tmp.write_text(config)
    os.replace(tmp, daemon.config)
    def idle() -> bool:
        state = daemon.state()
        later = [datetime.fromisoformat(s["next_run"].replace("Z", "+00:00"))
                 for s in state["sources"].values()]
        soon = datetime.now(UTC).timestamp() + 600
        return state["activity"] == "idle" and all(t.timestamp() > soon for t in later)

    wait_until("every source's next run an hour away", idle, timeout=60)
    time.sleep(1)
    c0, t0 = cpu(), time.monotonic()
    time.sleep(10)
    share = (cpu() - c0) / (time.monotonic() - t0)
    record_property("idle_cpu_share", round(share, 4))
    print(f"\nidle CPU: {share * 100:.2f} % of one core")
    assert share < 0.05


def test_sigterm_during_a_fetch_exits_promptly_and_a_restart_completes(
        tmp_path: Path, upstream: str, record_property):
    config = tmp_path / "mirror.toml"
    # every product (about 2,000 small files, ~85 MB), one download at a time: a fetch of
    # some 20 s, long enough to query during it and stop it in the middle
    write_config(config, [{"name": "all", "url": upstream}], daemon={"interval": 3600.0},
                 fetch={"concurrency": 1, "per_host": 1})
    d = DaemonProcess(config).start()
    try:
        wait_until("the fetch to start", lambda: (lambda s: s["activity"] == "fetching all"
                                                  and s)(d.state()), timeout=120, every=0.05)
        # while it fetches, a reader from another process gets answers
        q = mirror_cli(config, "query", "SELECT COUNT(*) AS n FROM ivoa.obscore", "--format",
                       "csv")
        assert q.returncode == 0, q.stderr
        assert int(q.stdout.splitlines()[1]) == int(
            psql("SELECT count(*) FROM ivoa.obscore")[0][0])
        assert d.state()["activity"] == "fetching all", "the query ran during the fetch"
        wait_until("some products stored", lambda: len(list(
            (tmp_path / "data/store").rglob("*.fits"))) >= 20, timeout=60, every=0.05)
    finally:
        seconds = d.stop()
    record_property("sigterm_exit_seconds", round(seconds, 2))
    print(f"\nSIGTERM during a fetch: exited in {seconds:.2f} s")
    assert d.proc.returncode == 0
    assert seconds < 5
    stopped = [e for e in d.events() if e.get("event") == "daemon.stop"]
    assert stopped, "a clean stop, not a kill"
    stored = len(list((tmp_path / "data/store").rglob("*.fits")))
    wanted = int(psql("SELECT count(*) FROM ivoa.obscore")[0][0])
    assert 0 < stored < wanted, "it was stopped in the middle of the fetch"
    partials = list((tmp_path / "data/store").rglob(".*.part"))
    con = duckdb.connect(str(tmp_path / "data/m.duckdb"), read_only=True)
    try:
        resumable = con.execute("SELECT count(*) FROM products WHERE state = 'pending' "
                                "AND last_modified IS NOT NULL").fetchone()[0]
    finally:
        con.close()
    print(f"{stored} files stored, {len(partials)} partial, {resumable} resumable")
    assert resumable >= len(partials), "each partial download kept its validator"
    # the restart completes and every file verifies
    again = DaemonProcess(config, "restart", "--once").start()
    assert again.proc is not None and again.proc.wait(300) == 0
    verify = mirror_cli(config, "verify", "--json")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    report = json.loads(verify.stdout)
    assert report["missing"] == [] and report["corrupt"] == []
    assert report["ok"] == report["checked"] > stored
    assert report["partials"] == 0
    [restart] = [e for e in again.events() if e.get("event") == "fetch.done"]
    assert stored + restart["done"] == report["ok"], "no stored file was downloaded again"


def test_sigterm_during_a_harvest_stops_at_a_window_boundary(tmp_path: Path, upstream: str,
                                                             record_property):
    config = tmp_path / "mirror.toml"
    write_config(config, [{"name": "all", "url": upstream, "page_size": 500}],
                 daemon={"interval": 3600.0})
    d = DaemonProcess(config).start()
    try:
        wait_until("the first window", lambda: any(
            "window 0 committed" in e.get("message", "") for e in d.events()), timeout=120,
                   every=0.02)
    finally:
        seconds = d.stop()
    record_property("sigterm_harvest_exit_seconds", round(seconds, 2))
    print(f"\nSIGTERM during a harvest: exited in {seconds:.2f} s")
    assert d.proc.returncode == 0 and seconds < 5
    con = duckdb.connect(str(tmp_path / "data/m.duckdb"), read_only=True)
    try:
        [(status, windows)] = con.execute("SELECT status, windows FROM sync_runs").fetchall()
        received = con.execute("SELECT coalesce(sum(rows_received), 0) FROM sync_windows"
                               ).fetchone()[0]
        rows = con.execute("SELECT count(*) FROM obscore_all").fetchone()[0]
    finally:
        con.close()
    total = int(psql("SELECT count(*) FROM ivoa.obscore")[0][0])
    assert status == "cancelled" and 1 <= windows
    assert rows == received == 500 * windows < total  # whole windows only
    again = DaemonProcess(config, "restart", "--once").start()
    assert again.proc is not None and again.proc.wait(300) == 0
    [sync] = [e for e in again.events() if e.get("event") == "sync.done"]
    assert sync["status"] == "ok" and sync["new"] == total - rows  # resumed, not restarted
