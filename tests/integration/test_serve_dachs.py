"""The local TAP service over a mirror of DaCHS, checked by clients nobody here wrote: pyvo
(sync, async, tables, examples) gives the rows of the ADQL layer, and `stilts taplint` finds
no error; hostile requests get clear 4xx answers that leak nothing."""

from __future__ import annotations

import io
import math
import re
import subprocess
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow.csv as pacsv
import pytest
import pyvo
from fakes import write_config

from mirror import Mirror
from mirror.server.context import ServiceContext
from mirror.server.service import LocalService

pytestmark = pytest.mark.integration
ID = "obs_publisher_did"
README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(scope="module")
def local(upstream: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mirror]:
    tmp = tmp_path_factory.mktemp("serve_dachs")
    cfg = write_config(tmp, {"name": "dachs", "url": upstream}, catalogue="data/m.duckdb")
    with Mirror.open(cfg) as m:
        [report] = m.sync()
        assert report.status == "ok", report.errors
        yield m


@pytest.fixture(scope="module")
def url(local: Mirror) -> Iterator[str]:
    ctx = ServiceContext(local.catalogue(write=True), local.config,
                         status=lambda: [s.as_dict() for s in local.status()])
    service = LocalService(ctx, "127.0.0.1", 0)
    try:
        yield service.start()
    finally:
        service.stop()
        ctx.close()


@pytest.fixture(scope="module")
def tap(url: str) -> pyvo.dal.TAPService:
    return pyvo.dal.TAPService(url)


def norm(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or value is np.ma.masked or value == "":
        return None
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, float):
        return None if math.isnan(value) else float(f"{value:.9g}")
    if hasattr(value, "isoformat"):
        return value.isoformat()[:19]
    if isinstance(value, str) and re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", value):
        return value[:19]
    return value


def rows(table: Any, columns: list[str]) -> list[tuple[Any, ...]]:
    return sorted(tuple(norm(r[c]) for c in columns) for r in table)


def queries(local: Mirror) -> list[str]:
    [centre] = local.query(f"SELECT TOP 1 s_ra, s_dec FROM ivoa.obscore WHERE s_ra IS NOT NULL "
                           f"ORDER BY {ID}").arrow.to_pylist()
    return [
        "SELECT * FROM ivoa.obscore WHERE 1 = CONTAINS(POINT('ICRS', s_ra, s_dec), "
        f"CIRCLE('ICRS', {centre['s_ra']}, {centre['s_dec']}, 2))",
        "SELECT obs_collection, dataproduct_type, COUNT(*) AS n, AVG(t_exptime) AS mean_exp "
        "FROM ivoa.obscore GROUP BY obs_collection, dataproduct_type",
        "SELECT TOP 300 obs_publisher_did, s_ra AS ra, s_region, t_min, access_url "
        "FROM ivoa.obscore WHERE dataproduct_type = 'spectrum' ORDER BY obs_publisher_did",
        "SELECT table_name, column_name, datatype, unit, ucd FROM TAP_SCHEMA.columns",
    ]


def test_pyvo_sync_and_async_give_the_rows_of_the_adql_layer(
        local: Mirror, tap: pyvo.dal.TAPService) -> None:
    for q in queries(local):
        want = local.query(q)
        assert 0 < len(want) < 5000, q
        names = want.arrow.column_names
        expected = rows(want.arrow.to_pylist(), names)
        got = tap.search(q).to_table()
        assert got.colnames == names
        assert rows(got, names) == expected, q
        got = tap.run_async(q).to_table()
        assert rows(got, names) == expected, q


def test_result_fields_carry_units_and_ucds(local: Mirror, tap: pyvo.dal.TAPService) -> None:
    table = tap.search("SELECT TOP 5 s_ra AS ra, s_dec, t_min, obs_release_date "
                       "FROM ivoa.obscore").votable.get_first_table()
    fields = {f.name: f for f in table.fields}
    assert (str(fields["ra"].unit), fields["ra"].ucd) == ("deg", "pos.eq.ra")
    assert fields["s_dec"].ucd == "pos.eq.dec" and fields["s_dec"].description
    assert fields["obs_release_date"].xtype == "timestamp"


def test_pyvo_tables_match_tap_schema(local: Mirror, tap: pyvo.dal.TAPService) -> None:
    declared = local.query("SELECT table_name, column_name FROM TAP_SCHEMA.columns").arrow
    expected: dict[str, set[str]] = {}
    for t, c in zip(*(declared.column(i).to_pylist() for i in range(2)), strict=True):
        expected.setdefault(t, set()).add(c)
    got = {t.name: {c.name for c in t.columns} for t in tap.tables}
    assert got == expected
    assert {"ivoa.obscore", "dachs.obscore", "TAP_SCHEMA.columns"} <= set(got)


def test_pyvo_examples_run_and_answer_the_adql_layers_rows(
        local: Mirror, tap: pyvo.dal.TAPService, url: str) -> None:
    examples = tap.examples
    assert len(examples) >= 2
    page = httpx.get(f"{url}/examples").text
    assert "CONTAINS" in page and "TAP_SCHEMA" in page
    nonempty = 0
    for example in examples:
        got = example.execute()
        want = local.query(example["QUERY"])
        assert len(got) == len(want), example["QUERY"]
        nonempty += len(got) > 0
    assert nonempty >= 2


