"""Reading a catalogue that another process holds, through the local service it advertises.

DuckDB locks every other process out of a catalogue file that one process writes. That process
(the daemon, `mirror serve`, a CLI sync) serves reads on 127.0.0.1 and writes the endpoint into
the lock note; here a reader finds it, and asks TAP `/sync` for query results and
`/mirror/status` for the status. Results travel as the service's JSON format (Arrow type names,
exact NULLs: astropy reads a VOTable's NULL strings as empty ones) and errors as DALI VOTables
whose INFOs name the error's kind, so the reader gets the `QueryResult` or the error a local
query would have given.
"""

from __future__ import annotations

import io
import json
import re
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from mirror.catalogue.engine import holder
from mirror.catalogue.types import ColumnSpec, local_type
from mirror.errors import CatalogueBusyError, QueryError, from_wire
from mirror.query.result import QueryResult, annotate

if TYPE_CHECKING:  # requests and VOTable parsing load when a service is asked, not before
    import requests
    from astropy.io.votable.tree import VOTableFile

BUSY_RETRIES = 3  # the service's query slots were all taken: wait as told, this many times
_SCALARS = {"unsignedByte": pa.uint8(), "short": pa.int16(), "int": pa.int32(),
            "long": pa.int64(), "float": pa.float32(), "double": pa.float64(),
            "boolean": pa.bool_()}
_WIRE_INFOS = ("error_kind", "hint", "line", "column", "text")


@dataclass(frozen=True)
class Endpoint:
    """A holder's service: its URL, the token it wants (from the 0600 note), who it is."""

    url: str
    token: str | None = None
    holder: str = "another process"


def advertised(catalogue_path: Path) -> Endpoint | None:
    """The service the living holder of the catalogue advertises, if any."""
    note = holder(catalogue_path)
    if not note or not note.get("endpoint"):
        return None
    who = f"`{note.get('command', 'mirror')}` (pid {note.get('pid')})"
    return Endpoint(str(note["endpoint"]).rstrip("/"), note.get("token") or None, who)


