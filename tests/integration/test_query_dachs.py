"""Differential: the same ADQL to the DaCHS upstream and to the local mirror gives the same rows.

DaCHS evaluates geometry with pgSphere, the mirror with its own macros and a HEALPix prefilter,
so agreement here is agreement of two independent implementations. Every query is chosen to
match fewer rows than DaCHS' hard limit (1000), and the test checks that it did.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import pyvo
from astropy.table import Table
from fakes import write_config

from mirror import Mirror

pytestmark = pytest.mark.integration
HARD_LIMIT = 1000
ID = "obs_publisher_did"
# the mirror's own listed column of ivoa.obscore (_hpx is queryable but not listed: no ADQL name)
INTERNAL = ("mirror_source",)


@pytest.fixture(scope="module")
def local(upstream: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mirror]:
    """A mirror of the upstream, synced once for the module; queried read-only."""
    tmp = tmp_path_factory.mktemp("query_dachs")
    cfg = write_config(tmp, {"name": "dachs", "url": upstream}, catalogue="data/m.duckdb")
    with Mirror.open(cfg) as m:
        [report] = m.sync()
        assert report.status == "ok", report.errors
    with Mirror.open(cfg) as m:
        yield m


@pytest.fixture(scope="module")
def service(upstream: str) -> pyvo.dal.TAPService:
    return pyvo.dal.TAPService(upstream)


def norm(value: Any) -> Any:
    """A value as both sides can agree on: floats to 9 significant digits, NULLs as None."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or value is np.ma.masked:
        return None
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, float):
        return None if math.isnan(value) else float(f"{value:.9g}")
    return value


def rows(table: Table, columns: list[str]) -> list[tuple[Any, ...]]:
    return [tuple(norm(row[c]) for c in columns) for row in table]


def both(service: pyvo.dal.TAPService, local: Mirror, adql: str) -> tuple[list[tuple[Any, ...]],
                                                                          list[tuple[Any, ...]]]:
    """The rows of `adql` from DaCHS and from the mirror, in the order each gave them."""
    theirs = service.run_sync(adql, maxrec=HARD_LIMIT).to_table()
    assert 0 < len(theirs) < HARD_LIMIT, f"choose a query with 1..999 rows: {adql}"
    ours = local.query(adql, maxrec=HARD_LIMIT).table
    columns = [c.lower() for c in theirs.colnames]
    assert [c.lower() for c in ours.colnames] == columns
    ours.rename_columns(ours.colnames, columns)
    theirs.rename_columns(theirs.colnames, columns)
    return rows(theirs, columns), rows(ours, columns)


def assert_same_rows(service: pyvo.dal.TAPService, local: Mirror, adql: str) -> None:
    theirs, ours = both(service, local, adql)
    assert len(ours) == len(theirs) and set(ours) == set(theirs)


POSITION = "POINT('ICRS', s_ra, s_dec)"


@pytest.mark.parametrize("region", [
    "CIRCLE('ICRS', 251.05, 16.73, 1)",  # the most observed HARPS star
    "CIRCLE('ICRS', 200, -30, 20)",
    "CIRCLE('ICRS', 0.5, -5, 8)",  # across RA = 0
    "CIRCLE('ICRS', 120, -89.5, 5)",  # around the pole
], ids=["star", "wide", "ra0", "pole"])
def test_cone_search(service: pyvo.dal.TAPService, local: Mirror, region: str) -> None:
    assert_same_rows(service, local, f"SELECT {ID}, s_ra, s_dec FROM ivoa.obscore "
                                     f"WHERE CONTAINS({POSITION}, {region}) = 1")


def test_points_in_a_polygon(service: pyvo.dal.TAPService, local: Mirror) -> None:
    assert_same_rows(service, local, f"SELECT {ID} FROM ivoa.obscore WHERE CONTAINS({POSITION}, "
                                     "POLYGON('ICRS', 150, -20, 170, -20, 170, -5, 150, -5)) = 1")


@pytest.mark.parametrize("region", [
    "CIRCLE('ICRS', 232.7, -35.5, 3)",
    "POLYGON('ICRS', 150, -20, 170, -20, 170, -5, 150, -5)",
    "POINT('ICRS', 232.81, -35.963)",
], ids=["circle", "polygon", "point"])
def test_footprints_intersecting_a_region(service: pyvo.dal.TAPService, local: Mirror,
                                          region: str) -> None:
    assert_same_rows(service, local, f"SELECT {ID}, obs_collection FROM ivoa.obscore "
                                     f"WHERE INTERSECTS(s_region, {region}) = 1")


def test_wavelength_coverage(service: pyvo.dal.TAPService, local: Mirror) -> None:
    assert_same_rows(service, local, f"SELECT {ID}, em_min, em_max FROM ivoa.obscore "
                                     "WHERE em_min <= 1.25e-6 AND em_max >= 1.25e-6")


def test_time_range(service: pyvo.dal.TAPService, local: Mirror) -> None:
    assert_same_rows(service, local, f"SELECT {ID}, t_min, t_max FROM ivoa.obscore "
                                     "WHERE t_min >= 55000 AND t_max <= 55500")


def test_aggregates_per_collection(service: pyvo.dal.TAPService, local: Mirror) -> None:
    assert_same_rows(service, local, "SELECT obs_collection, COUNT(*) AS n, "
                                     "AVG(t_exptime) AS mean_exptime, MIN(s_dec) AS min_dec "
                                     "FROM ivoa.obscore GROUP BY obs_collection")


def test_join_of_tap_schema_tables_and_columns(service: pyvo.dal.TAPService,
                                               local: Mirror) -> None:
    theirs, ours = both(service, local, (
        "SELECT t.table_name, c.column_name, c.datatype, c.unit, c.ucd FROM TAP_SCHEMA.tables "
        "AS t JOIN TAP_SCHEMA.columns AS c ON c.table_name = t.table_name "
        "WHERE t.table_name = 'ivoa.obscore'"))
    assert {r for r in ours if r[1] not in INTERNAL} == set(theirs)
    assert {r[1] for r in ours if r[1] in INTERNAL} == set(INTERNAL)


def test_nearest_rows_by_distance(service: pyvo.dal.TAPService, local: Mirror) -> None:
    theirs, ours = both(service, local, (
        f"SELECT TOP 10 {ID}, DISTANCE({POSITION}, POINT('ICRS', 100, 30)) AS d "
        "FROM ivoa.obscore ORDER BY d"))
    assert ours == theirs, "same rows in the same order"


def test_distance_in_a_condition(service: pyvo.dal.TAPService, local: Mirror) -> None:
    assert_same_rows(service, local, f"SELECT {ID} FROM ivoa.obscore "
                                     f"WHERE DISTANCE({POSITION}, POINT('ICRS', 162.1, -53.9)) < 2")


def test_local_result_is_capped_at_maxrec(local: Mirror) -> None:
    result = local.query(f"SELECT {ID} FROM ivoa.obscore", maxrec=100)
    assert len(result) == 100 and result.overflow
