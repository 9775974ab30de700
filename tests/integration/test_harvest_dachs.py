"""The harvester against the real DaCHS upstream (row limit 1000, so it must page).

Ground truth comes from the upstream's own PostgreSQL database and its changes.jsonl, not from
TAP, so the checks do not share a code path with the harvester.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import duckdb
import numpy as np
import pytest

from mirror import Mirror

pytestmark = pytest.mark.integration
COMPARED = ("obs_publisher_did", "last_modified", "obs_collection", "dp_id", "snr", "abmaglim",
            "obs_release_date", "t_min", "s_ra", "access_url", "access_estsize")


def upstream_rows() -> dict[str, tuple]:
    """The upstream's ivoa.obscore straight from PostgreSQL, keyed by publisher DID."""
    sql = f"\\copy (SELECT {', '.join(COMPARED)} FROM ivoa.obscore) TO STDOUT CSV"
    out = subprocess.run(["runuser", "-u", "postgres", "--", "psql", "-d", "gavo", "-c", sql],
                         check=True, capture_output=True, text=True).stdout
    return {r[0]: _norm(r) for r in csv.reader(io.StringIO(out))}


def local_rows(db: Path, view: str = "ivoa.obscore") -> dict[str, tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.execute(f"SELECT {', '.join(COMPARED)} FROM {view}").fetchall()
    finally:
        con.close()
    return {str(r[0]): _norm(["" if v is None else str(v) for v in r]) for r in rows}


FLOAT32 = {COMPARED.index("snr"), COMPARED.index("abmaglim")}


def _norm(r: list[str]) -> tuple:
    """Compare values, not spellings: numbers as floats (float32 where the service declares
    `float`), timestamps as datetimes."""
    out: list[object] = []
    for i, v in enumerate(r):
        if v == "":
            out.append(None)
            continue
        try:
            out.append(float(np.float32(v)) if i in FLOAT32 else float(v))
            continue
        except ValueError:
            pass
        try:
            out.append(datetime.fromisoformat(v.replace(" ", "T")))
        except ValueError:  # DaCHS stores accrefs and serves them as /getproduct/ URLs
            out.append(v.split("/getproduct/", 1)[-1])
    return tuple(out)


def make_config(tmp: Path, url: str, **source: object) -> Path:
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in source.items())
    cfg = tmp / "mirror.toml"
    cfg.write_text(f'[catalogue]\npath = "data/m.duckdb"\n[store]\nroot = "data/store"\n'
                   f'[[source]]\nname = "dachs"\nurl = "{url}"\n{extra}')
    return cfg


def run_ids(db: Path, run_id: int) -> set[str]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return {r[0] for r in con.execute(
            "SELECT obs_publisher_did FROM obscore_dachs WHERE _run_id = ?", [run_id]).fetchall()}
    finally:
        con.close()


