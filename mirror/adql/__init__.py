"""ADQL 2.1 -> DuckDB SQL over the local catalogue: pure translation, no database.

    translation = translate("SELECT TOP 10 * FROM ivoa.obscore WHERE ...", tables, maxrec=1000)
    con.execute(m) for m in MACROS      # once per connection (TEMP macros)
    con.execute(translation.sql).fetchmany(translation.limit + 1)   # +1 to see OVERFLOW

The steps: parse with the ADQL dialect (`dialect`), refuse what is not a query (`safety`),
check ADQL's own rules (`checks`), map tables and check columns (`tables`), add the HEALPix
prefilter (`prefilter`), lower ADQL's functions and geometry to DuckDB (`rewrite`, `geometry`).
`cache.TranslationCache` gives the same translations, remembering cone-search shapes whose SQL
is a template of their CIRCLE numbers (clients send one shape with many centres).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlglot import exp
from sqlglot.dialects.dialect import Dialect

from mirror.errors import AdqlError

from . import checks, prefilter, rewrite, safety
from .dialect import parse
from .geometry import MACRO_NAMES, MACROS
from .tables import HPX_COLUMN, HPX_DEPTH, StaticTableMap, TableInfo, TableMap, bind

__all__ = ["HPX_COLUMN", "HPX_DEPTH", "MACROS", "StaticTableMap", "TableInfo", "TableMap",
           "Translation", "translate"]

_OUTPUT_CALLS = frozenset(MACRO_NAMES | rewrite.DUCKDB_CALLS)
_DUCKDB = Dialect.get_or_raise("duckdb")


@dataclass(frozen=True)
class Translation:
    """An ADQL query as one read-only DuckDB statement.

    `sql` already stops after `limit` + 1 rows when MAXREC is what binds, so a caller that
    fetches everything can still tell an overflow (more rows than `limit`) from a full result.
    `geometry` names the result columns that hold ADQL geometry values, with their DALI xtype
    (the values are DALI text, e.g. '10.0 20.0' for a point).
    """

    sql: str
    columns: list[str]
    limit: int | None
    tables: list[str]
    geometry: dict[str, str] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)  # `col AS name`: name -> col


def translate(adql: str, tables: TableMap, *, maxrec: int | None = None,
              prefilter_spatial: bool = True) -> Translation:
    """Translate one ADQL query for the tables `tables` maps; raises an `AdqlError` subclass."""
    if maxrec is not None and maxrec < 0:
        raise AdqlError(f"MAXREC must not be negative ({maxrec})")
    tokens = safety.TokenCheck()
    tree = safety.check_statement(parse(adql, tokens))
    safety.check_nodes(tree)
    checks.check_query(tree, adql, tokens.conditional_joins)
    binding = bind(tree, tables)
    geometry = _geometry_columns(tree, binding.columns)
    aliases = _aliases(tree)
    if prefilter_spatial:
        prefilter.apply(tree, binding)
    tree = rewrite.lower(tree, binding)
    limit = _cap(tree, maxrec)
    safety.check_output(tree, _OUTPUT_CALLS)
    sql = _DUCKDB.generate(tree, copy=False, comments=False, normalize_functions="lower")
    return Translation(sql, list(binding.columns), limit, list(binding.tables), geometry,
                       aliases)


def _aliases(tree: exp.Expr) -> dict[str, str]:
    """Result columns that rename a plain column: they keep its unit, UCD and description."""
    if not isinstance(tree, exp.Select):
        return {}
    return {p.alias: p.this.name for p in tree.expressions
            if isinstance(p, exp.Alias) and isinstance(p.this, exp.Column)}


def _cap(tree: exp.Expr, maxrec: int | None) -> int | None:
    """The effective row cap (TOP and MAXREC); puts LIMIT maxrec+1 on the SQL if MAXREC binds."""
    top = None
    limit = tree.args.get("limit")
    if isinstance(tree, exp.Select) and limit is not None:
        top = int(limit.expression.this)
    if maxrec is None:
        return top
    if top is None or top > maxrec:
        tree.set("limit", exp.Limit(expression=exp.Literal.number(maxrec + 1)))
        return maxrec
    return top


def _geometry_columns(tree: exp.Expr, names: list[str]) -> dict[str, str]:
    first = tree
    while isinstance(first, exp.SetOperation):
        first = first.left
    while isinstance(first, exp.Subquery):
        first = first.this
    if not isinstance(first, exp.Select) or any(isinstance(p, exp.Star) or (
            isinstance(p, exp.Column) and isinstance(p.this, exp.Star))
            for p in first.expressions):
        return {}
    out = {}
    for name, proj in zip(names, first.expressions, strict=False):
        value = proj.this if isinstance(proj, exp.Alias) else proj
        xtype = checks.kind(value)
        if xtype in ("point", "circle", "polygon", "region"):
            out[name] = xtype
    return out
