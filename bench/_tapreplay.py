"""A small TAP /sync server on 127.0.0.1 that replays recorded answers.

`ReplayServer` answers `POST|GET <base>/sync` from a dict keyed by the request's
(QUERY, FORMAT, MAXREC). Given an answerer, a request it has no answer for is answered live and
recorded, so a first pass records and later identical passes are pure replays (cheap: a dict
look-up and a socket write). `DuckDBAnswerer` is such an answerer: it runs the (plain) ADQL on a
DuckDB connection and writes CSV or VOTable (BINARY like DaCHS' default, TABLEDATA, BINARY2).

`GET /_replay/stats` tells how many answers were replayed and how many were made live (and the
last queries answered live). `/capabilities` answers 404 unless a document is given.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import sqlglot
from astropy.io.votable.tree import Field, Info, Resource, TableElement, VOTableFile

Key = tuple[str, str | None, str | None]  # QUERY, FORMAT, MAXREC as the client sent them
ENCODINGS = {  # FORMAT values (lower-cased) -> serialization, after DaCHS' output formats
    "votable": "binary", "application/x-votable+xml": "binary",
    "votable/td": "tabledata", "votabletd": "tabledata", "text/xml": "tabledata",
    "application/x-votable+xml;serialization=tabledata": "tabledata",
    "votable/b2": "binary2", "votableb2": "binary2",
    "application/x-votable+xml;serialization=binary2": "binary2"}
VOTABLE_TYPE = "application/x-votable+xml"


@dataclass(frozen=True)
class FieldInfo:
    """A column as a VOTable FIELD (and a TAP_SCHEMA.columns row) describes it."""

    name: str
    datatype: str = "char"
    arraysize: str | None = "*"
    xtype: str | None = None
    unit: str | None = None
    ucd: str | None = None
    description: str | None = None
    null: str | None = None


@dataclass(frozen=True)
class Answer:
    """One HTTP answer: body, media type, status."""

    body: bytes
    content_type: str
    status: int = 200


Answerer = Callable[[str, str | None, str | None], Answer]


class ReplayServer:
    """TAP /sync from recorded answers; unknown requests go to `answerer` (and are recorded)."""

    def __init__(self, responses: Mapping[Key, Answer] | None = None,
                 answerer: Answerer | None = None, *, port: int = 0, base: str = "/tap",
                 capabilities: bytes | None = None) -> None:
        self.responses: dict[Key, Answer] = dict(responses or {})
        self.answerer = answerer
        self.base = base.rstrip("/")
        self.capabilities = capabilities
        self.stats = {"replayed": 0, "live": 0, "unknown": 0}
        self.recent_live: list[str] = []  # the last queries answered live, for diagnosis
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), _handler(self))
        self.httpd.daemon_threads = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{self.base}"

    def answer(self, params: Mapping[str, str]) -> Answer:
        """The recorded answer to a request, else a live (and now recorded) one, else a 400."""
        key: Key = (params.get("QUERY", ""), params.get("FORMAT"), params.get("MAXREC"))
        found = self.responses.get(key)
        if found is not None:
            self.stats["replayed"] += 1
            return found
        if self.answerer is None:
            self.stats["unknown"] += 1
            return error_answer(f"no recorded answer for {key[0][:200]!r}", 400)
        with self._lock:  # one live answer at a time: a DuckDB connection is not shared
            try:
                found = self.responses.get(key) or self.answerer(*key)
            except Exception as exc:  # noqa: BLE001 - a broken answer is the client's 500
                return error_answer(f"{type(exc).__name__}: {exc}", 500)
            if found.status == 200:
                self.responses[key] = found
        self.stats["live"] += 1
        self.recent_live = [*self.recent_live[-4:], key[0][:300]]
        return found

    def start(self) -> ReplayServer:
        """Serve from a daemon thread (tests); `serve_forever` for a process of its own."""
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _handler(server: ReplayServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a real client session expects

        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            parts = urlsplit(self.path)
            if parts.path == "/_replay/stats":
                body = {**server.stats, "recent_live": server.recent_live}
                self._send(Answer(json.dumps(body).encode(), "application/json"))
            elif parts.path == server.base + "/capabilities" and server.capabilities:
                self._send(Answer(server.capabilities, "text/xml"))
            elif parts.path == server.base + "/sync":
                self._send(server.answer(_params(parts.query)))
            else:
                self._send(Answer(b"not found", "text/plain", 404))

        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if urlsplit(self.path).path != server.base + "/sync":
                self._send(Answer(b"not found", "text/plain", 404))
                return
            self._send(server.answer(_params(body.decode("utf-8"))))

        def _send(self, answer: Answer) -> None:
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.content_type)
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            self.wfile.write(answer.body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    return Handler


def _params(text: str) -> dict[str, str]:
    """Form or query-string parameters, names upper-cased (TAP names are case-insensitive)."""
    return {k.upper(): v[0] for k, v in parse_qs(text, keep_blank_values=True).items()}


class DuckDBAnswerer:
    """Answers plain ADQL (TOP, quoted identifiers) by running it on DuckDB via sqlglot."""

    def __init__(self, conn: duckdb.DuckDBPyConnection, fields: Sequence[FieldInfo] = (),
                 default_encoding: str = "binary") -> None:
        self.conn = conn
        self.fields = {f.name.lower(): f for f in fields}
        self.default_encoding = default_encoding

    def __call__(self, query: str, fmt: str | None, maxrec: str | None) -> Answer:
        try:
            sql = sqlglot.transpile(query, read="tsql", write="duckdb")[0]
            table = self.conn.sql(sql).to_arrow_table()
        except (sqlglot.errors.SqlglotError, duckdb.Error) as exc:
            return error_answer(str(exc).splitlines()[0], 400)
        if maxrec is not None:
            table = table.slice(0, int(maxrec))
        fmt = (fmt or "votable").lower()
        if fmt in ("csv", "text/csv"):
            return Answer(csv_body(self.conn, table), "text/csv;header=present")
        encoding = self.default_encoding if ENCODINGS.get(fmt) == "binary" else ENCODINGS.get(fmt)
        if encoding is None:
            return error_answer(f"unsupported FORMAT {fmt!r}", 400)
        return Answer(votable_body(table, self.fields, encoding), VOTABLE_TYPE)


def csv_body(conn: duckdb.DuckDBPyConnection, table: pa.Table) -> bytes:
    """TAP CSV: a header line, text quoted only where needed, NULL as an empty field.

    DuckDB writes it (pyarrow would quote every string, which services do not)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "answer.csv")
        conn.register("_answer", table)
        try:
            conn.execute(f"COPY _answer TO '{path}' (FORMAT csv, HEADER)")
        finally:
            conn.unregister("_answer")
        with open(path, "rb") as f:
            return f.read()


