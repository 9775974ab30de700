"""Local ADQL queries: fake TAP -> sync -> query, result formats, caps, limits and refusals."""

from __future__ import annotations

import datetime as dt
import io
import json
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from astropy.io.votable import parse as parse_votable
from astropy.table import Table
from fakes import FakeTap, write_config
from test_harvest_unit import Harness

import mirror.adql as adql
from mirror import cli
from mirror.api import Mirror
from mirror.catalogue import obscore
from mirror.catalogue.engine import Catalogue
from mirror.cli import main
from mirror.errors import CatalogueBusyError, MirrorError
from mirror.query import QueryError, QueryTimeoutError, Runner
from mirror.query.writers import WRITERS, write

ID = "obs_publisher_did"
COLUMNS = f"{ID}, s_ra, s_dec, t_min, access_estsize, obs_release_date, snr, target_class"


@pytest.fixture(scope="module")
def synced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A catalogue synced once from the fake service (50 recorded DaCHS rows); its config."""
    tmp = tmp_path_factory.mktemp("query")
    with FakeTap(hard_limit=20).load_recorded() as tap:
        h = Harness(tmp, tap)
        assert h.sync().status == "ok"
        h.close()
    yield h.config


@pytest.fixture
def mirror(synced: Path) -> Iterator[Mirror]:
    with Mirror.open(synced) as m:
        yield m


def all_rows(m: Mirror, columns: str = COLUMNS) -> list[dict[str, Any]]:
    with m.catalogue(write=False).begin() as conn:
        return [dict(r._mapping) for r in conn.exec_driver_sql(
            f"SELECT {columns} FROM ivoa.obscore ORDER BY {ID}")]


def angular_distance(ra1: float, dec1: float, ra2: float, dec2: float) -> float:
    r1, d1, r2, d2 = map(math.radians, (ra1, dec1, ra2, dec2))
    h = math.sin((d2 - d1) / 2) ** 2 + math.cos(d1) * math.cos(d2) * math.sin((r2 - r1) / 2) ** 2
    return math.degrees(2 * math.asin(math.sqrt(h)))


def norm(value: Any) -> Any:
    """Values compared across formats: NULL and '' alike, floats to 6 digits, dates parsed."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or value is np.ma.masked or value == "":
        return None
    if isinstance(value, float):
        return None if math.isnan(value) else float(f"{value:.6g}")
    if isinstance(value, str):
        try:
            return dt.datetime.fromisoformat(value)
        except ValueError:
            return value
    return value


def normalised(rows: list[list[Any]]) -> list[tuple[Any, ...]]:
    return sorted((tuple(norm(v) for v in r) for r in rows), key=repr)


# -- queries --------------------------------------------------------------------------------------


def test_translator_and_catalogue_agree_on_the_healpix_column() -> None:
    assert (adql.HPX_COLUMN, adql.HPX_DEPTH) == (obscore.HPX_COLUMN, obscore.HPX_DEPTH)


def test_cone_search_returns_exactly_the_rows_within_the_radius(mirror: Mirror) -> None:
    rows = all_rows(mirror)
    centre = rows[7]
    ra, dec, radius = centre["s_ra"], centre["s_dec"], 15.0
    result = mirror.query(f"SELECT {ID} FROM ivoa.obscore WHERE CONTAINS(POINT('ICRS', s_ra, "
                          f"s_dec), CIRCLE('ICRS', {ra}, {dec}, {radius})) = 1")
    expected = {r[ID] for r in rows if angular_distance(ra, dec, r["s_ra"], r["s_dec"]) <= radius}
    assert 1 < len(expected) < len(rows)
    assert set(result.table[ID]) == expected
    assert not result.overflow


def test_result_columns_carry_unit_ucd_and_description(mirror: Mirror) -> None:
    table = mirror.query(f"SELECT TOP 3 {ID}, s_ra, t_min FROM ivoa.obscore").table
    assert str(table["s_ra"].unit) == "deg" and table["s_ra"].meta["ucd"] == "pos.eq.ra"
    assert table["s_ra"].description
    assert table[ID].meta["ucd"] == "meta.ref.ivoid"
    assert table.meta["QUERY_STATUS"] == "OK"


def test_nulls_are_masked_in_the_astropy_table(mirror: Mirror) -> None:
    table = mirror.query(f"SELECT {ID}, snr, target_class FROM ivoa.obscore").table
    assert len(table) == 50 and table["snr"].mask.all() and table["target_class"].mask.all()


