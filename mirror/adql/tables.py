"""Tables and columns: ADQL names -> the catalogue's local tables, checked, with output names.

`bind` walks the query scope by scope (CTEs first, each seeing only the ones before it), maps
every table through the `TableMap` (case-insensitive; an unknown name suggests close ones),
aliases it with its ADQL name so qualified columns (`ivoa.obscore.s_ra`) keep working, checks
every column against the tables in scope (suggesting close names), and works out the names of
the result's columns, `*` expanded. The HEALPix column is kept out of `*`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Protocol

from sqlglot import exp

from mirror.errors import UnknownColumnError, UnknownTableError

from .dialect import adql_name

HPX_COLUMN = "_hpx"
HPX_DEPTH = 29


class TableMap(Protocol):
    """Where ADQL table names live locally. Optional extras a map may also offer, used when
    present: `names()` (ADQL names, for suggestions), `units(local)` and `types(local)`
    (column -> unit / DuckDB type, for IN_UNIT and integer division)."""

    def resolve(self, schema: str | None, table: str) -> str | None:
        """Local SQL name (already quoted as needed) for an ADQL table name, case-insensitive;
        None if unknown."""

    def columns(self, local: str) -> list[str]:
        """Column names of a local table/view (for validation and 'did you mean' suggestions)."""


@dataclass(frozen=True)
class TableInfo:
    """One local table as a `StaticTableMap` knows it."""

    local: str
    columns: tuple[str, ...]
    units: Mapping[str, str] = field(default_factory=dict)
    types: Mapping[str, str] = field(default_factory=dict)


class StaticTableMap:
    """A `TableMap` over a fixed mapping of ADQL names ('schema.table') to `TableInfo`."""

    def __init__(self, tables: Mapping[str, TableInfo]) -> None:
        self._tables = {name.lower(): info for name, info in tables.items()}
        self._by_local = {info.local: info for info in tables.values()}
        self._names = list(tables)

    def resolve(self, schema: str | None, table: str) -> str | None:
        key = f"{schema}.{table}".lower() if schema else table.lower()
        info = self._tables.get(key)
        if info is None and not schema:
            hits = [i for n, i in self._tables.items() if n.rpartition(".")[2] == key]
            info = hits[0] if len(hits) == 1 else None
        return info.local if info else None

    def columns(self, local: str) -> list[str]:
        info = self._by_local.get(local)
        return list(info.columns) if info else []

    def names(self) -> list[str]:
        return list(self._names)

    def units(self, local: str) -> Mapping[str, str]:
        info = self._by_local.get(local)
        return info.units if info else {}

    def types(self, local: str) -> Mapping[str, str]:
        info = self._by_local.get(local)
        return info.types if info else {}


@dataclass
class Source:
    """Something a FROM clause reads: a local table, a CTE or a subquery."""

    alias: str
    columns: list[str] | None  # None: not known (the map listed none)
    local: str | None = None
    query: exp.Expr | None = None
    qualified: tuple[str, str] = ("", "")  # (schema, table) as written, lower-cased
    drop: set[str] = field(default_factory=set)  # USING / NATURAL columns shown once

    def find(self, name: str) -> str | None:
        """The column's own spelling, if this source has it."""
        low = name.lower()
        return next((c for c in self.columns or () if c.lower() == low), None)


@dataclass
class Binding:
    """What binding learnt: result column names, local tables, each column's source."""

    tablemap: TableMap
    columns: list[str] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    sources: dict[int, Source] = field(default_factory=dict)  # id(Column) -> its source
    scopes: dict[int, list[Source]] = field(default_factory=dict)  # id(Select) -> FROM
    keep: list[exp.Expr] = field(default_factory=list)  # keeps the ids above valid

    def source_of(self, column: exp.Expr) -> Source | None:
        return self.sources.get(id(column))

    def extra(self, method: str, local: str) -> Mapping[str, str]:
        """An optional per-table mapping (`units`, `types`) of the TableMap, lower-cased keys."""
        get = getattr(self.tablemap, method, None)
        found = get(local) if callable(get) else None
        return {k.lower(): v for k, v in (found or {}).items()}


@lru_cache(maxsize=512)
def _local_table(local: str) -> exp.Table:
    return exp.to_table(local, dialect="duckdb")


def bind(root: exp.Expr, tablemap: TableMap) -> Binding:
    """Resolve tables, check columns, name the result's columns (see the module docstring)."""
    b = _Binder(Binding(tablemap))
    visible: dict[str, Source] = {}
    with_ = root.args.get("with_")
    for cte in with_.expressions if with_ else ():
        names = b.query(cte.this, dict(visible), [])
        visible[cte.alias.lower()] = Source(cte.alias, names, query=cte.this)
    names = b.query(root, visible, [])
    b.binding.columns = names if names is not None else ["*"]
    return b.binding


