"""Query results as files: CSV, VOTable, Parquet, FITS and JSON, written by Python (the query's
DuckDB connection can reach no file), atomically when written to a path."""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mirror.errors import MirrorError
from mirror.query.result import QueryResult

if TYPE_CHECKING:  # astropy.table and VOTable load when a VOTable or FITS file is written
    from astropy.table import Column, Table

BINARY = ("parquet", "fits")


def write_csv(result: QueryResult, out: IO[bytes]) -> None:
    pacsv.write_csv(_flat(result.arrow), out)


def write_parquet(result: QueryResult, out: IO[bytes]) -> None:
    pq.write_table(result.arrow, out)


def write_votable(result: QueryResult, out: IO[bytes]) -> None:
    """A TAP-style VOTable: FIELDs with unit, UCD, utype and description; the results
    RESOURCE says INFO QUERY_STATUS = OVERFLOW when the result was cut at maxrec, else OK."""
    from astropy.io.votable.tree import Info, VOTableFile

    table = _portable(result.table)
    vot = VOTableFile.from_table(table)
    resource = vot.resources[0]
    resource.type = "results"
    status = "OVERFLOW" if result.overflow else "OK"
    resource.infos.append(Info(name="QUERY_STATUS", value=status))
    for f, col in zip(resource.tables[0].fields, table.columns.values(), strict=True):
        f.ucd = col.meta.get("ucd")
        f.utype = col.meta.get("utype")
        if col.meta.get("xtype"):
            f.xtype = col.meta["xtype"]
    vot.to_xml(out)


def write_fits(result: QueryResult, out: IO[bytes]) -> None:
    table = _portable(result.table)
    table.meta = {"QSTATUS": "OVERFLOW" if result.overflow else "OK"}
    table.write(out, format="fits")


def write_json(result: QueryResult, out: IO[bytes]) -> None:
    """{"columns": [{name, datatype, unit, ucd, description}], "data": [[...]], "overflow"}."""
    cols = []
    for f in result.arrow.schema:
        meta = {k.decode(): v.decode() for k, v in (f.metadata or {}).items()}
        cols.append({"name": f.name, "datatype": str(f.type), **meta})
    rows = [list(r.values()) for r in result.arrow.to_pylist()]
    doc = {"columns": cols, "data": rows, "overflow": result.overflow}
    out.write(json.dumps(doc, default=_json_value).encode("utf-8"))


WRITERS: dict[str, Callable[[QueryResult, IO[bytes]], None]] = {
    "csv": write_csv, "votable": write_votable, "parquet": write_parquet, "fits": write_fits,
    "json": write_json}


def write(result: QueryResult, fmt: str, path: str | os.PathLike[str] | None,
          stdout: IO[bytes]) -> None:
    """Write `result` as `fmt` to `path` (atomically), or to `stdout` when no path is given."""
    writer = WRITERS[fmt]
    if path is None:
        buffer = io.BytesIO()  # FITS and Parquet writers need to seek
        writer(result, buffer)
        stdout.write(buffer.getvalue())
        stdout.flush()
        return
    with _atomic(Path(path)) as out:
        writer(result, out)


@contextlib.contextmanager
def _atomic(path: Path) -> Iterator[IO[bytes]]:
    """A temp file beside `path`, fsynced and renamed over it only when writing succeeded."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
    except OSError as exc:
        raise MirrorError(f"cannot write {path}: {exc.strerror}",
                          "check that the folder exists and is writable") from exc
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _flat(arrow: pa.Table) -> pa.Table:
    """Arrays as space-separated text (CSV has no arrays)."""
    cols = []
    for col in arrow.columns:
        if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
            col = pa.array([None if v is None else " ".join(map(str, v))
                            for v in col.to_pylist()], pa.string())
        cols.append(col)
    return pa.Table.from_arrays(cols, names=arrow.column_names)


def _portable(table: Table) -> Table:
    """A copy that VOTable and FITS can hold: timestamps as ISO text (xtype timestamp), arrays
    as text, empty text columns one character wide."""
    from astropy.table import Table

    out = Table(meta=dict(table.meta))
    for col in table.columns.values():
        data = col
        if col.dtype.kind == "M":
            text = np.datetime_as_string(np.asarray(col), unit="auto")
            data = _like(col, text)
            data.meta["xtype"] = "timestamp"
        elif col.dtype.kind == "O":
            data = _like(col, np.asarray([" ".join(map(str, v)) for v in col], dtype=str))
        if data.dtype.kind == "U" and data.dtype.itemsize == 0:
            data = _like(col, np.asarray(data, dtype="<U1"))
        out.add_column(data)
    return out


def _like(col: Column, values: np.ndarray) -> Column:
    from astropy.table import Column, MaskedColumn

    mask = getattr(col, "mask", None)
    cls = MaskedColumn if mask is not None and np.any(mask) else Column
    kw: dict[str, Any] = {"mask": mask} if cls is MaskedColumn else {}
    new = cls(values, name=col.name, unit=col.unit, description=col.description,
              meta=dict(col.meta), **kw)
    return new


def _json_value(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def null_text(arrow: pa.Table) -> pa.Table:
    """Every column as text, NULL as '' (for the terminal table)."""
    return pa.Table.from_arrays(
        [pc.fill_null(pc.cast(_flat(arrow).column(i), pa.string()), "")
         for i in range(arrow.num_columns)], names=arrow.column_names)
