"""Benchmark: data profiles and the schema site on a synthetic ObsCore catalogue (and on DaCHS).

A temporary catalogue gets the layout a sync leaves (`obscore_bench` with `_hpx`, the views and
the local TAP_SCHEMA), filled with the 49-column synthetic ObsCore rows of `_synthobscore`. In
the same run it times:

* mirror: `refresh_profiles`, one aggregate pass per table (count, approx distinct, min, max
  of every column), one sample pass for example values, one pass over `_hpx` for the MOC;
* the peer: the same statistics one query per column and statistic (what a per-column
  profiler issues), on the same DuckDB instance, for the per-source table only;
* the schema site: loading the catalogue through ADQL, checking the examples, writing the
  HTML pages, and the Markdown document.

`--dachs URL` also syncs that TAP service (the test upstream: http://127.0.0.1:8080/tap) into
another temporary catalogue and times its profiles and site. The exit code is 0 either way.

    python bench/schema.py                        # 1,000,000 rows
    python bench/schema.py --rows 100000 --dachs http://127.0.0.1:8080/tap
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _synthobscore import fields, make_table  # noqa: E402

from mirror.catalogue import engine, obscore  # noqa: E402
from mirror.catalogue.engine import Catalogue, raw  # noqa: E402
from mirror.catalogue.types import ColumnSpec  # noqa: E402
from mirror.query import Runner  # noqa: E402
from mirror.schema import load  # noqa: E402
from mirror.schema.examples import checked_examples  # noqa: E402
from mirror.schema.markdown import render  # noqa: E402
from mirror.schema.profiles import refresh_profiles  # noqa: E402
from mirror.schema.site import build_site  # noqa: E402

SOURCE, CHUNK = "bench", 250_000


def build(cat: Catalogue, rows: int) -> None:
    """The catalogue a sync of `rows` synthetic rows leaves."""
    specs = [ColumnSpec(f.name, f.datatype, f.arraysize, f.xtype, f.unit, f.ucd, None,
                        f.description, f.null) for f in fields()]
    with cat.begin() as conn:
        obscore.ensure_table(conn, SOURCE, specs)
    table = obscore.data_table(SOURCE)
    names = [s.name for s in specs]
    for start in range(0, rows, CHUNK):
        part = make_table(min(CHUNK, rows - start), seed=start + 1)
        ra = pc.cast(part.column("s_ra"), pa.float64())
        dec = pc.cast(part.column("s_dec"), pa.float64())
        part = part.append_column(obscore.HPX_COLUMN, obscore.healpix_index(ra, dec))
        # unique publisher DIDs across chunks (each chunk is drawn from its own seed)
        did = pc.binary_join_element_wise(part.column("obs_publisher_did"), f"-{start}", "")
        part = part.set_column(names.index("obs_publisher_did"), "obs_publisher_did", did)
        with cat.begin() as conn:
            duck = raw(conn)
            duck.register("_part", part)
            cols = ", ".join(obscore.q(n) for n in part.column_names)
            conn.exec_driver_sql(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _part")
            duck.unregister("_part")
    with cat.begin() as conn:
        obscore.rebuild_views(conn)


def peer(cat: Catalogue, view: str) -> float:
    """Seconds for the same statistics, one query per column and statistic."""
    started = time.perf_counter()
    with cat.begin() as conn:
        columns = [r[0] for r in conn.exec_driver_sql(
            "SELECT column_name FROM duckdb_columns() WHERE schema_name = 'source_obscore' "
            f"AND table_name = '{SOURCE}'")]
        conn.exec_driver_sql(f"SELECT count(*) FROM {view}").one()
        for c in columns:
            col = obscore.q(c)
            for stat in (f"count({col})", f"approx_count_distinct({col})",
                         f"min({col})::VARCHAR", f"max({col})::VARCHAR"):
                conn.exec_driver_sql(f"SELECT {stat} FROM {view}").one()
            conn.exec_driver_sql(f"SELECT {col}::VARCHAR AS v, count(*) AS n FROM {view} "
                                 f"WHERE {col} IS NOT NULL GROUP BY 1 ORDER BY n DESC "
                                 "LIMIT 5").all()
    return time.perf_counter() - started


def documents(cat: Catalogue, folder: Path) -> dict[str, float]:
    """Seconds to load the catalogue through ADQL, check the examples, write HTML and Markdown."""
    runner = Runner(cat, timeout=120, maxrec=1_000_000)
    times = {}
    t0 = time.perf_counter()
    catalogue = load(runner.query)
    times["load through ADQL"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    examples = checked_examples(runner.query)
    times["examples checked"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    pages = build_site(catalogue, examples, folder / "site")
    times[f"HTML site ({len(pages)} pages)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    (folder / "schema.md").write_text(render(catalogue, examples), encoding="utf-8")
    times["Markdown"] = time.perf_counter() - t0
    runner.close()
    return times


def profile(cat: Catalogue, label: str) -> float:
    t0 = time.perf_counter()
    reports = refresh_profiles(cat)
    total = time.perf_counter() - t0
    for r in reports:
        print(f"  {label}: {r.table:<24} {r.rows:>10,} rows {r.columns:>3} columns "
              f"{r.seconds:7.2f} s")
    print(f"  {label}: all profiles {total:.2f} s")
    return total


def synthetic(rows: int, folder: Path) -> None:
    cat = Catalogue.open(folder / "synth.duckdb")
    t0 = time.perf_counter()
    build(cat, rows)
    print(f"built {rows:,} synthetic rows in {time.perf_counter() - t0:.1f} s")
    profile(cat, "synthetic")
    mine = next(r.seconds for r in refresh_profiles(cat, [f"{SOURCE}.obscore"]))
    theirs = peer(cat, obscore.source_view(SOURCE))
    print(f"  {SOURCE}.obscore: mirror {mine:.2f} s, per-column queries {theirs:.2f} s "
          f"({theirs / mine:.1f}x)")
    for what, seconds in documents(cat, folder).items():
        print(f"  synthetic: {what} {seconds:.2f} s")
    cat.close()


def dachs(url: str, folder: Path) -> None:
    from mirror import Mirror
    from mirror.config import load_config

    config = folder / "dachs.toml"
    config.write_text(f'[catalogue]\npath = "dachs.duckdb"\n[store]\nroot = "store"\n'
                      f'[[source]]\nname = "dachs"\nurl = "{url}"\n', encoding="utf-8")
    with Mirror(load_config(config)) as m:
        t0 = time.perf_counter()
        [report] = m.sync()
        print(f"synced {report.rows:,} rows from {url} in {time.perf_counter() - t0:.1f} s "
              "(profiles included)")
        cat = m.catalogue()
        profile(cat, "dachs")
        for what, seconds in documents(cat, folder / "dachs").items():
            print(f"  dachs: {what} {seconds:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dachs", metavar="URL", help="also sync and profile this TAP service")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    engine.DUCKDB_CONFIG["threads"] = args.threads
    folder = Path(tempfile.mkdtemp(prefix="mirror-schema-"))
    try:
        if args.dachs:
            dachs(args.dachs, folder)
        synthetic(args.rows, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
