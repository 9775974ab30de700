"""The schema catalogue on a catalogue synced from the fake service: own tables through ADQL,
profiles against direct SQL, units and UCDs in words, search ranking, Markdown, HTML, CLI."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import astropy.units as u
import numpy as np
import pytest
from fakes import FakeTap, write_config
from fakes.tapserver import Fault
from mocpy import MOC
from test_harvest_unit import Harness

from mirror.api import Mirror
from mirror.cli import main
from mirror.config import load_config
from mirror.errors import ConfigError
from mirror.harvest.examples import parse_examples
from mirror.schema import load
from mirror.schema.examples import checked_examples
from mirror.schema.explain import explain_ucd, explain_unit, ucd_words
from mirror.schema.markdown import render
from mirror.schema.profiles import profile_table, refresh_profiles
from mirror.schema.search import highlight_spans, search, suggestions
from mirror.schema.site import build_site, page_name
from mirror.schema.standards import OBSCORE

DATA = Path(__file__).resolve().parent / "data"
DACHS_EXAMPLES = (DATA / "dachs_examples.html").read_text(encoding="utf-8")
BROKEN = """<div typeof="example" id="broken" resource="#broken">
<h2 property="name">A broken example</h2><p>Names a table that does not exist.</p>
<pre property="query">SELECT * FROM ivoa.no_such_table</pre></div>"""


@pytest.fixture(scope="module")
def synced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A catalogue synced once from the fake service, which publishes DaCHS's examples
    document plus one broken example; its config."""
    tmp = tmp_path_factory.mktemp("schema")
    document = DACHS_EXAMPLES.replace('<div id="exampleslist">',
                                      '<div id="exampleslist">' + BROKEN).encode()
    with FakeTap(hard_limit=20).load_recorded() as tap:
        tap.inject(Fault(status=200, body=document, match="^/tap/examples", times=100))
        h = Harness(tmp, tap)
        assert h.sync().status == "ok"
        h.close()
    yield h.config


@pytest.fixture
def mirror(synced: Path) -> Iterator[Mirror]:
    with Mirror.open(synced) as m:
        yield m


def direct(m: Mirror, sql: str) -> list[tuple[Any, ...]]:
    with m.catalogue(write=False).begin() as conn:
        return [tuple(r) for r in conn.exec_driver_sql(sql)]


# -- the mirror's own tables, through ADQL ----------------------------------------------------


def test_own_tables_are_queryable_and_described_in_tap_schema(mirror: Mirror) -> None:
    listed = {r["table_name"]: r["schema_name"] for r in
              mirror.query("SELECT * FROM TAP_SCHEMA.tables").arrow.to_pylist()}
    for name in ("mirror.products", "mirror.runs", "mirror.column_profiles",
                 "mirror.table_profiles", "mirror.tap_columns", "mirror.tap_examples"):
        assert listed[name] == "mirror"
        described = [r["column_name"].strip('"') for r in mirror.query(
            f"SELECT column_name FROM TAP_SCHEMA.columns WHERE table_name = '{name}' "
            "ORDER BY column_index").arrow.to_pylist()]
        assert mirror.query(f"SELECT * FROM {name}").arrow.column_names == described
    runs = mirror.query("SELECT run_id, status FROM mirror.runs").arrow.to_pylist()
    assert runs == [{"run_id": r[0], "status": r[1]}
                    for r in direct(mirror, "SELECT run_id, status FROM sync_runs")]
    replica = mirror.query("SELECT COUNT(*) AS n FROM mirror.tap_columns").arrow.to_pylist()
    assert replica[0]["n"] == direct(mirror, "SELECT count(*) FROM tap_columns")[0][0] > 0


def test_a_source_named_mirror_is_refused(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"name": "Mirror", "url": "http://127.0.0.1:1/tap"})
    with pytest.raises(ConfigError, match="reserved") as caught:
        load_config(config)
    assert "another name" in (caught.value.hint or "")


