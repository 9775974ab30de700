"""TAP output formats: which RESPONSEFORMAT names what, and how a result is written in it."""

from __future__ import annotations

import io
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.csv as pacsv

from mirror.query import QueryResult
from mirror.query.writers import _flat, write_fits, write_json
from mirror.server import votable

VOTABLE = "application/x-votable+xml"


@dataclass(frozen=True)
class Format:
    """One output format as TAPRegExt lists it: MIME type, short aliases, how to write it."""

    key: str
    mime: str
    aliases: tuple[str, ...]
    description: str


FORMATS = (
    Format("votable", VOTABLE, ("votable", "votable/b2", "application/votable+xml", "text/xml",
                                f"{VOTABLE};serialization=binary2", "vot"),
           "VOTable 1.4, BINARY2 serialisation (the default)"),
    Format("votable/td", f"{VOTABLE};serialization=tabledata",
           ("votable/td", "votabletd", "application/votable+xml;serialization=tabledata"),
           "VOTable 1.4, TABLEDATA serialisation"),
    Format("csv", "text/csv;header=present", ("csv", "text/csv"),
           "comma-separated values, a header line"),
    Format("tsv", "text/tab-separated-values", ("tsv", "text/tsv"),
           "tab-separated values, a header line"),
    Format("fits", "application/fits", ("fits", "application/x-fits-bintable"),
           "FITS binary table"),
    Format("json", "application/json", ("json", "text/json"),
           "JSON: columns (name, datatype, unit, ucd, description), data, overflow"),
)
_BY_NAME = {name: f for f in FORMATS for name in (f.mime.lower(), *f.aliases)}


def lookup(name: str | None) -> Format | None:
    """The format a FORMAT/RESPONSEFORMAT value names (case and spaces ignored), None if none."""
    if not name:
        return FORMATS[0]
    return _BY_NAME.get(name.strip().lower().replace(" ", ""))


def names() -> str:
    return ", ".join(f.aliases[0] for f in FORMATS)


def render(result: QueryResult, arrow: pa.Table, fmt: Format,
           infos: list[tuple[str, str]]) -> bytes:
    """The result (`arrow`: its rows after localisation) in `fmt`."""
    if fmt.key.startswith("votable"):
        ser = "tabledata" if fmt.key == "votable/td" else "binary2"
        return votable.document(arrow, result.columns, overflow=result.overflow,
                                serialization=ser, infos=infos)
    if fmt.key in ("csv", "tsv"):
        out = io.BytesIO()
        options = pacsv.WriteOptions(delimiter="\t" if fmt.key == "tsv" else ",",
                                     quoting_style="needed")
        pacsv.write_csv(_flat(arrow), out, options)
        return out.getvalue()
    local = QueryResult(arrow, result.overflow, result.columns, result.adql, result.sql,
                        result.seconds)
    out = io.BytesIO()
    (write_fits if fmt.key == "fits" else write_json)(local, out)
    return out.getvalue()
