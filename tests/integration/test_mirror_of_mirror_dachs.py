"""A mirror serving the DaCHS upstream to pyvo and to a second mirror, while it writes.

Mirror A syncs DaCHS and fetches a few products (HARPS spectra served directly, VHS images behind
DataLink), then serves its catalogue on a free port. Ground truth: the upstream's files on its
own disk and row counts from PostgreSQL; A's store for what the service hands out.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pytest
import pyvo

from mirror import Mirror
from mirror.catalogue.engine import holder
from mirror.remote import Endpoint, RemoteCatalogue
from mirror.server.context import ServiceContext
from mirror.server.service import LocalService

from .test_fetch_dachs import upstream_sha

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
DATALINK = "application/x-votable+xml;content=datalink"


def psql(sql: str) -> list[str]:
    out = subprocess.run(["runuser", "-u", "postgres", "--", "psql", "-d", "gavo", "-Atc", sql],
                         check=True, capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line]


def released(collection: str, n: int) -> list[str]:
    return psql(f"SELECT obs_publisher_did FROM ivoa.obscore WHERE obs_collection = "
                f"'{collection}' AND (obs_release_date IS NULL OR obs_release_date < now()) "
                f"ORDER BY obs_publisher_did LIMIT {n}")


def config(folder: Path, name: str, url: str, ids: list[str], **extra: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    chosen = ", ".join("'" + i.replace("'", "''") + "'" for i in ids)
    lines = ['[catalogue]', 'path = "data/m.duckdb"', '[store]', 'root = "data/store"',
             '[[source]]', f'name = "{name}"', f'url = "{url}"',
             f'fetch_where = "obs_publisher_did IN ({chosen})"',
             *(f"{k} = {json.dumps(v)}" for k, v in extra.items())]
    (folder / "mirror.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder / "mirror.toml"


def stored(db: Path | None, mirror: Mirror | None = None) -> dict[str, dict[str, Any]]:
    """product_id -> its done row of `products`."""
    sql = "SELECT * FROM products WHERE role = 'this' AND state = 'done'"
    if mirror is not None:
        with mirror.catalogue().reader() as conn:
            return {r["product_id"]: dict(r) for r in conn.exec_driver_sql(sql).mappings()}
    con = duckdb.connect(str(db), read_only=True)
    try:
        cur = con.execute(sql)
        names = [d[0] for d in cur.description]
        return {r[1]: dict(zip(names, r, strict=True)) for r in cur.fetchall()}
    finally:
        con.close()


def cli(cfg: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mirror.cli", "--config", str(cfg), *args],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


@dataclass
class Served:
    mirror: Mirror
    url: str
    ids: list[str]
    store: Path
    folder: Path

    def file(self, pid: str, rows: dict[str, dict[str, Any]]) -> bytes:
        return (self.store / rows[pid]["path"]).read_bytes()


@pytest.fixture(scope="module")
def a(upstream: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("mirror_a")
    ids = released("HARPS", 3) + released("VHS", 2)
    m = Mirror.open(config(folder, "dachs", upstream, ids))
    [sync] = m.sync()
    assert sync.status == "ok", sync.errors
    [fetch] = m.fetch()
    assert fetch.status == "ok" and fetch.done == len(ids), fetch.errors
    ctx = ServiceContext(m.catalogue(), m.config,
                         status=lambda: [s.as_dict() for s in m.status()])
    service = LocalService(ctx)
    url = service.start()
    try:
        yield Served(m, url, ids, folder / "data/store", folder)
    finally:
        service.stop()
        ctx.close()
        m.close()


def test_pyvo_datalink_and_getdataset_give_the_stored_files(a: Served) -> None:
    rows = stored(None, a.mirror)
    chosen = ", ".join(f"'{i}'" for i in a.ids)
    result = pyvo.dal.TAPService(a.url).search(
        f"SELECT obs_publisher_did, access_url, access_format FROM ivoa.obscore "
        f"WHERE obs_publisher_did IN ({chosen})")
    assert len(result) == len(a.ids)
    kinds = set()
    for rec in result:
        pid = str(rec["obs_publisher_did"])
        expected = a.file(pid, rows)
        assert hashlib.sha256(expected).hexdigest() == upstream_sha(rows[pid]["url"])
        assert str(rec["access_url"]).startswith(a.url + "/")
        if DATALINK in str(rec["access_format"]):
            kinds.add("datalink")
            links = rec.getdatalink()
            this = next(links.bysemantics("#this", include_narrower=False))
            assert str(this["access_url"]).startswith(a.url + "/products/")
            assert int(this["content_length"]) == len(expected)
            assert this.getdataset().read() == expected
            again = pyvo.dal.adhoc.DatalinkResults.from_result_url(str(rec["access_url"]))
            assert next(again.bysemantics("#this", include_narrower=False))["access_url"] \
                == this["access_url"]
        else:
            kinds.add("direct")
            assert rec.getdataset().read() == expected
    assert kinds == {"datalink", "direct"}
    other = result_without_products(a)
    assert not str(other["access_url"]).startswith(a.url)  # not fetched: the upstream's URL


def result_without_products(a: Served) -> Any:
    chosen = ", ".join(f"'{i}'" for i in a.ids)
    return pyvo.dal.TAPService(a.url).search(
        f"SELECT TOP 1 access_url FROM ivoa.obscore WHERE obs_publisher_did NOT IN ({chosen}) "
        "ORDER BY obs_publisher_did")[0]


def test_a_mirror_of_the_mirror_equals_it_and_fetches_through_it(a: Served,
                                                                  tmp_path: Path) -> None:
    cfg_b = config(tmp_path / "b", "group", a.url, a.ids)
    with Mirror.open(cfg_b) as b:
        [report] = b.sync()
        assert report.status == "ok" and report.proof_ok, report.errors
        adql = "SELECT * FROM ivoa.obscore ORDER BY obs_publisher_did"
        mine = b.query(adql, maxrec=100_000)
        served = RemoteCatalogue(Endpoint(a.url)).query(adql, maxrec=100_000)
        assert b.status()[0].watermark_column == "last_modified"
        [again] = b.sync()  # incremental, from the watermark: nothing new
        assert again.kind == "incremental" and again.new == again.changed == 0, again.errors
        gone = [r["obs_publisher_did"] for r in mine.arrow.slice(100, 3).to_pylist()]
        withdraw_in_a(a, gone, True)  # A's ivoa.obscore no longer lists them
        try:
            [after] = b.sync()
            assert after.withdrawn == 3 and after.status == "ok", after.errors
            left = b.query("SELECT obs_publisher_did FROM ivoa.obscore_withdrawn")
            assert sorted(left.arrow.column(0).to_pylist()) == sorted(gone)
        finally:
            withdraw_in_a(a, gone, False)
        [back] = b.sync()
        assert back.status == "ok" and back.reappeared + back.repaired >= 3, back
        assert len(b.query("SELECT obs_publisher_did FROM ivoa.obscore_withdrawn")) == 0
    total = int(psql("SELECT count(*) FROM ivoa.obscore")[0])
    assert report.upstream_count == report.local_count == len(served) == len(mine)
    assert abs(len(mine) - total) <= 50  # the upstream may evolve meanwhile (other tests)
    assert mine.arrow.column_names == served.arrow.column_names
    assert mine.arrow.to_pylist() == served.arrow.to_pylist()  # row for row, value for value
    fetched = cli(cfg_b, "fetch")
    assert fetched.returncode == 0, fetched.stderr
    rows_a, rows_b = stored(None, a.mirror), stored(tmp_path / "b/data/m.duckdb")
    assert set(rows_b) == set(a.ids)
    for pid, row in rows_b.items():
        assert row["url"].startswith(a.url + "/products/"), row["url"]
        assert row["sha256"] == rows_a[pid]["sha256"]
        assert (tmp_path / "b/data/store" / row["path"]).read_bytes() == a.file(pid, rows_a)


def withdraw_in_a(a: Served, ids: list[str], gone: bool) -> None:
    """What A's own sync does when records vanish upstream (and come back)."""
    with a.mirror.catalogue().begin() as conn:
        conn.exec_driver_sql(
            "UPDATE obscore_dachs SET _withdrawn_at = "
            + ("now()" if gone else "NULL") + " WHERE obs_publisher_did IN ("
            + ", ".join("?" for _ in ids) + ")", tuple(ids))