def test_catalogue_lists_every_published_column_as_the_service_describes_it(
        mirror: Mirror) -> None:
    catalogue = load(mirror.query)
    table = catalogue.table("fake.obscore")
    assert table is not None
    published = direct(mirror, "SELECT column_name, description, unit, ucd, datatype "
                               "FROM tap_columns WHERE source = 'fake'")
    assert published
    for name, description, unit, ucd, datatype in published:
        column = table.column(name)
        assert column is not None, name
        assert (column.description, column.unit, column.ucd, column.datatype) == (
            description, unit or None, ucd or None, datatype)
        assert column.local_type  # the DuckDB type, from mirror.local_columns
    assert table.column("s_ra").standard == OBSCORE
    assert table.column("snr").standard is None  # the service's own column
    assert catalogue.table("ivoa.obscore").column("mirror_source").standard == "mirror"
    assert catalogue.table("ivoa.obscore").column("em_min").sources == ["fake"]
    assert catalogue.table("mirror.runs").rows == 1
    size = catalogue.table("mirror.products").column("size")  # listed delimited: "size"
    assert size.local_type == "BIGINT" and size.unit == "byte"


# -- profiles ---------------------------------------------------------------------------------


def test_column_profiles_match_direct_counts(mirror: Mirror) -> None:
    catalogue = load(mirror.query)
    table = catalogue.table("ivoa.obscore")
    total = direct(mirror, "SELECT count(*) FROM ivoa.obscore")[0][0]
    assert table.rows == total == 50
    for name in ("s_ra", "snr", "obs_collection", "t_min", "dataproduct_subtype", "em_min"):
        p = table.column(name).profile
        nulls, distinct, lo, hi = direct(
            mirror, f"SELECT count(*) - count({name}), count(DISTINCT {name}), "
                    f"min({name})::VARCHAR, max({name})::VARCHAR FROM ivoa.obscore")[0]
        assert (p.rows, p.nulls, p.min, p.max) == (total, nulls, lo, hi), name
        assert p.null_fraction == pytest.approx(nulls / total)
        assert abs(p.distinct - distinct) <= max(2, 0.1 * distinct), name
        values = {r[0] for r in direct(mirror, f"SELECT {name}::VARCHAR FROM ivoa.obscore")}
        assert set(p.examples) <= values and len(p.examples) == min(5, distinct)


def test_table_profile_has_sky_coverage_and_time_range(mirror: Mirror) -> None:
    profile = load(mirror.query).table("fake.obscore").profile
    ra, dec = zip(*direct(mirror, "SELECT s_ra, s_dec FROM source_obscore.fake"), strict=True)
    moc = MOC.from_string(profile.moc, format="ascii")
    assert all(moc.contains_lonlat(np.array(ra) * u.deg, np.array(dec) * u.deg))
    assert profile.positions == len(ra)
    assert profile.sky_fraction == pytest.approx(moc.sky_fraction)
    assert 0 < profile.sky_fraction < 0.01
    lo, hi = direct(mirror, "SELECT min(t_min), max(t_max) FROM source_obscore.fake")[0]
    assert profile.t_min_mjd == pytest.approx(lo) and profile.t_max_mjd == pytest.approx(hi)
    assert profile.t_min_iso.startswith("20") and profile.t_min_iso < profile.t_max_iso


def test_profiles_are_recomputed_after_a_sync(tmp_path: Path) -> None:
    with FakeTap(hard_limit=20).load_recorded() as tap:
        h = Harness(tmp_path, tap)
        h.sync()
        first = h.sql("SELECT row_count, computed_at FROM table_profiles "
                      "WHERE table_name = 'fake.obscore'")[0]
        tap.execute("DELETE FROM ivoa.obscore WHERE obs_publisher_did IN (SELECT "
                    "obs_publisher_did FROM ivoa.obscore ORDER BY 1 LIMIT 3)")
        h.sync(full=True)
        second = h.sql("SELECT row_count, computed_at FROM table_profiles "
                       "WHERE table_name = 'fake.obscore'")[0]
        h.sync()
        third = h.sql("SELECT row_count, computed_at FROM table_profiles "
                      "WHERE table_name = 'fake.obscore'")[0]
        h.close()
    assert first[0] == 50 and second[0] == 47 and second[1] > first[1]
    assert third == second  # a sync that changed nothing leaves the profiles as they were


