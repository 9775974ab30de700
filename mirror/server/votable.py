"""TAP results as VOTable 1.4, written straight from Arrow: BINARY2 (the default) or TABLEDATA.

Astropy's writer builds a Python object per cell and took longer than a cone search itself, so
the service writes the document here: FIELDs carry datatype, arraysize, xtype, unit, UCD, utype
and description; QUERY_STATUS is OK before the table and OVERFLOW after it (DALI 1.1 4.4.1).
Geometry columns with a DALI xtype (point, circle, polygon) are double arrays.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mirror.adql.geometry import region_values
from mirror.catalogue.types import ColumnSpec

NS = "http://www.ivoa.net/xml/VOTable/v1.3"
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
DALI_GEOMETRY = {"point": "2", "circle": "3", "polygon": "*"}
_NUMERIC = {  # arrow type id -> (VOTable datatype, numpy big-endian dtype)
    pa.bool_(): ("boolean", None), pa.uint8(): ("unsignedByte", ">u1"),
    pa.int8(): ("short", ">i2"), pa.int16(): ("short", ">i2"), pa.uint16(): ("int", ">i4"),
    pa.int32(): ("int", ">i4"), pa.uint32(): ("long", ">i8"), pa.int64(): ("long", ">i8"),
    pa.uint64(): ("long", ">i8"), pa.float32(): ("float", ">f4"), pa.float64(): ("double", ">f8"),
}

_NUMERIC_BY_ID = {t.id: v for t, v in _NUMERIC.items()}  # a type's id: no hashing of the type
# a cone search answers a few rows: up to FEW_ROWS, cells are packed by struct, without numpy's
# per-call cost (converting a 1-row column cost more than packing it)
FEW_ROWS = 32
_PACK = {">f8": struct.Struct(">d"), ">f4": struct.Struct(">f"), ">i8": struct.Struct(">q"),
         ">i4": struct.Struct(">i"), ">i2": struct.Struct(">h"), ">u1": struct.Struct(">B")}

# lossless widenings applied when TAP_SCHEMA declares a wider type than the column holds
_WIDER = {"float": {"double": ">f8"}, "short": {"int": ">i4", "long": ">i8"},
          "int": {"long": ">i8"}, "unsignedByte": {"short": ">i2", "int": ">i4", "long": ">i8"}}


@dataclass
class Field:
    """One result column ready to write: its FIELD attributes and its cells as Python values."""

    name: str
    datatype: str
    arraysize: str | None
    meta: ColumnSpec | None
    xtype: str | None
    values: list  # Python values, None for NULL
    dtype: str | None = None  # numpy dtype of fixed-width scalars


def fields(arrow: pa.Table, columns: dict[str, ColumnSpec]) -> list[Field]:
    """The columns of a result with VOTable types; geometry text becomes DALI double arrays."""
    return [_field(name, arrow.column(i), columns.get(name.lower()))
            for i, name in enumerate(arrow.column_names)]


def _field(name: str, data: pa.ChunkedArray, meta: ColumnSpec | None) -> Field:
    typ = data.type
    xtype = meta.xtype if meta else None
    if (numeric := _NUMERIC_BY_ID.get(typ.id)) is not None:  # the common case first
        datatype, dtype = numeric
        if meta is not None and meta.datatype in _WIDER.get(datatype, ()):
            datatype, dtype = meta.datatype, _WIDER[datatype][meta.datatype]  # as TAP_SCHEMA says
        return Field(name, datatype, None, meta, xtype, data.to_pylist(), dtype)
    is_text = pa.types.is_string(typ)
    if is_text and xtype and meta is not None and meta.plain_xtype in DALI_GEOMETRY:
        plain = meta.plain_xtype
        shapes = [None if v is None else region_values(v) for v in data.to_pylist()]
        size = DALI_GEOMETRY[plain]
        shapes = [v if v is not None and (size == "*" or len(v) == int(size)) else None
                  for v in shapes]
        return Field(name, "double", size, meta, plain, shapes)
    if pa.types.is_decimal(typ):
        return Field(name, "double", None, meta, xtype,
                     pc.cast(data, pa.float64()).to_pylist(), ">f8")
    if pa.types.is_timestamp(typ) or pa.types.is_date(typ):
        values = [None if v is None else _iso(v) for v in data.to_pylist()]
        return Field(name, "char", "*", meta, "timestamp", values)
    if pa.types.is_list(typ) or pa.types.is_large_list(typ):
        inner = typ.value_type
        datatype = _NUMERIC.get(inner, ("double", None))[0]
        return Field(name, datatype, "*", meta, xtype, data.to_pylist())
    values = data.to_pylist()
    if not is_text:
        values = [None if v is None else str(v) for v in values]
    wide = not all(map(str.isascii, filter(None, values)))
    return Field(name, "unicodeChar" if wide else "char", _char_size(meta), meta, xtype, values)


def _char_size(meta: ColumnSpec | None) -> str:
    # a declared fixed width (`char(19)` timestamps) is kept only as a bound: values may vary
    size = meta.arraysize if meta else None
    if size and size.rstrip("*").isdigit() and meta is not None and meta.datatype == "char":
        return size if size.endswith("*") else f"{size}*"
    return "*"


def _iso(value: dt.datetime | dt.date) -> str:
    text = value.isoformat()
    return text[:-6] if text.endswith("+00:00") else text


def document(arrow: pa.Table, columns: dict[str, ColumnSpec], *, overflow: bool,
             serialization: str = "binary2", infos: Iterable[tuple[str, str]] = ()) -> bytes:
    """The whole VOTable of a result, QUERY_STATUS included."""
    cols = fields(arrow, columns)
    head = [_head(), '<RESOURCE type="results">',
            '<INFO name="QUERY_STATUS" value="OK"/>']
    head += [f"<INFO name={quoteattr(k)} value={quoteattr(xml_text(v))}/>" for k, v in infos]
    head.append("<TABLE>")
    head += [_field_xml(f) for f in cols]
    body = _binary2(cols, arrow.num_rows) if serialization == "binary2" \
        else _tabledata(cols, arrow.num_rows)
    tail = ["</TABLE>"]
    if overflow:
        tail.append('<INFO name="QUERY_STATUS" value="OVERFLOW"/>')
    tail += ["</RESOURCE>", "</VOTABLE>", ""]
    return ("\n".join(head) + "\n").encode() + body + "\n".join(tail).encode()


def error_document(message: str, infos: Iterable[tuple[str, str]] = ()) -> bytes:
    """A DALI error VOTable: QUERY_STATUS ERROR with the message; `infos` say more to clients
    that know them (`mirror.errors.to_wire`: the error's kind and hint)."""
    return "\n".join([
        _head(), '<RESOURCE type="results">',
        f'<INFO name="QUERY_STATUS" value="ERROR">{escape(xml_text(message))}</INFO>',
        *(f"<INFO name={quoteattr(k)} value={quoteattr(v)}/>" for k, v in infos),
        "</RESOURCE>", "</VOTABLE>", ""]).encode()


def xml_text(text: str) -> str:
    """`text` without the control characters XML 1.0 cannot carry (TABLEDATA, INFO)."""
    return _NOT_XML.sub("\ufffd", text)


def _head() -> str:
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<VOTABLE version="1.4" xmlns="{NS}" '
            'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">')


