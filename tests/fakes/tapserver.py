"""A fake TAP service on 127.0.0.1, backed by an in-memory DuckDB, for unit tests.

It answers what `mirror` asks of a TAP service the way DaCHS does:

* ``POST /tap/sync`` with REQUEST=doQuery, LANG=ADQL, FORMAT=csv|votable, MAXREC, QUERY. The
  ADQL is transpiled with sqlglot (read='tsql', which knows TOP) and run on DuckDB; ORDER BY
  keeps PostgreSQL's null ordering (NULLS LAST ascending), like a DaCHS service.
* a hard row limit like DaCHS': a ``TOP n`` above the limit m answers m+1 rows (DaCHS' quirk),
  otherwise min(n, m); a query without TOP is cut at m (a VOTable then says OVERFLOW);
  MAXREC lowers m; MAXREC=0 answers the metadata only.
* CSV with a header line, NULL as the empty string; VOTables written with astropy whose FIELDs
  carry datatype, arraysize, xtype, unit, ucd, utype, description and VALUES null, so that
  ``SELECT TOP 0 * FROM ivoa.obscore`` describes the table.
* ``TAP_SCHEMA.*`` from small tables in the same DuckDB (schema TAP_SCHEMA), derived from the
  column descriptions.
* ``GET /tap/capabilities``: a minimal TAPRegExt document announcing the hard limit, or 404
  (``capabilities=False``), so the client has to treat the limit as unknown.
* per-request fault injection (`Fault`: an HTTP status with headers and body, a closed or reset
  connection, a body cut short) and a record of every request received.

The table is normally loaded from the recorded DaCHS answers in ``tests/data`` (`load_recorded`).
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import io
import re
import socket
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit
from xml.sax.saxutils import escape

import duckdb
import pyarrow as pa
import sqlglot
from astropy.io.votable import parse as parse_votable
from astropy.io.votable.tree import Field, Info, Resource, TableElement, VOTableFile
from sqlglot import exp

from mirror.catalogue.types import ColumnSpec, local_type

DATA = Path(__file__).resolve().parents[1] / "data"
RECORDED_VOTABLE = DATA / "dachs_obscore_top0.vot"
RECORDED_CSV = DATA / "dachs_obscore_50.csv"

_VOT_TYPES = {
    "VARCHAR": "char", "BOOLEAN": "boolean", "UTINYINT": "unsignedByte", "SMALLINT": "short",
    "INTEGER": "int", "BIGINT": "long", "HUGEINT": "long", "FLOAT": "float", "DOUBLE": "double",
    "DECIMAL": "double",
}


# -- the recorded DaCHS answers ----------------------------------------------------------------


def votable_specs(body: bytes | Path) -> list[ColumnSpec]:
    """The FIELDs of a VOTable as ColumnSpecs (independent of mirror's own parser)."""
    source = io.BytesIO(body) if isinstance(body, bytes) else str(body)
    fields = parse_votable(source).get_first_table().fields
    specs = []
    for f in fields:
        null = f.values.null if f.values is not None else None
        specs.append(ColumnSpec(
            name=f.name, datatype=f.datatype,
            arraysize=str(f.arraysize) if f.arraysize is not None else None,
            xtype=f.xtype, unit=str(f.unit) if f.unit is not None else None, ucd=f.ucd,
            utype=f.utype, description=f.description,
            null_value=str(null) if null is not None else None))
    return specs


@functools.cache
def _recorded_specs() -> tuple[ColumnSpec, ...]:
    return tuple(votable_specs(RECORDED_VOTABLE))


def recorded_specs() -> list[ColumnSpec]:
    """The FIELDs of the recorded DaCHS answer to SELECT TOP 0 * FROM ivoa.obscore."""
    return list(_recorded_specs())


@functools.cache
def _recorded_rows() -> tuple[tuple[tuple[str, str], ...], ...]:
    with RECORDED_CSV.open(newline="", encoding="utf-8") as fh:
        return tuple(tuple(row.items()) for row in csv.DictReader(fh))


def recorded_rows() -> list[dict[str, str]]:
    """The recorded CSV rows as text ('' is NULL, as in the service's CSV)."""
    return [dict(row) for row in _recorded_rows()]


# -- ADQL ------------------------------------------------------------------------------------------


def parse_adql(adql: str) -> exp.Expression:
    """ADQL as a sqlglot tree: T-SQL knows TOP; NULLs sort as in PostgreSQL (DaCHS)."""
    tree = sqlglot.parse_one(adql, read="tsql")
    for ordered in tree.find_all(exp.Ordered):
        ordered.set("nulls_first", bool(ordered.args.get("desc")))
    return tree


def adql_to_duckdb(adql: str) -> str:
    """The DuckDB SQL for an ADQL query (ADQL is SQL apart from TOP)."""
    return parse_adql(adql).sql("duckdb")


# -- faults and records --------------------------------------------------------------------------


@dataclass
class Fault:
    """What to do instead of answering: an HTTP status, or a broken connection.

    `action`: "status" (answer `status` with `headers` and `body`), "close" (close the
    connection without an answer), "reset" (TCP reset), "truncate" (a 200 whose body stops
    short of its Content-Length), "stall" (wait `delay` seconds, then answer normally).
    `match` is a regex searched in "<path> <QUERY>"; `skip` lets that many matching requests
    through first; `times` is how often the fault fires.
    """

    status: int = 503
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    action: str = "status"
    match: str | None = None
    skip: int = 0
    times: int = 1
    delay: float = 0.0
    fired: int = 0


@dataclass(frozen=True)
class Received:
    """One request as the server saw it."""

    method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]
    fault: str | None = None

    @property
    def query(self) -> str:
        return self.params.get("QUERY", "")