@pytest.mark.parametrize(("adql_text", "maxrec", "rows", "overflow"), [
    (f"SELECT {ID} FROM ivoa.obscore", 10, 10, True),
    (f"SELECT {ID} FROM ivoa.obscore", 50, 50, False),  # an exact fit is not an overflow
    (f"SELECT TOP 5 {ID} FROM ivoa.obscore", 10, 5, False),
    (f"SELECT TOP 20 {ID} FROM ivoa.obscore", 10, 10, True),
    (f"SELECT {ID} FROM ivoa.obscore", 0, 0, True),
])
def test_maxrec_caps_rows_and_flags_overflow(mirror: Mirror, adql_text: str, maxrec: int,
                                             rows: int, overflow: bool) -> None:
    result = mirror.query(adql_text, maxrec=maxrec)
    assert (len(result), result.overflow) == (rows, overflow)
    assert result.table.meta["QUERY_STATUS"] == ("OVERFLOW" if overflow else "OK")


def test_default_maxrec_comes_from_the_config(tmp_path: Path, synced: Path) -> None:
    cfg = tmp_path / "capped.toml"
    catalogue = synced.parent / "cat/mirror.duckdb"
    cfg.write_text(f'[catalogue]\npath = "{catalogue}"\n[query]\nmaxrec = 7\n')
    with Mirror.open(cfg) as m:
        result = m.query(f"SELECT {ID} FROM ivoa.obscore")
    assert (len(result), result.overflow) == (7, True)


def test_tap_schema_describes_what_can_be_queried_here(mirror: Mirror) -> None:
    tables = set(mirror.query("SELECT table_name FROM TAP_SCHEMA.tables").table["table_name"])
    assert {"ivoa.obscore", "ivoa.obscore_withdrawn", "fake.obscore", "TAP_SCHEMA.columns",
            "TAP_SCHEMA.tables", "TAP_SCHEMA.schemas", "TAP_SCHEMA.keys",
            "TAP_SCHEMA.key_columns"} <= tables
    cols = mirror.query("SELECT column_name, unit, ucd FROM TAP_SCHEMA.columns "
                        "WHERE table_name = 'ivoa.obscore'").table
    described = {r["column_name"]: (r["unit"], r["ucd"]) for r in cols}
    assert described["s_ra"] == ("deg", "pos.eq.ra")
    assert {"mirror_source", "last_modified"} <= set(described)
    assert "_hpx" not in described  # internal: queryable, not listed (see test_hpx)


def test_join_with_tap_schema_columns(mirror: Mirror) -> None:
    result = mirror.query(
        "SELECT c.column_name, c.unit FROM TAP_SCHEMA.columns AS c JOIN TAP_SCHEMA.tables AS t "
        "ON c.table_name = t.table_name WHERE t.table_name = 'fake.obscore' AND c.unit = 'deg'")
    assert {"s_ra", "s_dec", "s_fov"} <= set(result.table["column_name"])


def test_per_source_table_holds_that_sources_current_rows(mirror: Mirror) -> None:
    [n] = mirror.query("SELECT COUNT(*) AS n FROM fake.obscore").table["n"]
    assert n == 50


def test_aggregation_per_collection(mirror: Mirror) -> None:
    table = mirror.query("SELECT obs_collection, COUNT(*) AS n, AVG(s_ra) AS mean_ra "
                         "FROM ivoa.obscore GROUP BY obs_collection").table
    rows = all_rows(mirror)
    assert list(table["obs_collection"]) == ["VHS"] and list(table["n"]) == [50]
    assert table["mean_ra"][0] == pytest.approx(sum(r["s_ra"] for r in rows) / 50)


def test_unknown_table_is_a_user_error_naming_it(mirror: Mirror) -> None:
    with pytest.raises(MirrorError) as info:
        mirror.query("SELECT * FROM ivoa.nothing_here")
    assert "nothing_here" in info.value.message


# -- the runner's limits --------------------------------------------------------------------------


@pytest.fixture
def big(tmp_path: Path) -> Iterator[Catalogue]:
    """A writable catalogue with a 2-million-row table to keep DuckDB busy."""
    cat = Catalogue.open(tmp_path / "big.duckdb")
    with cat.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE big AS SELECT i, hash(i) % 1000 AS k "
                             "FROM range(2000000) t(i)")
    yield cat
    cat.close()


SLOW = "SELECT count(*) FROM big a JOIN big b ON a.k = b.k WHERE a.i + b.i < 0"


