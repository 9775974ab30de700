"""The ADQL builders, executed: keyset pages, windows and ID passes run on a real DuckDB table.

ADQL is SQL apart from TOP, so the generated text is transpiled by sqlglot (T-SQL knows TOP)
and run, and the tests check what comes back rather than how the text looks.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from typing import Any

import duckdb
import pytest
import sqlglot
from fakes.tapserver import adql_to_duckdb
from sqlglot import exp

from mirror.harvest import plan
from mirror.harvest.plan import Key, after, at_or_before, ident, literal

HOSTILE = ["x' OR '1'='1", "it's", "''", "'; DROP TABLE t; --", "back\\'slash", "semi;colon",
           "tab\tand\nnewline", "ünïcödé ☃", '"double"', "--", "/* c */", ""]
# ADQL 2.1 §2.1.3: SQL-92 reserved words and ADQL's own function and geometry names.
ADQL_RESERVED = """
ABSOLUTE ACTION ADD ALL ALLOCATE ALTER AND ANY ARE AS ASC ASSERTION AT AUTHORIZATION AVG BEGIN
BETWEEN BIT BIT_LENGTH BOTH BY CASCADE CASCADED CASE CAST CATALOG CHAR CHARACTER CHAR_LENGTH
CHARACTER_LENGTH CHECK CLOSE COALESCE COLLATE COLLATION COLUMN COMMIT CONNECT CONNECTION
CONSTRAINT CONSTRAINTS CONTINUE CONVERT CORRESPONDING COUNT CREATE CROSS CURRENT CURRENT_DATE
CURRENT_TIME CURRENT_TIMESTAMP CURRENT_USER CURSOR DATE DAY DEALLOCATE DECIMAL DECLARE DEFAULT
DEFERRABLE DEFERRED DELETE DESC DESCRIBE DESCRIPTOR DIAGNOSTICS DISCONNECT DISTINCT DOMAIN DOUBLE
DROP ELSE END ESCAPE EXCEPT EXCEPTION EXEC EXECUTE EXISTS EXTERNAL EXTRACT FALSE FETCH FIRST
FLOAT FOR FOREIGN FOUND FROM FULL GET GLOBAL GO GOTO GRANT GROUP HAVING HOUR IDENTITY IMMEDIATE
IN INDICATOR INITIALLY INNER INPUT INSENSITIVE INSERT INT INTEGER INTERSECT INTERVAL INTO IS
ISOLATION JOIN KEY LANGUAGE LAST LEADING LEFT LEVEL LIKE LOCAL LOWER MATCH MAX MIN MINUTE MODULE
MONTH NAMES NATIONAL NATURAL NCHAR NEXT NO NOT NULL NULLIF NUMERIC OCTET_LENGTH OF ON ONLY OPEN
OPTION OR ORDER OUTER OUTPUT OVERLAPS PAD PARTIAL POSITION PRECISION PREPARE PRESERVE PRIMARY
PRIOR PRIVILEGES PROCEDURE PUBLIC READ REAL REFERENCES RELATIVE RESTRICT REVOKE RIGHT ROLLBACK
ROWS SCHEMA SCROLL SECOND SECTION SELECT SESSION SESSION_USER SET SIZE SMALLINT SOME SPACE SQL
SQLCODE SQLERROR SQLSTATE SUBSTRING SUM SYSTEM_USER TABLE TEMPORARY THEN TIME TIMESTAMP
TIMEZONE_HOUR TIMEZONE_MINUTE TO TRAILING TRANSACTION TRANSLATE TRANSLATION TRIM TRUE UNION
UNIQUE UNKNOWN UPDATE UPPER USAGE USER USING VALUE VALUES VARCHAR VARYING VIEW WHEN WHENEVER
WHERE WITH WORK WRITE YEAR ZONE
ABS ACOS AREA ASIN ATAN ATAN2 BOX CEILING CENTROID CIRCLE CONTAINS COORD1 COORD2 COORDSYS COS
COT DEGREES DISTANCE EXP FLOOR INTERSECTS LOG LOG10 MOD PI POINT POLYGON POWER RADIANS REGION
RAND ROUND SIN SQRT TOP TAN TRUNCATE
""".split()


def run(db: duckdb.DuckDBPyConnection, adql: str) -> list[tuple[Any, ...]]:
    return db.execute(adql_to_duckdb(adql)).fetchall()


def scalar(db: duckdb.DuckDBPyConnection, adql: str) -> Any:
    return run(db, adql)[0][0]


# -- identifiers and literals ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["obs_publisher_did", "s_ra", "last_mod_date", "T_MIN", "x1"])
def test_regular_names_stay_bare(name: str) -> None:
    # ADQL delimited identifiers are case-sensitive: delimiting a regular name could break it
    assert ident(name) == name


@pytest.mark.parametrize("name", ["select", "SIZE", "Date", "filter", "position", "region",
                                  "value", "key", "end", "user", "first", "count"])
def test_reserved_words_are_delimited(name: str) -> None:
    assert ident(name) == f'"{name}"'


def test_every_adql_reserved_word_is_delimited() -> None:
    bare = [w.lower() for w in ADQL_RESERVED if not ident(w.lower()).startswith('"')]
    assert bare == [], f"reserved words left undelimited: {bare}"


@pytest.mark.parametrize("name", ["_private", "1st", "obs id", "a-b", "we\"ird", "ünï", "x.y",
                                  "a'b"])
def test_irregular_names_are_delimited_and_name_the_same_column(name: str) -> None:
    db = duckdb.connect()
    db.execute(f'CREATE TABLE t ("{name.replace(chr(34), chr(34) * 2)}" INTEGER, other INTEGER)')
    db.execute("INSERT INTO t VALUES (1, 2)")
    assert ident(name).startswith('"')
    assert run(db, f"SELECT {ident(name)} FROM t") == [(1,)]


@pytest.mark.parametrize("value", HOSTILE)
def test_string_literal_is_one_literal_holding_the_exact_text(value: str) -> None:
    tree = sqlglot.parse_one(f"SELECT x FROM t WHERE id = {literal(value)}", read="tsql")
    literals = list(tree.find_all(exp.Literal))
    assert len(literals) == 1 and literals[0].is_string
    assert literals[0].this == value
    assert duckdb.connect().execute(adql_to_duckdb(f"SELECT {literal(value)}")).fetchone() == (
        value,)


@pytest.mark.parametrize("value", [0, -7, 2**62, 0.1, 0.1 + 0.2, 1e-300, -2.5e17, 55408.98281615])
def test_number_literal_is_exact(value: float) -> None:
    got = duckdb.connect().execute(f"SELECT CAST({literal(value)} AS DOUBLE)").fetchone()[0]
    assert got == value


def test_boolean_has_no_literal() -> None:
    with pytest.raises(TypeError):
        literal(True)


# -- keyset conditions -----------------------------------------------------------------------


def keyed_table(rows: Sequence[tuple[Any, str]], *, wm_name: str = "wm",
                id_name: str = "id", wm_type: str = "TIMESTAMP") -> duckdb.DuckDBPyConnection:
    db = duckdb.connect()
    db.execute(f'CREATE TABLE t ("{wm_name}" {wm_type}, "{id_name}" VARCHAR, n INTEGER)')
    db.executemany("INSERT INTO t VALUES (?, ?, ?)", [(w, i, n) for n, (w, i) in enumerate(rows)])
    return db


def duplicate_watermark_rows() -> list[tuple[dt.datetime, str]]:
    """Groups of rows sharing a watermark, hostile IDs included, stored in no useful order."""
    base = dt.datetime(2024, 1, 1, 12)
    ids = [f"ivo://x/{i:03d}" for i in range(23)] + HOSTILE
    rows = [(base + dt.timedelta(seconds=(i * 7) % 5), id_) for i, id_ in enumerate(ids)]
    return sorted(rows, key=lambda r: hash(r[1]))


def text_key(wm: Any, id_: str) -> Key:
    """A key as the harvester holds it: the watermark as the CSV text the service sent."""
    return Key(wm.isoformat() if isinstance(wm, dt.datetime) else wm, id_)


def test_after_and_at_or_before_split_the_table_at_every_key() -> None:
    rows = duplicate_watermark_rows()
    db = keyed_table(rows)
    everything = {r[1] for r in rows}
    for wm, id_ in rows:
        key = text_key(wm, id_)
        later = {r[0] for r in run(db, f"SELECT id FROM t WHERE {after(key, 'wm', 'id')}")}
        upto = {r[0] for r in run(db, f"SELECT id FROM t WHERE {at_or_before(key, 'wm', 'id')}")}
        assert later == {i for w, i in rows if (w, i) > (wm, id_)}
        assert later | upto == everything and not later & upto


def test_id_only_conditions_ignore_the_watermark() -> None:
    rows = duplicate_watermark_rows()
    db = keyed_table(rows)
    for _, id_ in rows:
        key = Key(None, id_)
        later = {r[0] for r in run(db, f"SELECT id FROM t WHERE {after(key, None, 'id')}")}
        upto = {r[0] for r in run(db, f"SELECT id FROM t WHERE {at_or_before(key, None, 'id')}")}
        assert later == {i for _, i in rows if i > id_}
        assert upto == {i for _, i in rows if i <= id_}


def test_no_key_means_no_condition() -> None:
    assert after(None, "wm", "id") is None


# -- keyset paging -----------------------------------------------------------------------------


def pages(db: duckdb.DuckDBPyConnection, *, columns: Sequence[str], wm: str | None, idc: str,
          top: int, where: str = "") -> Iterator[list[tuple[Any, ...]]]:
    """Page through `t` as the harvester does: each page starts after the last key seen."""
    key = None
    cols = list(columns)
    for _ in range(10_000):
        page = run(db, plan.page_query("t", cols, where, wm, idc, key, top))
        if not page:
            return
        assert len(page) <= top
        yield page
        last = page[-1]
        key = text_key(last[cols.index(wm)], last[cols.index(idc)]) if wm else Key(
            None, last[cols.index(idc)])
    raise AssertionError("paging did not end")


@pytest.mark.parametrize("top", [1, 2, 3, 5, 7, 100])
def test_keyset_paging_returns_every_row_exactly_once_with_duplicate_watermarks(top: int) -> None:
    rows = duplicate_watermark_rows()
    db = keyed_table(rows)
    seen = [r for page in pages(db, columns=["wm", "id", "n"], wm="wm", idc="id", top=top)
            for r in page]
    assert sorted(r[1] for r in seen) == sorted(i for _, i in rows)
    assert [(r[0], r[1]) for r in seen] == sorted(rows)  # in (watermark, id) order


@pytest.mark.parametrize("top", [1, 4, 50])
def test_keyset_paging_with_reserved_and_irregular_column_names(top: int) -> None:
    rows = duplicate_watermark_rows()
    db = keyed_table(rows, wm_name="last modified", id_name="key")
    seen = [r for page in pages(db, columns=["last modified", "key", "n"], wm="last modified",
                                idc="key", top=top) for r in page]
    assert sorted(r[1] for r in seen) == sorted(i for _, i in rows)


@pytest.mark.parametrize("top", [1, 3, 8])
def test_keyset_paging_on_a_numeric_watermark(top: int) -> None:
    values = [55408.98281615, 0.1 + 0.2, 0.3, 1e-9, 55408.98281615, 0.3]
    rows = [(values[i % len(values)], f"id{i:02d}") for i in range(20)]
    db = keyed_table(rows, wm_type="DOUBLE")
    seen = [r[1] for page in pages(db, columns=["wm", "id"], wm="wm", idc="id", top=top)
            for r in page]
    assert sorted(seen) == sorted(i for _, i in rows) and len(seen) == len(rows)


@pytest.mark.parametrize("top", [1, 3, 8])
def test_id_only_paging_returns_every_row_exactly_once(top: int) -> None:
    rows = duplicate_watermark_rows()
    db = keyed_table(rows)
    seen = [r[0] for page in pages(db, columns=["id", "n"], wm=None, idc="id", top=top)
            for r in page]
    assert seen == sorted(i for _, i in rows)


def test_where_with_or_stays_apart_from_the_keyset_condition() -> None:
    rows = duplicate_watermark_rows()
    db = keyed_table(rows)
    where = "n < 3 OR n > 30"
    wanted = {i for n, (_, i) in enumerate(rows) if n < 3 or n > 30}
    seen = [r[1] for page in pages(db, columns=["wm", "id", "n"], wm="wm", idc="id", top=2,
                                   where=where) for r in page]
    assert sorted(seen) == sorted(wanted)


def test_page_query_asks_for_at_most_top_rows_in_key_order() -> None:
    adql = plan.page_query("ivoa.obscore", ["a", "b"], "", "last_modified", "obs_publisher_did",
                           None, 7)
    tree = sqlglot.parse_one(adql, read="tsql")
    assert tree.args["limit"].expression.this == "7"
    assert [o.this.name for o in tree.args["order"].expressions] == [
        "last_modified", "obs_publisher_did"]


# -- windows, counts and ID passes --------------------------------------------------------------


@pytest.mark.parametrize("top", [2, 5])
def test_window_counts_match_the_pages_they_describe(top: int) -> None:
    rows = duplicate_watermark_rows()
    db = keyed_table(rows)
    lower, total = None, 0
    for page in pages(db, columns=["wm", "id"], wm="wm", idc="id", top=top):
        upper = text_key(*page[-1])
        count = scalar(db, plan.window_count_query("t", "", "wm", "id", lower, upper))
        assert count == len(page)
        total += count
        lower = upper
    assert total == len(rows) == scalar(db, plan.count_query("t", ""))


def test_count_query_honours_where() -> None:
    db = keyed_table(duplicate_watermark_rows())
    assert scalar(db, plan.count_query("t", "n < 5")) == 5


@pytest.mark.parametrize("top", [1, 4, 100])
def test_ids_query_pages_through_every_id_once(top: int) -> None:
    rows = duplicate_watermark_rows()
    db = keyed_table(rows)
    start, seen = None, []
    while True:
        ids = [r[0] for r in run(db, plan.ids_query("t", "", "id", start, top))]
        if not ids:
            break
        assert len(ids) <= top
        seen += ids
        start = ids[-1]
    assert seen == sorted(i for _, i in rows)


def test_rows_by_id_returns_exactly_the_rows_asked_for_even_with_hostile_ids() -> None:
    rows = duplicate_watermark_rows()
    db = keyed_table(rows)
    asked = ["x' OR '1'='1", "'; DROP TABLE t; --", "ivo://x/004", "not there"]
    got = run(db, plan.rows_by_id_query("t", ["id", "n"], "", "id", asked))
    assert sorted(r[0] for r in got) == sorted(set(asked) & {i for _, i in rows})
    assert scalar(db, "SELECT COUNT(*) FROM t") == len(rows)


def test_metadata_query_returns_no_rows_but_every_column() -> None:
    db = keyed_table(duplicate_watermark_rows())
    cur = db.execute(adql_to_duckdb(plan.metadata_query("t")))
    assert cur.fetchall() == []
    assert [d[0] for d in cur.description] == ["wm", "id", "n"]
