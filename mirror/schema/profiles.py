"""Data profiles: what the local rows hold, per column and per table, computed in bulk SQL.

Per table, one aggregate pass over every column (count, approximate distinct count, min, max),
one pass over a sample for example values (the most frequent ones), one over the HEALPix index
`_hpx` for the sky coverage (a MOC, mocpy), and t_min/t_max from the first pass. Runs in the
writer process (after each sync, or `mirror schema --profile`); readers see the results as
`mirror.column_profiles` and `mirror.table_profiles`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import astropy.units as u
import numpy as np
import sqlalchemy as sa
from astropy.time import Time

from mirror.catalogue.engine import Catalogue, raw, utcnow
from mirror.catalogue.models import column_profiles, table_profiles
from mirror.catalogue.obscore import HPX_COLUMN, HPX_DEPTH, SOURCE_COLUMN, q
from mirror.query.tables import local_name
from mirror.schema.model import bare

log = logging.getLogger("mirror")
SAMPLE_ROWS = 5_000       # rows sampled for example values
EXAMPLES = 5
TEXT_MAX = 120            # longer values (polygons, long descriptions) are cut in the profile
MOC_DEPTH = 10            # ~3.4 arcmin cells; coarsened while the serialisation is too long
MOC_MAX_CHARS = 100_000
UNION = "ivoa.obscore"
# types with no useful order or no text form: counted, never min/max'ed
_UNORDERED = ("BLOB", "STRUCT", "MAP", "UNION", "[]")


@dataclass
class ProfileReport:
    """What one table's profile took."""

    table: str
    rows: int
    columns: int
    seconds: float


def profiled_tables(conn: sa.Connection) -> list[str]:
    """The mirrored data tables: `ivoa.*` and each `<source>.obscore` (ADQL names)."""
    return [r[0] for r in conn.exec_driver_sql(
        'SELECT table_name FROM "TAP_SCHEMA".tables WHERE lower(schema_name) NOT IN '
        "('tap_schema', 'mirror') ORDER BY table_index, table_name")]


def refresh_profiles(cat: Catalogue, tables: list[str] | None = None) -> list[ProfileReport]:
    """Recompute the profiles of `tables` (default: every mirrored table); one transaction per
    table, so readers see a table's old profile or its new one, never half of each."""
    with cat.begin() as conn:
        every = profiled_tables(conn)
    chosen = every if tables is None else tables
    # with one source, ivoa.obscore holds exactly its rows: derive, don't scan them twice
    sources = [t for t in every if not t.lower().startswith("ivoa.")]
    derive = UNION in chosen and len(sources) == 1 and sources[0] in chosen
    reports = []
    for name in chosen:
        if derive and name == UNION:
            continue
        with cat.begin() as conn:
            reports.append(profile_table(conn, name))
    if derive:
        with cat.begin() as conn:
            reports.append(derive_union_profile(conn, sources[0]))
    with cat.begin() as conn:  # tables that no longer exist keep no profile
        for model in (column_profiles, table_profiles):
            conn.execute(model.delete().where(model.c.table_name.not_in(
                profiled_tables(conn))))
    return reports


def profile_table(conn: sa.Connection, table: str) -> ProfileReport:
    """Profile one table (ADQL name) and replace its stored profile."""
    started = time.perf_counter()
    local = local_name(table)
    present = _column_types(conn, local)
    listed = [bare(r[0]) for r in conn.exec_driver_sql(
        'SELECT column_name FROM "TAP_SCHEMA".columns WHERE table_name = ? '
        "ORDER BY column_index", (table,))]
    by_lower = {n.lower(): n for n in present}
    # what the local TAP_SCHEMA lists is what users see; internal helpers are not profiled
    types = {by_lower[n.lower()]: present[by_lower[n.lower()]] for n in listed
             if n.lower() in by_lower}
    total, stats = _aggregates(conn, local, types)
    examples = _examples(conn, local, types) if total else {}
    now = utcnow()
    conn.execute(column_profiles.delete().where(column_profiles.c.table_name == table))
    rows = [{"table_name": table, "column_name": name, "local_type": dtype, "row_count": total,
             "null_count": total - stats[name]["n"],
             "null_fraction": (total - stats[name]["n"]) / total if total else None,
             "distinct_approx": stats[name]["distinct"], "min_value": stats[name]["min"],
             "max_value": stats[name]["max"], "examples": json.dumps(examples.get(name, [])),
             "computed_at": now} for name, dtype in types.items()]
    if rows:
        conn.execute(column_profiles.insert(), rows)
    lower = {n.lower(): n for n in types}
    moc = _coverage(conn, local, HPX_COLUMN in by_lower, lower) if total else None
    t_lo = _mjd(stats[lower["t_min"]]["min"]) if "t_min" in lower else None
    t_hi = _mjd(stats[lower["t_max"]]["max"]) if "t_max" in lower else None
    seconds = time.perf_counter() - started
    conn.execute(table_profiles.delete().where(table_profiles.c.table_name == table))
    conn.execute(table_profiles.insert().values(
        table_name=table, row_count=total, column_count=len(types),
        positions=moc[0] if moc else None, moc=moc[1] if moc else None,
        moc_depth=moc[2] if moc else None, sky_fraction=moc[3] if moc else None,
        t_min_mjd=t_lo, t_max_mjd=t_hi, t_min_iso=_iso(t_lo), t_max_iso=_iso(t_hi),
        seconds=seconds, computed_at=now))
    log.info("profiled %s: %d rows, %d columns in %.2f s", table, total, len(types), seconds)
    return ProfileReport(table, total, len(types), seconds)