def dachs_error(message: str) -> bytes:
    """An error document the way DaCHS writes one (VOTable with QUERY_STATUS=ERROR)."""
    return (
        "<?xml version='1.0' encoding='utf-8'?>\n"
        '<VOTABLE version="1.4" xmlns="http://www.ivoa.net/xml/VOTable/v1.3">'
        '<RESOURCE type="results"><INFO name="QUERY_STATUS" value="ERROR">'
        f"{escape(message)}</INFO></RESOURCE></VOTABLE>").encode()


def capabilities_document(base_url: str, maxrec: int | None, hard: int | None) -> bytes:
    limits = ""
    if hard is not None:
        limits = (f'<outputLimit><default unit="row">{maxrec or hard}</default>'
                  f'<hard unit="row">{hard}</hard></outputLimit>')
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<cap:capabilities xmlns:cap="http://www.ivoa.net/xml/VOSICapabilities/v1.0" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        'xmlns:vs="http://www.ivoa.net/xml/VODataService/v1.1" '
        'xmlns:tr="http://www.ivoa.net/xml/TAPRegExt/v1.0">'
        '<capability standardID="ivo://ivoa.net/std/TAP" xsi:type="tr:TableAccess">'
        '<interface role="std" xsi:type="vs:ParamHTTP">'
        f'<accessURL use="base">{escape(base_url)}</accessURL></interface>'
        '<language><name>ADQL</name>'
        '<version ivo-id="ivo://ivoa.net/std/ADQL#v2.0">2.0</version></language>'
        '<outputFormat><mime>text/csv</mime><alias>csv</alias></outputFormat>'
        '<outputFormat><mime>application/x-votable+xml</mime><alias>votable</alias>'
        f'</outputFormat>{limits}</capability></cap:capabilities>').encode()


class QueryError(Exception):
    """The fake service refuses a query (answered as HTTP 400 with a DaCHS error)."""


# -- the service ---------------------------------------------------------------------------------