def test_profiles_on_demand_replace_and_cover_every_mirrored_table(mirror: Mirror) -> None:
    reports = refresh_profiles(mirror.catalogue())
    assert {r.table for r in reports} == {"ivoa.obscore", "ivoa.obscore_withdrawn",
                                          "fake.obscore"}
    counted = direct(mirror, "SELECT table_name, count(*) FROM column_profiles GROUP BY 1")
    columns = dict(direct(mirror, "SELECT table_name, count(*) FROM TAP_SCHEMA.columns "
                                  "GROUP BY 1"))
    assert {t: n for t, n in counted} == {t: columns[t] for t, _ in counted}


def test_one_source_union_profile_is_derived_and_equals_a_scan(mirror: Mirror) -> None:
    refresh_profiles(mirror.catalogue())
    cols = ("column_name, local_type, row_count, null_count, distinct_approx, min_value, "
            "max_value")
    derived = direct(mirror, f"SELECT {cols} FROM column_profiles "
                             "WHERE table_name = 'ivoa.obscore' ORDER BY 1")
    sky = ("row_count, column_count, positions, moc, sky_fraction, t_min_mjd, t_max_mjd")
    derived_sky = direct(mirror, f"SELECT {sky} FROM table_profiles "
                                 "WHERE table_name = 'ivoa.obscore'")
    with mirror.catalogue().begin() as conn:
        profile_table(conn, "ivoa.obscore")  # the scan the derivation saves
    scanned = direct(mirror, f"SELECT {cols} FROM column_profiles "
                             "WHERE table_name = 'ivoa.obscore' ORDER BY 1")
    scanned_sky = direct(mirror, f"SELECT {sky} FROM table_profiles "
                                 "WHERE table_name = 'ivoa.obscore'")
    assert derived == scanned and len(derived) > 40
    assert derived_sky == scanned_sky and derived_sky[0][0] == 50
    assert ("mirror_source", "VARCHAR", 50, 0, 1, "fake", "fake") in derived


# -- units and UCDs in words --------------------------------------------------------------------


@pytest.mark.parametrize(("unit", "words"), [
    ("m", "metre (length)"), ("deg", "degree (angle)"),
    ("km/s", "kilometre per second (speed/velocity)"), ("Angstrom", "angstrom (length)"),
    ("d", "day (time)"), ("mag", "magnitude"), ("m**2", "square metre (area)"),
    ("not_a_unit", None), ("", None)])
def test_units_in_words(unit: str, words: str | None) -> None:
    assert explain_unit(unit) == words


@pytest.mark.parametrize(("ucd", "words"), [
    ("em.wl;stat.min", "minimum wavelength"), ("em.wl;stat.max", "maximum wavelength"),
    ("stat.snr", "signal to noise ratio"), ("time.resolution", "time resolution"),
    ("no.such.word", None), (None, None)])
def test_ucds_in_words(ucd: str | None, words: str | None) -> None:
    assert explain_ucd(ucd) == words


def test_each_ucd_word_keeps_its_official_description() -> None:
    assert ucd_words("pos.eq.ra;meta.main") == [
        ("pos.eq.ra", "Right ascension in equatorial coordinates"),
        ("meta.main", "Main value of something")]


# -- search -------------------------------------------------------------------------------------