def _guess(name: str, typ: pa.DataType) -> FieldInfo:
    """A FIELD for a result column nobody described, from its Arrow type."""
    for test, datatype, null in ((pa.types.is_int16, "short", -(2**15)),
                                 (pa.types.is_int32, "int", -(2**31)),
                                 (pa.types.is_int64, "long", -(2**63)),
                                 (pa.types.is_float32, "float", None),
                                 (pa.types.is_float64, "double", None),
                                 (pa.types.is_boolean, "boolean", None)):
        if test(typ):  # integers need a VALUES null for their NULLs
            return FieldInfo(name, datatype, None, null=None if null is None else str(null))
    return FieldInfo(name, xtype="timestamp" if pa.types.is_timestamp(typ) else None)


def votable_body(table: pa.Table, fields: Mapping[str, FieldInfo], encoding: str) -> bytes:
    """A TAP result VOTable (QUERY_STATUS OK) of `table` in the given serialization."""
    vot = VOTableFile()
    resource = Resource()
    resource.type = "results"
    vot.resources.append(resource)
    resource.infos.append(Info(name="QUERY_STATUS", value="OK"))
    element = TableElement(vot)
    resource.tables.append(element)
    infos = [fields.get(n.lower()) or _guess(n, table.schema.field(n).type)
             for n in table.column_names]
    for info in infos:
        field = Field(vot, name=info.name, datatype=info.datatype, arraysize=info.arraysize,
                      xtype=info.xtype, unit=info.unit, ucd=info.ucd)
        field.description = info.description
        if info.null is not None:
            field.values.null = int(info.null)
        element.fields.append(field)
    element.create_arrays(table.num_rows)
    for info, column in zip(infos, table.columns, strict=True):
        missing = column.is_null().to_numpy(zero_copy_only=False)
        if info.datatype in ("char", "unicodeChar"):
            values = pc.fill_null(column.cast(pa.string()), "").to_numpy(zero_copy_only=False)
        else:
            fill = int(info.null) if info.null is not None else 0
            values = pc.fill_null(column, fill).to_numpy(zero_copy_only=False)
        element.array[info.name] = values
        element.array.mask[info.name] = missing
    buf = io.BytesIO()
    vot.to_xml(buf, tabledata_format=encoding)
    return buf.getvalue()


