"""A query's rows (Arrow, as DuckDB hands them over) and their astropy view with units and UCDs."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mirror.catalogue.types import ColumnSpec

if TYPE_CHECKING:  # astropy.table (with the I/O plugins it loads) costs ~0.2 s of start-up
    from astropy.table import Column, Table


@dataclass
class QueryResult:
    """Rows of one local query. `overflow` is TAP's QUERY_STATUS=OVERFLOW: more rows matched
    than `maxrec`, and only the first `maxrec` are here."""

    arrow: pa.Table
    overflow: bool = False
    columns: dict[str, ColumnSpec] = field(default_factory=dict)
    adql: str = ""
    sql: str = ""
    seconds: float = 0.0

    @functools.cached_property
    def table(self) -> Table:
        """The rows as an astropy Table; columns known to TAP_SCHEMA carry unit, UCD, utype
        and description; `meta['QUERY_STATUS']` is OK or OVERFLOW."""
        return to_astropy(self.arrow, self.columns, overflow=self.overflow)

    def to_arrow(self) -> pa.Table:
        """The rows as a pyarrow Table (field metadata: unit, ucd, utype, description)."""
        return self.arrow

    def to_pandas(self) -> Any:
        return self.arrow.to_pandas()

    def __len__(self) -> int:
        return self.arrow.num_rows


def unique_names(names: list[str]) -> list[str]:
    """Output names as astropy and VOTable need them: unique (`n`, `n_2`, ...)."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        key = name.lower()
        seen[key] = seen.get(key, 0) + 1
        out.append(name if seen[key] == 1 else f"{name}_{seen[key]}")
    return out


def annotate(arrow: pa.Table, columns: dict[str, ColumnSpec]) -> pa.Table:
    """Attach each known column's unit, UCD, utype, description and xtype as field metadata,
    so Parquet keeps them."""
    fields = []
    for f in arrow.schema:
        meta = columns.get(f.name.lower())
        pairs = {} if meta is None else {
            k: v for k in ("unit", "ucd", "utype", "description", "xtype")
            if (v := getattr(meta, k))}
        fields.append(f.with_metadata(pairs) if pairs else f)
    return pa.Table.from_arrays(arrow.columns, schema=pa.schema(fields))


def to_astropy(arrow: pa.Table, columns: dict[str, ColumnSpec], *,
               overflow: bool = False) -> Table:
    """Arrow -> astropy, NULLs masked, metadata from `columns` (by lower-case name)."""
    import astropy.units as u
    from astropy.table import Table

    out = Table(meta={"QUERY_STATUS": "OVERFLOW" if overflow else "OK"})
    for name, data in zip(arrow.column_names, arrow.columns, strict=True):
        col = _column(name, data)
        meta = columns.get(name.lower())
        if meta is not None:
            if meta.unit:
                col.unit = u.Unit(meta.unit, format="vounit", parse_strict="silent")
            col.description = meta.description
            col.meta.update({k: v for k in ("ucd", "utype", "xtype")
                             if (v := getattr(meta, k))})
        out.add_column(col)
    return out


def _column(name: str, data: pa.ChunkedArray) -> Column:
    from astropy.table import Column, MaskedColumn

    typ = data.type
    mask = data.is_null().to_numpy(zero_copy_only=False) if data.null_count else None
    if pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_boolean(typ):
        filled = data.fill_null(False if pa.types.is_boolean(typ) else 0)
        values = np.asarray(filled.to_numpy(zero_copy_only=False))
    elif pa.types.is_timestamp(typ) or pa.types.is_date(typ):
        values = np.asarray(data.to_numpy(zero_copy_only=False))
    elif pa.types.is_string(typ) or pa.types.is_large_string(typ):
        values = np.asarray(pc.fill_null(data, "").to_numpy(zero_copy_only=False), dtype=str)
    elif pa.types.is_list(typ) or pa.types.is_large_list(typ):
        values = np.empty(len(data), dtype=object)
        values[:] = [np.asarray(v) if v is not None else np.asarray([])
                     for v in data.to_pylist()]
    else:  # decimals, intervals, ...: their text
        values = np.asarray(["" if v is None else str(v) for v in data.to_pylist()], dtype=str)
    if mask is not None and mask.any():
        return MaskedColumn(values, name=name, mask=mask)
    return Column(values, name=name)
