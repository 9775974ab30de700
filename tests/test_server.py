"""The TAP service in process (starlette's TestClient) over a catalogue synced from the fake TAP
service: /sync in every format, UWS jobs, VOSI, examples, limits and hostile requests."""

from __future__ import annotations

import datetime as dt
import io
import json
import math
import re
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
from astropy.io.votable import parse as parse_votable
from astropy.table import Table
from fakes import FakeTap
from starlette.testclient import TestClient
from test_harvest_unit import Harness

from mirror.api import Mirror
from mirror.cli import main
from mirror.config import ServeConfig
from mirror.errors import ConfigError
from mirror.server import examples as dali_examples
from mirror.server.app import build_app, jobs_folder
from mirror.server.context import ServiceContext
from mirror.server.formats import FORMATS
from mirror.server.guard import access_token
from mirror.server.pool import RunnerPool
from mirror.server.vosi import FEATURES, UDFS, UNADVERTISED
from mirror.server.votable import document

CONE = ("SELECT obs_publisher_did, s_ra, s_dec, t_min, obs_release_date, snr, target_class "
        "FROM ivoa.obscore WHERE 1 = CONTAINS(POINT('ICRS', s_ra, s_dec), "
        "CIRCLE('ICRS', {ra}, {dec}, 30)) ORDER BY obs_publisher_did")
UWS = "{http://www.ivoa.net/xml/UWS/v1.0}"


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("server")
    with FakeTap(hard_limit=20).load_recorded() as tap:
        h = Harness(tmp, tap)
        assert h.sync().status == "ok"
        h.close()
    return h.config


@pytest.fixture(scope="module")
def mirror(config: Path) -> Iterator[Mirror]:
    with Mirror.open(config) as m:
        yield m


def make_ctx(m: Mirror, **kw: Any) -> ServiceContext:
    return ServiceContext(m.catalogue(write=True), m.config,
                          status=lambda: [s.as_dict() for s in m.status()], **kw)


@pytest.fixture(scope="module")
def ctx(mirror: Mirror) -> Iterator[ServiceContext]:
    ctx = make_ctx(mirror)
    yield ctx
    ctx.close()


@pytest.fixture(scope="module")
def client(ctx: ServiceContext) -> Iterator[TestClient]:
    with TestClient(build_app(ctx)) as c:
        yield c


@pytest.fixture(scope="module")
def cone(ctx: ServiceContext) -> str:
    with ctx.runners.runner() as r:
        row = r.query("SELECT TOP 1 s_ra, s_dec FROM ivoa.obscore ORDER BY obs_publisher_did"
                      ).arrow.to_pylist()[0]
    return CONE.format(ra=row["s_ra"], dec=row["s_dec"])


def direct(ctx: ServiceContext, adql: str, maxrec: int | None = None) -> list[dict[str, Any]]:
    with ctx.runners.runner() as r:
        return r.query(adql, maxrec=maxrec).arrow.to_pylist()


def norm(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or value is np.ma.masked or value == "":
        return None
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, float):
        return None if math.isnan(value) else float(f"{value:.6g}")
    if hasattr(value, "isoformat"):
        return value.isoformat()[:19]
    if isinstance(value, str) and re.match(r"^\d{4}-\d\d-\d\dT", value):
        return value[:19]
    return value


def rows_of(table: Table | list[dict[str, Any]], names: list[str]) -> list[tuple[Any, ...]]:
    return [tuple(norm(row[n]) for n in names) for row in table]


def votable(body: bytes) -> Any:
    return parse_votable(io.BytesIO(body))


def status_of(vot: Any) -> list[str]:
    return [i.value for i in vot.resources[0].infos if i.name == "QUERY_STATUS"]


# -- /sync ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["votable", "votable/td", "csv", "tsv", "fits", "json"])
def test_sync_answers_the_rows_of_the_adql_layer_in_every_format(
        client: TestClient, ctx: ServiceContext, cone: str, fmt: str) -> None:
    expected = direct(ctx, cone)
    names = list(expected[0])
    assert 1 < len(expected) < 50
    r = client.post("/sync", data={"REQUEST": "doQuery", "LANG": "ADQL", "QUERY": cone,
                                   "RESPONSEFORMAT": fmt})
    assert r.status_code == 200
    if fmt.startswith("votable"):
        got = votable(r.content).get_first_table().to_table()
    elif fmt in ("csv", "tsv"):
        opts = pacsv.ParseOptions(delimiter="\t" if fmt == "tsv" else ",")
        got = pacsv.read_csv(io.BytesIO(r.content), parse_options=opts).to_pylist()
    elif fmt == "fits":
        got = Table.read(io.BytesIO(r.content), format="fits")
    else:
        doc = r.json()
        got = [dict(zip([c["name"] for c in doc["columns"]], row, strict=True))
               for row in doc["data"]]
    assert rows_of(got, names) == rows_of(expected, names)