def test_search_ranks_name_then_ucd_then_description(mirror: Mirror) -> None:
    catalogue = load(mirror.query)
    assert search(catalogue, "snr")[0].column.qualified == "ivoa.obscore.snr"
    # one hit for the column ivoa.obscore and the source's table describe alike
    assert search(catalogue, "snr")[0].also == ["ivoa.obscore_withdrawn", "fake.obscore"]
    assert len(search(catalogue, "snr", group=False)) == 3 == len(search(catalogue, "snr")) + 2
    top = [h.column.name for h in search(catalogue, "em.wl")[:2]]
    assert sorted(top) == ["em_max", "em_min"]
    by_ucd = search(catalogue, "em.wl")
    assert by_ucd[0].score > next(h.score for h in by_ucd if h.column.name == "em_ucd")
    assert {h.column.name for h in search(catalogue, "deg")} >= {"s_ra", "s_dec", "s_fov"}
    assert "unit" in search(catalogue, "deg")[0].fields
    words = search(catalogue, "minimum wavelength")
    assert words[0].column.name == "em_min"
    assert search(catalogue, "metre")[0].column.unit == "m"  # by the unit's explanation
    assert [h.column.name for h in search(catalogue, "signal")][:1] == ["snr"]


def test_search_misses_suggest_close_words(mirror: Mirror) -> None:
    catalogue = load(mirror.query)
    assert search(catalogue, "sigal") == []
    assert "signal" in suggestions(catalogue, "sigal")
    assert "em_min" in suggestions(catalogue, "em_mni")


def test_highlight_spans_cover_every_match() -> None:
    assert highlight_spans("Minimal wavelength, wavelength", ["wavelength"]) == [(8, 18), (20, 30)]


# -- examples ------------------------------------------------------------------------------------


def test_dachs_examples_document_is_parsed() -> None:
    found = parse_examples(DACHS_EXAMPLES)
    assert [e["name"] for e in found] == ["Harvest changes since a watermark",
                                          "Spectra around a position"]
    assert found[1]["query"].startswith("SELECT obs_publisher_did, target_name, snr")
    assert "30 arcseconds" in found[1]["description"]
    assert "&gt;" not in found[0]["query"] and "last_modified >" in found[0]["query"]


def test_examples_are_replicated_and_checked_locally(mirror: Mirror) -> None:
    examples = checked_examples(mirror.query)
    service = [e for e in examples if e.origin == "service fake"]
    assert [e.name for e in service] == ["A broken example", *[
        e["name"] for e in parse_examples(DACHS_EXAMPLES)]]
    broken = service[0]
    assert broken.error and "no_such_table" in broken.error and broken.rows is None
    generated = {e.name: e for e in examples if e.origin == "generated"}
    per_collection = generated["Records per collection"]
    assert per_collection.error is None
    assert per_collection.rows == direct(
        mirror, "SELECT count(DISTINCT obs_collection) FROM ivoa.obscore")[0][0]
    cone = generated["Cone search"]
    assert cone.error is None and cone.rows >= 1  # around a position taken from the data
    assert generated["Observations in a time range"].rows >= 1


# -- documents ------------------------------------------------------------------------------------


def test_markdown_documents_tables_columns_and_examples(mirror: Mirror) -> None:
    catalogue = load(mirror.query)
    examples = checked_examples(mirror.query)
    text = render(catalogue, examples)
    for t in catalogue.tables:
        assert f"## {t.name}\n" in text
    row = next(line for line in text.splitlines() if line.startswith("| `em_min`"))
    assert "`m` (metre (length))" in row and "minimum wavelength" in row and OBSCORE in row
    assert "**fails locally**" in text and "```sql\nSELECT obs_collection" in text
    rows = direct(mirror, "SELECT count(DISTINCT obs_collection) FROM ivoa.obscore")[0][0]
    assert f"{rows:,} rows locally" in text


def test_site_is_self_contained_and_indexes_every_column(mirror: Mirror, tmp_path: Path) -> None:
    catalogue = load(mirror.query)
    files = build_site(catalogue, checked_examples(mirror.query), tmp_path)
    assert {f.name for f in files} == {"index.html", *(page_name(t.name)
                                                        for t in catalogue.tables)}
    index = (tmp_path / "index.html").read_text()
    data = re.search(r'<script id="index-data" type="application/json">(.*?)</script>',
                     index, re.S)
    assert data and len(json.loads(data.group(1))) == len(catalogue.columns())
    assert "fails locally" in index and "A broken example" in index  # flagged, not hidden
    for f in files:
        html = f.read_text()
        assert not re.search(r'(src|href)="(https?:)?//', html), f  # nothing from the network
    page = (tmp_path / page_name("ivoa.obscore")).read_text()
    assert "minimum wavelength" in page and "metre (length)" in page
    assert "data:image/png;base64," in page  # the sky map is inline


