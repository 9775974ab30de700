"""What a local ADQL query may name: the catalogue's own TAP_SCHEMA views, as a TableMap.

ADQL names and local SQL names differ only for the per-source tables: `<source>.obscore` is the
view `source_obscore."<source>"`; `ivoa.*` and `TAP_SCHEMA.*` are what they say. Lookups are
case-insensitive, as ADQL's regular identifiers are.
"""

from __future__ import annotations

from collections.abc import Iterable

import duckdb

from mirror.adql import HPX_COLUMN
from mirror.catalogue import own_tables
from mirror.catalogue.obscore import SOURCE_SCHEMA, q
from mirror.catalogue.tap_schema_views import HPX_HELPER, RESERVED_SCHEMAS
from mirror.catalogue.tap_schema_views import SCHEMA as TAP_SCHEMA
from mirror.catalogue.types import ColumnSpec
from mirror.errors import CatalogueError


def local_parts(adql_table: str) -> tuple[str, str]:
    """(schema, view) holding a table listed in the local TAP_SCHEMA.tables."""
    schema, _, table = adql_table.partition(".")
    if schema.lower() == own_tables.SCHEMA:  # the file's own name: see own_tables
        return own_tables.LOCAL_SCHEMA, table
    if schema.lower() in RESERVED_SCHEMAS:
        return schema, table
    return SOURCE_SCHEMA, schema.lower()  # `<source>.obscore`, as obscore.source_view names it


def local_name(adql_table: str) -> str:
    """The local SQL name of a table listed in the local TAP_SCHEMA.tables."""
    schema, table = local_parts(adql_table)
    return f"{q(schema)}.{q(table)}"


class CatalogueTables:
    """The TableMap of `mirror.adql.translate` over the tables the local TAP_SCHEMA lists."""

    def __init__(self, columns: dict[str, list[ColumnSpec]],
                 types: dict[tuple[str, str], dict[str, str]] | None = None) -> None:
        """`columns` maps each ADQL table name (`ivoa.obscore`) to its columns, in order;
        `types` each local (schema, view), lower-cased, to its columns' DuckDB types."""
        self._adql = {name.lower(): name for name in columns}
        self._local = {name.lower(): local_name(name) for name in columns}
        self._columns = {self._local[name.lower()]: cols for name, cols in columns.items()}
        types = types or {}
        self._types = {}
        for name in columns:
            schema, view = local_parts(name)
            self._types[local_name(name)] = types.get((schema.lower(), view.lower()), {})

    @classmethod
    def load(cls, con: duckdb.DuckDBPyConnection) -> CatalogueTables:
        """Read the local TAP_SCHEMA (created by the writer at each sync and `mirror init`)."""
        found = con.execute("SELECT count(*) FROM duckdb_views() WHERE schema_name = ? "
                            "AND view_name = 'columns'", [TAP_SCHEMA]).fetchall()
        if not found[0][0]:
            raise CatalogueError("the catalogue has no local TAP_SCHEMA yet",
                                 "run `mirror init` (or `mirror sync`) once to create it")
        rows = con.execute(
            f'SELECT c.table_name, column_name, datatype, arraysize, xtype, unit, ucd, c.utype, '
            f'c.description FROM "{TAP_SCHEMA}".columns c JOIN "{TAP_SCHEMA}".tables t '
            "USING (table_name) ORDER BY t.table_index, c.table_name, c.column_index").fetchall()
        columns: dict[str, list[ColumnSpec]] = {}
        for table, name, *meta in rows:  # TAP_SCHEMA lists a reserved word delimited: "size"
            columns.setdefault(table, []).append(ColumnSpec(name.strip('"'), *meta))
        types: dict[tuple[str, str], dict[str, str]] = {}
        for schema, view, column, dtype in con.execute(
                "SELECT lower(schema_name), lower(table_name), column_name, data_type "
                "FROM duckdb_columns() WHERE NOT internal").fetchall():
            types.setdefault((schema, view), {})[column] = dtype
        for table, cols in columns.items():  # _hpx: queryable, not listed (no ADQL identifier)
            schema, view = local_parts(table)
            if HPX_COLUMN in types.get((schema.lower(), view.lower()), {}):
                cols.append(ColumnSpec(HPX_COLUMN, "long", ucd="pos.healpix",
                                       description=HPX_HELPER[-1]))
        return cls(columns, types)

    # -- the TableMap protocol ----------------------------------------------------------------

    def resolve(self, schema: str | None, table: str) -> str | None:
        """Local name of `schema.table`; an unqualified name when one table has it (`ivoa`
        first)."""
        if schema is not None:
            return self._local.get(f"{schema}.{table}".lower())
        matches = [k for k in self._local if k.partition(".")[2] == table.lower()]
        if len(matches) > 1:
            matches = [k for k in matches if k.startswith("ivoa.")]
        return self._local[matches[0]] if len(matches) == 1 else None

    def columns(self, local: str) -> list[str]:
        return [c.name for c in self._columns.get(local, [])]

    def names(self) -> list[str]:
        return list(self._adql.values())

    def units(self, local: str) -> dict[str, str]:
        """Column -> unit (for IN_UNIT)."""
        return {c.name: c.unit for c in self._columns.get(local, []) if c.unit}

    def types(self, local: str) -> dict[str, str]:
        """Column -> DuckDB type (for ADQL's integer division)."""
        return self._types.get(local, {})

    # -- for result metadata ------------------------------------------------------------------

    def metadata(self, locals_used: Iterable[str]) -> dict[str, ColumnSpec]:
        """Columns of the tables a query used, by lower-case name (the first table wins)."""
        out: dict[str, ColumnSpec] = {}
        for local in locals_used:
            for col in self._columns.get(local, []):
                out.setdefault(col.name.lower(), col)
        return out
