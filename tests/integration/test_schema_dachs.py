"""The schema catalogue after a sync of the DaCHS upstream: the same descriptions, units and UCDs
as DaCHS's own TAP_SCHEMA (read from its PostgreSQL), profiles equal to direct counts, search,
the service's examples checked locally, and the HTML site driven in a real headless chromium."""

from __future__ import annotations

import csv
import functools
import http.server
import io
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import astropy.units as u
import numpy as np
import pytest
from fakes import write_config
from mocpy import MOC
from playwright.sync_api import sync_playwright

from mirror import Mirror
from mirror.cli import main
from mirror.harvest.examples import parse_examples
from mirror.schema import load
from mirror.schema.examples import checked_examples
from mirror.schema.search import search
from mirror.schema.site import page_name

pytestmark = pytest.mark.integration
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM = "/usr/bin/chromium"


def postgres_csv(sql: str) -> list[list[str]]:
    """Rows of `sql` run on the upstream's PostgreSQL (the ground truth)."""
    out = subprocess.run(["runuser", "-u", "postgres", "--", "psql", "-d", "gavo", "-c",
                          f"\\copy ({sql}) TO STDOUT CSV"],
                         check=True, capture_output=True, text=True).stdout
    return list(csv.reader(io.StringIO(out)))


@pytest.fixture(scope="module")
def synced(upstream: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("schema_dachs")
    cfg = write_config(tmp, {"name": "dachs", "url": upstream}, catalogue="data/m.duckdb")
    with Mirror.open(cfg) as m:
        [report] = m.sync()
        assert report.status == "ok", report.errors
    return cfg


@pytest.fixture(scope="module")
def local(synced: Path) -> Iterator[Mirror]:
    with Mirror.open(synced) as m:
        yield m


def direct(m: Mirror, sql: str) -> list[tuple[Any, ...]]:
    with m.catalogue(write=False).begin() as conn:
        return [tuple(r) for r in conn.exec_driver_sql(sql)]


def test_every_published_column_is_listed_as_dachs_describes_it(local: Mirror) -> None:
    truth = postgres_csv("SELECT column_name, description, unit, ucd, datatype FROM "
                         "tap_schema.columns WHERE table_name = 'ivoa.obscore'")
    assert len(truth) > 30
    catalogue = load(local.query)
    for table_name in ("dachs.obscore", "ivoa.obscore"):
        table = catalogue.table(table_name)
        assert table is not None
        for name, description, unit, ucd, datatype in truth:
            column = table.column(name)
            assert column is not None, f"{table_name}.{name}"
            assert column.description == description, name
            assert (column.unit or "", column.ucd or "") == (unit, ucd), name
            assert column.datatype == datatype, name
    listed = {c.name for c in catalogue.table("dachs.obscore").columns}
    assert listed == {r[0] for r in truth}  # no more, no less than DaCHS publishes


def test_profiles_match_direct_counts(local: Mirror) -> None:
    catalogue = load(local.query)
    table = catalogue.table("dachs.obscore")
    total = direct(local, "SELECT count(*) FROM source_obscore.dachs")[0][0]
    assert table.rows == total > 1000
    for column in table.columns:
        p, name = column.profile, f'"{column.name}"'
        assert p is not None, column.name
        nulls, distinct = direct(local, f"SELECT count(*) - count({name}), "
                                        f"count(DISTINCT {name}) FROM source_obscore.dachs")[0]
        assert (p.rows, p.nulls) == (total, nulls), column.name
        assert abs(p.distinct - distinct) <= max(3, 0.08 * distinct), column.name
        if column.local_type in ("DOUBLE", "FLOAT", "BIGINT", "INTEGER", "SMALLINT"):
            lo, hi = direct(local, f"SELECT min({name})::VARCHAR, max({name})::VARCHAR "
                                   "FROM source_obscore.dachs")[0]
            assert (p.min, p.max) == (lo, hi), column.name
    profile = table.profile
    ra, dec = np.array(direct(local, "SELECT s_ra, s_dec FROM source_obscore.dachs "
                                     "WHERE s_ra IS NOT NULL"), dtype=float).T
    moc = MOC.from_string(profile.moc, format="ascii")
    assert moc.contains_lonlat(ra * u.deg, dec * u.deg).all()
    assert profile.positions == len(ra) and 0 < profile.sky_fraction < 1
    lo, hi = direct(local, "SELECT min(t_min), max(t_max) FROM source_obscore.dachs")[0]
    assert (profile.t_min_mjd, profile.t_max_mjd) == pytest.approx((lo, hi))


def test_search_finds_by_unit_ucd_and_description(local: Mirror) -> None:
    catalogue = load(local.query)
    in_deg = {c for c, in postgres_csv("SELECT column_name FROM tap_schema.columns WHERE "
                                       "table_name = 'ivoa.obscore' AND unit = 'deg'")}
    found = {h.column.name for h in search(catalogue, "deg", limit=None)
             if h.column.table == "ivoa.obscore" and "unit" in h.fields}
    assert found == in_deg and in_deg
    assert {h.column.name for h in search(catalogue, "em.wl")[:2]} == {"em_min", "em_max"}
    snr_text = postgres_csv("SELECT description FROM tap_schema.columns WHERE "
                            "table_name = 'ivoa.obscore' AND column_name = 'snr'")[0][0]
    word = next(w for w in snr_text.replace("-", " ").split() if len(w) > 5)
    assert "snr" in [h.column.name for h in search(catalogue, word)][:3]


def test_cli_search_misses_helpfully(synced: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(synced), "schema", "--search", "wavelenght"]) == 1
    assert "wavelength" in capsys.readouterr().err


