"""Readers beside a writer process: the LocalService advertises itself in the lock note, and a
`Mirror` that finds the catalogue busy queries through it with the same results and errors.

Mirror A (synced from the fake TAP service) holds the catalogue read-write in this process and
serves it; the busy path is exercised by `mirror` commands in subprocesses, since DuckDB's lock
is per process.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from fakes import FakeSleep, FakeTap, write_config

from mirror.api import Mirror
from mirror.catalogue.engine import advertise, holder
from mirror.errors import AdqlSyntaxError, QueryTimeoutError, UnknownColumnError, UnknownTableError
from mirror.remote import Endpoint, RemoteCatalogue, advertised
from mirror.retry import RetryPolicy
from mirror.server.context import ServiceContext
from mirror.server.service import LocalService

ROOT = Path(__file__).resolve().parents[1]


class Held:
    """Mirror A, synced, holding its catalogue, serving it on a free port."""

    def __init__(self, tmp: Path, tap: FakeTap) -> None:
        self.config = write_config(tmp, {"name": "fake", "url": tap.url})
        self.mirror = Mirror.open(self.config)
        for _ in range(2):  # two runs, for the history
            [report] = self.mirror.sync(policy=RetryPolicy(attempts=2, sleep=FakeSleep()))
            assert report.status == "ok", report.errors
        self.path = self.mirror.config.catalogue_path
        self.ctx = ServiceContext(self.mirror.catalogue(), self.mirror.config,
                                  status=lambda: [s.as_dict() for s in self.mirror.status()])
        self.service = LocalService(self.ctx)
        self.url = self.service.start()
        self.remote = RemoteCatalogue(Endpoint(self.url))

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """A `mirror` command in another process (which DuckDB locks out of the file)."""
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        return subprocess.run([sys.executable, "-m", "mirror.cli", "--config", str(self.config),
                               *args], capture_output=True, text=True, timeout=120, env=env)

    def close(self) -> None:
        self.service.stop()
        self.ctx.close()
        self.mirror.close()


@pytest.fixture(scope="module")
def held(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Held]:
    with FakeTap(hard_limit=20) as tap:
        tap.load_recorded()
        held = Held(tmp_path_factory.mktemp("held"), tap)
        try:
            yield held
        finally:
            held.close()


def test_the_lock_note_advertises_the_service_to_its_owner_only(held: Held) -> None:
    note = holder(held.path)
    assert note is not None and note["endpoint"] == held.url and note["pid"] == os.getpid()
    mode = stat.S_IMODE((held.path.with_name(held.path.name + ".lock")).stat().st_mode)
    assert mode == 0o600
    assert advertised(held.path) == Endpoint(held.url, None, advertised(held.path).holder)


def test_stop_withdraws_the_endpoint_and_start_puts_it_back(held: Held) -> None:
    other = LocalService(ServiceContext(held.mirror.catalogue(), held.mirror.config))
    url = other.start()
    assert holder(held.path)["endpoint"] == url != held.url
    other.stop()
    note = holder(held.path)
    assert note is not None and "endpoint" not in note  # the holder itself stays known
    held.service.stop()
    held.url = held.service.start()
    held.remote = RemoteCatalogue(Endpoint(held.url))
    assert holder(held.path)["endpoint"] == held.url


@pytest.mark.parametrize("adql", [
    "SELECT * FROM ivoa.obscore ORDER BY obs_publisher_did",
    "SELECT TOP 7 obs_publisher_did, s_ra, s_dec, t_min, calib_level, last_modified, "
    "access_estsize, obs_release_date FROM ivoa.obscore WHERE s_dec < 0 ORDER BY s_ra DESC",
    "SELECT obs_collection, COUNT(*) AS n, AVG(s_ra) AS mean_ra FROM ivoa.obscore "
    "GROUP BY obs_collection ORDER BY obs_collection",
    "SELECT table_name, column_name, unit, ucd FROM TAP_SCHEMA.columns "
    "ORDER BY table_name, column_name",
])
def test_a_query_through_the_service_equals_the_local_one(held: Held, adql: str) -> None:
    local = held.mirror.query(adql)
    remote = held.remote.query(adql)
    assert remote.arrow.column_names == local.arrow.column_names
    assert remote.arrow.num_rows == local.arrow.num_rows > 0
    for name in local.arrow.column_names:
        lf, rf = local.arrow.schema.field(name), remote.arrow.schema.field(name)
        assert rf.type == lf.type, name
        for key in (b"unit", b"ucd", b"utype", b"description"):
            assert (rf.metadata or {}).get(key) == (lf.metadata or {}).get(key), (name, key)
    assert remote.arrow.to_pylist() == local.arrow.to_pylist()
    assert remote.overflow is local.overflow is False
    for name in ("s_ra", "t_min"):
        if name in local.table.colnames:
            assert remote.table[name].unit == local.table[name].unit
            assert remote.table[name].meta.get("ucd") == local.table[name].meta.get("ucd")


def test_overflow_and_maxrec_come_through(held: Held) -> None:
    adql = "SELECT obs_publisher_did FROM ivoa.obscore ORDER BY obs_publisher_did"
    local, remote = held.mirror.query(adql, maxrec=5), held.remote.query(adql, maxrec=5)
    assert remote.overflow is local.overflow is True
    assert remote.arrow.to_pylist() == local.arrow.to_pylist() and len(remote) == 5
    assert remote.table.meta["QUERY_STATUS"] == "OVERFLOW"


@pytest.mark.parametrize(("adql", "kind"), [
    ("SELEC obs_id FROM ivoa.obscore", AdqlSyntaxError),
    ("SELECT obs_id FROM ivoa.obscor", UnknownTableError),
    ("SELECT obs_idd FROM ivoa.obscore", UnknownColumnError),
])
def test_errors_come_back_as_the_same_kind_with_message_and_hint(
        held: Held, adql: str, kind: type) -> None:
    with pytest.raises(kind) as local:
        held.mirror.query(adql)
    with pytest.raises(kind) as remote:
        held.remote.query(adql)
    assert remote.value.message == local.value.message
    assert remote.value.hint == local.value.hint
    if isinstance(local.value, AdqlSyntaxError):
        assert (remote.value.line, remote.value.column) == (local.value.line, local.value.column)
        assert str(remote.value) == str(local.value)  # the caret under the same text


def test_the_readers_timeout_reaches_the_service(held: Held) -> None:
    slow = ("SELECT COUNT(*) FROM ivoa.obscore a, ivoa.obscore b, ivoa.obscore c, "
            "ivoa.obscore d, ivoa.obscore e, ivoa.obscore f WHERE SIN(a.s_ra + b.s_ra + c.s_ra "
            "+ d.s_ra + e.s_ra + f.s_ra) > 0.5")  # 50^6 rows: no statistics prune SIN
    with pytest.raises(QueryTimeoutError):
        held.remote.query(slow, timeout=0.2)


def test_status_runs_and_state_through_the_service(held: Held) -> None:
    assert held.remote.status() == [s.as_dict() for s in held.mirror.status()]
    local = held.mirror.runs(limit=5)
    assert len(local) == 2
    remote = held.remote.runs(limit=5)
    assert [r["run_id"] for r in remote] == [r["run_id"] for r in local]
    assert [r["status"] for r in remote] == [r["status"] for r in local]
    assert [r["run_id"] for r in held.remote.runs("fake", 1)] == [local[0]["run_id"]]
    assert held.remote.runs("nosuch", 5) == []
    assert held.remote.state() is None  # no daemon holds it


def test_mirror_query_in_another_process_answers_through_the_service(held: Held) -> None:
    adql = "SELECT TOP 3 obs_publisher_did, s_ra FROM ivoa.obscore ORDER BY obs_publisher_did"
    done = held.run("query", adql, "--format", "csv")
    assert done.returncode == 0, done.stderr
    local = held.mirror.query(adql)
    expected = [f"{r['obs_publisher_did']},{r['s_ra']!r}" for r in local.arrow.to_pylist()]
    lines = done.stdout.strip().splitlines()
    assert lines[0].replace('"', "") == "obs_publisher_did,s_ra"
    assert [ln.replace('"', "") for ln in lines[1:]] == expected
    status = held.run("status", "--json", "--runs", "1")
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    assert doc["sources"][0]["rows"] == len(held.mirror.query("SELECT obs_id FROM ivoa.obscore"))
    assert len(doc["runs"]) == 1 and doc["daemon"] is None
    bad = held.run("query", "SELECT nope FROM ivoa.obscore")
    assert bad.returncode == 2 and "nope" in bad.stderr and "Traceback" not in bad.stderr


def test_without_an_advertised_service_the_busy_error_stays(held: Held) -> None:
    held.service.stop()
    try:
        done = held.run("query", "SELECT TOP 1 obs_id FROM ivoa.obscore")
        assert done.returncode == 2
        assert "in use by" in done.stderr and "Traceback" not in done.stderr
    finally:
        held.url = held.service.start()
        held.remote = RemoteCatalogue(Endpoint(held.url))


def test_a_non_loopback_service_needs_a_token(held: Held) -> None:
    from mirror.errors import ConfigError

    with pytest.raises(ConfigError, match="token"):
        LocalService(ServiceContext(held.mirror.catalogue(), held.mirror.config),
                     host="0.0.0.0")


ODD = pa.table({"i": pa.array([1, None], pa.int32()),
                "l": pa.array([[1.5, 2.0], None], pa.list_(pa.float64())),
                "b": pa.array([True, None], pa.bool_()),
                "u": pa.array([7, None], pa.uint8()),
                "ts": pa.array([dt.datetime(2020, 1, 2, 3, 4, 5, 6), None], pa.timestamp("us")),
                "f": pa.array([1e-300, None], pa.float32())})


def test_json_results_keep_arrow_types_and_nulls_exactly() -> None:
    from mirror.query.result import QueryResult
    from mirror.query.writers import write_json
    from mirror.remote import from_json

    arrow = ODD.append_column("t", pa.array([None, ""], pa.string()))
    out = io.BytesIO()
    write_json(QueryResult(arrow, overflow=True), out)
    result = from_json(json.loads(out.getvalue()))
    assert result.arrow.schema.types == arrow.schema.types
    assert result.arrow.to_pylist() == arrow.to_pylist() and result.overflow


def test_votable_results_keep_types_of_arrays_and_nulls() -> None:
    from mirror.remote import to_result
    from mirror.server.votable import document

    result = to_result(document(ODD, {}, overflow=False))
    assert result.arrow.schema.types == ODD.schema.types
    assert result.arrow.to_pylist() == ODD.to_pylist()


def test_a_cli_sync_serves_readers_while_it_holds_the_catalogue(tmp_path: Path) -> None:
    """`mirror sync` in one process, stalled by the service on its first page; `mirror query`
    in another answers through the sync's own service meanwhile."""
    from fakes import Fault

    with FakeTap(hard_limit=20) as tap:
        tap.load_recorded()
        cfg = write_config(tmp_path, {"name": "fake", "url": tap.url})
        with Mirror.open(cfg) as m:
            [first] = m.sync(policy=RetryPolicy(attempts=2, sleep=FakeSleep()))
            assert first.status == "ok", first.errors
            path = m.config.catalogue_path
        tap.inject(Fault(action="stall", delay=20.0, match="ORDER BY", times=1))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        waiter = ("import sys, time\nfrom pathlib import Path\n"
                  "from mirror.catalogue.engine import holder\nfrom mirror.cli import main\n"
                  "deadline = time.time() + 60\nwhile time.time() < deadline and not "
                  "(holder(Path(sys.argv[1])) or {}).get('endpoint'):\n    time.sleep(0.02)\n"
                  "sys.exit(main(sys.argv[2:]))\n")
        query = subprocess.Popen(
            [sys.executable, "-c", waiter, str(path), "--config", str(cfg), "query",
             "SELECT COUNT(*) AS n FROM ivoa.obscore", "--format", "csv"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        sync = subprocess.Popen([sys.executable, "-m", "mirror.cli", "--config", str(cfg),
                                 "sync"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env)
        try:
            out, err = query.communicate(timeout=120)
            assert sync.poll() is None, "the sync must still hold the catalogue"
            assert query.returncode == 0, err
            assert out.strip().splitlines() == ['"n"', "50"]
        finally:
            sync.communicate(timeout=120)
        assert sync.returncode == 0
        assert holder(path) is None


def test_the_service_sees_a_source_that_a_sync_of_its_process_adds(tmp_path: Path) -> None:
    """The service's runners keep table lists; a sync that adds a source (a new TAP_SCHEMA)
    makes them reload on their next query."""
    with FakeTap(hard_limit=20) as one, FakeTap(hard_limit=20) as two:
        one.load_recorded()
        two.load_recorded()
        cfg = write_config(tmp_path, {"name": "one", "url": one.url},
                           {"name": "two", "url": two.url})
        with Mirror.open(cfg) as m:
            policy = RetryPolicy(attempts=2, sleep=FakeSleep())
            assert m.sync("one", policy=policy)[0].status == "ok"
            ctx = ServiceContext(m.catalogue(), m.config)
            with LocalService(ctx) as service:
                remote = RemoteCatalogue(Endpoint(service.url))
                assert len(remote.query("SELECT obs_id FROM one.obscore")) == 50
                with pytest.raises(UnknownTableError):
                    remote.query("SELECT obs_id FROM two.obscore")
                assert m.sync("two", policy=policy)[0].status == "ok"
                assert len(remote.query("SELECT obs_id FROM two.obscore")) == 50
            ctx.close()


def test_stop_is_prompt_even_with_a_query_in_flight(held: Held) -> None:
    import threading
    import time

    from mirror.server.service import STOP_SECONDS

    ctx = ServiceContext(held.mirror.catalogue(), held.mirror.config)
    service = LocalService(ctx)
    remote = RemoteCatalogue(Endpoint(service.start()))
    slow = ("SELECT COUNT(*) FROM ivoa.obscore a, ivoa.obscore b, ivoa.obscore c, "
            "ivoa.obscore d, ivoa.obscore e WHERE SIN(a.s_ra + b.s_ra + c.s_ra + d.s_ra "
            "+ e.s_ra) > 0.5")
    outcome: list[object] = []
    client = threading.Thread(target=lambda: outcome.append(_attempt(remote, slow)))
    client.start()
    time.sleep(0.5)
    started = time.monotonic()
    service.stop()
    assert time.monotonic() - started < STOP_SECONDS + 2
    client.join(30)
    assert not client.is_alive() and outcome  # answered, or told the service went away
    assert "endpoint" not in holder(held.path)  # it had taken the note over; now withdrawn
    advertise(held.path, held.url)
    ctx.close()
    assert len(held.remote.query("SELECT obs_id FROM ivoa.obscore")) == 50  # A still serves


def _attempt(remote: RemoteCatalogue, adql: str) -> object:
    try:
        return remote.query(adql, timeout=4)
    except Exception as exc:  # noqa: BLE001 - the outcome is what the test looks at
        return exc


def test_a_service_with_a_token_hands_it_to_readers_through_the_note_only(held: Held) -> None:
    from mirror.errors import CatalogueBusyError

    ctx = ServiceContext(held.mirror.catalogue(), held.mirror.config, token="s3cret-t0ken")
    with LocalService(ctx) as service:
        found = advertised(held.path)
        assert found is not None and found.token == "s3cret-t0ken"
        assert found.url == service.url
        assert len(RemoteCatalogue(found).query("SELECT obs_id FROM ivoa.obscore")) == 50
        with pytest.raises(CatalogueBusyError, match="refused"):
            RemoteCatalogue(Endpoint(service.url)).query("SELECT obs_id FROM ivoa.obscore")
    ctx.close()
    assert "token" not in holder(held.path)
    advertise(held.path, held.url)