class FakeTap:
    """A fake TAP service; use as a context manager or call start()/stop()."""

    def __init__(self, *, hard_limit: int | None = 7, capabilities: bool = True,
                 host: str = "127.0.0.1", table: str = "ivoa.obscore") -> None:
        self.hard_limit = hard_limit
        self.capabilities = capabilities
        self.host = host
        self.table = table
        self.db = duckdb.connect()
        self.lock = threading.RLock()
        self.specs: list[ColumnSpec] = []
        self.received: list[Received] = []
        self.faults: list[Fault] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle

    def start(self) -> FakeTap:
        handler = type("Handler", (_Handler,), {"tap": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.01}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self.db.close()

    def __enter__(self) -> FakeTap:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the server first"
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/tap"

    # -- the table

    def create_table(self, specs: Sequence[ColumnSpec]) -> None:
        schema, name = self.table.split(".")
        cols = ", ".join(f'"{s.name}" {local_type(s)}' for s in specs)
        with self.lock:
            self.db.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            self.db.execute(f"CREATE OR REPLACE TABLE {schema}.{name} ({cols})")
            self.specs = list(specs)
            self._refresh_tap_schema()

    def insert_text_rows(self, rows: Sequence[dict[str, str | None]]) -> None:
        """Insert rows given as CSV text ('' or None is NULL), cast to the column types."""
        if not rows:
            return
        names = [s.name for s in self.specs]
        text = pa.table({f"c{i}": pa.array([r.get(n) for r in rows], pa.string())
                         for i, n in enumerate(names)})
        exprs = ", ".join(f"CAST(NULLIF(c{i}, '') AS {local_type(s)})"
                          if not local_type(s).endswith("[]") else
                          f"CAST(string_split(NULLIF(c{i}, ''), ' ') AS {local_type(s)})"
                          for i, s in enumerate(self.specs))
        cols = ", ".join(f'"{n}"' for n in names)
        with self.lock:
            self.db.register("_text_rows", text)
            try:
                self.db.execute(f"INSERT INTO {self.table} ({cols}) SELECT {exprs} "
                                "FROM _text_rows")
            finally:
                self.db.unregister("_text_rows")

    def load_recorded(self) -> FakeTap:
        """The 50 rows recorded from the DaCHS service, typed by its own FIELDs."""
        self.create_table(recorded_specs())
        self.insert_text_rows(recorded_rows())
        return self

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        """Run SQL on the service's own database (to change the upstream between syncs)."""
        with self.lock:
            cur = self.db.execute(sql, params or [])
            return cur.fetchall() if cur.description else []

    def ids(self) -> list[str]:
        return [r[0] for r in self.execute(
            f"SELECT obs_publisher_did FROM {self.table} ORDER BY 1")]

    def add_column(self, spec: ColumnSpec, value_sql: str = "NULL") -> None:
        """Start publishing a new column (filled with `value_sql`)."""
        with self.lock:
            self.db.execute(f'ALTER TABLE {self.table} ADD COLUMN "{spec.name}" '
                            f"{local_type(spec)}")
            self.db.execute(f'UPDATE {self.table} SET "{spec.name}" = {value_sql}')
            self.specs.append(spec)
            self._refresh_tap_schema()

    def _refresh_tap_schema(self) -> None:
        schema = self.table.split(".")[0]
        db = self.db
        db.execute('CREATE SCHEMA IF NOT EXISTS "TAP_SCHEMA"')
        db.execute('CREATE OR REPLACE TABLE "TAP_SCHEMA".schemas (schema_name VARCHAR, '
                   "utype VARCHAR, description VARCHAR, schema_index INTEGER)")
        db.execute('CREATE OR REPLACE TABLE "TAP_SCHEMA".tables (schema_name VARCHAR, '
                   "table_name VARCHAR, table_type VARCHAR, utype VARCHAR, "
                   "description VARCHAR, table_index INTEGER)")
        db.execute('CREATE OR REPLACE TABLE "TAP_SCHEMA"."columns" (table_name VARCHAR, '
                   "column_name VARCHAR, datatype VARCHAR, arraysize VARCHAR, xtype VARCHAR, "
                   '"size" INTEGER, description VARCHAR, utype VARCHAR, unit VARCHAR, '
                   "ucd VARCHAR, indexed INTEGER, principal INTEGER, std INTEGER, "
                   "column_index INTEGER)")
        db.execute('CREATE OR REPLACE TABLE "TAP_SCHEMA".keys (key_id VARCHAR, '
                   "from_table VARCHAR, target_table VARCHAR, utype VARCHAR, "
                   "description VARCHAR)")
        db.execute('CREATE OR REPLACE TABLE "TAP_SCHEMA".key_columns (key_id VARCHAR, '
                   "from_column VARCHAR, target_column VARCHAR)")
        db.execute('INSERT INTO "TAP_SCHEMA".schemas VALUES (?, NULL, ?, 0)',
                   [schema, f"the {schema} schema"])
        db.execute('INSERT INTO "TAP_SCHEMA".tables VALUES (?, ?, \'table\', NULL, ?, 0)',
                   [schema, self.table, "The IVOA-defined obscore table"])
        columns = pa.table({
            "table_name": [self.table] * len(self.specs),
            "column_name": [s.name for s in self.specs],
            "datatype": [s.datatype for s in self.specs],
            "arraysize": pa.array([s.arraysize for s in self.specs], pa.string()),
            "xtype": pa.array([s.xtype for s in self.specs], pa.string()),
            "description": pa.array([s.description for s in self.specs], pa.string()),
            "utype": pa.array([s.utype for s in self.specs], pa.string()),
            "unit": pa.array([s.unit for s in self.specs], pa.string()),
            "ucd": pa.array([s.ucd for s in self.specs], pa.string()),
            "column_index": pa.array(range(len(self.specs)), pa.int32())})
        db.register("_columns", columns)
        try:
            db.execute('INSERT INTO "TAP_SCHEMA"."columns" SELECT table_name, column_name, '
                       "datatype, arraysize, xtype, NULL, description, utype, unit, ucd, 0, 1, "
                       "1, column_index FROM _columns")
        finally:
            db.unregister("_columns")

    # -- faults and records

    def inject(self, *faults: Fault) -> None:
        with self.lock:
            self.faults.extend(faults)

    def take_fault(self, path: str, query: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.match is not None and not re.search(fault.match, f"{path} {query}"):
                    continue
                if fault.skip > 0:
                    fault.skip -= 1
                    continue
                fault.fired += 1
                if fault.fired >= fault.times:
                    self.faults.remove(fault)
                return replace(fault)
            return None

    def queries(self, pattern: str = "") -> list[str]:
        """Every ADQL query received (optionally only those matching a regex)."""
        with self.lock:
            return [r.query for r in self.received
                    if r.path.endswith("/sync") and re.search(pattern, r.query)]

    # -- answering

    def answer(self, params: dict[str, str]) -> tuple[bytes, str]:
        if params.get("REQUEST", "doQuery").lower() != "doquery":
            raise QueryError(f"unknown REQUEST {params.get('REQUEST')!r}")
        if params.get("LANG", "ADQL").upper().split("-")[0] != "ADQL":
            raise QueryError(f"unsupported LANG {params.get('LANG')!r}")
        adql = params.get("QUERY")
        if not adql:
            raise QueryError("Missing QUERY parameter")
        fmt = params.get("FORMAT", "votable").lower()
        maxrec = int(params["MAXREC"]) if params.get("MAXREC", "") != "" else None
        sql, cap = self.transpile(adql, maxrec)
        with self.lock:
            try:
                cur = self.db.execute(sql)
            except duckdb.Error as exc:
                raise QueryError(f"Could not execute your query: {exc}") from exc
            names = [d[0] for d in cur.description]
            types = [str(d[1]) for d in cur.description]
            rows = cur.fetchall()
        overflow = cap is not None and len(rows) > cap
        if overflow:
            rows = rows[:cap]
        if fmt in ("csv", "text/csv"):
            return write_csv(names, rows), "text/csv"
        specs = self.result_specs(adql, names, types)
        return write_votable(specs, rows, overflow=overflow), "application/x-votable+xml"

    def transpile(self, adql: str, maxrec: int | None) -> tuple[str, int | None]:
        """DuckDB SQL for the ADQL under the row limit, and where an overflow is cut (if so)."""
        try:
            tree = parse_adql(adql)
        except sqlglot.errors.ParseError as exc:
            raise QueryError(f"Could not parse your query: {exc}") from exc
        limit = tree.args.get("limit")
        top = int(limit.expression.this) if isinstance(limit, exp.Limit) else None
        hard = self.hard_limit
        if maxrec is not None:
            hard = maxrec if hard is None else min(hard, maxrec)
        rows, cap = top, None
        if hard is not None:
            if maxrec == 0:
                rows = 0
            elif top is None:
                rows, cap = hard + 1, hard  # cut at the limit, flagged as an overflow
            elif top > hard:
                rows = hard + 1  # DaCHS' quirk: one row more than the limit
        if isinstance(tree, exp.Select):
            tree.set("limit", None)
            if rows is not None:
                tree = tree.limit(rows)
        return tree.sql("duckdb"), cap

    def result_specs(self, adql: str, names: Sequence[str],
                     types: Sequence[str]) -> list[ColumnSpec]:
        by_name = {s.name.lower(): s for s in self.specs}
        use_table = "tap_schema" not in adql.lower()
        specs = []
        for name, typ in zip(names, types, strict=True):
            spec = by_name.get(name.lower()) if use_table else None
            specs.append(replace(spec, name=name) if spec else _spec_for_duckdb(name, typ))
        return specs


def _spec_for_duckdb(name: str, typ: str) -> ColumnSpec:
    if typ.startswith("TIMESTAMP"):
        return ColumnSpec(name, "char", "*", "timestamp")
    array = typ.endswith("[]")
    base = typ.removesuffix("[]").split("(")[0]
    datatype = _VOT_TYPES.get(base, "char")
    if datatype == "char":
        return ColumnSpec(name, "char", "*")
    return ColumnSpec(name, datatype, "*" if array else None)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return " ".join(_text(v) for v in value)
    return str(value)


def write_csv(names: Sequence[str], rows: Sequence[Sequence[Any]]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(names)
    for row in rows:
        writer.writerow([_text(v) for v in row])
    return buf.getvalue().encode("utf-8")


def write_votable(specs: Sequence[ColumnSpec], rows: Sequence[Sequence[Any]], *,
                  overflow: bool = False) -> bytes:
    """A results VOTable (TABLEDATA) whose FIELDs carry every part of the column specs;
    `overflow` adds DaCHS' trailing QUERY_STATUS=OVERFLOW."""
    vot = VOTableFile()
    resource = Resource()
    resource.type = "results"
    vot.resources.append(resource)
    resource.infos.append(Info(name="QUERY_STATUS", value="OVERFLOW" if overflow else "OK"))
    table = TableElement(vot, name="result")
    resource.tables.append(table)
    descriptions: list[str] = []
    for spec in specs:
        char = spec.datatype in ("char", "unicodeChar")
        arraysize = spec.arraysize if spec.arraysize else ("*" if char else None)
        fld = Field(vot, name=spec.name, datatype=spec.datatype, arraysize=arraysize,
                    xtype=spec.xtype, unit=spec.unit, ucd=spec.ucd, utype=spec.utype)
        if spec.description:
            fld.description = spec.description
            descriptions.append(spec.description)
        if spec.null_value is not None:
            if char:
                fld.values.null = spec.null_value
            elif spec.datatype in ("short", "int", "long", "unsignedByte"):
                fld.values.null = int(spec.null_value)
            else:
                fld.values.null = float(spec.null_value)
        table.fields.append(fld)
    table.create_arrays(len(rows))
    for i, row in enumerate(rows):
        for spec, value in zip(specs, row, strict=True):
            if value is None:
                table.array.mask[spec.name][i] = True
                continue
            if isinstance(value, dt.datetime):
                value = value.isoformat()
            table.array[spec.name][i] = value
    out = io.BytesIO()
    vot.to_xml(out)
    # astropy re-wraps DESCRIPTION text; put back the exact text, as a service sends it
    exact = iter(descriptions)
    text = re.sub(r"<DESCRIPTION>.*?</DESCRIPTION>",
                  lambda m: f"<DESCRIPTION>{escape(next(exact))}</DESCRIPTION>",
                  out.getvalue().decode("utf-8"), flags=re.S)
    return text.encode("utf-8")


class _Handler(BaseHTTPRequestHandler):
    tap: FakeTap
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def _params(self) -> dict[str, str]:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8") if length else ""
        query = urlsplit(self.path).query
        parsed = parse_qs(body, keep_blank_values=True)
        parsed.update(parse_qs(query, keep_blank_values=True))
        return {k.upper(): v[-1] for k, v in parsed.items()}

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._handle(self._params())

    def do_POST(self) -> None:  # noqa: N802
        self._handle(self._params())

    def _handle(self, params: dict[str, str]) -> None:
        path = urlsplit(self.path).path
        tap = self.tap
        fault = tap.take_fault(path, params.get("QUERY", ""))
        with tap.lock:
            tap.received.append(Received(self.command, path, params, dict(self.headers),
                                         fault.action if fault else None))
        if fault is not None and fault.action == "stall":
            time.sleep(fault.delay)
        elif fault is not None:
            self._fault(fault)
            return
        if path == "/tap/capabilities" and self.command == "GET":
            if not tap.capabilities:
                self._send(404, b"Not Found", "text/plain")
                return
            self._send(200, capabilities_document(tap.url, tap.hard_limit, tap.hard_limit),
                       "text/xml")
            return
        if path != "/tap/sync":
            self._send(404, b"Not Found", "text/plain")
            return
        try:
            body, ctype = tap.answer(params)
        except QueryError as exc:
            self._send(400, dachs_error(str(exc)), "application/x-votable+xml")
            return
        self._send(200, body, ctype)

    def _fault(self, fault: Fault) -> None:
        if fault.action == "status":
            self._send(fault.status, fault.body, "text/plain", fault.headers)
        elif fault.action == "truncate":
            self.send_response(200)
            self.send_header("Content-Type", "text/csv")
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"obs_publisher_did\r\nivo://x")
            self.wfile.flush()
            self._reset()
        elif fault.action == "reset":
            self._reset()
        elif fault.action == "close":
            self.close_connection = True
        else:
            raise ValueError(f"unknown fault action {fault.action!r}")

    def _reset(self) -> None:
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()

    def _send(self, status: int, body: bytes, ctype: str,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)
