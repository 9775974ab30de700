"""The `_hpx` column: computed on ingest, back-filled on old tables, rows kept clustered by it."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import astropy.units as u
import numpy as np
import pyarrow as pa
import pytest
from astropy.coordinates import Latitude, Longitude
from cdshealpix.nested import lonlat_to_healpix
from fakes import FakeTap
from test_harvest_unit import LATER, Harness, add_copies, bump

from mirror.catalogue import obscore
from mirror.catalogue.obscore import HPX_DEPTH, healpix_index, needs_recluster

ID = "obs_publisher_did"


REAL_MIN_TABLE = obscore.RECLUSTER_MIN_TABLE


@pytest.fixture(autouse=True)
def recluster_small_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake service's tables are tiny: let them be re-clustered as a large one would."""
    monkeypatch.setattr(obscore, "RECLUSTER_MIN_TABLE", 0)


@pytest.fixture
def tap() -> Iterator[FakeTap]:
    with FakeTap(hard_limit=20).load_recorded() as server:
        yield server


@pytest.fixture
def harness(tmp_path: Path, tap: FakeTap) -> Iterator[Harness]:
    h = Harness(tmp_path, tap)
    yield h
    h.close()


def expected_hpx(ra: float, dec: float) -> int:
    return int(lonlat_to_healpix(Longitude([ra], u.deg), Latitude([dec], u.deg), HPX_DEPTH)[0])


def physical_hpx(h: Harness) -> list[int | None]:
    return [r[0] for r in h.sql("SELECT _hpx FROM obscore_fake ORDER BY rowid")]


def is_clustered(values: list[int | None]) -> bool:
    present = [v for v in values if v is not None]
    nulls_last = values[len(present):] == [None] * (len(values) - len(present))
    return present == sorted(present) and nulls_last


def test_healpix_index_is_cdshealpix_nested_at_depth_29_and_null_off_the_sphere() -> None:
    ra = pa.array([10.0, 370.0, None, 5.0, float("nan"), 0.0, 359.999999])
    dec = pa.array([20.0, -45.0, 1.0, 95.0, 3.0, -90.0, 89.9999])
    got = healpix_index(ra, dec).to_pylist()
    assert got[0] == expected_hpx(10.0, 20.0)
    assert got[1] == expected_hpx(10.0, -45.0), "RA wraps around"
    assert got[2:5] == [None, None, None], "missing, off-sphere and NaN positions give NULL"
    assert got[5] == expected_hpx(0.0, -90.0) and got[6] == expected_hpx(359.999999, 89.9999)
    assert healpix_index(pa.array(["12.5", "x"]), pa.array(["-3", "4"])).to_pylist() == [
        None, None], "text that is not all numbers gives NULL, not an error"
    sentinel = healpix_index(pa.array([-999.0, 1.0]), pa.array([1.0, 1.0]), ("-999", None))
    assert sentinel.to_pylist() == [None, expected_hpx(1.0, 1.0)]


def test_sync_computes_hpx_of_every_row(harness: Harness, tap: FakeTap) -> None:
    tap.execute(f"UPDATE ivoa.obscore SET s_ra = NULL WHERE {ID} = ?", [tap.ids()[3]])
    assert harness.sync().status == "ok"
    rows = harness.sql(f"SELECT {ID}, s_ra, s_dec, _hpx FROM obscore_fake")
    assert len(rows) == len(tap.ids())
    for did, ra, dec, hpx in rows:
        assert hpx == (None if ra is None or dec is None else expected_hpx(ra, dec)), did
    assert sum(r[3] is None for r in rows) == 1


def test_a_moved_record_gets_its_new_hpx(harness: Harness, tap: FakeTap) -> None:
    harness.sync()
    moved = tap.ids()[5]
    tap.execute(f"UPDATE ivoa.obscore SET s_ra = 123.25, s_dec = -12.5 WHERE {ID} = ?", [moved])
    bump(tap, [moved])
    assert harness.sync().changed == 1
    [(hpx,)] = harness.sql(f"SELECT _hpx FROM ivoa.obscore WHERE {ID} = ?", moved)
    assert hpx == expected_hpx(123.25, -12.5)


def test_views_expose_hpx_and_tap_schema_leaves_it_out(harness: Harness) -> None:
    # TAP clients expect SELECT * to return every listed column, and `_hpx` is no ADQL
    # identifier (taplint CNID, CLDR): the internal column is queryable but not listed
    harness.sync()
    for view in ("ivoa.obscore", "ivoa.obscore_withdrawn", "source_obscore.fake"):
        harness.sql(f"SELECT _hpx FROM {view} LIMIT 1")
    assert harness.sql("SELECT count(*) FROM TAP_SCHEMA.columns "
                       "WHERE column_name = '_hpx'") == [(0,)]
    result = harness.mirror.query('SELECT TOP 1 "_hpx" FROM ivoa.obscore')
    assert result.arrow.column_names == ["_hpx"]


@pytest.mark.parametrize(("written", "total", "expected"), [
    (0, 0, False), (50, 50, True), (5, 100, False), (11, 100, True),
    (100_001, 10_000_000, True), (99_999, 10_000_000, False)])
