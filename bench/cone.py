"""Benchmark: 0.5-degree cone searches through mirror's ADQL layer on 10 million ObsCore rows.

A temporary catalogue gets the layout a sync leaves (table `obscore_bench` with `_hpx`, rows
clustered by it, the `ivoa.obscore` view and the local TAP_SCHEMA), built with mirror's own
functions from numpy-drawn rows (positions uniform on the sphere). In the same run and on the
same DuckDB instance (2 threads), for the same random centres, it times:

* mirror: `Runner.query(ADQL)`: translation, HEALPix prefilter, exact test, Arrow result;
* the translation alone;
* the peer from the issue: a full scan with precomputed unit vectors (x*x0 + y*y0 + z*z0 >=
  cos r) over a table in arrival order;
* a full haversine scan over the same table;

checks that all three return the same rows for every centre, and prints the medians with the
ratios against the targets (cone median < 5 ms and >= 15x the dot-product scan; translation
< 1 ms). The exit code is 0 either way.

    python bench/cone.py               # 10,000,000 rows, 50 centres
    python bench/cone.py --rows 1000000 --centres 20   # a smoke check
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mirror.catalogue import engine, obscore  # noqa: E402
from mirror.catalogue.engine import Catalogue, raw  # noqa: E402
from mirror.catalogue.types import ColumnSpec  # noqa: E402

SOURCE, RADIUS, CHUNK = "bench", 0.5, 1_000_000
TARGETS = {"cone_ms": 5.0, "speedup": 15.0, "translate_ms": 1.0}
SPECS = [ColumnSpec("obs_publisher_did"), ColumnSpec("obs_collection"),
         ColumnSpec("dataproduct_type"),
         *(ColumnSpec(n, "double", unit=unit) for n, unit in (
             ("s_ra", "deg"), ("s_dec", "deg"), ("s_fov", "deg"), ("t_min", "d"),
             ("t_max", "d"), ("em_min", "m"), ("em_max", "m")))]


def sky(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions uniform on the sphere, in degrees."""
    return rng.uniform(0, 360, n), np.degrees(np.arcsin(rng.uniform(-1, 1, n)))


def chunk(rng: np.random.Generator, start: int, n: int) -> tuple[pa.Table, pa.Table]:
    """One chunk of ObsCore rows (with `_hpx`) and the peer's rows (with unit vectors)."""
    ra, dec = sky(rng, n)
    ids = pa.array([f"ivo://bench.test/ID?{i:09d}" for i in range(start, start + n)])
    t_min = rng.uniform(52000, 60000, n)
    em_min = rng.uniform(3e-7, 2e-6, n)
    rows = pa.table({
        "obs_publisher_did": ids,
        "obs_collection": pa.array(np.where(rng.random(n) < 0.75, "HARPS", "VHS")),
        "dataproduct_type": pa.array(np.where(rng.random(n) < 0.75, "spectrum", "image")),
        "s_ra": ra, "s_dec": dec, "s_fov": rng.uniform(0.001, 0.2, n),
        "t_min": t_min, "t_max": t_min + rng.uniform(0.001, 0.05, n),
        "em_min": em_min, "em_max": em_min * rng.uniform(1.1, 2.0, n),
        obscore.HPX_COLUMN: obscore.healpix_index(pa.array(ra), pa.array(dec)),
    })
    r, d = np.radians(ra), np.radians(dec)
    peer = pa.table({"obs_publisher_did": ids, "s_ra": ra, "s_dec": dec,
                     "x": np.cos(d) * np.cos(r), "y": np.cos(d) * np.sin(r), "z": np.sin(d)})
    return rows, peer


def build(cat: Catalogue, rows: int, seed: int) -> None:
    """The catalogue a sync of `rows` rows leaves, plus the peer's table `peer_xyz`."""
    rng = np.random.default_rng(seed)
    with cat.begin() as conn:
        obscore.ensure_table(conn, SOURCE, SPECS)
        conn.exec_driver_sql("CREATE TABLE peer_xyz (obs_publisher_did VARCHAR, s_ra DOUBLE, "
                             "s_dec DOUBLE, x DOUBLE, y DOUBLE, z DOUBLE)")
    table = obscore.data_table(SOURCE)
    for start in range(0, rows, CHUNK):
        part, peer = chunk(rng, start, min(CHUNK, rows - start))
        with cat.begin() as conn:
            duck = raw(conn)
            duck.register("_part", part)
            duck.register("_peer", peer)
            conn.exec_driver_sql(f"INSERT INTO {table} ({', '.join(part.column_names)}) "
                                 "SELECT * FROM _part")
            conn.exec_driver_sql("INSERT INTO peer_xyz SELECT * FROM _peer")
            duck.unregister("_part")
            duck.unregister("_peer")
    with cat.begin() as conn:
        obscore.recluster(conn, SOURCE)  # what the end of a large sync does