class _Binder:
    def __init__(self, binding: Binding) -> None:
        self.binding = binding

    def query(self, q: exp.Expr, visible: dict[str, Source],
              outer: list[list[Source]]) -> list[str] | None:
        if isinstance(q, exp.Subquery):
            return self.query(q.this, visible, outer)
        if isinstance(q, exp.SetOperation):
            names = self.query(q.left, visible, outer)
            self.query(q.right, visible, outer)
            return names
        assert isinstance(q, exp.Select)
        return self.select(q, visible, outer)

    def select(self, sel: exp.Select, visible: dict[str, Source],
               outer: list[list[Source]]) -> list[str] | None:
        sources: list[Source] = []
        conditions: list[exp.Expr] = []
        from_ = sel.args["from_"]
        items = [from_.this] + [j for j in sel.args.get("joins") or []]
        for item in items:
            self.from_item(item, visible, outer, sources, conditions)
        self.binding.scopes[id(sel)] = sources
        scope = [sources, *outer]
        aliases = {p.alias.lower() for p in sel.expressions if isinstance(p, exp.Alias)}
        parts = [*sel.expressions, *conditions,
                 *(sel.args.get(k) for k in ("where", "group", "having", "order"))]
        for part in parts:
            for node in _own_nodes(part):
                if isinstance(node, (exp.Select, exp.SetOperation)):
                    self.query(node, visible, scope)
                elif isinstance(node, exp.Column):
                    self.column(node, scope, aliases)
        names: list[str] | None = []
        for proj in sel.expressions:
            got = self.output_names(proj, sources)
            names = None if got is None or names is None else names + got
        return names

    def from_item(self, item: exp.Expr, visible: dict[str, Source],
                  outer: list[list[Source]], sources: list[Source],
                  conditions: list[exp.Expr]) -> None:
        join = item if isinstance(item, exp.Join) else None
        node = item.this if join else item
        before = len(sources)
        if isinstance(node, exp.Subquery) and not node.alias:  # a parenthesised join
            self.from_item(node.this, visible, outer, sources, conditions)
        elif isinstance(node, exp.Subquery):
            names = self.query(node.this, visible, outer)
            sources.append(Source(node.alias, names, query=node.this))
        else:
            assert isinstance(node, exp.Table)
            sources.append(self.table(node, visible, sources))
            for inner in node.args.get("joins") or []:
                self.from_item(inner, visible, outer, sources, conditions)
        if join is None:
            return
        if join.args.get("on") is not None:
            conditions.append(join.args["on"])
        right = sources[before:]
        using = {i.name.lower() for i in join.args.get("using") or []}
        if (join.method or "").upper() == "NATURAL":
            seen = {c.lower() for s in sources[:before] for c in s.columns or ()}
            using = {c.lower() for s in right for c in s.columns or () if c.lower() in seen}
        for s in right:
            s.drop |= using

    def table(self, node: exp.Table, visible: dict[str, Source],
              sources: list[Source]) -> Source:
        name, schema = node.name, node.db
        if not schema and name.lower() in visible:
            cte = visible[name.lower()]
            return Source(node.alias_or_name, cte.columns, query=cte.query)
        tablemap = self.binding.tablemap
        local = tablemap.resolve(schema or None, name)
        shown = f"{schema}.{name}" if schema else name
        if local is None:
            raise _unknown_table(shown, tablemap)
        alias = node.alias
        if not alias:
            taken = {s.alias.lower() for s in sources}
            alias = name if name.lower() not in taken else f"{schema}_{name}"
            node.set("alias", exp.TableAlias(this=exp.to_identifier(alias)))
        target = _local_table(local)
        for key in ("this", "db", "catalog"):
            value = target.args.get(key)
            node.set(key, value.copy() if value is not None else None)
        if local not in self.binding.tables:
            self.binding.tables.append(local)
        columns = tablemap.columns(local)
        return Source(alias, list(columns) or None, local=local,
                      qualified=(schema.lower(), name.lower()))

    def column(self, col: exp.Column, scope: list[list[Source]], aliases: set[str]) -> None:
        qualifier = col.table
        name = col.name
        if qualifier:
            src = _find_source(col, scope)
            if src is None:
                shown = ".".join(p for p in (col.db, qualifier) if p)
                known = [s.alias for level in scope for s in level]
                raise UnknownColumnError(
                    f"{col.sql()}: there is no table or alias {shown!r} in this query",
                    _did_you_mean(shown, known), suggestions=tuple(known))
            col.set("db", None)
            col.set("catalog", None)
            col.set("table", exp.to_identifier(src.alias))
            if isinstance(col.this, exp.Star):
                return
            if src.columns is not None and src.find(name) is None:
                raise _unknown_column(name, src.columns, f"in {src.alias}")
            self._record(col, src)
            return
        candidates: list[str] = []
        for level in scope:
            for src in level:
                if src.columns is None or src.find(name) is not None:
                    self._record(col, src)
                    return
                candidates += src.columns
            if name.lower() in aliases:
                return
            aliases = set()
        raise _unknown_column(name, candidates, "in the query's tables")

    def _record(self, col: exp.Column, src: Source) -> None:
        self.binding.sources[id(col)] = src
        self.binding.keep.append(col)

    def output_names(self, proj: exp.Expr, sources: list[Source]) -> list[str] | None:
        """The names `proj` contributes to the result (several for a star)."""
        if isinstance(proj, exp.Star) or (isinstance(proj, exp.Column)
                                          and isinstance(proj.this, exp.Star)):
            star = proj if isinstance(proj, exp.Star) else proj.this
            chosen = sources if isinstance(proj, exp.Star) else \
                [s for s in sources if s.alias.lower() == proj.table.lower()]
            hidden = [s for s in chosen if s.local and s.find(HPX_COLUMN)]
            if hidden:
                star.set("except_", [exp.column(HPX_COLUMN, table=exp.to_identifier(s.alias))
                                     for s in hidden])
            names: list[str] = []
            for s in chosen:
                if s.columns is None:
                    return None
                names += [c for c in s.columns if c.lower() not in s.drop
                          and not (s.local and c.lower() == HPX_COLUMN)]
            return names
        return [output_name(proj, self.binding)]