def test_recluster_threshold(written: int, total: int, expected: bool) -> None:
    assert needs_recluster(written, total) is expected


@pytest.mark.parametrize("total", [50, REAL_MIN_TABLE // 2, REAL_MIN_TABLE - 1])
def test_small_tables_are_not_rewritten(total: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(obscore, "RECLUSTER_MIN_TABLE", REAL_MIN_TABLE)
    assert needs_recluster(total, total) is False
    assert needs_recluster(REAL_MIN_TABLE, REAL_MIN_TABLE) is True


def test_rows_stay_clustered_by_hpx_after_a_large_sync(harness: Harness, tap: FakeTap) -> None:
    harness.sync()
    assert is_clustered(physical_hpx(harness)), "the first sync wrote every row: re-clustered"
    ids = tap.ids()
    add_copies(tap, ids[0], [f"ivo://new/{i}" for i in range(10)])
    for i in range(10):  # scatter the new rows over the sky, so appending them breaks the order
        tap.execute(f"UPDATE ivoa.obscore SET s_ra = ?, s_dec = ? WHERE {ID} = ?",
                    [(i * 137.0) % 360, (i * 53.0) % 170 - 85, f"ivo://new/{i}"])
    assert harness.sync().new == 10  # 10 of 60 rows: more than 10 % written
    values = physical_hpx(harness)
    assert len(values) == 60 and is_clustered(values)


def test_a_small_sync_appends_without_rewriting(harness: Harness, tap: FakeTap) -> None:
    add_copies(tap, tap.ids()[0], [f"ivo://new/{i}" for i in range(100)])
    harness.sync()
    tables_before = harness.sql("SELECT table_oid FROM duckdb_tables() "
                                "WHERE table_name = 'obscore_fake'")
    add_copies(tap, tap.ids()[1], ["ivo://new/one-more"], when=LATER + dt.timedelta(days=1))
    assert harness.sync().new == 1
    assert harness.sql("SELECT table_oid FROM duckdb_tables() "
                       "WHERE table_name = 'obscore_fake'") == tables_before


def test_table_from_before_hpx_gets_it_added_and_back_filled(harness: Harness) -> None:
    harness.sync()
    expected = dict(harness.sql(f"SELECT {ID}, _hpx FROM obscore_fake"))
    with harness.mirror.catalogue().begin() as conn:  # the layout of an older mirror
        conn.exec_driver_sql("DROP VIEW ivoa.obscore")
        conn.exec_driver_sql("DROP VIEW ivoa.obscore_withdrawn")
        conn.exec_driver_sql("DROP VIEW source_obscore.fake")
        conn.exec_driver_sql("ALTER TABLE obscore_fake DROP COLUMN _hpx")
    harness.mirror.init()
    assert dict(harness.sql(f"SELECT {ID}, _hpx FROM ivoa.obscore")) == expected
    assert is_clustered(physical_hpx(harness))


def test_failed_recluster_rolls_back_to_the_old_table(harness: Harness,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    harness.sync()
    before = harness.sql("SELECT * FROM obscore_fake ORDER BY rowid")

    def fail(conn: object) -> None:
        raise RuntimeError("crash after the swap, before the commit")

    monkeypatch.setattr(obscore, "rebuild_views", fail)
    with pytest.raises(RuntimeError), harness.mirror.catalogue().begin() as conn:
        obscore.recluster(conn, "fake")
    assert harness.sql("SELECT * FROM obscore_fake ORDER BY rowid") == before
    assert harness.sql("SELECT count(*) FROM duckdb_tables() "
                       "WHERE table_name LIKE 'obscore_fake%'") == [(1,)]


def test_process_killed_mid_recluster_leaves_the_old_table_intact(harness: Harness) -> None:
    harness.sync()
    before = sorted(harness.sql("SELECT * FROM ivoa.obscore"), key=repr)
    harness.close()
    crash = textwrap.dedent(f"""
        import os
        from pathlib import Path
        from mirror.catalogue import obscore
        from mirror.catalogue.engine import Catalogue
        cat = Catalogue.open(Path({str(harness.mirror.config.catalogue_path)!r}))
        with cat.begin() as conn:
            obscore._rewrite_clustered(conn, "fake")  # new table built, old one dropped
            os._exit(9)
    """)
    done = subprocess.run([sys.executable, "-c", crash], capture_output=True, text=True,
                          timeout=120, env={**os.environ})
    assert done.returncode == 9, done.stderr
    assert sorted(harness.sql("SELECT * FROM ivoa.obscore"), key=repr) == before
    assert harness.sql("SELECT count(*) FROM duckdb_tables() "
                       "WHERE table_name LIKE 'obscore_fake%'") == [(1,)]


def test_hpx_of_a_large_page_is_vectorised() -> None:
    rng = np.random.default_rng(1)
    n = 200_000
    ra, dec = rng.uniform(0, 360, n), np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    got = healpix_index(pa.array(ra), pa.array(dec)).to_numpy()
    want = lonlat_to_healpix(Longitude(ra, u.deg), Latitude(dec, u.deg), HPX_DEPTH)
    assert np.array_equal(got, want.astype(np.int64))
