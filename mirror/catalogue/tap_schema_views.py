"""The local TAP_SCHEMA: views that describe, in TAP_SCHEMA form, what can be queried *here*.

The replicated `tap_*` tables say what each service offers; these views say what the mirror
offers: `ivoa.obscore` (the union of the sources' columns: where several sources have a column,
the first source by name describes it), `ivoa.obscore_withdrawn`, one `<source>.obscore` per
source, and the TAP_SCHEMA tables themselves. A column is described by the service's own
TAP_SCHEMA.columns row when the replica has one, else by the VOTable FIELD (`source_columns`).

They are plain SQL over the catalogue's tables, so they stay current as syncs replace the
replicas; DuckDB views can only be created by the read-write process, which calls `refresh`.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from mirror.adql.checks import RESERVED
from mirror.catalogue import own_tables
from mirror.catalogue.engine import SCHEMA_CHANGED

SCHEMA = "TAP_SCHEMA"
# names that a source may not take as its ADQL schema: the standard ones win
RESERVED_SCHEMAS = ("ivoa", "tap_schema", own_tables.SCHEMA)
OBSCORE_UTYPE = "ivo://ivoa.net/std/ObsCore#table-1.1"

# (column, datatype, arraysize, xtype, unit, ucd, principal, indexed, description)
Helper = tuple[str, str, str | None, str | None, str | None, str | None, int, int, str]
SOURCE_HELPER: Helper = (
    "mirror_source", "char", "*", None, None, "meta.id", 1, 0,
    "mirror: name of the source ([[source]] name) the row was harvested from")
HPX_HELPER: Helper = (
    "_hpx", "long", None, None, None, "pos.healpix", 0, 1,
    "mirror internal helper, not ObsCore: HEALPix NESTED index at depth 29 of (s_ra, s_dec), "
    "maintained on ingest for the positional prefilter of cone and polygon searches")
WITHDRAWN_HELPER: Helper = (
    "withdrawn_at", "char", "*", "timestamp", None, "time.processing", 1, 0,
    "mirror: when the record was found gone from the service (UTC)")

_TS = ("TAP_SCHEMA.schemas", "TAP_SCHEMA.tables", "TAP_SCHEMA.columns", "TAP_SCHEMA.keys",
       "TAP_SCHEMA.key_columns")
# TAP 1.1 section 4: the TAP_SCHEMA tables' own columns, as (table, column, datatype, text)
_OWN_COLUMNS: tuple[tuple[str, str, str, str], ...] = (
    (_TS[0], "schema_name", "char", "schema name for reference to tables"),
    (_TS[0], "utype", "char", "lists the utypes of schemas"),
    (_TS[0], "description", "char", "describes schemas in the tableset"),
    (_TS[0], "schema_index", "int", "recommended sort order when listing schemas"),
    (_TS[1], "schema_name", "char", "the schema this table belongs to"),
    (_TS[1], "table_name", "char", "the fully qualified table name"),
    (_TS[1], "table_type", "char", "one of: table view"),
    (_TS[1], "utype", "char", "lists the utype of tables in the tableset"),
    (_TS[1], "description", "char", "describes tables in the tableset"),
    (_TS[1], "table_index", "int", "recommended sort order when listing tables"),
    (_TS[2], "table_name", "char", "the table this column belongs to"),
    (_TS[2], "column_name", "char", "the column name"),
    (_TS[2], "datatype", "char", "lists the ADQL datatype of columns in the tableset"),
    (_TS[2], "arraysize", "char", "lists the size of variable-length columns in the tableset"),
    (_TS[2], "xtype", "char", "a DALI or custom extended type annotation"),
    (_TS[2], "size", "int", "deprecated: use arraysize"),
    (_TS[2], "description", "char", "describes the columns in the tableset"),
    (_TS[2], "utype", "char", "lists the utypes of columns in the tableset"),
    (_TS[2], "unit", "char", "lists the unit used for column values in the tableset"),
    (_TS[2], "ucd", "char", "lists the UCDs of columns in the tableset"),
    (_TS[2], "indexed", "int", "an indexed column; 1 means 1, 0 means 0"),
    (_TS[2], "principal", "int", "a principal column; 1 means 1, 0 means 0"),
    (_TS[2], "std", "int", "a standard column; 1 means 1, 0 means 0"),
    (_TS[2], "column_index", "int", "recommended sort order when listing columns of a table"),
    (_TS[3], "key_id", "char", "unique key to join to TAP_SCHEMA.key_columns"),
    (_TS[3], "from_table", "char", "the table with the foreign key"),
    (_TS[3], "target_table", "char", "the table with the primary key"),
    (_TS[3], "utype", "char", "lists the utype of keys in the tableset"),
    (_TS[3], "description", "char", "describes keys in the tableset"),
    (_TS[4], "key_id", "char", "key to join to TAP_SCHEMA.keys"),
    (_TS[4], "from_column", "char", "column in the from_table"),
    (_TS[4], "target_column", "char", "column in the target_table"),
)
_OWN_TABLES = (
    (_TS[0], "description of schemas in this tableset"),
    (_TS[1], "description of tables in this tableset"),
    (_TS[2], "description of columns in this tableset"),
    (_TS[3], "description of foreign keys in this tableset"),
    (_TS[4], "description of foreign key columns in this tableset"),
)


def _lit(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def _values(rows: Sequence[tuple[object, ...]], names: str) -> str:
    body = ", ".join("(" + ", ".join(_lit(v) for v in row) + ")" for row in rows)
    return f"(VALUES {body}) AS v({names})"


_COLUMN_NAMES = ("table_name, column_name, datatype, arraysize, xtype, size, description, utype, "
                 "unit, ucd, indexed, principal, std, column_index")
_SOURCES = f"""(SELECT source, row_number() OVER (ORDER BY source) AS rank
    FROM (SELECT DISTINCT source FROM source_columns)
    WHERE lower(source) NOT IN ({', '.join(_lit(s) for s in RESERVED_SCHEMAS)}))"""

# every source's columns, described by its TAP_SCHEMA replica where it has the row
_DESCRIBED = """SELECT c.source, r.rank, c.column_name, c.position,
    coalesce(t.datatype, c.datatype) AS datatype, coalesce(t.arraysize, c.arraysize) AS arraysize,
    coalesce(t.xtype, c.xtype) AS xtype, t.size AS size,
    coalesce(t.description, c.description) AS description, coalesce(t.utype, c.utype) AS utype,
    coalesce(t.unit, c.unit) AS unit, coalesce(t.ucd, c.ucd) AS ucd,
    coalesce(t.indexed, 0) AS indexed, coalesce(t.principal, 0) AS principal,
    coalesce(t.std, 0) AS std
  FROM source_columns c JOIN (SELECT source, row_number() OVER (ORDER BY source) AS rank
                              FROM (SELECT DISTINCT source FROM source_columns)) r USING (source)
  LEFT JOIN sources s ON s.name = c.source
  LEFT JOIN tap_columns t ON t.source = c.source AND lower(t.table_name) = lower(s.table_name)
    AND lower(t.column_name) = lower(c.column_name)
  QUALIFY row_number() OVER (PARTITION BY c.source, c.column_name
                             ORDER BY t.column_index NULLS LAST) = 1"""


def _helper_rows(table_sql: str, helpers: list[Helper], start: str, where: str = "") -> str:
    """SELECTs describing mirror's own columns of `table_sql` (an SQL expression)."""
    parts = []
    for i, (name, dtype, asize, xtype, unit, ucd, principal, indexed, text) in enumerate(helpers):
        parts.append(
            f"SELECT {table_sql}, {_lit(name)}, {_lit(dtype)}, {_lit(asize)}, {_lit(xtype)}, "
            f"NULL, {_lit(text)}, NULL, {_lit(unit)}, {_lit(ucd)}, {indexed}, {principal}, 0, "
            f"{start} + {i} {where}")
    return " UNION ALL ".join(parts)


