"""The tables beside an export's arrays: manifest (one row per array row), rejects (one row
per selected record that is not in the arrays, with the reason) and export.json (arguments,
mirror's version, counts). Written atomically, with no clock in them."""

from __future__ import annotations

import csv
import io
import json
import numbers
import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mirror.errors import ExportError

MANIFEST, REJECTS, META = "manifest.parquet", "rejects.csv", "export.json"
META_KEY = b"mirror.export"


def prepare_folder(folder: Path) -> Path:
    """The output folder, created; refused when it holds anything but an earlier export."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create {folder}: {exc.strerror}") from exc
    # an export killed before its first finish leaves only its own ".*.partial" files
    others = [p for p in folder.iterdir() if not p.name.endswith(".partial")]
    if others and not (folder / META).is_file():
        raise ExportError(f"{folder} is not empty and holds no earlier export",
                          "give a new or empty folder (an earlier export's folder is "
                          "overwritten)")
    return folder


def write_bytes(path: Path, data: bytes) -> None:
    """Write `path` whole or not at all (temp file, rename)."""
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_manifest(folder: Path, selection: pa.Table, rows: Sequence[int],
                   computed: Mapping[str, Sequence[Any]], meta: Mapping[str, Any]) -> None:
    """manifest.parquet: `row` (the array row), the selected ObsCore columns, `computed`."""
    built = arrow_columns({"take": list(rows), "row": list(range(len(rows))),
                           **{k: list(v) for k, v in computed.items()}})
    table = selection.take(built.column("take")) if rows else selection.slice(0, 0)
    table = table.add_column(0, "row", built.column("row"))
    for name in computed:
        table = table.append_column(name, built.column(name))
    table = table.replace_schema_metadata({META_KEY: json.dumps(meta, sort_keys=True)})
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    write_bytes(folder / MANIFEST, sink.getvalue())


_SQL_TYPES = ((str, "VARCHAR", str), (datetime, "TIMESTAMP", None), (bool, "BOOLEAN", bool),
              (numbers.Integral, "BIGINT", int), (numbers.Real, "DOUBLE", float))


def arrow_columns(columns: Mapping[str, list[Any]]) -> pa.Table:
    """Python lists as one typed Arrow table (str, datetime, float, bool, int; None is null).

    Built by DuckDB: every pyarrow constructor (`pa.array`, `pa.table`) imports pandas on first
    use, ~0.16 s of CPU on the critical path of a command that never needs it."""
    import duckdb

    parts, params = [], []
    for i, values in enumerate(columns.values()):
        kinds = {type(v) for v in values if v is not None}
        sql, plain = next(((t, f) for py, t, f in _SQL_TYPES
                           if kinds and all(issubclass(k, py) for k in kinds)), ("VARCHAR", str))
        parts.append(f"unnest(${i + 1}::{sql}[]) AS c{i}")
        params.append(values if plain is None else [None if v is None else plain(v)
                                                    for v in values])  # numpy scalars too
    con = duckdb.connect()
    try:
        table = con.sql(f"SELECT {', '.join(parts)}", params=params).to_arrow_table()
    finally:
        con.close()
    return table.rename_columns(list(columns))


def write_rejects(folder: Path, selection: pa.Table, reasons: Mapping[int, str],
                  key: str = "obs_publisher_did") -> None:
    """rejects.csv: each selected record left out, in selection order, and why."""
    dids = selection.column(key).to_pylist() if selection.num_rows else []
    sources = selection.column("mirror_source").to_pylist() if selection.num_rows else []
    text = io.StringIO()
    out = csv.writer(text, lineterminator="\n")
    out.writerow([key, "mirror_source", "reason"])
    for row in sorted(reasons):
        out.writerow([dids[row], sources[row], reasons[row]])
    write_bytes(folder / REJECTS, text.getvalue().encode("utf-8"))


def write_json(folder: Path, meta: Mapping[str, Any]) -> None:
    write_bytes(folder / META, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())


def read_json(folder: Path) -> dict[str, Any]:
    """An export folder's export.json."""
    path = Path(folder) / META
    if not path.is_file():
        raise ExportError(f"{folder} holds no export (no {META})",
                          "give the --out folder of a `mirror export`")
    return json.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]