def derive_union_profile(conn: sa.Connection, source_table: str) -> ProfileReport:
    """The profile of `ivoa.obscore` when one source fills it: the source table's profile, plus
    the `mirror_source` column (one value, the source's name)."""
    started = time.perf_counter()
    source = source_table.partition(".")[0]
    for model in (column_profiles, table_profiles):
        conn.execute(model.delete().where(model.c.table_name == UNION))
    names = [c.name for c in column_profiles.c if c.name != "table_name"]
    conn.execute(column_profiles.insert().from_select(
        ["table_name", *names],
        sa.select(sa.literal(UNION), *(column_profiles.c[n] for n in names))
        .where(column_profiles.c.table_name == source_table)))
    row = conn.execute(sa.select(table_profiles).where(
        table_profiles.c.table_name == source_table)).mappings().first()
    total = int(row["row_count"]) if row else 0
    conn.execute(column_profiles.insert().values(
        table_name=UNION, column_name=SOURCE_COLUMN, local_type="VARCHAR", row_count=total,
        null_count=0, null_fraction=0.0 if total else None, distinct_approx=1 if total else 0,
        min_value=source if total else None, max_value=source if total else None,
        examples=json.dumps([source] if total else []), computed_at=utcnow()))
    columns = 1 + int(conn.execute(sa.select(sa.func.count()).where(
        column_profiles.c.table_name == source_table)).scalar_one())
    if row:
        conn.execute(table_profiles.insert().values(
            {**row, "table_name": UNION, "column_count": columns,
             "seconds": time.perf_counter() - started}))
    return ProfileReport(UNION, total, columns, time.perf_counter() - started)


def _column_types(conn: sa.Connection, local: str) -> dict[str, str]:
    schema, _, view = local.partition(".")
    return {name: dtype for name, dtype in conn.exec_driver_sql(
        "SELECT column_name, data_type FROM duckdb_columns() WHERE database_name = "
        "current_database() AND schema_name = ? AND table_name = ? ORDER BY column_index",
        (schema.strip('"').replace('""', '"'), view.strip('"').replace('""', '"')))}


def _ordered(dtype: str) -> bool:
    return not any(t in dtype.upper() for t in _UNORDERED)


def _aggregates(conn: sa.Connection, local: str,
                types: dict[str, str]) -> tuple[int, dict[str, dict[str, Any]]]:
    """count(*), and per column non-null count, approx distinct, min and max, in one pass."""
    parts = ["count(*)"]
    for name, dtype in types.items():
        col = q(name)
        parts.append(f"count({col})")
        if _ordered(dtype):
            parts += [f"approx_count_distinct({col})", f"min({col})::VARCHAR",
                      f"max({col})::VARCHAR"]
    row = conn.exec_driver_sql(f"SELECT {', '.join(parts)} FROM {local}").one()
    values = iter(row[1:])
    stats: dict[str, dict[str, Any]] = {}
    for name, dtype in types.items():
        entry: dict[str, Any] = {"n": next(values), "distinct": None, "min": None, "max": None}
        if _ordered(dtype):
            # HyperLogLog may overshoot a little: never more distinct values than values
            entry["distinct"] = min(int(next(values)), int(entry["n"]))
            entry["min"], entry["max"] = _cut(next(values)), _cut(next(values))
        stats[name] = entry
    return int(row[0]), stats


