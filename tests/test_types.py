"""VOTable column descriptions -> DuckDB types, and the SQL that loads CSV text into them."""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Sequence
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from fakes.tapserver import RECORDED_CSV, recorded_specs

from mirror.catalogue.types import ColumnSpec, arrow_type, load_expression, local_type
from mirror.harvest.pages import parse_csv

MAPPING = [
    # (datatype, arraysize, xtype) -> DuckDB type
    (("char", "*", "timestamp"), "TIMESTAMP"),
    (("char", "*", "adql:TIMESTAMP"), "TIMESTAMP"),
    (("char", "19", "TIMESTAMP"), "TIMESTAMP"),
    (("char", "*", "adql:REGION"), "VARCHAR"),
    (("char", "*", "adql:POINT"), "VARCHAR"),
    (("double", "*", "polygon"), "VARCHAR"),
    (("float", "*", "dali:polygon"), "VARCHAR"),
    (("double", "2", "point"), "VARCHAR"),
    (("double", "3", "circle"), "VARCHAR"),
    (("char", "*", "moc"), "VARCHAR"),
    (("char", "*", None), "VARCHAR"),
    (("char", "1", None), "VARCHAR"),
    (("char", None, None), "VARCHAR"),
    (("unicodeChar", "*", None), "VARCHAR"),
    (("boolean", None, None), "BOOLEAN"),
    (("unsignedByte", None, None), "UTINYINT"),
    (("short", None, None), "SMALLINT"),
    (("int", None, None), "INTEGER"),
    (("long", None, None), "BIGINT"),
    (("float", None, None), "FLOAT"),
    (("double", None, None), "DOUBLE"),
    (("double", "1", None), "DOUBLE"),
    (("double", "", None), "DOUBLE"),
    (("double", "*", None), "DOUBLE[]"),
    (("double", "2", "interval"), "DOUBLE[]"),
    (("int", "3", None), "INTEGER[]"),
    (("long", "2x3", None), "BIGINT[]"),
    (("short", "10*", None), "SMALLINT[]"),
    (("float", "*", None), "FLOAT[]"),
    (("boolean", "*", None), "BOOLEAN[]"),
    (("floatComplex", None, None), "VARCHAR"),
    (("doubleComplex", "*", None), "VARCHAR"),
    (("bit", None, None), "VARCHAR"),
    (("somethingNew", None, None), "VARCHAR"),
]


@pytest.mark.parametrize(("field", "expected"), MAPPING, ids=lambda v: str(v))
def test_votable_field_maps_to_duckdb_type(field: tuple[str, str | None, str | None],
                                           expected: str) -> None:
    datatype, arraysize, xtype = field
    assert local_type(ColumnSpec("c", datatype, arraysize, xtype)) == expected


def test_every_mapped_type_is_a_valid_duckdb_column_type() -> None:
    db = duckdb.connect()
    cols = ", ".join(f"c{i} {local_type(ColumnSpec('c', *f))}" for i, (f, _) in enumerate(MAPPING))
    db.execute(f"CREATE TABLE t ({cols})")
    assert len(db.execute("DESCRIBE t").fetchall()) == len(MAPPING)


def test_recorded_dachs_fields_map_to_the_expected_types() -> None:
    types = {s.name: local_type(s) for s in recorded_specs()}
    assert types["s_region"] == "VARCHAR"  # adql:REGION
    assert types["last_modified"] == "TIMESTAMP"  # char, xtype timestamp
    assert types["obs_release_date"] == "TIMESTAMP"
    assert types["calib_level"] == "SMALLINT"
    assert types["access_estsize"] == "BIGINT"
    assert types["n_obs"] == "INTEGER"
    assert types["t_exptime"] == "FLOAT"
    assert types["s_ra"] == "DOUBLE"
    assert types["obs_publisher_did"] == "VARCHAR"


@pytest.mark.parametrize(("datatype", "arrow"), [
    ("short", pa.int16()), ("int", pa.int32()), ("long", pa.int64()), ("float", pa.float32()),
    ("double", pa.float64()), ("unsignedByte", pa.uint8()), ("char", pa.string())])
def test_scalar_numbers_are_parsed_as_numbers(datatype: str, arrow: pa.DataType) -> None:
    assert arrow_type(ColumnSpec("c", datatype)) == arrow


@pytest.mark.parametrize("field", [("char", "*", "timestamp"), ("double", "*", None),
                                   ("double", "*", "polygon"), ("boolean", None, None)])
def test_everything_else_is_parsed_as_text(field: tuple[str, str | None, str | None]) -> None:
    assert arrow_type(ColumnSpec("c", *field)) == pa.string()


# -- loading CSV text -------------------------------------------------------------------------