def _field_xml(f: Field) -> str:
    return _field_text(f.name, f.datatype, f.arraysize, f.xtype, f.meta)


@functools.lru_cache(maxsize=4096)
def _field_text(name: str, datatype: str, arraysize: str | None, xtype: str | None,
                meta: ColumnSpec | None) -> str:
    """A FIELD element; remembered, as every cone search of a service writes the same few
    (escaping their descriptions was a third of writing a small result)."""
    attrs = [("name", name), ("datatype", datatype)]
    if arraysize:
        attrs.append(("arraysize", arraysize))
    if xtype:
        attrs.append(("xtype", xtype))
    for key in ("unit", "ucd", "utype"):
        if meta is not None and getattr(meta, key):
            attrs.append((key, getattr(meta, key)))
    text = " ".join(f"{k}={quoteattr(v)}" for k, v in attrs)
    if meta is not None and meta.description:
        return f"<FIELD {text}><DESCRIPTION>{escape(meta.description)}</DESCRIPTION></FIELD>"
    return f"<FIELD {text}/>"


# -- BINARY2 --------------------------------------------------------------------------------------

def _binary2(cols: list[Field], nrows: int) -> bytes:
    cells = [_cells(f, nrows) for f in cols]
    masks = _null_flags(cols, nrows)
    stream = b"".join(masks[i] + b"".join(c[i] for c in cells) for i in range(nrows))
    return (b"<DATA><BINARY2><STREAM encoding=\"base64\">\n" + base64.encodebytes(stream)
            + b"</STREAM></BINARY2></DATA>\n")