def _examples(conn: sa.Connection, local: str, types: dict[str, str]) -> dict[str, list[str]]:
    """The most frequent non-null values per column in a sample of the rows."""
    names = [n for n, dtype in types.items() if _ordered(dtype)]
    if not names:
        return {}
    parts = [f"approx_top_k({q(n)}::VARCHAR, {EXAMPLES})" for n in names]
    row = conn.exec_driver_sql(
        f"SELECT {', '.join(parts)} FROM (SELECT * FROM {local} "
        f"USING SAMPLE {SAMPLE_ROWS} ROWS (reservoir, 42))").one()
    return {n: [str(_cut(v)) for v in (vals or []) if v is not None]
            for n, vals in zip(names, row, strict=True)}


def _coverage(conn: sa.Connection, local: str, has_hpx: bool,
              names: dict[str, str]) -> tuple[int, str, int, float] | None:
    """(positions, MOC as ASCII, depth, sky fraction) of the rows' positions: from the
    HEALPix index `_hpx` where the table keeps one, else from s_ra and s_dec."""
    # imported here: mocpy pulls in matplotlib, 0.3 s of every command's start-up
    from astropy.coordinates import Latitude, Longitude
    from cdshealpix.nested import lonlat_to_healpix
    from mocpy import MOC

    if has_hpx:
        shift = 2 * (HPX_DEPTH - MOC_DEPTH)
        # as one numpy array: a survey covers 10^5-10^6 cells, too many to fetch row by row
        cells = raw(conn).execute(
            f"SELECT DISTINCT {q(HPX_COLUMN)} >> {shift} AS cell FROM {local} "
            f"WHERE {q(HPX_COLUMN)} IS NOT NULL").fetchnumpy()["cell"].astype(np.uint64)
        positions = int(conn.exec_driver_sql(
            f"SELECT count({q(HPX_COLUMN)}) FROM {local}").scalar_one()) if len(cells) else 0
    elif "s_ra" in names and "s_dec" in names:
        ra, dec = q(names["s_ra"]), q(names["s_dec"])
        found = conn.exec_driver_sql(
            f"SELECT {ra}::DOUBLE, {dec}::DOUBLE FROM {local} WHERE {ra} IS NOT NULL "
            f"AND {dec} IS NOT NULL AND abs({dec}) <= 90").all()
        positions = len(found)
        if not found:
            return None
        lon, lat = np.array(found, dtype=float).T
        cells = np.unique(lonlat_to_healpix(Longitude(lon, u.deg), Latitude(lat, u.deg),
                                            MOC_DEPTH).astype(np.uint64))
    else:
        return None
    if len(cells) == 0:
        return None
    depth = MOC_DEPTH
    moc = MOC.from_healpix_cells(cells, np.full(len(cells), depth, dtype=np.uint8),
                                 max_depth=depth)
    text = moc.to_string(format="ascii")
    while len(text) > MOC_MAX_CHARS and depth > 3:
        depth -= 1
        moc = moc.degrade_to_order(depth)
        text = moc.to_string(format="ascii")
    return positions, text, depth, float(moc.sky_fraction)


def _mjd(value: str | None) -> float | None:
    """A t_min/t_max profile value as MJD: a number already, or an ISO timestamp."""
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        try:
            return float(Time(value.replace(" ", "T"), scale="utc").mjd)
        except ValueError:
            return None
    return number if math.isfinite(number) else None


def _iso(mjd: float | None) -> str | None:
    return None if mjd is None else str(Time(mjd, format="mjd", scale="utc").isot)[:19] + "Z"


def _cut(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value)
    return text if len(text) <= TEXT_MAX else text[:TEXT_MAX - 1] + "…"


_WRITES = ("new", "changed", "reappeared", "repaired", "withdrawn")


def refresh_after_sync(cat: Catalogue, reports: Sequence[object] = ()) -> list[ProfileReport]:
    """`refresh_profiles` for the end of a sync, unless the sync wrote no row and every table
    has its profile (a daemon's idle syncs cost nothing); a failure costs the profiles, never
    the sync."""
    try:
        wrote = any(getattr(r, k, 0) for r in reports for k in _WRITES)
        if reports and not wrote:
            with cat.begin() as conn:
                have = {r[0] for r in conn.execute(sa.select(table_profiles.c.table_name))}
                if set(profiled_tables(conn)) <= have:
                    return []
        return refresh_profiles(cat)
    except (sa.exc.DBAPIError, ValueError) as exc:
        log.warning("data profiles not refreshed (%s); `mirror schema --profile` retries",
                    str(getattr(exc, "orig", exc)).splitlines()[0])
        return []
