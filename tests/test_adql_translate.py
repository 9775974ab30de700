"""ADQL -> DuckDB: translated queries run on an in-memory DuckDB (MACROS loaded) and their rows
are checked against independent computations: astropy separations for cones, a gnomonic
projection plus ray casting for polygons, and hand-computed rows in tests/data/adql/cases.json.
"""

from __future__ import annotations

import ast
import json
import math
from decimal import Decimal
from pathlib import Path

import astropy.units as u
import cdshealpix.nested
import duckdb
import numpy as np
import pyarrow as pa
import pytest
from astropy.coordinates import Latitude, Longitude, SkyCoord

from mirror.adql import HPX_COLUMN, HPX_DEPTH, MACROS, StaticTableMap, TableInfo, translate
from mirror.adql import prefilter as prefilter_module
from mirror.errors import (
    AdqlSyntaxError,
    AdqlTypeError,
    AdqlUnsupportedError,
    UnknownColumnError,
    UnknownTableError,
)

DATA = Path(__file__).parent / "data" / "adql"
CASES = json.loads((DATA / "cases.json").read_text())
OBSCORE = {"obs_id": "VARCHAR", "s_ra": "DOUBLE", "s_dec": "DOUBLE", "s_region": "VARCHAR",
           "em_min": "DOUBLE", "calib_level": "INTEGER", "mirror_source": "VARCHAR",
           HPX_COLUMN: "BIGINT"}
STARS = {"id": "INTEGER", "name": "VARCHAR", "ra": "DOUBLE", "dec": "DOUBLE", "mag": "DOUBLE",
         "n": "INTEGER", "kind": "VARCHAR"}
STAR_ROWS = [(1, "Sirius", 101.3, -16.7, -1.0, 3, "giant"),
             (2, "Vega", 279.2, 38.8, 0.0, 4, "giant"),
             (3, "Rigel A", 78.6, -8.2, -1.5, 2, "giant"),
             (4, "Procyon", 114.8, 5.2, None, 5, "dwarf"),
             (5, "Deneb", 310.4, 45.3, 1.25, 6, None),
             (6, "Rigel", 78.6, -8.2, 0.5, 1, "dwarf"),
             (7, "Altair", 297.7, 8.9, None, 7, None)]
TABLES = StaticTableMap({
    "ivoa.obscore": TableInfo("obscore_syn", tuple(OBSCORE), units={"em_min": "m"},
                              types=OBSCORE),
    "demo.stars": TableInfo("demo_stars", tuple(STARS), types=STARS),
    "demo.kinds": TableInfo('"demo kinds"', ("kind", "label")),
    "TAP_SCHEMA.columns": TableInfo("tap_columns", ("table_name", "column_name", "size")),
})