def output_name(proj: exp.Expr, binding: Binding) -> str:
    """The name ADQL gives an unstarred output column."""
    if isinstance(proj, exp.Alias):
        return proj.alias
    if isinstance(proj, exp.Paren):
        return output_name(proj.this, binding)
    if isinstance(proj, exp.Column):
        src = binding.source_of(proj)
        return (src.find(proj.name) if src else None) or proj.name
    if isinstance(proj, exp.Cast) and isinstance(proj.this, exp.Column):
        return output_name(proj.this, binding)
    name = adql_name(proj)
    if name is not None:
        return name.lower()
    if isinstance(proj, (exp.Count, exp.Min, exp.Max, exp.Avg, exp.Sum, exp.Lower, exp.Upper,
                         exp.Coalesce)):
        return proj.key.lower()
    return "expr"


def _find_source(col: exp.Column, scope: list[list[Source]]) -> Source | None:
    table, db = col.table.lower(), col.db.lower()
    for level in scope:
        for src in level:
            if db and src.qualified == (db, table):
                return src
            if not db and src.alias.lower() == table:
                return src
    return None


def _own_nodes(node: exp.Expr | None) -> Iterator[exp.Expr]:
    """`node` and what is under it, not entering nested queries (yielded, not walked)."""
    if node is None:
        return
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        if current is not node and isinstance(current, (exp.Select, exp.SetOperation)):
            continue
        if isinstance(current, exp.Subquery):
            yield current.this
            continue
        stack.extend(current.iter_expressions())


def _unknown_table(shown: str, tablemap: TableMap) -> UnknownTableError:
    names_of = getattr(tablemap, "names", None)
    known = list(names_of()) if callable(names_of) else []
    close = difflib.get_close_matches(shown.lower(), [k.lower() for k in known], n=5, cutoff=0.5)
    close = [k for k in known if k.lower() in close]
    hint = _did_you_mean(shown, close) if close else \
        "the catalogue's tables are listed in TAP_SCHEMA.tables"
    return UnknownTableError(f"table {shown} is not in this catalogue", hint,
                             suggestions=tuple(close))


def _unknown_column(name: str, candidates: list[str], where: str) -> UnknownColumnError:
    close = difflib.get_close_matches(name.lower(), [c.lower() for c in candidates], n=5,
                                      cutoff=0.5)
    close = list(dict.fromkeys(c for c in candidates if c.lower() in close))
    hint = _did_you_mean(name, close) if close else \
        "the columns are listed in TAP_SCHEMA.columns"
    return UnknownColumnError(f"column {name!r} does not exist {where}", hint,
                              suggestions=tuple(close))


def _did_you_mean(name: str, close: list[str]) -> str:
    if not close:
        return f"check the spelling of {name!r}"
    return "did you mean " + " or ".join(repr(c) for c in close[:5]) + "?"