# -- the command line ------------------------------------------------------------------------------


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_lists_tables_and_columns(synced: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--config", str(synced), "schema", "--json")
    tables = {t["name"]: t for t in json.loads(out)}
    assert code == 0 and tables["ivoa.obscore"]["rows"] == 50
    code, out, _ = run(capsys, "--config", str(synced), "schema", "ivoa.obscore", "--json")
    assert [c["name"] for c in json.loads(out)["columns"]][:3] == [
        "dataproduct_type", "dataproduct_subtype", "calib_level"]
    code, out, _ = run(capsys, "--config", str(synced), "schema", "ivoa.obscore.em_min")
    assert code == 0 and "minimum wavelength" in out and "Minimum or lowest limit" in out
    assert "metre (length)" in out and "nulls" in out


def test_cli_search_and_its_misses(synced: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--config", str(synced), "schema", "--search", "em.wl", "--json")
    hits = json.loads(out)["hits"]
    assert code == 0 and hits[0]["column"] in ("ivoa.obscore.em_min", "ivoa.obscore.em_max")
    code, _, err = run(capsys, "--config", str(synced), "schema", "--search", "sigal")
    assert code == 1 and "signal" in err
    code, _, err = run(capsys, "--config", str(synced), "schema", "em_mni")
    assert code == 2 and "ivoa.obscore.em_min" in err


def test_cli_writes_markdown_and_html(synced: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    md, site = tmp_path / "schema.md", tmp_path / "site"
    code, out, _ = run(capsys, "--config", str(synced), "schema", "--markdown", str(md),
                       "--html", str(site), "--json")
    result = json.loads(out)
    assert code == 0  # written; the broken service example is flagged, not hidden
    assert [e["name"] for e in result["examples"] if e["error"]] == ["A broken example"]
    assert md.read_text().startswith("# Schema catalogue")
    assert (site / "index.html").exists() and len(result["html"]) > 10
    assert math.isfinite(result["seconds"])


def test_checked_examples_accept_an_open_catalogue(mirror: Mirror) -> None:
    """What a TAP service's /examples can call with the catalogue it serves."""
    examples = checked_examples(mirror.catalogue(write=False))
    assert [e.name for e in examples] == [e.name for e in checked_examples(mirror.query)]
    assert all(e.id and " " not in e.id for e in examples)


def test_schema_reads_through_the_service_of_the_process_holding_the_catalogue(
        tmp_path: Path) -> None:
    """While another process holds the catalogue (DuckDB locks it), `mirror schema` loads
    everything through that process's TAP service, with the same answers."""
    from test_remote import Held

    with FakeTap(hard_limit=20) as tap:
        tap.load_recorded()
        held = Held(tmp_path, tap)
        try:
            local = load(held.mirror.query)
            done = held.run("schema", "--json")
            assert done.returncode == 0, done.stderr
            remote = {t["name"]: t for t in json.loads(done.stdout)}
            assert {t.name: t.rows for t in local.tables} == {
                n: t["rows"] for n, t in remote.items()}
            done = held.run("schema", "ivoa.obscore.em_min", "--json")
            column = json.loads(done.stdout)
            assert column["ucd_explained"] == "minimum wavelength"
            assert column["profile"]["max"] == local.table("ivoa.obscore").column(
                "em_min").profile.max
            done = held.run("schema", "--search", "em.wl", "--json")
            assert [h["column"] for h in json.loads(done.stdout)["hits"]] == [
                h.column.qualified for h in search(local, "em.wl")]
        finally:
            held.close()