def cap_points(ra: float, dec: float, radius: float, n: int,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`n` points uniform in a spherical cap (any centre, poles included)."""
    cos_t = rng.uniform(math.cos(math.radians(radius)), 1.0, n)
    phi = rng.uniform(0, 2 * math.pi, n)
    sin_t = np.sqrt(1 - cos_t ** 2)
    local = np.stack([sin_t * np.cos(phi), sin_t * np.sin(phi), cos_t])  # around +z
    c = unit(ra, dec)
    e1 = np.cross([0.0, 0.0, 1.0], c) if abs(c[2]) < 0.99 else np.cross([1.0, 0.0, 0.0], c)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(c, e1)
    xyz = np.outer(e1, local[0]) + np.outer(e2, local[1]) + np.outer(c, local[2])
    return lonlat(xyz)


def unit(ra: float, dec: float) -> np.ndarray:
    r, d = math.radians(ra), math.radians(dec)
    return np.array([math.cos(d) * math.cos(r), math.cos(d) * math.sin(r), math.sin(d)])


def lonlat(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ra = np.degrees(np.arctan2(xyz[1], xyz[0])) % 360
    dec = np.degrees(np.arcsin(np.clip(xyz[2] / np.linalg.norm(xyz, axis=0), -1, 1)))
    return ra, dec


CENTRES = [(0.0, 0.0), (359.9, 10.0), (0.05, -30.0), (180.0, 89.9), (45.0, -89.95),
           (10.5, -20.25), (270.0, 60.0), (123.4, 41.81)]


def synthetic_obscore(rng: np.random.Generator) -> pa.Table:
    ra_parts, dec_parts = [rng.uniform(0, 360, 6000)], [np.degrees(np.arcsin(rng.uniform(-1, 1,
                                                                                      6000)))]
    for ra, dec in CENTRES:
        for radius, n in ((3.0, 1000), (0.02, 150)):
            r, d = cap_points(ra, dec, radius, n, rng)
            ra_parts.append(r)
            dec_parts.append(d)
    # exact HEALPix and coordinate boundaries, the poles, RA 0/360
    edge_ra = np.array([0.0, 45.0, 90.0, 135.0, 180.0, 270.0, 315.0, 0.0, 0.0, 359.999999])
    edge_dec = np.array([0.0, 41.8103148957786, -41.8103148957786, 90.0, -90.0, 0.0, 66.0,
                         89.999999, -89.999999, 0.0])
    ra_parts.append(edge_ra)
    dec_parts.append(edge_dec)
    ra, dec = np.concatenate(ra_parts), np.concatenate(dec_parts)
    hpx = cdshealpix.nested.lonlat_to_healpix(Longitude(ra, u.deg), Latitude(dec, u.deg),
                                              HPX_DEPTH)
    regions = [footprint(a, b, i, rng) for i, (a, b) in enumerate(zip(ra, dec, strict=True))]
    n = len(ra)
    return pa.table({
        "obs_id": [f"o{i:06d}" for i in range(n)], "s_ra": ra, "s_dec": dec,
        "s_region": regions, "em_min": rng.uniform(3e-7, 1e-6, n),
        "calib_level": rng.integers(0, 4, n).astype(np.int32),
        "mirror_source": ["syn"] * n, HPX_COLUMN: hpx.astype(np.int64)})


def footprint(ra: float, dec: float, i: int, rng: np.random.Generator) -> str | None:
    """An s_region as services write it: STC-S polygons mostly, DALI, circles, NULL."""
    if i % 23 == 0:
        return None
    half = rng.uniform(0.005, 0.3)
    if i % 7 == 0:
        return f"Circle ICRS {ra:.10f} {dec:.10f} {half:.6f}"
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * math.tan(math.radians(half))
    angle = rng.uniform(0, math.pi)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    verts = tangent_to_sky(ra, dec, corners @ rot.T)
    numbers = " ".join(f"{a:.10f} {b:.10f}" for a, b in verts)
    if i % 5 == 0:
        return numbers  # DALI polygon
    if i % 11 == 0:
        return f"Polygon ICRS BARYCENTER {numbers} {verts[0][0]:.10f} {verts[0][1]:.10f}"
    return f"Polygon ICRS {numbers}"


def tangent_to_sky(ra: float, dec: float, xy: np.ndarray) -> list[tuple[float, float]]:
    c = unit(ra, dec)
    e1 = np.cross([0.0, 0.0, 1.0], c) if abs(c[2]) < 0.99 else np.cross([1.0, 0.0, 0.0], c)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(c, e1)
    xyz = np.outer(c, np.ones(len(xy))) + np.outer(e1, xy[:, 0]) + np.outer(e2, xy[:, 1])
    lon, lat = lonlat(xyz)
    return list(zip(lon.tolist(), lat.tolist(), strict=True))


@pytest.fixture(scope="module")
def con() -> duckdb.DuckDBPyConnection:
    db = duckdb.connect(config={"enable_external_access": False})
    for macro in MACROS:
        db.execute(macro)
    db.register("syn", synthetic_obscore(np.random.default_rng(20261125)))
    db.execute("CREATE TABLE obscore_syn AS SELECT * FROM syn")
    db.unregister("syn")
    db.execute(f"CREATE TABLE demo_stars ({', '.join(f'{k} {v}' for k, v in STARS.items())})")
    db.executemany("INSERT INTO demo_stars VALUES (?, ?, ?, ?, ?, ?, ?)", STAR_ROWS)
    db.execute('CREATE TABLE "demo kinds" (kind VARCHAR, label VARCHAR)')
    db.execute("""INSERT INTO "demo kinds" VALUES ('giant', 'big'), ('dwarf', 'small'),
                  ('pulsar', 'dense')""")
    db.execute("CREATE TABLE tap_columns (table_name VARCHAR, column_name VARCHAR, size INT)")
    return db


@pytest.fixture(scope="module")
def positions(con: duckdb.DuckDBPyConnection) -> tuple[list[str], SkyCoord]:
    ids, ra, dec = zip(*con.execute("SELECT obs_id, s_ra, s_dec FROM obscore_syn").fetchall(),
                       strict=True)
    return list(ids), SkyCoord(np.array(ra) * u.deg, np.array(dec) * u.deg)


def run(con: duckdb.DuckDBPyConnection, adql: str, **kw: object) -> list[tuple]:
    return con.execute(translate(adql, TABLES, **kw).sql).fetchall()  # type: ignore[arg-type]


def ids_of(con: duckdb.DuckDBPyConnection, adql: str, **kw: object) -> set[str]:
    return {r[0] for r in run(con, adql, **kw)}


# -- data-driven cases ----------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_case(con: duckdb.DuckDBPyConnection, case: dict) -> None:
    translation = translate(case["adql"], TABLES)
    got = [list(row) for row in con.execute(translation.sql).fetchall()]
    want = case["rows"]
    if not case.get("ordered"):
        got, want = sorted(got, key=repr), sorted(want, key=repr)
    assert len(got) == len(want), (translation.sql, got)
    for g, w in zip(got, want, strict=True):
        assert len(g) == len(w) and all(same(a, b) for a, b in zip(g, w, strict=True)), \
            (translation.sql, got, want)
    if "columns" in case:
        assert translation.columns == case["columns"]


def same(got: object, want: object) -> bool:
    if isinstance(got, (int, float, Decimal)) and isinstance(want, (int, float)) \
            and not isinstance(got, bool):
        return math.isclose(float(got), want, rel_tol=1e-9, abs_tol=1e-9)
    return got == want


# -- cones and polygons against independent computations ------------------------------------


CONES = [(ra, dec, r) for ra, dec in CENTRES for r in (0.01, 0.5, 2.5)] + [(0.0, 90.0, 1.0)]


@pytest.mark.parametrize(("ra", "dec", "radius"), CONES)
def test_cone_matches_astropy(con: duckdb.DuckDBPyConnection, positions: tuple,
                              ra: float, dec: float, radius: float) -> None:
    ids, coords = positions
    sep = coords.separation(SkyCoord(ra * u.deg, dec * u.deg)).deg
    inside = {i for i, s in zip(ids, sep, strict=True) if s < radius}
    unsure = {i for i, s in zip(ids, sep, strict=True) if abs(s - radius) < 1e-9}
    queries = [
        f"CONTAINS(POINT('ICRS', s_ra, s_dec), CIRCLE('ICRS', {ra}, {dec}, {radius})) = 1",
        f"1 = INTERSECTS(CIRCLE({ra}, {dec}, {radius}), POINT(s_ra, s_dec))",
        f"DISTANCE(POINT(s_ra, s_dec), POINT({ra}, {dec})) <= {radius}",
        f"{radius} > DISTANCE(s_ra, s_dec, {ra}, {dec})",
    ]
    for where in queries:
        got = ids_of(con, f"SELECT obs_id FROM ivoa.obscore WHERE {where}")
        assert got - unsure == inside - unsure, where
    assert inside, "the cone should hold some positions"


def random_polygon(rng: np.random.Generator, concave: bool) -> list[tuple[float, float]]:
    ra, dec = rng.uniform(0, 360), float(np.degrees(np.arcsin(rng.uniform(-1, 1))))
    if rng.uniform() < 0.4:
        ra, dec = CENTRES[int(rng.integers(len(CENTRES)))]
    size = math.tan(math.radians(rng.uniform(0.05, 4.0)))
    n = 7 if concave else 5
    angles = np.sort(rng.uniform(0, 2 * math.pi, n))
    radii = size * (np.where(np.arange(n) % 2 == 0, 1.0, 0.35) if concave else np.ones(n))
    xy = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    return tangent_to_sky(ra, dec, xy)


def inside_polygon(coords: SkyCoord, verts: list[tuple[float, float]]) -> tuple[np.ndarray,
                                                                               np.ndarray]:
    """Great-circle polygons are straight in a gnomonic projection: ray casting there.
    Returns (inside, unsure) masks; unsure = within 1e-9 of an edge."""
    pts = np.stack([coords.cartesian.x.value, coords.cartesian.y.value,
                    coords.cartesian.z.value])
    v = np.stack([unit(a, b) for a, b in verts], axis=1)
    c = v.sum(axis=1)
    c /= np.linalg.norm(c)
    e1 = np.cross([0.0, 0.0, 1.0], c) if abs(c[2]) < 0.99 else np.cross([1.0, 0.0, 0.0], c)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(c, e1)
    front = c @ pts > 1e-6
    px, py = (e1 @ pts) / np.where(front, c @ pts, 1), (e2 @ pts) / np.where(front, c @ pts, 1)
    vx, vy = (e1 @ v) / (c @ v), (e2 @ v) / (c @ v)
    inside = np.zeros(pts.shape[1], bool)
    unsure = np.zeros(pts.shape[1], bool)
    for k in range(len(verts)):
        x1, y1, x2, y2 = vx[k], vy[k], vx[(k + 1) % len(verts)], vy[(k + 1) % len(verts)]
        crosses = (y1 > py) != (y2 > py)
        xint = x1 + (py - y1) * (x2 - x1) / (y2 - y1 if y2 != y1 else 1e-300)
        inside ^= crosses & (px < xint)
        t = np.clip(((px - x1) * (x2 - x1) + (py - y1) * (y2 - y1))
                    / ((x2 - x1) ** 2 + (y2 - y1) ** 2), 0, 1)
        unsure |= np.hypot(px - (x1 + t * (x2 - x1)), py - (y1 + t * (y2 - y1))) < 1e-9
    return inside & front, unsure & front


@pytest.mark.parametrize("seed", range(12))
def test_polygon_matches_brute_force(con: duckdb.DuckDBPyConnection, positions: tuple,
                                     seed: int) -> None:
    ids, coords = positions
    rng = np.random.default_rng(seed)
    verts = random_polygon(rng, concave=seed % 2 == 1)
    inside, unsure = inside_polygon(coords, verts)
    want = {i for i, m in zip(ids, inside & ~unsure, strict=True) if m}
    skip = {i for i, m in zip(ids, unsure, strict=True) if m}
    numbers = ", ".join(f"{a!r}, {b!r}" for a, b in verts)
    stcs = "Polygon ICRS " + " ".join(f"{a!r} {b!r}" for a, b in verts)
    for shape in (f"POLYGON('ICRS', {numbers})", f"REGION('{stcs}')"):
        got = ids_of(con, f"SELECT obs_id FROM ivoa.obscore WHERE "
                          f"CONTAINS(POINT(s_ra, s_dec), {shape}) = 1")
        assert got - skip == want, shape


def test_prefilter_changes_no_result(con: duckdb.DuckDBPyConnection) -> None:
    """Thousands of positions, hundreds of random cones and polygons (poles, RA 0/360)."""
    rng = np.random.default_rng(7)
    checked = nonempty = 0
    for k in range(240):
        if k % 3 == 2:
            verts = random_polygon(rng, concave=k % 2 == 0)
            shape = "POLYGON(" + ", ".join(f"{a!r}, {b!r}" for a, b in verts) + ")"
            where = f"CONTAINS(POINT(s_ra, s_dec), {shape}) = 1"
        else:
            ra, dec = CENTRES[k % len(CENTRES)] if k % 2 else (
                rng.uniform(0, 360), float(np.degrees(np.arcsin(rng.uniform(-1, 1)))))
            ra += rng.normal(0, 1)
            dec = float(np.clip(dec + rng.normal(0, 1), -90, 90))
            radius = float(10 ** rng.uniform(-3, 1.3))
            where = (f"CONTAINS(POINT(s_ra, s_dec), CIRCLE({ra!r}, {dec!r}, {radius!r})) = 1"
                     if k % 2 else f"DISTANCE(POINT({ra!r}, {dec!r}), POINT(s_ra, s_dec)) "
                                   f"< {radius!r}")
        adql = f"SELECT obs_id FROM ivoa.obscore WHERE {where}"
        fast = translate(adql, TABLES)
        assert f"{HPX_COLUMN} BETWEEN" in fast.sql
        with_prefilter = {r[0] for r in con.execute(fast.sql).fetchall()}
        without = ids_of(con, adql, prefilter_spatial=False)
        assert with_prefilter == without, adql
        checked += 1
        nonempty += bool(without)
    assert checked == 240 and nonempty > 100


def test_prefilter_only_where_it_is_exact() -> None:
    def sql(where: str) -> str:
        return translate(f"SELECT obs_id FROM ivoa.obscore AS o WHERE {where}", TABLES).sql

    assert HPX_COLUMN not in sql("CONTAINS(POINT(s_ra, s_dec), CIRCLE(1, 2, 3)) = 0")
    assert HPX_COLUMN not in sql("CONTAINS(POINT(s_ra, s_dec), CIRCLE(1, 2, 3)) = 1 OR "
                                 "calib_level = 2")
    assert HPX_COLUMN not in sql("CONTAINS(POINT(s_dec, s_ra), CIRCLE(1, 2, 3)) = 1")
    assert HPX_COLUMN not in sql("DISTANCE(POINT(s_ra, s_dec), POINT(1, 2)) > 3")
    assert HPX_COLUMN not in sql("CONTAINS(POINT(s_ra, s_dec), CIRCLE(s_ra, 2, 3)) = 1")
    assert "o._hpx BETWEEN" in sql("o.calib_level = 2 AND "
                                   "CONTAINS(POINT(o.s_ra, o.s_dec), CIRCLE(1, 2, 1./60)) = 1")
    assert "_hpx BETWEEN" in sql("INTERSECTS(POINT(s_ra, s_dec), BOX(1, 2, 3, 4)) = 1")


def test_a_cone_of_radius_zero_or_a_hair_is_prefiltered_and_exact(
        con: duckdb.DuckDBPyConnection) -> None:
    ra, dec = con.execute("SELECT s_ra, s_dec FROM obscore_syn "
                          "WHERE s_ra IS NOT NULL LIMIT 1").fetchone()
    for radius in (0.0, 1e-9, 1e-7, 2e-7):  # cdshealpix panicked below ~2e-7 degree
        adql = (f"SELECT obs_id FROM ivoa.obscore WHERE "
                f"CONTAINS(POINT(s_ra, s_dec), CIRCLE({ra!r}, {dec!r}, {radius!r})) = 1")
        fast = translate(adql, TABLES)
        assert f"{HPX_COLUMN} BETWEEN" in fast.sql
        assert {r[0] for r in con.execute(fast.sql).fetchall()} == \
            ids_of(con, adql, prefilter_spatial=False) != set()


def test_prefilter_public_api_path_gives_the_same_ranges(
        monkeypatch: pytest.MonkeyPatch) -> None:
    fast = prefilter_module.shape_ranges([10.0, -20.0, 0.5])
    monkeypatch.setattr(prefilter_module, "_native_cone_search", lambda: None)
    assert prefilter_module.shape_ranges([10.0, -20.0, 0.5]) == fast
    assert fast and len(fast) <= prefilter_module.MAX_RANGES


# -- s_region as services publish it ---------------------------------------------------------


def test_intersects_s_region_matches_sampled_edges(con: duckdb.DuckDBPyConnection) -> None:
    ra, dec, radius = 10.5, -20.25, 0.4
    got = ids_of(con, f"SELECT obs_id FROM ivoa.obscore WHERE "
                      f"INTERSECTS(CIRCLE('ICRS', {ra}, {dec}, {radius}), s_region) = 1")
    rows = con.execute("SELECT obs_id, s_region FROM obscore_syn WHERE s_region IS NOT NULL "
                       f"AND adql_distance(s_ra, s_dec, {ra}, {dec}) < 2").fetchall()
    centre = SkyCoord(ra * u.deg, dec * u.deg)
    want, unsure = set(), set()
    for obs_id, region in rows:
        nearest = region_distance(region, centre)
        if abs(nearest - radius) < 1e-4:
            unsure.add(obs_id)
        elif nearest < radius:
            want.add(obs_id)
    assert got - unsure == want - unsure and len(want) > 20


def region_distance(region: str, centre: SkyCoord) -> float:
    """Distance (deg) from `centre` to an s_region: 0 inside, else to its sampled boundary."""
    words = region.split()
    nums = [float(w) for w in words if w[0].isdigit() or w[0] == "-"]
    if words[0] == "Circle":
        return max(0.0, centre.separation(SkyCoord(nums[0] * u.deg, nums[1] * u.deg)).deg
                   - nums[2])
    verts = list(zip(nums[0::2], nums[1::2], strict=True))
    if len(verts) > 4 and verts[0] == verts[-1]:
        verts = verts[:-1]
    inside, _ = inside_polygon(centre.reshape(1), verts)
    if inside[0]:
        return 0.0
    t = np.linspace(0, 1, 400)
    samples = []
    for k in range(len(verts)):
        a, b = unit(*verts[k]), unit(*verts[(k + 1) % len(verts)])
        samples.append(np.outer(a, 1 - t) + np.outer(b, t))
    xyz = np.concatenate(samples, axis=1)
    lon, lat = lonlat(xyz)
    return float(centre.separation(SkyCoord(lon * u.deg, lat * u.deg)).deg.min())


@pytest.mark.parametrize(("text", "values"), [
    ("Polygon ICRS 71.95 -42.59 71.95 -42.58 72.0 -42.58",
     [71.95, -42.59, 71.95, -42.58, 72.0, -42.58]),
    ("polygon icrs BARYCENTER 1 2 3 4 5 6 1 2", [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
    ("1.5 2.5 3 4 5 6", [1.5, 2.5, 3.0, 4.0, 5.0, 6.0]),
    ("Circle ICRS 10 20 0.5", [10.0, 20.0, 0.5]),
    ("Position GALACTIC 10 20", [10.0, 20.0]),
    ("Box ICRS 10 20 2 4", [9.0, 18.0, 11.0, 18.0, 11.0, 22.0, 9.0, 22.0]),
    ("Union ICRS (Circle 1 2 3 Circle 4 5 6)", None),
    ("Polygon ICRS 1 2 3 4 5 6 Polygon ICRS 7 8 9 10 11 12", None),
    ("Not (Circle ICRS 1 2 3)", None), ("Polygon ICRS 1 2 3", None), ("", None),
])
def test_region_text_is_read_like_services_write_it(con: duckdb.DuckDBPyConnection,
                                                    text: str, values: list | None) -> None:
    assert con.execute("SELECT adql_region(?)", [text]).fetchone()[0] == values


def test_healpix_macro_matches_cdshealpix(con: duckdb.DuckDBPyConnection) -> None:
    rows = con.execute(f"SELECT s_ra, s_dec, {HPX_COLUMN}, adql_healpix(29, s_ra, s_dec), "
                       "adql_healpix(6, s_ra, s_dec) FROM obscore_syn").fetchall()
    ra, dec, stored, mine29, mine6 = (np.array(c) for c in zip(*rows, strict=True))
    depth6 = cdshealpix.nested.lonlat_to_healpix(Longitude(ra, u.deg), Latitude(dec, u.deg), 6)
    assert np.mean(mine29 == stored) > 0.999 and np.mean(mine6 == depth6) > 0.999
    assert np.all((mine29 >> 46) == (stored >> 46)) or np.mean(mine6 == depth6) > 0.999


# -- limits, names, units --------------------------------------------------------------------


def test_limit_is_top_and_maxrec(con: duckdb.DuckDBPyConnection) -> None:
    q = "SELECT obs_id FROM ivoa.obscore"
    assert translate("SELECT TOP 5 obs_id FROM ivoa.obscore", TABLES).limit == 5
    assert translate(q, TABLES).limit is None
    t = translate(q, TABLES, maxrec=10)
    assert t.limit == 10 and len(con.execute(t.sql).fetchall()) == 11  # overflow visible
    t = translate("SELECT TOP 3 obs_id FROM ivoa.obscore", TABLES, maxrec=10)
    assert t.limit == 3 and len(con.execute(t.sql).fetchall()) == 3  # no overflow
    t = translate("SELECT TOP 50 obs_id FROM ivoa.obscore ORDER BY obs_id OFFSET 2", TABLES,
                  maxrec=10)
    rows = con.execute(t.sql).fetchall()
    assert t.limit == 10 and len(rows) == 11 and rows[0][0] == "o000002"
    t = translate("SELECT obs_id FROM ivoa.obscore UNION SELECT obs_id FROM ivoa.obscore",
                  TABLES, maxrec=4)
    assert t.limit == 4 and len(con.execute(t.sql).fetchall()) == 5


def test_columns_tables_and_hidden_healpix(con: duckdb.DuckDBPyConnection) -> None:
    t = translate("SELECT * FROM ivoa.obscore WHERE obs_id = 'o000001'", TABLES)
    assert HPX_COLUMN not in t.columns and t.columns == [c for c in OBSCORE if c != HPX_COLUMN]
    assert len(con.execute(t.sql).fetchone()) == len(t.columns)
    t = translate("SELECT o.*, k.label FROM ivoa.obscore AS o, demo.kinds AS k "
                  "WHERE o.obs_id = 'o000001' AND k.kind = 'giant'", TABLES)
    assert t.columns[-1] == "label" and len(con.execute(t.sql).fetchone()) == len(t.columns)
    assert t.tables == ["obscore_syn", '"demo kinds"']
    t = translate("SELECT COUNT(*), DISTANCE(POINT(s_ra, s_dec), POINT(1, 2)) AS d, "
                  "POINT(s_ra, s_dec) FROM ivoa.obscore GROUP BY s_ra, s_dec", TABLES)
    assert t.columns == ["count", "d", "point"] and t.geometry == {"point": "point"}
    t = translate('SELECT column_name, "size" FROM TAP_SCHEMA.columns', TABLES)
    assert t.columns == ["column_name", "size"] and t.tables == ["tap_columns"]


def test_in_unit_converts_with_the_column_unit(con: duckdb.DuckDBPyConnection) -> None:
    rows = run(con, "SELECT em_min, IN_UNIT(em_min, 'nm'), IN_UNIT(em_min * 2, 'um') "
                    "FROM ivoa.obscore WHERE obs_id = 'o000003'")
    em, nm, twice = rows[0]
    assert nm == pytest.approx(em * 1e9, rel=1e-15) and twice == pytest.approx(em * 2e6)
    with pytest.raises(AdqlTypeError, match="cannot convert"):
        translate("SELECT IN_UNIT(em_min, 'deg') FROM ivoa.obscore", TABLES)
    with pytest.raises(AdqlTypeError, match="no unit"):
        translate("SELECT IN_UNIT(s_ra, 'rad') FROM ivoa.obscore", TABLES)
    with pytest.raises(AdqlTypeError, match="not understood"):
        translate("SELECT IN_UNIT(em_min, 'furlongs per fortnight') FROM ivoa.obscore", TABLES)


# -- errors that help ------------------------------------------------------------------------


def test_syntax_error_shows_line_column_and_caret() -> None:
    with pytest.raises(AdqlSyntaxError) as err:
        translate("SELECT obs_id\nFROM ivoa.obscore\nWHERE (s_ra > 2", TABLES)
    e = err.value
    assert (e.line, e.column) == (3, 15) and e.text == "2"
    assert str(e).splitlines()[1:3] == ["  WHERE (s_ra > 2", "                ^"]
    assert "parenthesis" in (e.hint or "")


def test_reserved_word_error_points_at_the_word() -> None:
    with pytest.raises(AdqlSyntaxError) as err:
        translate("SELECT obs_id, size\n  FROM ivoa.obscore", TABLES)
    assert (err.value.line, err.value.column, err.value.text) == (1, 16, "size")
    assert '"size"' in (err.value.hint or "")


@pytest.mark.parametrize(("adql", "suggestion"), [
    ("SELECT obsid FROM ivoa.obscore", "obs_id"),
    ("SELECT o.s_raa FROM ivoa.obscore AS o", "s_ra"),
    ("SELECT x.s_ra FROM ivoa.obscore AS o", "o"),
])
def test_unknown_column_suggests_close_names(adql: str, suggestion: str) -> None:
    with pytest.raises(UnknownColumnError) as err:
        translate(adql, TABLES)
    assert suggestion in err.value.suggestions and suggestion in (err.value.hint or "")


def test_unknown_table_suggests_close_names() -> None:
    with pytest.raises(UnknownTableError) as err:
        translate("SELECT * FROM ivoa.obscor", TABLES)
    assert err.value.suggestions == ("ivoa.obscore",) and "ivoa.obscore" in str(err.value)


@pytest.mark.parametrize(("adql", "construct"), [
    ("SELECT SUBSTRING(obs_id FROM 1 FOR 2) FROM ivoa.obscore", "SUBSTRING"),
    ("SELECT row_number() OVER (ORDER BY obs_id) FROM ivoa.obscore", "row_number"),
    ("SELECT COUNT(*) OVER (ORDER BY obs_id) FROM ivoa.obscore", "window"),
    ("SELECT * FROM ivoa.obscore WHERE 1 = CONTAINS(POINT(1, 2), REGION('Union ICRS "
     "(Circle 1 2 3 Circle 4 5 6)'))", "REGION"),
    ("WITH RECURSIVE a AS (SELECT 1 AS x FROM ivoa.obscore) SELECT x FROM a", "RECURSIVE"),
    ("SELECT obs_id FROM ivoa.obscore AS o ASOF JOIN demo.stars AS s ON o.s_ra >= s.ra",
     "ASOF"),
])
def test_unsupported_constructs_name_themselves(adql: str, construct: str) -> None:
    with pytest.raises(AdqlUnsupportedError) as err:
        translate(adql, TABLES)
    assert construct.lower() in str(err.value).lower()


@pytest.mark.parametrize("adql", [
    "SELECT obs_id FROM ivoa.obscore LIMIT 5",
    "SELECT obs_id FROM ivoa.obscore WHERE CONTAINS(POINT(s_ra, s_dec), CIRCLE(1, 2, 3))",
    "SELECT obs_id FROM ivoa.obscore WHERE CIRCLE('ICRS', 1, 2) = s_region",
    "SELECT obs_id FROM ivoa.obscore WHERE POLYGON(1, 2, 3, 4, 5) = s_region",
    "SELECT CAST(obs_id AS TEXT) FROM ivoa.obscore",
    "SELECT obs_id FROM ivoa.obscore JOIN demo.stars",
    "SELECT DISTANCE(POINT(1, 2), 3) FROM ivoa.obscore",
])
def test_not_adql_is_a_syntax_error(adql: str) -> None:
    with pytest.raises(AdqlSyntaxError):
        translate(adql, TABLES)


# -- the package stays pure ------------------------------------------------------------------


def test_adql_imports_only_errors_and_its_libraries() -> None:
    allowed = {"mirror.errors", "sqlglot", "numpy", "cdshealpix", "astropy", "__future__"}
    package = Path(__file__).resolve().parents[1] / "mirror" / "adql"
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name if name.startswith("mirror.") else name.split(".")[0]
                assert top in allowed or top in STDLIB, f"{path.name} imports {name}"


STDLIB = {"collections", "dataclasses", "difflib", "functools", "math", "re", "threading",
          "typing"}