def test_eight_clients_get_complete_answers_while_the_mirror_writes(a: Served) -> None:
    some = a.mirror.query("SELECT TOP 300 obs_publisher_did FROM ivoa.obscore "
                          "ORDER BY obs_publisher_did").arrow.column(0).to_pylist()
    chosen = ", ".join(f"'{i}'" for i in some[::15])
    queries = {
        "count": "SELECT COUNT(*) AS n FROM ivoa.obscore",
        "rows": f"SELECT obs_publisher_did, s_ra, s_dec, t_min, obs_title FROM ivoa.obscore "
                f"WHERE obs_publisher_did IN ({chosen}) ORDER BY obs_publisher_did",
        "cone": "SELECT COUNT(*) AS n FROM ivoa.obscore WHERE 1 = CONTAINS("
                "POINT('ICRS', s_ra, s_dec), CIRCLE('ICRS', 180, -30, 40))",
        "all": "SELECT obs_publisher_did, last_modified FROM ivoa.obscore "
               "ORDER BY obs_publisher_did",
    }

    def answers() -> dict[str, Any]:
        return {k: a.mirror.query(q, maxrec=100_000).arrow.to_pylist()
                for k, q in queries.items()}

    before = answers()
    with a.mirror.catalogue().begin() as conn:  # the sync must rewrite these rows
        conn.exec_driver_sql("UPDATE obscore_dachs SET _row_hash = 0 WHERE obs_publisher_did "
                             "IN (SELECT obs_publisher_did FROM obscore_dachs "
                             "ORDER BY obs_publisher_did LIMIT 600)")
    got: list[tuple[str, Any, bool]] = []
    errors: list[BaseException] = []
    writing = threading.Event()
    reports: list[Any] = []

    def writer() -> None:
        writing.set()
        try:
            reports.extend(a.mirror.sync(full=True))
            reports.extend(a.mirror.fetch())
        finally:
            writing.clear()

    def client(n: int) -> None:
        remote = RemoteCatalogue(Endpoint(a.url))
        names = list(queries)
        i = 0
        try:
            while i < 6 or (writing.is_set() and i < 400):
                name = names[(n + i) % len(names)]
                during = writing.is_set()
                result = remote.query(queries[name], maxrec=100_000)
                assert not result.overflow
                got.append((name, result.arrow.to_pylist(), during and writing.is_set()))
                i += 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    sync_thread = threading.Thread(target=writer)
    sync_thread.start()
    writing.wait(5)
    clients = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in clients:
        t.start()
    for t in (sync_thread, *clients):
        t.join(600)
    assert not errors, errors[:3]
    assert reports and all(r.status == "ok" for r in reports), [r.errors for r in reports]
    assert reports[0].changed >= 600  # it did rewrite rows while the clients read
    after = answers()
    overlapped = [g for g in got if g[2]]
    assert len(overlapped) >= 8, "the clients' queries must overlap the writes"
    for name, rows, _ in got:
        assert rows in (before[name], after[name]), name


