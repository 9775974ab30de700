"""VOTable column metadata -> local DuckDB types and the SQL that loads CSV text into them.

Pages arrive as CSV (the fast path); numbers are parsed by pyarrow with the type the service
declared, everything else arrives as text and is cast by DuckDB with an expression from here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pyarrow as pa

_SCALARS: dict[str, tuple[str, pa.DataType]] = {
    "unsignedByte": ("UTINYINT", pa.uint8()),
    "short": ("SMALLINT", pa.int16()),
    "int": ("INTEGER", pa.int32()),
    "long": ("BIGINT", pa.int64()),
    "float": ("FLOAT", pa.float32()),
    "double": ("DOUBLE", pa.float64()),
}
# DALI/ADQL geometry is kept as the text the service sends (STC-S or DALI number lists): the ADQL
# layer parses both, and text round-trips exactly.
_NUMBER = re.compile(r"^-?[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?$")
GEOMETRY_XTYPES = {"point", "circle", "polygon", "moc", "region", "shape", "multipolygon"}


@dataclass(frozen=True)
class ColumnSpec:
    """A column as the service describes it (VOTable FIELD and TAP_SCHEMA)."""

    name: str
    datatype: str = "char"
    arraysize: str | None = None
    xtype: str | None = None
    unit: str | None = None
    ucd: str | None = None
    utype: str | None = None
    description: str | None = None
    null_value: str | None = None

    @property
    def plain_xtype(self) -> str:
        """The xtype without a namespace prefix (`adql:REGION` -> `region`)."""
        return (self.xtype or "").split(":")[-1].lower()

    @property
    def is_array(self) -> bool:
        text = self.datatype in ("char", "unicodeChar")
        return not text and self.arraysize not in (None, "", "1")


def local_type(col: ColumnSpec) -> str:
    """The DuckDB type that holds `col` without loss."""
    if col.plain_xtype == "timestamp":
        return "TIMESTAMP"
    if col.plain_xtype in GEOMETRY_XTYPES or col.datatype in ("char", "unicodeChar"):
        return "VARCHAR"
    if col.datatype == "boolean":
        return "BOOLEAN[]" if col.is_array else "BOOLEAN"
    scalar = _SCALARS.get(col.datatype)
    if scalar is None:  # complex numbers, bits: keep the text
        return "VARCHAR"
    return f"{scalar[0]}[]" if col.is_array else scalar[0]


def arrow_type(col: ColumnSpec) -> pa.DataType:
    """How pyarrow should parse the CSV text of `col` (text unless a plain number)."""
    typ = local_type(col)
    scalar = _SCALARS.get(col.datatype)
    if scalar is not None and typ == scalar[0]:
        return scalar[1]
    return pa.string()


def load_expression(col: ColumnSpec, quoted: str) -> str:
    """SQL turning the parsed CSV column `quoted` into the local type, nulls applied."""
    typ = local_type(col)
    if typ.endswith("[]"):
        expr = (f"CASE WHEN trim({quoted}) = '' THEN NULL ELSE "
                f"CAST(string_split(regexp_replace(trim({quoted}), '\\s+', ' ', 'g'), ' ') "
                f"AS {typ}) END")
    elif arrow_type(col) == pa.string() and typ != "VARCHAR":
        expr = f"CAST({quoted} AS {typ})"
    else:
        expr = quoted
    if _NUMBER.match(col.null_value or "") and typ not in ("VARCHAR", "TIMESTAMP") \
            and not typ.endswith("[]"):  # the pattern keeps a hostile VALUES null out of SQL
        expr = f"NULLIF({expr}, {col.null_value})"
    return expr