def test_parameter_names_are_case_insensitive_and_get_equals_post(
        client: TestClient, cone: str) -> None:
    a = client.get("/sync", params={"request": "doQuery", "lang": "ADQL", "query": cone,
                                    "format": "csv"})
    b = client.post("/sync", data={"Request": "doQuery", "Lang": "adql", "Query": cone,
                                   "Format": "text/csv"})
    assert a.status_code == b.status_code == 200
    assert a.content == b.content and a.content.count(b"\n") > 2


def test_sync_answers_alike_on_its_short_way_and_through_the_router(
        client: TestClient, cone: str) -> None:
    params = {"LANG": "ADQL", "QUERY": cone, "FORMAT": "csv"}
    short = [client.get("/sync", params=params), client.post("/sync", data=params)]
    routed = client.post("/sync", files={k: (None, v) for k, v in params.items()})  # multipart
    assert [r.status_code for r in (*short, routed)] == [200, 200, 200]
    assert len({(r.content, r.headers["content-type"]) for r in (*short, routed)}) == 1
    head = client.head("/sync", params=params)
    assert head.status_code == 200 and head.headers["content-type"] == routed.headers[
        "content-type"] and not head.content
    assert client.put("/sync", data=params).status_code == 405
    broken = client.post("/sync", content=b"--x\r\nbroken",
                         headers={"content-type": "multipart/form-data; boundary=x"})
    assert broken.status_code == 400


@pytest.mark.parametrize(("rows", "with_nulls"), [(3, False), (3, True), (40, True)])
def test_binary2_null_flags_mark_exactly_the_null_cells(rows: int, with_nulls: bool) -> None:
    names = [f"c{i}" for i in range(10)]  # two bytes of flags a row
    cells: list[list[float | None]] = [[float(r * 10 + c) for c in range(10)]
                                       for r in range(rows)]  # few rows and many: two writers
    if with_nulls:
        cells[0][0] = cells[1][9] = cells[rows - 1][8] = None
    arrow = pa.table({n: pa.array([row[i] for row in cells], pa.float64())
                      for i, n in enumerate(names)})
    got = votable(document(arrow, {}, overflow=False)).get_first_table().array
    for r, row in enumerate(cells):
        for c, value in enumerate(row):
            assert (got[names[c]].mask[r], norm(got[names[c]][r])) == (value is None, value)


def test_votable_fields_carry_the_columns_metadata(client: TestClient) -> None:
    q = ("SELECT TOP 3 s_ra, s_dec, t_min, obs_release_date, obs_publisher_did, "
         "POINT('ICRS', s_ra, s_dec) AS pos, CIRCLE('ICRS', s_ra, s_dec, 1) AS c "
         "FROM ivoa.obscore")
    r = client.get("/sync", params={"LANG": "ADQL", "QUERY": q})
    assert r.headers["content-type"].startswith("application/x-votable+xml")
    vot = votable(r.content)
    assert status_of(vot) == ["OK"]
    fields = {f.name: f for f in vot.get_first_table().fields}
    ra = fields["s_ra"]
    assert (ra.datatype, str(ra.unit), ra.ucd) == ("double", "deg", "pos.eq.ra")
    assert ra.utype and ra.description
    assert fields["obs_release_date"].xtype == "timestamp"
    assert (fields["pos"].datatype, fields["pos"].arraysize, fields["pos"].xtype) == \
        ("double", "2", "point")
    assert (fields["c"].arraysize, fields["c"].xtype) == ("3", "circle")
    table = vot.get_first_table().to_table()
    for row in table:
        assert list(row["pos"]) == pytest.approx([row["s_ra"], row["s_dec"]])
        assert list(row["c"]) == pytest.approx([row["s_ra"], row["s_dec"], 1.0])


