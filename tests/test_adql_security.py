"""Only queries get through: statements, file and network access, settings and system tables
are refused with a clear message, whatever the disguise (comments, several statements, table
functions, file-path table names). Functions are allow-listed: every function DuckDB knows that
is not ADQL is refused.
"""

from __future__ import annotations

import duckdb
import pytest

from mirror.adql import MACROS, StaticTableMap, TableInfo, translate
from mirror.adql.dialect import FUNCTIONS
from mirror.errors import AdqlError, AdqlSecurityError, AdqlUnsupportedError

TABLES = StaticTableMap({
    "ivoa.obscore": TableInfo("obscore_t", ("obs_id", "s_ra", "s_dec", "_hpx")),
    # a careless map that would hand any name through must still not open files
    "x.csv": TableInfo('"x.csv"', ("a",)),
})

HOSTILE = [
    # table functions and replacement scans reading files or the network
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_csv_auto('data.csv')",
    "SELECT * FROM read_parquet('s3://bucket/x.parquet')",
    "SELECT * FROM read_json('x.json')",
    "SELECT * FROM read_text('/etc/hostname')",
    "SELECT * FROM glob('/*')",
    "SELECT * FROM 'file.csv'",
    'SELECT * FROM "data.parquet"',
    "SELECT * FROM 'https://example.org/x.parquet'",
    'SELECT * FROM "x.csv"',
    "SELECT obs_id FROM ivoa.obscore WHERE obs_id IN (SELECT * FROM glob('/*'))",
    "WITH a AS (SELECT * FROM read_csv('x')) SELECT * FROM a",
    'WITH "x.csv" AS (SELECT * FROM "x.csv") SELECT * FROM "x.csv"',
    "SELECT * FROM ivoa.obscore AS o JOIN read_parquet('x') AS p ON o.obs_id = p.id",
    # functions touching files, settings, the environment
    "SELECT read_csv('x') FROM ivoa.obscore",
    "SELECT current_setting('threads') FROM ivoa.obscore",
    "SELECT getenv('HOME') FROM ivoa.obscore",
    "SELECT obs_id FROM ivoa.obscore WHERE obs_id = read_blob('/etc/passwd')",
    "SELECT setseed(0.5) FROM ivoa.obscore",
    # system catalogues
    "SELECT * FROM duckdb_settings()",
    "SELECT * FROM information_schema.tables",
    "SELECT * FROM pg_catalog.pg_tables",
    "SELECT * FROM duckdb_tables",
    "SELECT * FROM main.obscore_t",
    # statements
    "COPY obscore_t TO 'out.csv'",
    "COPY (SELECT * FROM obscore_t) TO 'out.parquet' (FORMAT parquet)",
    "ATTACH 'other.duckdb' AS other",
    "DETACH other",
    "INSTALL httpfs",
    "LOAD httpfs",
    "FORCE INSTALL httpfs",
    "PRAGMA database_list",
    "SET enable_external_access = true",
    "RESET threads",
    "CALL pragma_version()",
    "EXPORT DATABASE 'dump'",
    "IMPORT DATABASE 'dump'",
    "CREATE TABLE t AS SELECT 1",
    "CREATE OR REPLACE MACRO adql_in_circle(a, b, c, d, e) AS true",
    "DROP TABLE obscore_t",
    "INSERT INTO obscore_t VALUES ('x', 1, 2, 3)",
    "UPDATE obscore_t SET obs_id = 'x'",
    "DELETE FROM obscore_t",
    "ALTER TABLE obscore_t ADD COLUMN y INT",
    "CHECKPOINT",
    "VACUUM",
    "USE memory",
    "DESCRIBE obscore_t",
    "SHOW TABLES",
    "SUMMARIZE obscore_t",
    "SELECT obs_id INTO newtable FROM ivoa.obscore",
    # several statements, and statements hidden behind comments
    "SELECT obs_id FROM ivoa.obscore; DROP TABLE obscore_t",
    "SELECT obs_id FROM ivoa.obscore -- a comment\n; COPY obscore_t TO 'x.csv'",
    "SELECT obs_id FROM ivoa.obscore /* ; */; ATTACH 'x.db'",
    "SELECT obs_id FROM ivoa.obscore;; SELECT 1",
    "/* SELECT */ COPY obscore_t TO 'x'",
    "-- SELECT obs_id FROM ivoa.obscore\nINSTALL httpfs",
]