def _own_columns() -> list[tuple[object, ...]]:
    seen: dict[str, int] = {}
    rows: list[tuple[object, ...]] = []
    for table, column, dtype, text in _OWN_COLUMNS:
        seen[table] = seen.get(table, -1) + 1
        rows.append((table, column, dtype, text, seen[table]))
    return rows


def _columns_sql() -> str:
    union = ("SELECT * FROM described QUALIFY row_number() OVER "
             "(PARTITION BY lower(column_name) ORDER BY rank, position) = 1")
    data = ("datatype, arraysize, xtype, size, description, utype, unit, ucd, indexed, "
            "principal, std")
    n_union = "(SELECT count(*) FROM u)"
    no_tag = "WHERE NOT EXISTS (SELECT 1 FROM u WHERE lower(column_name) = 'mirror_source')"
    parts = [
        f"SELECT 'ivoa.obscore', column_name, {data}, "
        "row_number() OVER (ORDER BY rank, position) - 1 FROM u",
        _helper_rows("'ivoa.obscore'", [SOURCE_HELPER], n_union, no_tag),
        f"SELECT 'ivoa.obscore_withdrawn', column_name, {data}, "
        "row_number() OVER (ORDER BY rank, position) - 1 FROM u",
        _helper_rows("'ivoa.obscore_withdrawn'", [SOURCE_HELPER], n_union, no_tag),
        _helper_rows("'ivoa.obscore_withdrawn'", [WITHDRAWN_HELPER],
                     f"{n_union} + 1", "WHERE EXISTS (SELECT 1 FROM u)"),
        f"SELECT d.source || '.obscore', column_name, {data}, position FROM described d "
        f"JOIN {_SOURCES} USING (source)",
        "SELECT table_name, column_name, "
        "datatype, CASE datatype WHEN 'char' THEN '*' END, NULL, NULL, description, NULL, NULL, "
        "NULL, 0, 1, 1, i FROM " + _values(_own_columns(), "table_name, column_name, datatype, "
                                                          "description, i"),
        "SELECT * FROM " + _values(own_tables.column_rows(), _COLUMN_NAMES),
    ]
    body = " UNION ALL ".join(f"({p})" for p in parts)
    return (f"WITH described AS ({_DESCRIBED}), u AS ({union}) "
            # TAP 1.1 4.3: a column named by an ADQL reserved word is listed delimited ("size")
            "SELECT table_name::VARCHAR AS table_name, CASE WHEN lower(column_name) IN "
            f"({', '.join(_lit(w) for w in sorted(RESERVED))}) THEN '\"' || column_name || '\"' "
            "ELSE column_name END::VARCHAR AS column_name, "
            "datatype::VARCHAR AS datatype, arraysize::VARCHAR AS arraysize, "
            "xtype::VARCHAR AS xtype, size::INTEGER AS size, description::VARCHAR AS description, "
            "utype::VARCHAR AS utype, unit::VARCHAR AS unit, ucd::VARCHAR AS ucd, "
            "indexed::INTEGER AS indexed, principal::INTEGER AS principal, std::INTEGER AS std, "
            "column_index::INTEGER AS column_index "
            f"FROM ({body}) AS c({_COLUMN_NAMES})")