def test_mirror_query_in_another_process_answers_while_a_process_holds_the_catalogue(
        a: Served, tmp_path: Path) -> None:
    cfg = config(tmp_path / "c", "group", a.url, a.ids[:1])
    note = tmp_path / "c/data/m.duckdb"
    with Mirror.open(cfg) as c:  # a first sync, quick; the full one below pages slowly
        assert c.sync()[0].status == "ok"
    config(tmp_path / "c", "group", a.url, a.ids[:1], page_size=5)
    waiter = (
        "import sys, time\nfrom pathlib import Path\nfrom mirror.catalogue.engine import holder\n"
        "from mirror.cli import main\ndeadline = time.time() + 120\n"
        "while time.time() < deadline and not (holder(Path(sys.argv[1])) or {}).get('endpoint'):"
        "\n    time.sleep(0.02)\nsys.exit(main(sys.argv[2:]))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    query = subprocess.Popen(
        [sys.executable, "-c", waiter, str(note), "--config", str(cfg), "query",
         "SELECT COUNT(*) AS n FROM ivoa.obscore", "--format", "csv"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    time.sleep(3)  # let the reader import everything first: it must find the sync running
    sync = subprocess.Popen([sys.executable, "-m", "mirror.cli", "--config", str(cfg), "sync",
                             "--full"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        out, err = query.communicate(timeout=300)
        still_syncing = sync.poll() is None
        assert query.returncode == 0, err
        assert "in use" not in err and "Traceback" not in err
        count = int(out.strip().splitlines()[-1])
        assert still_syncing, "the query must have run while the sync held the catalogue"
        assert abs(count - len(a.mirror.query("SELECT obs_id FROM ivoa.obscore",
                                              maxrec=100_000))) <= 50
    finally:
        sync_out, sync_err = sync.communicate(timeout=600)
    assert sync.returncode == 0, sync_err
    assert holder(note) is None  # the note is gone with the process that held the catalogue


def test_mirror_serve_holds_the_catalogue_and_readers_go_through_it(a: Served,
                                                                    tmp_path: Path) -> None:
    cfg = config(tmp_path / "d", "group", a.url, a.ids[:1])
    note = tmp_path / "d/data/m.duckdb"
    with Mirror.open(cfg) as d:
        assert d.sync()[0].status == "ok"
        expected = d.query("SELECT TOP 5 obs_publisher_did FROM ivoa.obscore "
                           "ORDER BY obs_publisher_did").arrow.column(0).to_pylist()
    serve = subprocess.Popen([sys.executable, "-m", "mirror.cli", "--config", str(cfg), "serve",
                              "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.time() + 60
        while not (holder(note) or {}).get("endpoint"):
            assert time.time() < deadline and serve.poll() is None, serve.stderr
            time.sleep(0.1)
        done = cli(cfg, "query", "SELECT TOP 5 obs_publisher_did FROM ivoa.obscore "
                   "ORDER BY obs_publisher_did", "--format", "csv")
        assert done.returncode == 0, done.stderr
        assert [ln.strip('"') for ln in done.stdout.splitlines()[1:]] == expected
        status = cli(cfg, "status", "--json")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["sources"][0]["rows"] > 1000
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(30)
    assert holder(note) is None