def test_maxrec_cuts_and_says_overflow_after_the_table(client: TestClient,
                                                        ctx: ServiceContext) -> None:
    total = direct(ctx, "SELECT COUNT(*) AS n FROM ivoa.obscore")[0]["n"]
    assert total > 5
    r = client.get("/sync", params={"LANG": "ADQL", "MAXREC": "5",
                                    "QUERY": "SELECT obs_publisher_did FROM ivoa.obscore"})
    vot = votable(r.content)
    assert len(vot.get_first_table().array) == 5
    assert status_of(vot) == ["OK", "OVERFLOW"]
    assert r.text.index('value="OVERFLOW"') > r.text.index("</TABLE>")
    r = client.get("/sync", params={"LANG": "ADQL", "MAXREC": "0",
                                    "QUERY": "SELECT obs_publisher_did FROM ivoa.obscore"})
    vot = votable(r.content)
    assert len(vot.get_first_table().array) == 0
    assert [f.name for f in vot.get_first_table().fields] == ["obs_publisher_did"]
    r = client.get("/sync", params={"LANG": "ADQL", "MAXREC": str(total),
                                    "QUERY": "SELECT obs_publisher_did FROM ivoa.obscore"})
    assert status_of(votable(r.content)) == ["OK"]


@pytest.mark.parametrize(("params", "needle"), [
    ({"LANG": "ADQL"}, "QUERY is missing"),
    ({"LANG": "ADQL", "QUERY": "  "}, "QUERY is missing"),
    ({"QUERY": "SELECT 1 FROM ivoa.obscore"}, "LANG is missing"),
    ({"LANG": "SQL", "QUERY": "SELECT 1"}, "LANG='SQL' is not supported"),
    ({"LANG": "ADQL", "QUERY": "SELECT TOP 1 * FROM ivoa.obscore", "MAXREC": "-1"},
     "MAXREC='-1'"),
    ({"LANG": "ADQL", "QUERY": "SELECT TOP 1 * FROM ivoa.obscore", "MAXREC": "lots"},
     "MAXREC='lots'"),
    ({"LANG": "ADQL", "QUERY": "SELECT TOP 1 * FROM ivoa.obscore", "FORMAT": "xls"},
     "RESPONSEFORMAT='xls' is not offered"),
    ({"REQUEST": "getCapabilities", "LANG": "ADQL", "QUERY": "SELECT 1"}, "REQUEST="),
    ({"LANG": "ADQL", "QUERY": "SELECT 1", "UPLOAD": "t,http://127.0.0.1/x"}, "UPLOAD"),
])
def test_malformed_requests_are_400_with_an_error_votable(
        client: TestClient, params: dict[str, str], needle: str) -> None:
    r = client.get("/sync", params=params)
    assert r.status_code == 400
    vot = votable(r.content)
    [info] = [i for i in vot.resources[0].infos if i.name == "QUERY_STATUS"]
    assert info.value == "ERROR" and needle in info.content
    assert "Traceback" not in r.text


def test_query_errors_say_what_to_fix_without_local_paths(client: TestClient,
                                                           config: Path) -> None:
    for q, needle in [("SELECT TOP 1 * FROM ivoa.obscor", "did you mean"),
                      ("SELECT TOP 1 nosuch FROM ivoa.obscore", "nosuch"),
                      ("SELEKT * FROM ivoa.obscore", "syntax error"),
                      ("SELECT * FROM read_csv('/etc/passwd')", "")]:
        r = client.get("/sync", params={"LANG": "ADQL", "QUERY": q})
        assert r.status_code == 200, q
        vot = votable(r.content)
        [info] = [i for i in vot.resources[0].infos if i.name == "QUERY_STATUS"]
        assert info.value == "ERROR"
        assert needle in info.content
        for private in (str(config.parent), str(Path.home()), "Traceback", "/etc/passwd"):
            assert private not in r.text, (q, private)


def test_a_full_pool_answers_503_with_retry_after(mirror: Mirror) -> None:
    ctx = make_ctx(mirror, runners=RunnerPool(mirror.catalogue(write=True), 1, wait=0.05))
    with TestClient(build_app(ctx)) as c, ctx.runners.runner():
        r = c.get("/sync", params={"LANG": "ADQL", "QUERY": "SELECT TOP 1 * FROM ivoa.obscore"})
    assert r.status_code == 503 and int(r.headers["retry-after"]) > 0
    assert "busy" in r.text
    ctx.close()


def test_queries_run_concurrently_on_their_own_runners(client: TestClient, cone: str,
                                                       ctx: ServiceContext) -> None:
    expected = rows_of(direct(ctx, cone), ["obs_publisher_did"])
    answers: list[Any] = []

    def ask() -> None:
        r = client.get("/sync", params={"LANG": "ADQL", "QUERY": cone})
        answers.append(rows_of(votable(r.content).get_first_table().to_table(),
                               ["obs_publisher_did"]))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert answers == [expected] * 8


# -- /async (UWS) ---------------------------------------------------------------------------------