def _tables_sql() -> str:
    any_source = "WHERE EXISTS (SELECT 1 FROM source_columns)"
    own = [("TAP_SCHEMA", name, "table", None, text, 100 + i)
           for i, (name, text) in enumerate(_OWN_TABLES)]
    return f"""SELECT schema_name::VARCHAR AS schema_name, table_name::VARCHAR AS table_name,
        table_type::VARCHAR AS table_type, utype::VARCHAR AS utype,
        description::VARCHAR AS description, table_index::INTEGER AS table_index FROM (
      SELECT 'ivoa', 'ivoa.obscore', 'view', {_lit(OBSCORE_UTYPE)},
        'the current rows of every mirrored source (column mirror_source names the source)', 0
        {any_source}
      UNION ALL SELECT 'ivoa', 'ivoa.obscore_withdrawn', 'view', NULL,
        'mirrored rows that vanished from their service, with withdrawn_at; never deleted', 1
        {any_source}
      UNION ALL SELECT r.source, r.source || '.obscore', 'view', {_lit(OBSCORE_UTYPE)},
        'the current rows mirrored from ' || coalesce(s.table_name, 'ivoa.obscore') || ' at '
        || coalesce(s.url, '(not synced yet)'), 1 + r.rank
        FROM {_SOURCES} r LEFT JOIN sources s ON s.name = r.source
      UNION ALL SELECT * FROM {_values(own, "a, b, c, d, e, f")}
      UNION ALL SELECT * FROM {_values(own_tables.table_rows(), "a, b, c, d, e, f")}
    ) AS t(schema_name, table_name, table_type, utype, description, table_index)"""