def test_full_sync_pages_past_the_row_limit_and_equals_upstream(upstream, tmp_path):
    truth = upstream_rows()
    assert len(truth) > 1000, "the upstream must hold more rows than its hard limit"
    with Mirror.open(make_config(tmp_path, upstream)) as m:
        [report] = m.sync()
        history = m.runs()
    assert report.status == "ok", report.errors
    assert report.windows >= -(-len(truth) // 1000)
    assert report.proof_ok and report.upstream_count == report.local_count == len(truth)
    assert local_rows(tmp_path / "data/m.duckdb") == truth
    assert history[0]["windows"] == report.windows and history[0]["proof_ok"]


def test_incremental_sync_follows_add_modify_delete_touching_only_changed_rows(
        upstream, evolve, tmp_path):
    cfg = make_config(tmp_path, upstream)
    with Mirror.open(cfg) as m:
        assert m.sync()[0].status == "ok"
    added = {c["obs_publisher_did"] for c in evolve("add", 7)}
    modified = {c["obs_publisher_did"] for c in evolve("modify", 5)} - added
    deleted = {c["obs_publisher_did"] for c in evolve("delete", 4)}
    added, modified = added - deleted, modified - deleted
    with Mirror.open(cfg) as m:
        dry = m.sync(dry_run=True)[0]
        assert (dry.new, dry.changed, set(dry.would_withdraw)) == (
            len(added), len(modified), deleted)
        assert m.runs()[0]["run_id"] == 1, "a dry run records nothing"
        [report] = m.sync()
    assert report.status == "ok", report.errors
    assert (report.kind, report.new, report.changed, report.withdrawn) == (
        "incremental", len(added), len(modified), len(deleted))
    db = tmp_path / "data/m.duckdb"
    assert run_ids(db, report.run_id) == added | modified
    assert local_rows(db) == upstream_rows()
    assert set(local_rows(db, "ivoa.obscore_withdrawn")) == deleted


def test_withdrawals_are_capped(upstream, evolve, tmp_path):
    cfg = make_config(tmp_path, upstream, max_withdrawals=2)
    with Mirror.open(cfg) as m:
        assert m.sync()[0].status == "ok"
    deleted = {c["obs_publisher_did"] for c in evolve("delete", 3)}
    with Mirror.open(cfg) as m:
        [capped] = m.sync()
    assert capped.status == "failed" and capped.withdrawn == 0
    assert any("max_withdrawals" in e for e in capped.errors)
    assert deleted <= set(local_rows(tmp_path / "data/m.duckdb"))
    make_config(tmp_path, upstream, max_withdrawals=3)
    with Mirror.open(cfg) as m:
        [report] = m.sync()
    assert report.status == "ok" and report.withdrawn == 3
    assert local_rows(tmp_path / "data/m.duckdb") == upstream_rows()


def test_kill_9_mid_sync_then_resume_equals_an_uninterrupted_run(upstream, tmp_path):
    killed_dir, clean_dir = tmp_path / "killed", tmp_path / "clean"
    killed_dir.mkdir()
    clean_dir.mkdir()
    cfg = make_config(killed_dir, upstream, page_size=60)
    env = {**os.environ, "MIRROR_CONFIG": str(cfg)}
    proc = subprocess.Popen([sys.executable, "-m", "mirror.cli", "--debug", "sync"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:  # kill right after the third page was committed
        if "window 3 committed" in line:
            break
    assert proc.poll() is None, "the sync finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with Mirror.open(cfg) as m:
        partial = m.status()[0].rows
        [report] = m.sync()
        history = m.runs()
    assert 0 < partial < report.local_count
    assert history[-1]["status"] == "interrupted"
    assert report.status == "ok" and report.kind == "incremental"
    with Mirror.open(make_config(clean_dir, upstream)) as m:
        assert m.sync()[0].status == "ok"
    assert local_rows(killed_dir / "data/m.duckdb") == local_rows(clean_dir / "data/m.duckdb")
    assert local_rows(killed_dir / "data/m.duckdb") == upstream_rows()


def test_tap_schema_is_replicated_with_descriptions_units_and_ucds(upstream, tmp_path):
    with Mirror.open(make_config(tmp_path, upstream)) as m:
        assert m.sync()[0].status == "ok"
    con = duckdb.connect(str(tmp_path / "data/m.duckdb"), read_only=True)
    snr = con.execute("SELECT unit, ucd, description FROM tap_columns WHERE source = 'dachs' "
                      "AND lower(table_name) = 'ivoa.obscore' AND column_name = 'snr'").fetchone()
    types = dict(con.execute("SELECT column_name, local_type FROM source_columns").fetchall())
    con.close()
    assert snr is not None and snr[1] and snr[2]
    assert types["last_modified"] == "TIMESTAMP" and types["s_region"] == "VARCHAR"
    assert types["s_ra"] == "DOUBLE" and types["calib_level"] == "SMALLINT"


def async_job_posts() -> int:
    log = Path("/var/gavo/logs/web.log")
    return sum(1 for line in log.read_text(errors="replace").splitlines()
               if "'POST' '/tap/async'" in line)


def test_async_mode_pages_through_uws_jobs_with_the_same_result(upstream, tmp_path):
    before = async_job_posts()
    with Mirror.open(make_config(tmp_path, upstream, mode="async")) as m:
        [report] = m.sync()
    assert report.status == "ok", report.errors
    assert async_job_posts() - before >= report.windows, "pages went through UWS jobs"
    assert report.windows >= 2 and report.proof_ok
    assert local_rows(tmp_path / "data/m.duckdb") == upstream_rows()


def test_two_sources_appear_together_in_ivoa_obscore(upstream, tmp_path):
    cfg = tmp_path / "mirror.toml"
    cfg.write_text('[catalogue]\npath = "data/m.duckdb"\n'
                   f'[[source]]\nname = "harps"\nurl = "{upstream}"\n'
                   "where = \"obs_collection = 'HARPS'\"\n"
                   f'[[source]]\nname = "vhs"\nurl = "{upstream}"\n'
                   "where = \"obs_collection = 'VHS'\"\n")
    with Mirror.open(cfg) as m:
        reports = m.sync()
    assert [r.status for r in reports] == ["ok", "ok"]
    con = duckdb.connect(str(tmp_path / "data/m.duckdb"), read_only=True)
    by_source = dict(con.execute("SELECT mirror_source || '/' || obs_collection, count(*) "
                                 "FROM ivoa.obscore GROUP BY 1").fetchall())
    con.close()
    truth = upstream_rows()
    harps = sum(1 for r in truth.values() if r[2] == "HARPS")
    assert by_source == {"harps/HARPS": harps, "vhs/VHS": len(truth) - harps}


def test_while_a_sync_writes_readers_answer_and_a_second_writer_is_told_who_holds_it(
        upstream, tmp_path):
    cfg = make_config(tmp_path, upstream, page_size=60)
    env = {**os.environ, "MIRROR_CONFIG": str(cfg)}
    sync = subprocess.Popen([sys.executable, "-m", "mirror.cli", "--debug", "sync"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert sync.stderr is not None
    for line in sync.stderr:
        if "window 1 committed" in line:
            break
    # a reader goes through the service the sync runs for its duration
    status = subprocess.run([sys.executable, "-m", "mirror.cli", "status", "--json"], env=env,
                            capture_output=True, text=True, timeout=60)
    # a second writer cannot: DuckDB admits one writing process, so it names the one that writes
    second = subprocess.run([sys.executable, "-m", "mirror.cli", "sync"], env=env,
                            capture_output=True, text=True, timeout=60)
    sync.kill()
    sync.wait()
    assert status.returncode == 0, status.stderr
    [source] = json.loads(status.stdout)["sources"]
    assert source["name"] == "dachs" and source["rows"] >= 60
    assert second.returncode == 2
    assert "in use by `mirror --debug sync`" in second.stderr
    assert f"pid {sync.pid}" in second.stderr
    for done in (status, second):
        assert "Traceback" not in done.stderr