def _null_flags(cols: list[Field], nrows: int) -> list[bytes]:
    """Each row's NULL flags, a bit per column, the first column's in the highest bit."""
    if not any(None in f.values for f in cols):  # a scan at C speed: most results have none
        return [bytes((len(cols) + 7) // 8)] * nrows
    if nrows <= FEW_ROWS:
        width = (len(cols) + 7) // 8
        pad = width * 8 - len(cols)
        return [(sum((f.values[i] is None) << (len(cols) - 1 - j) for j, f in enumerate(cols))
                 << pad).to_bytes(width, "big") for i in range(nrows)]
    nulls = np.array([[v is None for v in f.values] for f in cols], dtype=bool).T
    masks = np.packbits(nulls.reshape(nrows, len(cols)), axis=1)
    return [masks[i].tobytes() for i in range(nrows)]


def _cells(f: Field, nrows: int) -> list[bytes]:
    if f.dtype is not None:  # fixed-width scalars, NULL written as 0 (the mask says NULL)
        values = [0 if v is None else v for v in f.values] if None in f.values else f.values
        if nrows <= FEW_ROWS:
            return list(map(_PACK[f.dtype].pack, values))
        width = np.dtype(f.dtype).itemsize
        data = np.array(values, dtype=f.dtype).tobytes()
        return [data[i:i + width] for i in range(0, nrows * width, width)]
    if f.datatype == "boolean" and f.arraysize is None:
        return [b"?" if v is None else b"T" if v else b"F" for v in f.values]
    if f.datatype in ("char", "unicodeChar"):
        codec = "utf-16-be" if f.datatype == "unicodeChar" else "ascii"
        step = 2 if f.datatype == "unicodeChar" else 1
        out = []
        for v in f.values:
            raw = b"" if v is None else v.encode(codec, "replace")
            out.append(struct.pack(">I", len(raw) // step) + raw)
        return out
    fmt = {"boolean": None, "double": ">f8", "float": ">f4", "long": ">i8", "int": ">i4",
           "short": ">i2", "unsignedByte": ">u1"}[f.datatype]
    fixed = f.arraysize not in (None, "*")
    out = []
    for v in f.values:
        items = [] if v is None else v
        if fmt is None:
            raw = b"".join(b"?" if x is None else b"T" if x else b"F" for x in items)
        else:
            raw = np.array([np.nan if x is None else x for x in items], dtype=fmt).tobytes()
        if fixed:
            size = int(f.arraysize or 1) * np.dtype(fmt or "u1").itemsize
            out.append(raw.ljust(size, b"\0")[:size])
        else:
            out.append(struct.pack(">I", len(items)) + raw)
    return out


# -- TABLEDATA ------------------------------------------------------------------------------------

def _tabledata(cols: list[Field], nrows: int) -> bytes:
    texts = [_texts(f) for f in cols]
    rows = ("<TR>" + "".join(f"<TD>{t[i]}</TD>" for t in texts) + "</TR>" for i in range(nrows))
    return ("<DATA><TABLEDATA>\n" + "\n".join(rows) + "\n</TABLEDATA></DATA>\n").encode()


def _texts(f: Field) -> list[str]:
    if f.datatype == "float":
        return ["" if v is None else str(np.float32(v)) for v in f.values]
    if f.datatype == "boolean" and f.arraysize is None:
        return ["" if v is None else "T" if v else "F" for v in f.values]
    if f.arraysize is not None and f.datatype not in ("char", "unicodeChar"):
        return ["" if v is None else " ".join("NaN" if x is None else repr(x) for x in v)
                for v in f.values]
    if f.datatype in ("char", "unicodeChar"):
        return ["" if v is None else escape(xml_text(v)) for v in f.values]
    return ["" if v is None else repr(v) for v in f.values]