@pytest.mark.parametrize("adql", HOSTILE)
def test_hostile_queries_are_refused_as_security(adql: str) -> None:
    with pytest.raises(AdqlSecurityError) as err:
        translate(adql, TABLES)
    message = str(err.value)
    assert len(message) > 20 and "refused" in message or "only one query" in message \
        or "one query" in message, message


@pytest.mark.parametrize("adql", [
    "SELECT obs_id FROM ivoa.obscore WHERE obs_id = 'x''; DROP TABLE obscore_t; --'",
    "SELECT obs_id FROM ivoa.obscore -- */ ; DROP TABLE obscore_t",
    "SELECT obs_id /* '; DROP TABLE obscore_t; */ FROM ivoa.obscore",
])
def test_quotes_and_comments_cannot_smuggle_a_statement(adql: str) -> None:
    sql = translate(adql, TABLES).sql
    con = duckdb.connect()
    for macro in MACROS:
        con.execute(macro)
    con.execute("CREATE TABLE obscore_t (obs_id VARCHAR, s_ra DOUBLE, s_dec DOUBLE, _hpx BIGINT)")
    assert len(con.extract_statements(sql)) == 1
    assert con.execute(sql).fetchall() == []
    assert con.execute("SELECT count(*) FROM obscore_t").fetchone() == (0,)  # table intact


@pytest.mark.parametrize("adql", [
    "SELECT levenshtein(obs_id, 'x') FROM ivoa.obscore",
    "SELECT obs_id FROM ivoa.obscore QUALIFY s_ra > 1",
    "SELECT [1, 2] FROM ivoa.obscore",
    "SELECT obs_id::INTEGER FROM ivoa.obscore",
    "SELECT * FROM ivoa.obscore TABLESAMPLE 10",
    "SELECT * EXCLUDE (s_ra) FROM ivoa.obscore",
    "SELECT obs_id FROM ivoa.obscore WHERE s_ra % 2 = 0",
    "SELECT obs_id FROM ivoa.obscore, LATERAL (SELECT 1 AS x FROM ivoa.obscore) AS l",
])
def test_sql_that_is_not_adql_is_unsupported(adql: str) -> None:
    with pytest.raises(AdqlError) as err:
        translate(adql, TABLES)
    assert not isinstance(err.value, AdqlSecurityError) or "refused" in str(err.value)


def duckdb_function_names() -> list[str]:
    con = duckdb.connect()
    rows = con.execute("SELECT DISTINCT function_name, function_type FROM duckdb_functions() "
                       "WHERE function_name SIMILAR TO '[a-z][a-z0-9_]*'").fetchall()
    return sorted({name for name, _ in rows})


ADQL_NAMES = {n.lower() for n in FUNCTIONS} | {"count", "min", "max", "avg", "sum", "lower",
                                              "upper", "coalesce"}


def test_every_other_duckdb_function_is_refused() -> None:
    """The allow-list: no DuckDB function outside ADQL's reaches SQL, in any position."""
    names = [n for n in duckdb_function_names() if n not in ADQL_NAMES]
    assert len(names) > 300
    passed = []
    for name in names:
        for adql in (f"SELECT {name}(obs_id) FROM ivoa.obscore",
                     f"SELECT * FROM {name}('x')"):
            try:
                translate(adql, TABLES)
            except AdqlError as exc:
                assert isinstance(exc, (AdqlSecurityError, AdqlUnsupportedError)) or \
                    "syntax" in str(exc) or "reserved" in str(exc) or "condition" in str(exc), \
                    (adql, exc)
            else:
                passed.append(adql)
    assert passed == []


@pytest.mark.parametrize("name", ["read_csv", "read_parquet", "read_json_auto", "glob",
                                  "current_setting", "getenv", "duckdb_settings", "read_blob",
                                  "parquet_scan", "sniff_csv", "read_text", "query_table"])
def test_file_and_setting_functions_are_named_security_risks(name: str) -> None:
    with pytest.raises(AdqlSecurityError, match=name):
        translate(f"SELECT {name}('x') FROM ivoa.obscore", TABLES)
