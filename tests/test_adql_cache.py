"""Cone-search templates: a remembered shape gives exactly the translation of its query."""

from __future__ import annotations

import random

import pytest
from sqlglot.dialects.dialect import Dialect

import mirror.adql.cache as cache_module
from mirror.adql import StaticTableMap, TableInfo, translate
from mirror.adql.cache import TranslationCache, number_sql
from mirror.adql.rewrite import _number
from mirror.errors import AdqlError

TABLES = StaticTableMap({"ivoa.obscore": TableInfo(
    '"ivoa"."obscore"', ("obs_id", "s_ra", "s_dec", "t_min", "calib_level", "_hpx"),
    types={"calib_level": "INTEGER", "_hpx": "UBIGINT"})})
CONE = ("SELECT obs_id, s_ra, s_dec FROM ivoa.obscore WHERE "
        "1 = CONTAINS(POINT('ICRS', s_ra, s_dec), CIRCLE('ICRS', {ra}, {dec}, {r}))")
SHAPES = [
    CONE,
    "SELECT TOP 5 * FROM ivoa.obscore AS o WHERE CONTAINS(POINT(o.s_ra, o.s_dec), "
    "CIRCLE({ra}, {dec}, {r})) = 1 AND calib_level / 2 > 0",
    "SELECT * FROM ivoa.obscore WHERE 1 = INTERSECTS(CIRCLE('ICRS', {ra}, {dec}, {r}), "
    "POINT('ICRS', s_ra, s_dec))",
    "SELECT * FROM ivoa.obscore WHERE 1 = CONTAINS(POINT(s_ra, s_dec), CIRCLE({ra}, {dec}, {r})) "
    "AND 1 = CONTAINS(POINT(s_ra, s_dec), CIRCLE({dec}, {ra}, {r}))",
    # circles the prefilter cannot use, or whose numbers reach the SQL as written
    "SELECT * FROM ivoa.obscore WHERE CONTAINS(POINT(s_ra, s_dec), CIRCLE({ra}, {dec}, {r})) = 0",
    "SELECT * FROM ivoa.obscore WHERE 1 = CONTAINS(POINT(s_ra, s_dec), "
    "CIRCLE({ra}, {dec}, {r})) OR s_ra < 3",
    "SELECT CIRCLE('ICRS', {ra}, {dec}, {r}) AS c FROM ivoa.obscore",
    # look-alikes in strings, identifiers and comments are text of the key
    "SELECT 'CIRCLE(1, 2, {r})' AS x, s_ra AS \"CIRCLE(3, 4, 5)\" FROM ivoa.obscore -- "
    "CIRCLE({ra}, {dec}, {r})\n WHERE 1 = CONTAINS(POINT(s_ra, s_dec), CIRCLE({ra}, {dec}, 1))",
]


def number(rng: random.Random, kind: str) -> str:
    if kind == "ra":
        return rng.choice([f"{rng.uniform(0, 360):.6f}", str(rng.randint(0, 359)),
                           f"-{rng.uniform(0, 30):.3f}", f"{rng.uniform(0, 360):.3e}"])
    if kind == "dec":
        return rng.choice([f"{rng.uniform(-90, 90):.6f}", str(rng.randint(-89, 89)), "90",
                           "-90", f"{rng.uniform(-90, 90):.2f}"])
    return rng.choice(["0.1", "1", "0.05", "1e-2", "100", "0", "-1", "89.9", "0.0001", ".5"])


def outcome(fn, adql: str) -> object:  # noqa: ANN001
    try:
        return fn(adql)
    except AdqlError as exc:
        return type(exc), exc.message


@pytest.mark.parametrize("shape", SHAPES)
def test_a_cached_translation_is_the_translation(shape: str) -> None:
    rng = random.Random(shape)
    cache = TranslationCache(TABLES)
    for _ in range(120):
        adql = shape.format(ra=number(rng, "ra"), dec=number(rng, "dec"), r=number(rng, "r"))
        want = outcome(lambda q: translate(q, TABLES, maxrec=1000), adql)
        assert outcome(lambda q: cache.translate(q, maxrec=1000), adql) == want, adql


def test_a_shape_seen_twice_is_translated_no_more(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = TranslationCache(TABLES)
    cones = [CONE.format(ra=10 + i / 7, dec=-20 - i / 9, r=0.1) for i in range(5)]
    wanted = [translate(q, TABLES, maxrec=100) for q in cones]
    assert [cache.translate(q, maxrec=100) for q in cones[:2]] == wanted[:2]

    def refused(*args: object, **kwargs: object) -> None:
        raise AssertionError("translated again")

    monkeypatch.setattr(cache_module, "translate", refused)
    assert [cache.translate(q, maxrec=100) for q in cones[2:]] == wanted[2:]
    with pytest.raises(AssertionError):  # another MAXREC is another key
        cache.translate(cones[0], maxrec=5)


def test_a_circle_the_prefilter_cannot_cover_is_translated_in_full() -> None:
    cache = TranslationCache(TABLES)
    for r in ("0.1", "0.2", "95.5", "0.3"):  # radius >= 90: no HEALPix ranges
        adql = CONE.format(ra="10.5", dec="20.5", r=r)
        assert cache.translate(adql, maxrec=10) == translate(adql, TABLES, maxrec=10)


def test_numbers_are_written_as_the_lowering_writes_them() -> None:
    duckdb = Dialect.get_or_raise("duckdb")
    rng = random.Random(3)
    values = [0.0, -0.0, 1.0, -1.5, 1e-300, 1e300, 0.1, 123456789.123, -32.609979]
    values += [rng.uniform(-400, 400) * 10 ** rng.randint(-12, 12) for _ in range(500)]
    for v in values:
        assert number_sql(v) == duckdb.generate(_number(v)), v
    assert number_sql(float("nan")) is None and number_sql(float("inf")) is None


def test_threads_sharing_a_cache_get_the_plain_translations() -> None:
    from concurrent.futures import ThreadPoolExecutor

    cache = TranslationCache(TABLES, size=4)  # small: entries are evicted while others read
    shapes = [CONE, SHAPES[1], SHAPES[2], SHAPES[4], SHAPES[6]]
    queries = [shapes[i % len(shapes)].format(ra=10 + i / 7, dec=-20 - i / 11, r=0.1 + i / 1000)
               for i in range(300)]
    with ThreadPoolExecutor(6) as pool:
        got = list(pool.map(lambda q: cache.translate(q, maxrec=50), queries))
    assert got == [translate(q, TABLES, maxrec=50) for q in queries]