def test_a_query_over_its_time_limit_is_stopped_and_the_runner_goes_on(big: Catalogue) -> None:
    runner = Runner(big, timeout=60)
    started = time.monotonic()
    with pytest.raises(QueryTimeoutError) as info:
        runner.run_sql(SLOW, timeout=0.2)
    assert time.monotonic() - started < 10
    assert info.value.message == "query exceeded 0.2 s and was stopped"
    assert runner.run_sql("SELECT count(*) AS n FROM big").to_pylist() == [{"n": 2_000_000}]
    runner.close()


def test_a_short_time_limit_after_long_ones_still_stops_its_query(big: Catalogue) -> None:
    runner = Runner(big, timeout=60)
    for _ in range(3):  # the watchdog now sleeps until a deadline a minute away
        runner.run_sql("SELECT count(*) FROM big", timeout=60)
    started = time.monotonic()
    with pytest.raises(QueryTimeoutError):
        runner.run_sql(SLOW, timeout=0.2)
    assert time.monotonic() - started < 10
    runner.close()


def test_results_read_through_the_db_api_when_the_engine_submit_is_missing() -> None:
    import duckdb

    from mirror.query.runner import _read

    con = duckdb.connect()

    class PlainConnection:  # the public DB-API only, as another DuckDB build offers
        def execute(self, sql: str, params: Any = None) -> Any:
            return con.execute(sql, params) if params is not None else con.execute(sql)

    plain = _read(PlainConnection(), "SELECT range AS i FROM range(30000)", 25_001)  # type: ignore[arg-type]
    fast = _read(con, "SELECT range AS i FROM range(30000)", 25_001)
    assert plain.equals(fast) and plain.num_rows == 25_001
    assert _read(PlainConnection(), "SELECT ? AS v", None, [7]).to_pylist() == [{"v": 7}]  # type: ignore[arg-type]
    con.close()


def test_run_sql_reads_no_more_than_the_limit(big: Catalogue) -> None:
    runner = Runner(big)
    assert runner.run_sql("SELECT i FROM big", limit=25_001).num_rows == 25_001
    runner.close()


@pytest.mark.parametrize("sql", [
    "CREATE TABLE t AS SELECT 1",
    "INSERT INTO big VALUES (1, 1)",
    "SELECT * FROM read_csv('/etc/passwd')",
    "COPY big TO 'out.csv'",
])
def test_the_runner_refuses_writes_files_and_settings_even_on_a_writable_catalogue(
        big: Catalogue, sql: str) -> None:
    runner = Runner(big)
    with pytest.raises(QueryError) as info:
        runner.run_sql(sql)
    assert "\n" not in info.value.message and "Traceback" not in info.value.message
    assert runner.run_sql("SELECT count(*) AS n FROM big").to_pylist() == [{"n": 2_000_000}]
    runner.close()


def test_duckdb_errors_become_query_errors_with_their_first_line(big: Catalogue) -> None:
    runner = Runner(big)
    with pytest.raises(QueryError) as info:
        runner.run_sql("SELECT no_such_column FROM big")
    assert info.value.message.startswith("Binder Error") and "\n" not in info.value.message
    runner.close()


# -- formats --------------------------------------------------------------------------------------


def read_back(fmt: str, path: Path) -> tuple[list[str], list[list[Any]]]:
    if fmt == "csv":
        t = pacsv.read_csv(path)
        return t.column_names, [list(r.values()) for r in t.to_pylist()]
    if fmt == "parquet":
        t = pq.read_table(path)
        return t.column_names, [list(r.values()) for r in t.to_pylist()]
    if fmt == "json":
        doc = json.loads(path.read_text())
        return [c["name"] for c in doc["columns"]], doc["data"]
    table = (parse_votable(str(path)).get_first_table().to_table() if fmt == "votable"
             else Table.read(path, format="fits"))
    return table.colnames, [[row[c] for c in table.colnames] for row in table]


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_every_format_round_trips_the_rows(mirror: Mirror, tmp_path: Path, fmt: str) -> None:
    result = mirror.query(f"SELECT {COLUMNS} FROM ivoa.obscore")
    path = tmp_path / f"out.{fmt}"
    write(result, fmt, path, io.BytesIO())
    names, rows = read_back(fmt, path)
    assert names == COLUMNS.split(", ")
    expected = [list(r.values()) for r in result.arrow.to_pylist()]
    assert len(rows) == 50 and normalised(rows) == normalised(expected)


