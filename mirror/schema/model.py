"""What the schema catalogue knows of each table and column (plain values, JSON-ready)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from mirror.schema.explain import explain_ucd, explain_unit


def bare(name: str) -> str:
    """A column name as TAP_SCHEMA may list it, delimited (`"size"`), without the quotes."""
    if len(name) > 1 and name[0] == name[-1] == '"':
        return name[1:-1].replace('""', '"')
    return name


@dataclass
class ColumnProfile:
    """Measured from the local rows (mirror.column_profiles)."""

    rows: int
    nulls: int
    null_fraction: float | None
    distinct: int | None
    min: str | None
    max: str | None
    examples: list[str]
    computed_at: str | None = None


@dataclass
class TableProfile:
    """Measured from the local rows (mirror.table_profiles)."""

    rows: int
    positions: int | None = None
    moc: str | None = None
    moc_depth: int | None = None
    sky_fraction: float | None = None
    t_min_mjd: float | None = None
    t_max_mjd: float | None = None
    t_min_iso: str | None = None
    t_max_iso: str | None = None
    seconds: float | None = None
    computed_at: str | None = None


@dataclass
class Column:
    """One queryable column, described as the local TAP_SCHEMA has it, plus what we add."""

    table: str
    name: str
    datatype: str | None = None
    arraysize: str | None = None
    xtype: str | None = None
    local_type: str | None = None
    unit: str | None = None
    ucd: str | None = None
    utype: str | None = None
    description: str | None = None
    principal: bool = False
    indexed: bool = False
    std: bool = False
    standard: str | None = None    # e.g. "ObsCore 1.1"; None: the service's own column
    sources: list[str] = field(default_factory=list)  # which sources publish it
    index: int = 0
    profile: ColumnProfile | None = None

    @property
    def qualified(self) -> str:
        return f"{self.table}.{self.name}"

    @property
    def adql_type(self) -> str:
        """`char(*)`, `double`, `char(*) timestamp`: the type as TAP_SCHEMA gives it."""
        text = self.datatype or "?"
        if self.arraysize:
            text += f"({self.arraysize})"
        return f"{text} {self.xtype}" if self.xtype else text

    @property
    def unit_words(self) -> str | None:
        return explain_unit(self.unit)

    @property
    def ucd_words(self) -> str | None:
        return explain_ucd(self.ucd)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(qualified=self.qualified, unit_explained=self.unit_words,
                 ucd_explained=self.ucd_words)
        return d


@dataclass
class Table:
    """One queryable table with its columns."""

    name: str
    schema: str
    description: str | None = None
    table_type: str | None = None
    utype: str | None = None
    index: int = 0
    rows: int | None = None
    columns: list[Column] = field(default_factory=list)
    profile: TableProfile | None = None

    def column(self, name: str) -> Column | None:
        return next((c for c in self.columns if c.name.lower() == name.lower()), None)

    def as_dict(self, columns: bool = True) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "columns"}
        if columns:
            d["columns"] = [c.as_dict() for c in self.columns]
        return d


@dataclass
class Catalogue:
    """Every queryable table, in TAP_SCHEMA order."""

    tables: list[Table]
    notes: list[str] = field(default_factory=list)  # what could not be loaded, and why

    def table(self, name: str) -> Table | None:
        return next((t for t in self.tables if t.name.lower() == name.lower()), None)

    def columns(self) -> list[Column]:
        return [c for t in self.tables for c in t.columns]

    def as_json(self) -> str:
        return json.dumps({"tables": [t.as_dict() for t in self.tables], "notes": self.notes},
                          default=str)