def job_doc(client: TestClient, url: str, **params: Any) -> ET.Element:
    r = client.get(url, params=params)
    assert r.status_code == 200, r.text
    return ET.fromstring(r.content)


def ended(client: TestClient, url: str, seconds: float = 30) -> ET.Element:
    """The job once it is over: UWS WAIT returns at every change of phase (QUEUED ->
    EXECUTING too), so a loaded machine needs more than one."""
    deadline = time.monotonic() + seconds
    while True:
        job = job_doc(client, url, WAIT="5")
        if job.findtext(f"{UWS}phase") in ("COMPLETED", "ERROR", "ABORTED") \
                or time.monotonic() > deadline:
            return job


def test_async_job_runs_and_its_result_equals_sync(client: TestClient, cone: str) -> None:
    r = client.post("/async", data={"LANG": "ADQL", "QUERY": cone, "RUNID": "r1"},
                    follow_redirects=False)
    assert r.status_code == 303
    url = r.headers["location"]
    job = job_doc(client, url)
    assert job.findtext(f"{UWS}phase") == "PENDING"
    assert job.findtext(f"{UWS}runId") == "r1"
    assert client.get(url + "/phase").text == "PENDING"
    assert client.post(url + "/phase", data={"PHASE": "RUN"},
                       follow_redirects=False).status_code == 303
    job = ended(client, url)
    assert job.findtext(f"{UWS}phase") == "COMPLETED"
    assert job.find(f"{UWS}startTime").text and job.find(f"{UWS}endTime").text
    [result] = job.find(f"{UWS}results")
    href = result.get("{http://www.w3.org/1999/xlink}href")
    assert href.endswith("/results/result")
    got = client.get(href)
    want = client.get("/sync", params={"LANG": "ADQL", "QUERY": cone})
    cols = ["obs_publisher_did", "s_ra", "snr"]
    assert rows_of(votable(got.content).get_first_table().to_table(), cols) == \
        rows_of(votable(want.content).get_first_table().to_table(), cols)
    params = ET.fromstring(client.get(url + "/parameters").content)
    assert {p.get("id"): p.text for p in params}["query"] == cone
    listing = ET.fromstring(client.get("/async").content)
    assert url.rsplit("/", 1)[1] in [j.get("id") for j in listing]


def test_async_job_errors_are_reported_in_the_job_and_its_error_resource(
        client: TestClient) -> None:
    r = client.post("/async", data={"LANG": "ADQL", "QUERY": "SELECT nosuch FROM ivoa.obscore",
                                    "PHASE": "RUN"}, follow_redirects=False)
    url = r.headers["location"]
    job = ended(client, url)
    assert job.findtext(f"{UWS}phase") == "ERROR"
    assert "nosuch" in job.find(f"{UWS}errorSummary").findtext(f"{UWS}message")
    err = votable(client.get(url + "/error").content)
    assert status_of(err) == ["ERROR"]
    assert client.get(url + "/results/result").status_code == 404