def load(specs: Sequence[ColumnSpec], body: bytes) -> list[tuple[Any, ...]]:
    """CSV text -> pyarrow (as a page) -> DuckDB through each column's load expression."""
    db = duckdb.connect()
    db.register("page", parse_csv(body, specs))
    exprs = ", ".join(f'{load_expression(s, chr(34) + s.name + chr(34))} AS "{s.name}"'
                      for s in specs)
    db.execute(f"CREATE TABLE t AS SELECT {exprs} FROM page")
    assert [r[1] for r in db.execute("DESCRIBE t").fetchall()] == [local_type(s) for s in specs]
    return db.execute("SELECT * FROM t").fetchall()


def csv_body(header: Sequence[str], rows: Sequence[Sequence[str]]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue().encode()


def test_null_sentinels_become_null_and_other_values_survive() -> None:
    specs = [ColumnSpec("id"), ColumnSpec("level", "short", null_value="-32768"),
             ColumnSpec("size", "long", null_value="-1"),
             ColumnSpec("ratio", "double", null_value="-999.5"),
             ColumnSpec("n", "int")]
    rows = [["a", "-32768", "-1", "-999.5", ""], ["b", "3", "0", "1.25", "7"],
            ["c", "", "", "", "-1"]]
    assert load(specs, csv_body([s.name for s in specs], rows)) == [
        ("a", None, None, None, None), ("b", 3, 0, 1.25, 7), ("c", None, None, None, -1)]


def test_timestamps_arrays_and_text_load_typed() -> None:
    specs = [ColumnSpec("t", "char", "*", "timestamp", null_value=""),
             ColumnSpec("v", "double", "*"), ColumnSpec("k", "int", "3"),
             ColumnSpec("r", "char", "*", "adql:REGION"), ColumnSpec("b", "boolean")]
    rows = [["2012-03-15T01:10:13.216000", "1.5 2 -3e2", "1 2 3",
             "Polygon ICRS 1 2 3 4 5 6", "true"],
            ["2020-01-01T00:00:00", "  4   5 ", "7 8 9", "Circle ICRS 1 2 0.5", "F"],
            ["", "", "", "", ""]]
    assert load(specs, csv_body([s.name for s in specs], rows)) == [
        (dt.datetime(2012, 3, 15, 1, 10, 13, 216000), [1.5, 2.0, -300.0], [1, 2, 3],
         "Polygon ICRS 1 2 3 4 5 6", True),
        (dt.datetime(2020, 1, 1), [4.0, 5.0], [7, 8, 9], "Circle ICRS 1 2 0.5", False),
        (None, None, None, None, None)]


def test_text_that_looks_like_a_sentinel_stays_text() -> None:
    specs = [ColumnSpec("s", "char", "*", null_value="-1")]
    assert load(specs, csv_body(["s"], [["-1"], ["x"]])) == [("-1",), ("x",)]


@pytest.mark.parametrize("null", ["1); DROP TABLE victim; --", "0 OR 1=1", "'", "1e5x", "--1",
                                  "1)", "NULL); SELECT 1; --"])
def test_hostile_null_value_never_reaches_sql(null: str) -> None:
    spec = ColumnSpec("n", "long", null_value=null)
    expr = load_expression(spec, '"n"')
    assert null not in expr
    db = duckdb.connect()
    db.execute("CREATE TABLE victim (x INTEGER)")
    db.register("page", pa.table({"n": pa.array([1, None, 3], pa.int64())}))
    assert db.execute(f"SELECT {expr} FROM page").fetchall() == [(1,), (None,), (3,)]
    assert db.execute("SELECT count(*) FROM victim").fetchone() == (0,)


def test_recorded_dachs_csv_loads_with_the_recorded_types() -> None:
    specs = recorded_specs()
    body = RECORDED_CSV.read_bytes()
    got = load(specs, body)
    with RECORDED_CSV.open(newline="", encoding="utf-8") as fh:
        text_rows = list(csv.DictReader(fh))
    assert len(got) == len(text_rows) == 50
    names = [s.name for s in specs]
    for row, text in zip(got, text_rows, strict=True):
        value = dict(zip(names, row, strict=True))
        assert value["obs_publisher_did"] == text["obs_publisher_did"]
        assert value["s_region"] == text["s_region"]
        assert value["last_modified"] == dt.datetime.fromisoformat(text["last_modified"])
        for name in ("calib_level", "access_estsize", "s_xel1", "n_obs"):
            assert value[name] == (int(text[name]) if text[name] else None), name
        for name in ("s_ra", "s_dec", "t_min"):
            assert value[name] == (float(text[name]) if text[name] else None), name
        assert value["snr"] is None if text["snr"] == "" else value["snr"] is not None