def test_service_examples_are_replicated_and_run_locally(local: Mirror, upstream: str) -> None:
    with urllib.request.urlopen(f"{upstream}/examples", timeout=30) as response:
        published = parse_examples(response.read().decode("utf-8"))
    assert published
    examples = checked_examples(local.query)
    service = [e for e in examples if e.origin == "service dachs"]
    assert [(e.name, e.adql) for e in service] == [(p["name"], p["query"]) for p in published]
    for e in examples:
        assert e.error is None, (e.name, e.error)
        assert e.rows is not None
    cone = next(e for e in examples if e.name == "Spectra around a position")
    ours = {r["obs_publisher_did"] for r in local.query(cone.adql).arrow.to_pylist()}
    assert cone.rows == len(ours)
    # pgSphere's answer now, limited to the records the mirror holds (others may evolve it)
    theirs = {r[0] for r in postgres_csv(
        "SELECT obs_publisher_did FROM ivoa.obscore WHERE dataproduct_type = 'spectrum' "
        "AND spoint(radians(s_ra), radians(s_dec)) @ "
        "scircle(spoint(radians(275.4), radians(-8.75)), radians(0.0083))")}
    held = {r[0] for r in direct(local, "SELECT obs_publisher_did FROM ivoa.obscore")}
    assert ours and ours == theirs & held


@pytest.fixture(scope="module")
def site(synced: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The HTML site, built by the command line, served from 127.0.0.1."""
    directory = tmp_path_factory.mktemp("site")
    assert main(["--config", str(synced), "schema", "--html", str(directory), "--quiet"]) == 0
    handler = functools.partial(QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


def test_site_in_a_headless_browser(site: str, local: Mirror) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    catalogue = load(local.query, counts=False)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        outside: list[str] = []
        page.on("request", lambda r: None if r.url.startswith(site) or r.url.startswith(
            "data:") else outside.append(r.url))
        page.goto(f"{site}/index.html")
        listed = page.locator("#tables tbody tr td:first-child").all_inner_texts()
        assert listed == [t.name for t in catalogue.tables]
        page.fill("#search", "signal noise")
        page.wait_for_selector("#results li.hit")
        first = page.locator("#results li.hit").first
        assert "snr" in first.inner_text()
        assert first.locator("mark").count() >= 2  # the words are highlighted
        page.screenshot(path=str(ARTIFACTS / "schema_search.png"))
        page.fill("#search", "em.wl")
        page.wait_for_function("document.querySelectorAll('#results li.hit').length >= 2")
        hits = page.locator("#results li.hit code").all_inner_texts()
        assert {h.rpartition(".")[2] for h in hits[:2]} == {"em_min", "em_max"}
        page.fill("#search", "zzzqqq")
        assert "No column matches" in page.locator("#results").inner_text()
        page.goto(f"{site}/{page_name('ivoa.obscore')}")
        row = page.locator("tr#s_ra")
        assert "deg" in row.locator("td.unit").inner_text()
        assert "degree (angle)" in row.locator("td.unit").inner_text()
        assert "pos.eq.ra" in row.locator("td.ucd").inner_text()
        assert "right ascension" in row.locator("td.ucd").inner_text().lower()
        assert page.locator("img.sky").count() == 1
        page.locator("tr#t_min").scroll_into_view_if_needed()  # show units and UCDs
        page.screenshot(path=str(ARTIFACTS / "schema_table.png"), full_page=False)
        browser.close()
    assert outside == []  # the site loads nothing from anywhere else