def test_async_job_settings_update_and_delete(client: TestClient, ctx: ServiceContext) -> None:
    url = client.post("/async", data={"LANG": "ADQL", "QUERY": "SELECT 1 AS x"},
                      follow_redirects=False).headers["location"]
    client.post(url, data={"QUERY": "SELECT TOP 2 obs_id FROM ivoa.obscore", "MAXREC": "1"})
    client.post(url + "/executionduration", data={"EXECUTIONDURATION": "5"})
    assert client.get(url + "/executionduration").text == "5"
    client.post(url + "/executionduration", data={"EXECUTIONDURATION": "99999"})
    assert int(client.get(url + "/executionduration").text) == int(ctx.runners.timeout)
    soon = (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    client.post(url + "/destruction", data={"DESTRUCTION": soon})
    assert client.get(url + "/destruction").text == soon
    client.post(url + "/destruction", data={"DESTRUCTION": "2999-01-01T00:00:00Z"})
    assert client.get(url + "/destruction").text < "2999"  # capped at [serve] job_hours
    assert client.get(url + "/quote").status_code == 200
    assert client.get(url + "/owner").text == ""
    # destruction in the past: the next request destroys it
    client.post(url + "/destruction", data={"DESTRUCTION": "2000-01-01T00:00:00Z"})
    assert client.get(url).status_code == 404
    url = client.post("/async", data={"LANG": "ADQL", "QUERY": "SELECT TOP 2 obs_id FROM "
                                      "ivoa.obscore", "MAXREC": "1", "PHASE": "RUN"},
                      follow_redirects=False).headers["location"]
    job = ended(client, url)
    assert job.findtext(f"{UWS}phase") == "COMPLETED"
    assert status_of(votable(client.get(url + "/results/result").content)) == \
        ["OK", "OVERFLOW"]
    assert client.post(url, data={"QUERY": "x"}).status_code == 400  # not PENDING any more
    r = client.post(url, data={"ACTION": "DELETE"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].endswith("/async")
    assert client.get(url).status_code == 404
    url = client.post("/async", data={"LANG": "ADQL", "QUERY": "SELECT 1 AS x"},
                      follow_redirects=False).headers["location"]
    assert client.delete(url, follow_redirects=False).status_code == 303
    assert client.get(url + "/phase").status_code == 404


@pytest.mark.parametrize("path", ["/async/0123456789abcdef", "/async/../../etc/passwd",
                                  "/async/nosuch/phase", "/async/%2e%2e%2fjob.json/results/result",
                                  "/async/0123456789abcdef/results/result"])
def test_unknown_job_ids_are_404(client: TestClient, path: str, config: Path) -> None:
    r = client.get(path)
    assert r.status_code == 404
    assert str(config.parent) not in r.text and "Traceback" not in r.text


def test_jobs_survive_a_restart_and_running_ones_become_errors(mirror: Mirror) -> None:
    ctx = make_ctx(mirror)
    with TestClient(build_app(ctx)) as c:
        done = c.post("/async", data={"LANG": "ADQL", "QUERY": "SELECT TOP 1 obs_id FROM "
                                      "ivoa.obscore", "PHASE": "RUN"},
                      follow_redirects=False).headers["location"]
        assert ended(c, done).findtext(f"{UWS}phase") == "COMPLETED"
    job_id = done.rsplit("/", 1)[1]
    note = jobs_folder(mirror.config.catalogue_path) / job_id / "job.json"
    doc = json.loads(note.read_text())
    doc["phase"] = "EXECUTING"  # as a kill mid-query leaves it
    note.write_text(json.dumps(doc))
    with TestClient(build_app(ctx)) as c:
        job = job_doc(c, f"/async/{job_id}")
        assert job.findtext(f"{UWS}phase") == "ERROR"
        assert "submit it again" in job.find(f"{UWS}errorSummary").findtext(f"{UWS}message")
    ctx.close()


def test_wait_returns_early_when_the_phase_changes(client: TestClient) -> None:
    url = client.post("/async", data={"LANG": "ADQL", "QUERY": "SELECT TOP 1 obs_id FROM "
                                      "ivoa.obscore"}, follow_redirects=False).headers["location"]
    started = time.monotonic()
    job = job_doc(client, url, WAIT="1", PHASE="COMPLETED")  # not in that phase: no blocking
    assert time.monotonic() - started < 0.9
    assert job.findtext(f"{UWS}phase") == "PENDING"
    client.post(url + "/phase", data={"PHASE": "RUN"})
    job = ended(client, url)
    assert job.findtext(f"{UWS}phase") == "COMPLETED"
    assert time.monotonic() - started < 20


# -- VOSI and examples ----------------------------------------------------------------------------

def test_every_advertised_feature_runs(client: TestClient, ctx: ServiceContext) -> None:
    caps = client.get("/capabilities")
    assert caps.status_code == 200
    root = ET.fromstring(caps.content)
    forms = {e.text for e in root.iter("form")}
    probes = [(form, q) for feats in FEATURES.values() for form, q in feats]
    probes += [(form, q) for form, _, q in UDFS]
    assert forms == {form for form, _ in probes}
    for form, q in probes + UNADVERTISED:
        assert direct(ctx, q) is not None, form
    mimes = [e.text for e in root.iter("mime")]
    assert mimes == [f.mime for f in FORMATS]
    for mime in mimes:
        r = client.get("/sync", params={"LANG": "ADQL", "QUERY": "SELECT TOP 1 obs_id FROM "
                                        "ivoa.obscore", "RESPONSEFORMAT": mime})
        assert r.status_code == 200, mime
    limit = next(root.iter("outputLimit")).findtext("hard")
    assert int(limit) == ctx.runners.maxrec


def test_tables_lists_every_tap_schema_column(client: TestClient, ctx: ServiceContext) -> None:
    r = client.get("/tables")
    assert r.status_code == 200
    root = ET.fromstring(r.content)
    listed = {(t.findtext("name"), c.findtext("name")): c
              for t in root.iter("table") for c in t.iter("column")}
    columns = direct(ctx, "SELECT table_name, column_name, datatype, unit, ucd "
                          "FROM TAP_SCHEMA.columns")
    assert {(c["table_name"], c["column_name"]) for c in columns} == set(listed)
    for c in columns:
        el = listed[(c["table_name"], c["column_name"])]
        assert el.findtext("dataType") == c["datatype"]
        assert (el.findtext("unit") or "") == (c["unit"] or "")
        assert (el.findtext("ucd") or "") == (c["ucd"] or "")


def test_examples_are_dali_and_each_runs(client: TestClient, ctx: ServiceContext) -> None:
    r = client.get("/examples")
    assert r.status_code == 200
    root = ET.fromstring(r.content)
    examples = [e for e in root.iter() if e.get("typeof") == "example"]
    ids = [e.get("id") for e in examples]
    assert len(ids) == len(set(ids)) >= 2
    queries = [e.text for e in root.iter() if e.get("property") == "query"]
    assert len(queries) == len(examples)
    assert any("CONTAINS" in q for q in queries) and any("TAP_SCHEMA" in q for q in queries)
    nonempty = 0
    for q in queries:
        vot = votable(client.get("/sync", params={"LANG": "ADQL", "QUERY": q}).content)
        assert status_of(vot)[0] == "OK"
        assert len(vot.get_first_table().array) == len(direct(ctx, q)), q
        nonempty += len(vot.get_first_table().array) > 0
    assert nonempty >= 2


def test_builtin_examples_run_when_the_schema_catalogue_has_none(
        ctx: ServiceContext, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dali_examples, "_from_schema", lambda ctx: [])
    monkeypatch.setattr(dali_examples, "_CACHE", {})
    found = dali_examples.examples(ctx)
    assert [e.id for e in found] == ["cone", "collections", "columns"]
    for e in found:
        assert direct(ctx, e.query), e.query


def test_availability_and_mirror_status(client: TestClient, mirror: Mirror) -> None:
    root = ET.fromstring(client.get("/availability").content)
    assert root.findtext("{http://www.ivoa.net/xml/VOSIAvailability/v1.0}available") == "true"
    status = client.get("/mirror/status").json()
    assert [s["name"] for s in status] == [s.name for s in mirror.status()]
    assert status[0]["rows"] == mirror.status()[0].rows
    assert client.get("/mirror/state").status_code == 404


def test_mirror_state_answers_the_daemons_state(mirror: Mirror) -> None:
    ctx = make_ctx(mirror, state=lambda: {"phase": "sleeping", "next": "soon"})
    with TestClient(build_app(ctx)) as c:
        assert c.get("/mirror/state").json() == {"phase": "sleeping", "next": "soon"}
    ctx.close()


# -- security -------------------------------------------------------------------------------------

def test_a_token_is_required_when_configured(mirror: Mirror) -> None:
    ctx = make_ctx(mirror, token="s3cret-token")
    with TestClient(build_app(ctx)) as c:
        assert c.get("/availability").status_code == 401
        sync = c.get("/sync", params={"LANG": "ADQL", "QUERY": "SELECT 1 AS x FROM ivoa.obscore"})
        assert sync.status_code == 401 and b"VOTABLE" not in sync.content
        bad = c.get("/availability", headers={"Authorization": "Bearer wrong"})
        assert bad.status_code == 401 and "s3cret" not in bad.text
        ok = c.get("/availability", headers={"Authorization": "Bearer s3cret-token"})
        assert ok.status_code == 200
    ctx.close()


def test_oversized_bodies_are_refused(client: TestClient, ctx: ServiceContext) -> None:
    big = "SELECT 1 AS x FROM ivoa.obscore WHERE 'a' = '" + "a" * (
        ctx.config.serve.max_body_kb * 1024) + "'"
    r = client.post("/sync", data={"LANG": "ADQL", "QUERY": big})
    assert r.status_code == 413 and "max_body_kb" in r.text

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer
        yield b"LANG=ADQL&QUERY="
        for _ in range(ctx.config.serve.max_body_kb + 1):
            yield b"a" * 1024

    r = client.post("/sync", content=chunks(),
                    headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 413
    r = client.post("/async", data={"LANG": "ADQL", "QUERY": big})
    assert r.status_code == 413


def test_binding_beyond_loopback_needs_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    assert access_token("127.0.0.1", ServeConfig()) is None
    with pytest.raises(ConfigError, match="no access token"):
        access_token("0.0.0.0", ServeConfig())
    with pytest.raises(ConfigError, match="MIRROR_TEST_SERVE"):
        access_token("192.0.2.1", ServeConfig(token_env="MIRROR_TEST_SERVE"))
    monkeypatch.setenv("MIRROR_TEST_SERVE", "tok")
    assert access_token("192.0.2.1", ServeConfig(token_env="MIRROR_TEST_SERVE")) == "tok"


def test_mirror_serve_refuses_an_exposed_address_without_a_token(
        config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(config), "serve", "--host", "0.0.0.0"]) == 2
    assert "no access token" in capsys.readouterr().err


def test_status_and_errors_never_carry_url_credentials(mirror: Mirror) -> None:
    secret = "https://bob:s3cret@archive.test/tap"
    ctx = make_ctx(mirror, state=lambda: {"source": secret})
    ctx.status = lambda: [{"name": "x", "url": secret}]
    with TestClient(build_app(ctx)) as c:
        for path in ("/mirror/status", "/mirror/state"):
            r = c.get(path)
            assert "s3cret" not in r.text and "bob" not in r.text
            assert "https://archive.test/tap" in r.text
        r = c.get("/sync", params={"LANG": "ADQL",
                                   "QUERY": f"SELECT * FROM ivoa.obscore WHERE x = '{secret}'"})
        assert "ERROR" in r.text and "s3cret" not in r.text
    ctx.close()


def test_mirror_serve_prints_its_url_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    with FakeTap(hard_limit=20).load_recorded() as tap:  # a catalogue no fixture holds open
        h = Harness(tmp_path, tap)
        assert h.sync().status == "ok"
        h.close()
    config = h.config
    proc = subprocess.Popen([sys.executable, "-m", "mirror.cli", "--config", str(config),
                             "serve", "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ,
                                                                    "COLUMNS": "200"})
    try:
        line = proc.stdout.readline()
        found = re.search(r"http://127\.0\.0\.1:\d+", line)
        assert found, line + proc.stderr.read()
        url = found.group(0)
        import httpx
        r = httpx.get(f"{url}/sync", params={"LANG": "ADQL", "FORMAT": "csv",
                                             "QUERY": "SELECT COUNT(*) AS n FROM ivoa.obscore"})
        assert r.status_code == 200 and int(r.text.split()[-1]) > 0
        lock = next((tmp_path / "cat").glob("*.lock"))
        assert json.loads(lock.read_text())["endpoint"] == url
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not lock.exists() or "endpoint" not in lock.read_text()


@pytest.mark.parametrize("fmt", ["votable", "votable/td"])
def test_control_characters_never_break_the_xml(client: TestClient, fmt: str) -> None:
    for q in ("SELECT TOP 1 obs_id FROM ivoa.obscore WHERE obs_id <> 'a\x01b'",
              "SELECT TOP 1 obs_id FROM ivoa.obscore WHERE \x02"):
        r = client.get("/sync", params={"LANG": "ADQL", "QUERY": q, "FORMAT": fmt})
        ET.fromstring(r.content)  # well-formed XML 1.0
        assert status_of(votable(r.content))[0] in ("OK", "ERROR")


def test_job_documents_stay_xml_with_control_characters(client: TestClient) -> None:
    url = client.post("/async", data={"LANG": "ADQL", "QUERY": "SELECT \x01 FROM x",
                                      "RUNID": "r\x02", "PHASE": "RUN"},
                      follow_redirects=False).headers["location"]
    job = ended(client, url)
    assert job.findtext(f"{UWS}phase") == "ERROR"
    ET.fromstring(client.get(url + "/parameters").content)
    ET.fromstring(client.get("/async").content)


def test_many_waiting_clients_do_not_starve_queries(client: TestClient) -> None:
    url = client.post("/async", data={"LANG": "ADQL", "QUERY": "SELECT 1 AS x FROM "
                                      "ivoa.obscore"}, follow_redirects=False).headers["location"]
    waiters = [threading.Thread(target=client.get, args=(url,), kwargs={"params": {"WAIT": "5"}})
               for _ in range(50)]  # more than the thread pool's 40 workers
    for t in waiters:
        t.start()
    time.sleep(0.3)
    started = time.monotonic()
    r = client.get("/sync", params={"LANG": "ADQL", "QUERY": "SELECT TOP 1 obs_id FROM "
                                    "ivoa.obscore"})
    assert r.status_code == 200 and time.monotonic() - started < 3
    client.delete(url)  # ends the waits
    for t in waiters:
        t.join(10)
    assert not any(t.is_alive() for t in waiters)


def test_tables_answer_one_table_by_name(client: TestClient) -> None:
    r = client.get("/tables/ivoa.obscore")
    assert r.status_code == 200
    root = ET.fromstring(r.content)
    assert root.tag == "{http://www.ivoa.net/xml/VOSITables/v1.0}table"
    assert root.findtext("name") == "ivoa.obscore"
    assert "s_ra" in [c.findtext("name") for c in root.iter("column")]
    fk = ET.fromstring(client.get("/tables/TAP_SCHEMA.columns").content)
    assert fk.find("foreignKey").findtext("targetTable") == "TAP_SCHEMA.tables"
    missing = client.get("/tables/no.such")
    assert missing.status_code == 404 and "no.such" in missing.text


def test_a_query_past_the_time_limit_is_stopped_with_a_clear_error(mirror: Mirror) -> None:
    runners = RunnerPool(mirror.catalogue(write=True), 1, timeout=0.05)
    ctx = make_ctx(mirror, runners=runners)
    heavy = ("SELECT COUNT(*) AS n FROM ivoa.obscore AS a, ivoa.obscore AS b, ivoa.obscore AS c, "
             "ivoa.obscore AS d, ivoa.obscore AS e, ivoa.obscore AS f "
             "WHERE SIN(a.s_ra + b.s_dec + c.s_ra + d.s_dec + e.s_ra + f.s_dec) > 2")
    with TestClient(build_app(ctx)) as c:
        started = time.monotonic()
        r = c.get("/sync", params={"LANG": "ADQL", "QUERY": heavy})
        assert time.monotonic() - started < 10
        [info] = [i for i in votable(r.content).resources[0].infos if i.name == "QUERY_STATUS"]
        assert info.value == "ERROR" and "exceeded" in info.content
        ok = c.get("/sync", params={"LANG": "ADQL", "QUERY": "SELECT TOP 1 obs_id FROM "
                                    "ivoa.obscore"})
        assert status_of(votable(ok.content)) == ["OK"]  # the runner is usable again
    ctx.close()


def test_abort_stops_a_running_job_and_spares_the_next_query(mirror: Mirror) -> None:
    ctx = make_ctx(mirror, runners=RunnerPool(mirror.catalogue(write=True), 1, timeout=30))
    heavy = ("SELECT COUNT(*) AS n FROM ivoa.obscore AS a, ivoa.obscore AS b, ivoa.obscore AS c, "
             "ivoa.obscore AS d, ivoa.obscore AS e, ivoa.obscore AS f "
             "WHERE SIN(a.s_ra + b.s_dec + c.s_ra + d.s_dec + e.s_ra + f.s_dec) > 2")
    with TestClient(build_app(ctx)) as c:
        url = c.post("/async", data={"LANG": "ADQL", "QUERY": heavy, "PHASE": "RUN"},
                     follow_redirects=False).headers["location"]
        job = job_doc(c, url, WAIT="5", PHASE="QUEUED")
        assert job.findtext(f"{UWS}phase") == "EXECUTING"
        started = time.monotonic()
        c.post(url + "/phase", data={"PHASE": "ABORT"})
        assert c.get(url + "/phase").text == "ABORTED"
        r = c.get("/sync", params={"LANG": "ADQL", "QUERY": "SELECT TOP 1 obs_id FROM "
                                   "ivoa.obscore"})  # waits for the one runner, then runs
        assert status_of(votable(r.content)) == ["OK"]
        assert time.monotonic() - started < 10, "the aborted query kept its runner"
        assert c.get(url + "/phase").text == "ABORTED"
    ctx.close()


def test_links_follow_the_public_url_behind_a_proxy(mirror: Mirror) -> None:
    """[serve] public_url: capabilities, async job URLs and product links name the proxy's
    base, not the address the service binds."""
    import dataclasses
    import http.client
    import urllib.parse

    from mirror.server.service import LocalService

    public = "https://mirror.example.org/tap"
    config = dataclasses.replace(mirror.config, serve=dataclasses.replace(
        mirror.config.serve, public_url=public + "/"))
    ctx = ServiceContext(mirror.catalogue(write=True), config)
    try:
        with LocalService(ctx) as service:
            bound = urllib.parse.urlsplit(service.url)
            conn = http.client.HTTPConnection(bound.hostname, bound.port, timeout=30)
            conn.request("GET", "/capabilities")
            caps = conn.getresponse().read().decode()
            body = urllib.parse.urlencode({"LANG": "ADQL", "QUERY": "SELECT TOP 1 * FROM "
                                           "ivoa.obscore"})
            conn.request("POST", "/async", body,
                         {"Content-Type": "application/x-www-form-urlencoded"})
            created = conn.getresponse()
            created.read()
            conn.close()
        assert ctx.base_url == public
        assert f">{public}</accessURL>" in caps and service.url not in caps
        assert created.status == 303
        assert created.getheader("Location", "").startswith(f"{public}/async/")
    finally:
        ctx.close()