def test_votable_carries_units_ucds_and_the_overflow_status(mirror: Mirror,
                                                             tmp_path: Path) -> None:
    result = mirror.query(f"SELECT {ID}, s_ra FROM ivoa.obscore", maxrec=5)
    write(result, "votable", tmp_path / "r.vot", io.BytesIO())
    vot = parse_votable(str(tmp_path / "r.vot"))
    [status] = [i.value for i in vot.resources[0].infos if i.name == "QUERY_STATUS"]
    field = vot.get_first_table().get_field_by_id_or_name("s_ra")
    assert status == "OVERFLOW" and str(field.unit) == "deg" and field.ucd == "pos.eq.ra"


def test_parquet_keeps_units_as_field_metadata(mirror: Mirror, tmp_path: Path) -> None:
    write(mirror.query("SELECT s_ra FROM ivoa.obscore"), "parquet", tmp_path / "r.parquet",
          io.BytesIO())
    meta = pq.read_schema(tmp_path / "r.parquet").field("s_ra").metadata
    assert meta[b"unit"] == b"deg" and meta[b"ucd"] == b"pos.eq.ra"


# -- the command line -----------------------------------------------------------------------------


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_writes_the_format_its_output_suffix_names(synced: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rows.parquet"
    code, _, _ = run_cli(capsys, "--config", str(synced), "query", "-o", str(out),
                         f"SELECT TOP 4 {ID} FROM ivoa.obscore")
    assert code == 0 and pq.read_table(out).num_rows == 4
    assert not list(tmp_path.glob(".rows.parquet.*")), "no temp file left behind"


def test_cli_reads_the_query_from_a_file_or_stdin(synced: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    query = tmp_path / "q.adql"
    query.write_text(f"SELECT TOP 2 {ID} FROM ivoa.obscore")
    code, out, _ = run_cli(capsys, "--config", str(synced), "query", f"@{query}",
                           "--format", "csv")
    assert code == 0 and len(out.strip().splitlines()) == 3
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"SELECT TOP 3 {ID} FROM ivoa.obscore"))
    code, out, _ = run_cli(capsys, "--config", str(synced), "query", "--json")
    assert code == 0 and len(json.loads(out)["data"]) == 3


def test_cli_prints_a_table_and_says_overflow(synced: Path, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli.out, "width", 200)
    code, out, err = run_cli(capsys, "--config", str(synced), "query", "--maxrec", "3",
                             f"SELECT {ID}, s_ra FROM ivoa.obscore")
    assert code == 0 and "s_ra [deg]" in out and "OVERFLOW" in err


def test_cli_adql_mistake_exits_2_with_message_and_no_traceback(
        synced: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "--config", str(synced), "query", "SELECT FROM WHERE")
    assert code == 2 and "error:" in err and "Traceback" not in err


def test_cli_reports_a_busy_catalogue_cleanly(synced: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    catalogue = synced.parent / "cat/mirror.duckdb"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom pathlib import Path\n"
         "from mirror.catalogue.engine import Catalogue\n"
         f"cat = Catalogue.open(Path({str(catalogue)!r}))\nprint('ready', flush=True)\n"
         "sys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        with Mirror.open(synced) as m, pytest.raises(CatalogueBusyError):
            m.query(f"SELECT {ID} FROM ivoa.obscore")
        code, _, err = run_cli(capsys, "--config", str(synced), "query",
                               f"SELECT {ID} FROM ivoa.obscore")
    finally:
        holder.communicate("", timeout=60)
    assert code == 2 and "in use by" in err and f"pid {holder.pid}" in err
    assert "Traceback" not in err and "IO Error" not in err


# -- one process: queries and syncs ----------------------------------------------------------------


def test_query_sync_query_in_one_process_sees_the_new_rows(tmp_path: Path) -> None:
    with FakeTap(hard_limit=20).load_recorded() as tap:
        cfg = write_config(tmp_path, {"name": "fake", "url": tap.url})
        with Mirror.open(cfg) as m:
            m.sync()
            assert len(m.query(f"SELECT {ID} FROM ivoa.obscore")) == 50
            tap.execute(f"DELETE FROM ivoa.obscore WHERE {ID} = ?", [tap.ids()[0]])
            assert m.sync()[0].withdrawn == 1
            assert len(m.query(f"SELECT {ID} FROM ivoa.obscore")) == 49
            assert len(m.query(f"SELECT {ID} FROM ivoa.obscore_withdrawn")) == 1
        with Mirror.open(cfg) as m:  # read-only first, then a writer in the same process
            assert len(m.query(f"SELECT {ID} FROM ivoa.obscore")) == 49
            assert m.sync()[0].status == "ok"
            assert len(m.query(f"SELECT {ID} FROM fake.obscore")) == 49