def median_ms(fn: Callable[[], Any], repeat: int = 1) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--centres", type=int, default=50)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--dir", help="build the catalogue here (default: a temp folder)")
    args = parser.parse_args()
    # the catalogue's connection config, plus the thread count (SET is not for user queries)
    engine.DUCKDB_CONFIG["threads"] = 2
    folder = Path(args.dir or tempfile.mkdtemp(prefix="mirror-cone-"))
    try:
        measure(args, folder)
    finally:
        if not args.dir:
            shutil.rmtree(folder, ignore_errors=True)


def measure(args: argparse.Namespace, folder: Path) -> None:
    from mirror.adql import translate
    from mirror.query import Runner

    t0 = time.perf_counter()
    cat = Catalogue.open(folder / "cone.duckdb")
    build(cat, args.rows, args.seed)
    built = time.perf_counter() - t0
    print(f"built {args.rows:,} rows (clustered by _hpx) in {built:.1f} s under {folder}")

    runner = Runner(cat, timeout=60, maxrec=1_000_000)
    peer = runner.con.cursor()  # a plain connection on the same DuckDB instance
    ra, dec = sky(np.random.default_rng(args.seed + 1), args.centres)
    cone, dot, hav, trans, found = [], [], [], [], []
    cos_r = math.cos(math.radians(RADIUS))
    for c_ra, c_dec in zip(ra.tolist(), dec.tolist(), strict=True):
        adql = (f"SELECT obs_publisher_did FROM ivoa.obscore WHERE CONTAINS(POINT('ICRS', s_ra, "
                f"s_dec), CIRCLE('ICRS', {c_ra!r}, {c_dec!r}, {RADIUS})) = 1")
        runner.query(adql)  # warm: the same plan shape for every centre
        cone.append(median_ms(lambda a=adql: runner.query(a), repeat=3))
        trans.append(median_ms(lambda a=adql: translate(a, runner.tables, maxrec=1_000_001),
                               repeat=5))
        mine = set(runner.query(adql).arrow.column(0).to_pylist())
        x0, y0, z0 = (math.cos(math.radians(c_dec)) * math.cos(math.radians(c_ra)),
                      math.cos(math.radians(c_dec)) * math.sin(math.radians(c_ra)),
                      math.sin(math.radians(c_dec)))
        dot_sql = ("SELECT obs_publisher_did FROM peer_xyz "
                   f"WHERE x * {x0!r} + y * {y0!r} + z * {z0!r} >= {cos_r!r}")
        hav_sql = ("SELECT obs_publisher_did FROM peer_xyz WHERE 2 * asin(sqrt("
                   f"pow(sin(radians(s_dec - {c_dec!r}) / 2), 2) + cos(radians(s_dec)) * "
                   f"cos(radians({c_dec!r})) * pow(sin(radians(s_ra - {c_ra!r}) / 2), 2))) "
                   f"<= radians({RADIUS})")
        dot.append(median_ms(lambda s=dot_sql: peer.execute(s).fetchall()))
        hav.append(median_ms(lambda s=hav_sql: peer.execute(s).fetchall()))
        theirs = {r[0] for r in peer.execute(dot_sql).fetchall()}
        haversine = {r[0] for r in peer.execute(hav_sql).fetchall()}
        found.append((len(mine), mine == theirs == haversine))
    runner.close()
    cat.close()
    report(args, cone, trans, dot, hav, found)


def report(args: argparse.Namespace, cone: list[float], trans: list[float], dot: list[float],
           hav: list[float], found: list[tuple[int, bool]]) -> None:
    m_cone, m_trans = statistics.median(cone), statistics.median(trans)
    m_dot, m_hav = statistics.median(dot), statistics.median(hav)
    same = sum(ok for _, ok in found)
    rows = statistics.median(n for n, _ in found)

    def verdict(ok: bool) -> str:
        return "meets target" if ok else "MISSES target"

    print(f"{args.centres} cones of {RADIUS} deg on {args.rows:,} rows, 2 threads, "
          f"median {rows:.0f} rows per cone")
    print(f"  identical row sets (mirror = dot product = haversine): {same}/{len(found)}")
    print(f"  mirror ADQL cone        {m_cone:8.2f} ms  (target < {TARGETS['cone_ms']} ms: "
          f"{verdict(m_cone < TARGETS['cone_ms'])})")
    print(f"    of which translation  {m_trans:8.3f} ms  (target < {TARGETS['translate_ms']} ms: "
          f"{verdict(m_trans < TARGETS['translate_ms'])})")
    speedup = m_dot / m_cone
    print(f"  dot-product full scan   {m_dot:8.2f} ms  -> mirror is {speedup:.1f}x faster "
          f"(target >= {TARGETS['speedup']}x: {verdict(speedup >= TARGETS['speedup'])})")
    print(f"  haversine full scan     {m_hav:8.2f} ms  -> mirror is {m_hav / m_cone:.1f}x faster")


if __name__ == "__main__":
    main()