def error_answer(message: str, status: int) -> Answer:
    """A TAP error document: a VOTable whose QUERY_STATUS is ERROR."""
    vot = VOTableFile()
    resource = Resource()
    resource.type = "results"
    resource.infos.append(Info(name="QUERY_STATUS", value="ERROR", content=message))
    vot.resources.append(resource)
    buf = io.BytesIO()
    vot.to_xml(buf)
    return Answer(buf.getvalue(), VOTABLE_TYPE, status)


def create_tap_schema(conn: duckdb.DuckDBPyConnection, table: str,
                      fields: Sequence[FieldInfo], description: str = "") -> None:
    """TAP_SCHEMA tables in `conn` describing one published table (keys left empty)."""
    schema = table.split(".")[0]
    columns = pa.table({
        "table_name": [table] * len(fields), "column_name": [f.name for f in fields],
        "datatype": [f.datatype for f in fields], "arraysize": [f.arraysize for f in fields],
        "xtype": [f.xtype for f in fields], "size": pa.nulls(len(fields), pa.int32()),
        "description": [f.description for f in fields],
        "utype": pa.nulls(len(fields), pa.string()), "unit": [f.unit for f in fields],
        "ucd": [f.ucd for f in fields], "indexed": [0] * len(fields),
        "principal": [1] * len(fields), "std": [1] * len(fields),
        "column_index": list(range(len(fields)))})
    conn.execute('CREATE SCHEMA IF NOT EXISTS "TAP_SCHEMA"')
    conn.execute("CREATE OR REPLACE TABLE TAP_SCHEMA.schemas AS SELECT * FROM (VALUES "
                 "(?, NULL, 'published tables', 0), ('TAP_SCHEMA', NULL, 'this schema', 1)) "
                 "t(schema_name, utype, description, schema_index)", [schema])
    conn.execute("CREATE OR REPLACE TABLE TAP_SCHEMA.tables AS SELECT * FROM (VALUES "
                 "(?, ?, 'table', NULL, ?, 0)) "
                 "t(schema_name, table_name, table_type, utype, description, table_index)",
                 [schema, table, description])
    conn.register("_columns", columns)
    conn.execute("CREATE OR REPLACE TABLE TAP_SCHEMA.columns AS SELECT * FROM _columns")
    conn.unregister("_columns")
    conn.execute("CREATE OR REPLACE TABLE TAP_SCHEMA.keys (key_id VARCHAR, from_table VARCHAR, "
                 "target_table VARCHAR, utype VARCHAR, description VARCHAR)")
    conn.execute("CREATE OR REPLACE TABLE TAP_SCHEMA.key_columns (key_id VARCHAR, "
                 "from_column VARCHAR, target_column VARCHAR)")