class RemoteCatalogue:
    """The reading half of `Mirror` over HTTP: query, status, runs, the daemon's state."""

    def __init__(self, endpoint: Endpoint, *, timeout: float = 60.0) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        from mirror.http import make_session

        self.session = make_session(endpoint.url, endpoint.token)

    def query(self, adql: str, *, maxrec: int | None = None,
              timeout: float | None = None) -> QueryResult:
        """Run ADQL through the service's TAP /sync; errors come back as the same kind."""
        started = time.perf_counter()
        seconds = self.timeout if timeout is None else timeout
        params = {"REQUEST": "doQuery", "LANG": "ADQL", "QUERY": adql, "FORMAT": "json",
                  "EXECUTIONDURATION": f"{seconds:g}"}
        if maxrec is not None:
            params["MAXREC"] = str(maxrec)
        response = self._send("POST", "/sync", data=params, wait=seconds + 30)
        if response.headers.get("content-type", "").startswith("application/json"):
            result = from_json(response.json(), adql)
        else:  # errors (and services that only speak VOTable)
            result = to_result(response.content, adql, response.status_code)
        result.seconds = time.perf_counter() - started
        return result

    def status(self) -> list[dict[str, Any]]:
        """The per-source status rows the holder serves at /mirror/status."""
        body = self._send("GET", "/mirror/status").json()
        rows = body.get("sources", []) if isinstance(body, dict) else body
        return [dict(r) for r in rows]

    def runs(self, source: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        """The run history, newest first (as many as the holder lists)."""
        asked = {"runs": str(limit), **({"source": source} if source else {})}
        body = self._send("GET", "/mirror/status", params=asked).json()
        rows = body.get("runs", []) if isinstance(body, dict) else []  # a service without
        rows = [r for r in rows if source is None or r.get("source") == source]  # run history
        rows.sort(key=lambda r: r.get("run_id") or 0, reverse=True)
        return rows[:limit]

    def state(self) -> dict[str, Any] | None:
        """The daemon's live state, or None when the holder is not a daemon."""
        response = self._send("GET", "/mirror/state", ok=(404,))
        return None if response.status_code == 404 else dict(response.json())

    def _send(self, method: str, path: str, *, ok: tuple[int, ...] = (), wait: float = 30.0,
              **kwargs: Any) -> requests.Response:
        import requests

        from mirror.http import retry_after_seconds

        url = self.endpoint.url + path
        for attempt in range(BUSY_RETRIES + 1):
            try:
                response = self.session.request(method, url, timeout=(5, wait), **kwargs)
            except requests.RequestException as exc:
                raise CatalogueBusyError(
                    f"the catalogue is in use by {self.endpoint.holder}, and its service at "
                    f"{self.endpoint.url} does not answer ({type(exc).__name__})",
                    "wait for it to finish, or stop it; DuckDB lets only one process open "
                    "the file") from exc
            if response.status_code == 503 and attempt < BUSY_RETRIES:
                asked = retry_after_seconds(response.headers.get("Retry-After"))
                time.sleep(min(1.0 if asked is None else asked, 10.0))
                continue
            break
        if response.status_code in (401, 403):
            raise CatalogueBusyError(
                f"the service of {self.endpoint.holder} at {self.endpoint.url} refused this "
                f"process (HTTP {response.status_code})",
                "run as the user that started it, with the same [serve] token_env")
        if response.status_code >= 400 and response.status_code not in ok \
                and not _is_votable(response):
            raise CatalogueBusyError(
                f"the service of {self.endpoint.holder} answered HTTP {response.status_code} "
                f"for {path}: {response.text.strip()[:200]}",
                "try again; `mirror status` shows what holds the catalogue")
        return response


def _is_votable(response: requests.Response) -> bool:
    return "votable" in response.headers.get("content-type", "")


# -- JSON -> QueryResult --------------------------------------------------------------------------


def from_json(doc: dict[str, Any], adql: str = "") -> QueryResult:
    """The service's JSON result (`mirror.query.writers.write_json`) as a QueryResult."""
    names = [c["name"] for c in doc["columns"]]
    rows = doc["data"]
    arrays = [_json_array([r[j] for r in rows], _arrow_type(c.get("datatype", "string")))
              for j, c in enumerate(doc["columns"])]
    arrow = pa.Table.from_arrays(arrays, names=names)
    columns = {c["name"].lower(): ColumnSpec(
        c["name"], xtype=c.get("xtype"), unit=c.get("unit"), ucd=c.get("ucd"),
        utype=c.get("utype"), description=c.get("description")) for c in doc["columns"]}
    return QueryResult(annotate(arrow, columns), bool(doc.get("overflow")), columns, adql)


_NESTED = re.compile(r"^(large_)?list<[^:]*: (.*)>$")
_DECIMAL = re.compile(r"^decimal(?:128|256)\((\d+), (-?\d+)\)$")
_STAMP = re.compile(r"^timestamp\[(\w+)(?:, tz=(.*))?\]$")


def _arrow_type(text: str) -> pa.DataType:
    """An Arrow type from its name as `str(type)` writes it (text for anything unknown)."""
    if m := _NESTED.match(text):
        inner = _arrow_type(m.group(2))
        return pa.large_list(inner) if m.group(1) else pa.list_(inner)
    if m := _DECIMAL.match(text):
        return pa.decimal128(int(m.group(1)), int(m.group(2)))
    if m := _STAMP.match(text):
        return pa.timestamp(m.group(1), m.group(2))
    try:
        return pa.type_for_alias(text)
    except (ValueError, KeyError):
        return pa.string()


def _json_array(values: list[Any], typ: pa.DataType) -> pa.Array:
    if pa.types.is_timestamp(typ) or pa.types.is_date(typ) or pa.types.is_time(typ):
        return pa.array(values, pa.string()).cast(typ)
    if pa.types.is_decimal(typ):
        return pa.array([None if v is None else Decimal(str(v)) for v in values], typ)
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        values = [v if v is None or isinstance(v, str) else json.dumps(v) for v in values]
    return pa.array(values, typ)


# -- VOTable -> QueryResult -----------------------------------------------------------------------


def to_result(body: bytes, adql: str = "", status: int = 200) -> QueryResult:
    """A TAP VOTable answer as the QueryResult a local query would give: same names, types,
    units, UCDs and overflow flag; QUERY_STATUS=ERROR raised as the error it describes."""
    from astropy.io.votable import parse as parse_votable

    try:
        vot = parse_votable(io.BytesIO(body), verify="ignore")
    except Exception as exc:  # noqa: BLE001 - astropy raises many kinds for a broken document
        raise QueryError(f"the local service answered HTTP {status} with something that is "
                         f"not a VOTable: {body[:120]!r}") from exc
    status_values, wire, message = _infos(vot)
    if "ERROR" in status_values:
        raise from_wire(message or "the query failed", wire, adql)
    try:
        table = vot.get_first_table()
    except (IndexError, ValueError) as exc:
        raise QueryError("the local service answered a VOTable without a table") from exc
    specs = [_spec(f) for f in table.fields]
    keys = table.array.dtype.names  # astropy's (unique) keys, in FIELD order
    arrays = [_arrow(table.array[key], spec) for key, spec in zip(keys, specs, strict=True)]
    arrow = pa.Table.from_arrays(arrays, names=[s.name for s in specs])
    columns = {s.name.lower(): s for s in specs}
    return QueryResult(annotate(arrow, columns), "OVERFLOW" in status_values, columns, adql)


def _infos(vot: VOTableFile) -> tuple[set[str], dict[str, str], str]:
    statuses, wire, message = set(), {}, ""
    for info in vot.iter_info():
        if info.name == "QUERY_STATUS":
            statuses.add(str(info.value).upper())
            if str(info.value).upper() == "ERROR":
                message = (info.content or "").strip()
        elif info.name in _WIRE_INFOS:
            wire[info.name] = str(info.value)
    hint = wire.get("hint")
    if hint and message.endswith(f" (hint: {hint})"):  # the readable form for other clients
        message = message[:-len(f" (hint: {hint})")]
    return statuses, wire, message


def _spec(field: Any) -> ColumnSpec:
    unit = getattr(field, "unit", None)
    size = field.arraysize
    return ColumnSpec(name=str(field.name or field.ID), datatype=str(field.datatype),
                      arraysize=str(size) if size is not None else None, xtype=field.xtype,
                      unit=unit.to_string() if unit is not None else None, ucd=field.ucd,
                      utype=field.utype, description=field.description)


def _arrow(column: Any, spec: ColumnSpec) -> pa.Array:
    """One VOTable column as the Arrow type the local catalogue gives it."""
    mask = np.ma.getmaskarray(column)
    data = np.ma.getdata(column)
    typ = local_type(spec)
    if typ == "TIMESTAMP" or spec.plain_xtype == "timestamp":
        text = pa.array([None if m or not _text(v) else _text(v)  # '': astropy's NULL text
                         for v, m in zip(data, mask, strict=True)], pa.string())
        return text.cast(pa.timestamp("us"))
    if spec.datatype in _SCALARS and not spec.is_array:
        return pa.array(data, _SCALARS[spec.datatype], mask=mask)
    if spec.is_array and spec.datatype in _SCALARS:
        inner = _SCALARS[spec.datatype]
        values = [None if m else [x.item() if hasattr(x, "item") else x
                                  for x in np.ma.getdata(np.atleast_1d(v))]
                  for v, m in zip(data, _row_mask(column, mask), strict=True)]
        if spec.plain_xtype in ("point", "circle", "polygon"):  # DALI geometry: text locally
            return pa.array([None if v is None else " ".join(repr(float(x)) for x in v)
                             for v in values], pa.string())
        return pa.array(values, pa.list_(inner))
    return pa.array([None if m else _text(v) for v, m in zip(data, mask, strict=True)],
                    pa.string())


def _row_mask(column: Any, mask: np.ndarray) -> list[bool]:
    """Per row: NULL (a variable-length array cell is masked as a whole or not at all)."""
    if mask.ndim == 1:
        return [bool(m) for m in mask]
    return [bool(np.all(m)) for m in mask]


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def require(catalogue_path: Path, busy: CatalogueBusyError) -> Endpoint:
    """The advertised endpoint, or the original busy error when the holder serves none."""
    found = advertised(catalogue_path)
    if found is None:
        raise busy
    return found