def _schemas_sql() -> str:
    own = [("ivoa", None, "IVOA-defined tables: the mirrored ObsCore rows", 0),
           ("TAP_SCHEMA", None, "description of the tables that can be queried here", 100),
           (own_tables.SCHEMA, None, own_tables.SCHEMA_DESCRIPTION, 200)]
    return f"""SELECT schema_name::VARCHAR AS schema_name, utype::VARCHAR AS utype,
        description::VARCHAR AS description, schema_index::INTEGER AS schema_index FROM (
      SELECT * FROM {_values(own, "a, b, c, d")}
      WHERE a <> 'ivoa' OR EXISTS (SELECT 1 FROM source_columns)
      UNION ALL SELECT source, NULL, 'the rows mirrored from source ' || source, rank
        FROM {_SOURCES}
    ) AS s(schema_name, utype, description, schema_index)"""


# TAP 1.1 section 4: the foreign keys between the TAP_SCHEMA tables, (id, from, target, columns)
_KEYS = (("ts_tables_schema", _TS[1], _TS[0], "schema_name", "schema_name"),
         ("ts_columns_table", _TS[2], _TS[1], "table_name", "table_name"),
         ("ts_keys_from", _TS[3], _TS[1], "from_table", "table_name"),
         ("ts_keys_target", _TS[3], _TS[1], "target_table", "table_name"),
         ("ts_key_columns_key", _TS[4], _TS[3], "key_id", "key_id"))
_EMPTY = {
    "keys": "SELECT key_id::VARCHAR AS key_id, from_table::VARCHAR AS from_table, "
            "target_table::VARCHAR AS target_table, NULL::VARCHAR AS utype, "
            "NULL::VARCHAR AS description FROM "
            + _values([k[:3] for k in _KEYS], "key_id, from_table, target_table"),
    "key_columns": "SELECT key_id::VARCHAR AS key_id, from_column::VARCHAR AS from_column, "
                   "target_column::VARCHAR AS target_column FROM "
                   + _values([(k[0], k[3], k[4]) for k in _KEYS],
                             "key_id, from_column, target_column"),
}


def refresh(conn: sa.Connection) -> None:
    """(Re)create the TAP_SCHEMA views (cheap: they hold no rows of their own)."""
    conn.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{SCHEMA}"')
    views = {"schemas": _schemas_sql(), "tables": _tables_sql(), "columns": _columns_sql(),
             **_EMPTY}
    for name, sql in views.items():
        conn.exec_driver_sql(f'CREATE OR REPLACE VIEW "{SCHEMA}".{name} AS {sql}')
    own_tables.create_views(conn)
    conn.info[SCHEMA_CHANGED] = True  # Catalogue.begin tells this process's readers on commit