def test_overflow_with_maxrec(local: Mirror, tap: pyvo.dal.TAPService, url: str) -> None:
    total = local.query("SELECT COUNT(*) AS n FROM ivoa.obscore").arrow.to_pylist()[0]["n"]
    assert total > 10
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pyvo warns about the overflow it asked for
        result = tap.search(f"SELECT {ID} FROM ivoa.obscore ORDER BY {ID}", maxrec=10)
    assert len(result) == 10
    assert result.status[0] == "OVERFLOW"
    first = local.query(f"SELECT TOP 10 {ID} FROM ivoa.obscore ORDER BY {ID}")
    assert [norm(v) for v in result[ID]] == first.arrow.column(ID).to_pylist()
    body = httpx.get(f"{url}/sync", params={"LANG": "ADQL", "MAXREC": "10",
                                            "QUERY": f"SELECT {ID} FROM ivoa.obscore"}).text
    assert body.index('value="OVERFLOW"') > body.index("</TABLE>")


def taplint_report(url: str) -> tuple[dict[str, int], list[str]]:
    done = subprocess.run(["stilts", "taplint", f"tapurl={url}", "report=EWF", "maxrepeat=20"],
                          capture_output=True, text=True, timeout=600)
    totals = re.search(r"Totals: Errors: (\d+); Warnings: (\d+); Failures: (\d+)", done.stdout)
    assert totals, done.stdout[-2000:] + done.stderr[-2000:]
    counts = dict(zip(("errors", "warnings", "failures"), map(int, totals.groups()), strict=True))
    lines = [ln for ln in done.stdout.splitlines() if re.match(r"^[EWF]-[A-Z]{3}-", ln)]
    return counts, lines


def test_taplint_finds_no_errors_and_every_warning_is_explained(url: str) -> None:
    counts, lines = taplint_report(url)
    assert counts["errors"] == 0, "\n".join(ln for ln in lines if ln.startswith("E-"))
    section = README.read_text(encoding="utf-8").split("### TAP service", 1)[1]
    section = section.split("\n## ", 1)[0]
    for line in lines:
        if line[0] in "WF":
            code = "-".join(line.split()[0].split("-")[:3])  # W-QGE-QTYP-1 -> W-QGE-QTYP
            assert code in section, f"taplint reports {line!r}, not explained in the README"


def test_hostile_requests_get_clear_4xx_and_leak_nothing(url: str, local: Mirror) -> None:
    private = [str(local.config.catalogue_path.parent), str(Path.home()), "Traceback"]
    big = "x" * (local.config.serve.max_body_kb * 1024 + 1)
    cases = [
        ("POST", "/sync", {"LANG": "ADQL", "QUERY": big}, 413),
        ("GET", "/async/0123456789abcdef", None, 404),
        ("GET", "/async/..%2F..%2Fetc%2Fpasswd", None, 404),
        ("GET", "/async/0123456789abcdef/results/result", None, 404),
        ("POST", "/async/0123456789abcdef/phase", {"PHASE": "RUN"}, 404),
        ("GET", "/sync", {"LANG": "ADQL", "QUERY": "SELECT 1", "MAXREC": "1e9"}, 400),
        ("GET", "/sync", {"LANG": "ADQL", "QUERY": "SELECT 1", "FORMAT": "exe"}, 400),
        ("GET", "/sync", {"LANG": "PQL", "QUERY": "SELECT 1"}, 400),
        ("GET", "/sync", {"LANG": "ADQL"}, 400),
        ("GET", "/sync", {"REQUEST": "doQuery", "LANG": "ADQL", "QUERY": "DROP TABLE x"}, 200),
        ("GET", "/sync", {"LANG": "ADQL",
                          "QUERY": "SELECT * FROM read_parquet('/etc/passwd')"}, 200),
    ]
    with httpx.Client(base_url=url) as client:
        for method, path, params, status in cases:
            if method == "GET":
                r = client.get(path, params=params)
            else:
                r = client.post(path, data=params)
            assert r.status_code == status, (path, params and str(params)[:80], r.text[:300])
            for leak in private + ["/etc/passwd"]:
                assert leak not in r.text, (path, leak)
            if path == "/sync" and status in (200, 400):
                assert 'name="QUERY_STATUS" value="ERROR"' in r.text


def test_eight_clients_query_while_a_sync_writes(local: Mirror, url: str) -> None:
    """Readers on their own cursors beside the one writer (DuckDB MVCC): every answer completes
    and is the catalogue's state before or after the sync, never a torn or failed one."""
    q = queries(local)[0]

    def answer() -> list[tuple[Any, ...]]:
        return rows(local.query(q).arrow.to_pylist(), [ID, "s_ra", "t_min"])

    before = answer()
    answers: list[Any] = []
    stop = threading.Event()

    def ask() -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            while not stop.is_set():
                r = client.get("/sync", params={"LANG": "ADQL", "QUERY": q, "FORMAT": "csv"})
                if r.status_code != 200:
                    answers.append(("HTTP", r.status_code, r.text[:300]))
                    continue
                table = pacsv.read_csv(io.BytesIO(r.content)).to_pylist()
                answers.append(rows(table, [ID, "s_ra", "t_min"]))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        [report] = local.sync(full=True)  # a full pass: every page read, compared, committed
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert report.status == "ok", report.errors
    after = answer()
    assert len(answers) >= 8
    bad = [a for a in answers if a not in (before, after)]
    assert not bad, f"{len(bad)} of {len(answers)} answers were neither state: {bad[0]!s:.300}"
