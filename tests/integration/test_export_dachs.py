"""ML exports on the DaCHS upstream's real FITS products, after a real sync and fetch into a
temporary mirror (a few dozen HARPS spectra and VHS images, and the embargoed spectra, which
the fetch cannot store). Ground truth: the upstream's PostgreSQL and files, specutils'
FluxConservingResampler, and the images' own WCS."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS

from mirror import Mirror
from mirror.config import load_config as mirror_config
from mirror.ml import load_manifest, load_spectra, parse_grid
from mirror.ml.arrays import FORMATS
from mirror.ml.cutouts import Target, export_cutouts
from mirror.ml.embed import embed
from mirror.ml.resample import pixel_edges
from mirror.ml.spectra import export_spectra

from .test_harvest_dachs import make_config

pytestmark = pytest.mark.integration
UPSTREAM_FILES = Path("/var/gavo/inputs")
SPECTRA, IMAGES = 40, 30


def psql(sql: str) -> list[list[str]]:
    out = subprocess.run(["runuser", "-u", "postgres", "--", "psql", "-d", "gavo", "-AtF|",
                          "-c", sql], check=True, capture_output=True, text=True).stdout
    return [line.split("|") for line in out.splitlines() if line]


def nth_dp_id(collection: str, n: int) -> str:
    return psql(f"SELECT dp_id FROM ivoa.obscore WHERE obs_collection = '{collection}' "
                f"ORDER BY dp_id OFFSET {n - 1} LIMIT 1")[0][0]


@pytest.fixture(scope="module")
def mirrored(upstream: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A synced mirror that fetched the first SPECTRA spectra and IMAGES images by dp_id,
    plus the spectra under embargo (queued, not stored)."""
    tmp = tmp_path_factory.mktemp("export")
    last_spectrum, last_image = nth_dp_id("HARPS", SPECTRA), nth_dp_id("VHS", IMAGES)
    now = datetime.now(UTC).replace(tzinfo=None).isoformat(timespec="seconds")
    fetch = (f"(obs_collection = 'HARPS' AND (dp_id <= '{last_spectrum}' "
             f"OR obs_release_date > TIMESTAMP '{now}')) "
             f"OR (obs_collection = 'VHS' AND dp_id <= '{last_image}')")
    cfg = make_config(tmp, upstream, fetch_where=fetch)
    with Mirror.open(cfg) as m:
        assert m.sync()[0].status == "ok"
        [report] = m.fetch()
        assert report.failed == 0
    where = (f"obs_collection = 'HARPS' AND (dp_id <= '{last_spectrum}' "
             f"OR obs_release_date > '{now}')")
    return {"cfg": cfg, "where": where, "now": now, "last_spectrum": last_spectrum,
            "last_image": last_image, "store": tmp / "data/store"}


def export(mirrored: dict, out: Path, grid: str = "3800:6900:0.5", unit: str = "Angstrom",
           **kw: object):
    with Mirror.open(mirrored["cfg"]) as m:
        return export_spectra(m, out, grid=parse_grid(grid, unit), where=mirrored["where"],
                              **kw)


def digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_one_row_per_readable_selected_spectrum_and_the_rest_rejected(mirrored, tmp_path):
    out = tmp_path / "harps"
    done = subprocess.run(
        [sys.executable, "-m", "mirror.cli", "--config", str(mirrored["cfg"]), "--json",
         "export", "spectra", "--where", mirrored["where"], "--grid", "3800:6900:0.5",
         "--out", str(out), "--columns", "snr,s_ra,s_dec,target_name", "--workers", "2"],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    truth = psql(f"SELECT obs_publisher_did, obs_release_date > now(), access_url, snr "
                 f"FROM ivoa.obscore WHERE obs_collection = 'HARPS' AND "
                 f"(dp_id <= '{mirrored['last_spectrum']}' OR obs_release_date > "
                 f"'{mirrored['now']}')")
    released = {did: (url, float(snr)) for did, embargoed, url, snr in truth if embargoed == "f"}
    embargoed = {did for did, emb, _, _ in truth if emb == "t"}
    assert embargoed and len(released) >= SPECTRA
    flux, error, mask, wavelength, manifest = load_spectra(out)
    assert list(manifest.obs_publisher_did) == sorted(released)
    assert flux.shape == error.shape == mask.shape == (len(released), 6201)
    assert report["exported"] == len(released) and report["selected"] == len(truth)
    np.testing.assert_array_equal(wavelength, 3800 + 0.5 * np.arange(6201))
    for row in manifest.itertuples():
        url, snr = released[row.obs_publisher_did]
        upstream_file = UPSTREAM_FILES / url.split("/getproduct/", 1)[-1]
        assert row.sha256 == hashlib.sha256(upstream_file.read_bytes()).hexdigest()
        assert row.snr == pytest.approx(snr, rel=1e-6)
        assert row.good_pixels == (~mask[row.row]).sum() > 6000
    rejects = (out / "rejects.csv").read_text().splitlines()[1:]
    assert {line.split(",")[0] for line in rejects} == embargoed
    assert all(line.endswith("not stored (product state embargoed)") for line in rejects)
    meta = json.loads((out / "export.json").read_text())
    assert meta["arguments"]["where"] == mirrored["where"] and meta["mirror_version"]


def test_resampling_agrees_with_specutils_and_conserves_flux(mirrored, tmp_path):
    import astropy.units as u
    from astropy.nddata import StdDevUncertainty
    from specutils import Spectrum
    from specutils.manipulation import FluxConservingResampler

    flux, error, mask, wavelength, manifest = load_spectra(export(mirrored, tmp_path / "s").out)
    edges = parse_grid("3800:6900:0.5").edges()
    for row in manifest.head(6).itertuples():
        with fits.open(mirrored["store"] / row.store_path) as h:
            data = h[1].data[0]
            wave, f, e = (np.asarray(data[k], float) for k in ("WAVE", "FLUX", "ERR"))
            assert h[1].columns["WAVE"].unit == "angstrom"
        for band in [(4100.3, 4400.9), (5000.0, 5600.0), (6500.2, 6890.7)]:
            before = _integral(pixel_edges(wave), f, *band)
            after = _integral(edges, flux[row.row], *band)
            assert after == pytest.approx(before, rel=0.01)
        spec = Spectrum(flux=f * u.adu, spectral_axis=wave * u.AA,
                        uncertainty=StdDevUncertainty(e))
        theirs = FluxConservingResampler(extrapolation_treatment="nan_fill")(
            spec, wavelength * u.AA)
        inside = ~mask[row.row] & np.isfinite(theirs.flux.value)
        assert inside.sum() > 6000
        np.testing.assert_allclose(flux[row.row][inside], theirs.flux.value[inside],
                                   rtol=2e-5, atol=1e-3)
        their_err = theirs.uncertainty.represent_as(StdDevUncertainty).array
        np.testing.assert_allclose(error[row.row][inside], their_err[inside], rtol=2e-5)


def _integral(edges: np.ndarray, density: np.ndarray, lo: float, hi: float) -> float:
    cum = np.concatenate([[0.0], np.cumsum(np.nan_to_num(density) * np.diff(edges))])
    return float(np.interp(hi, edges, cum) - np.interp(lo, edges, cum))


def test_a_coarser_grid_shrinks_errors_as_the_square_root_of_pixels(mirrored, tmp_path):
    coarse = load_spectra(export(mirrored, tmp_path / "coarse", grid="4003:6797:8").out)
    for row in coarse.manifest.head(10).itertuples():
        with fits.open(mirrored["store"] / row.store_path) as h:
            wave, err = (np.asarray(h[1].data[0][k], float) for k in ("WAVE", "ERR"))
        step = float(np.median(np.diff(wave)))  # 1.2 to 2.1 A in these spectra
        # an 8 A pixel sums ~8/step independent input pixels: the error of their mean is
        # the input error over sqrt(8/step) (a little less where the edges cut pixels)
        expected = np.interp(coarse.wavelength, wave, err) * np.sqrt(step / 8)
        ratio = coarse.error[row.row] / expected
        assert 0.93 < np.nanmedian(ratio) <= 1.0 + 1e-6
        assert np.nanpercentile(ratio, 95) < 1.05  # errors vary inside lines: a few more


def test_a_grid_in_nm_gives_the_same_array_as_one_in_angstrom(mirrored, tmp_path):
    a = load_spectra(export(mirrored, tmp_path / "a", grid="3750:6950:0.5").out)
    nm = load_spectra(export(mirrored, tmp_path / "nm", grid="375:695:0.05", unit="nm").out)
    np.testing.assert_array_equal(a.mask, nm.mask)
    assert a.mask.any() and not a.mask.all()  # the grid passes the spectra's ends
    np.testing.assert_allclose(nm.flux, a.flux, rtol=1e-5, equal_nan=True)
    np.testing.assert_allclose(nm.error, a.error, rtol=1e-5, equal_nan=True)
    np.testing.assert_allclose(nm.wavelength * 10, a.wavelength)


@pytest.mark.parametrize("fmt", FORMATS)
def test_exporting_again_writes_identical_bytes(mirrored, tmp_path, fmt):
    first = export(mirrored, tmp_path / "1", fmt=fmt, normalize="median", columns=["snr"])
    second = export(mirrored, tmp_path / "2", fmt=fmt, normalize="median", columns=["snr"],
                    workers=1)
    assert digest(Path(first.out)) == digest(Path(second.out))
    again = export(mirrored, tmp_path / "1", fmt=fmt, normalize="median", columns=["snr"])
    assert digest(Path(again.out)) == digest(Path(first.out))
    loaded = load_spectra(first.out)
    medians = np.array([np.median(r[~m]) for r, m in zip(loaded.flux, loaded.mask,
                                                          strict=True)])
    np.testing.assert_allclose(medians, 1.0, rtol=1e-6)


def test_a_corrupted_copy_is_rejected_with_its_reason(mirrored, tmp_path):
    data = mirrored["cfg"].parent / "data"
    copy = tmp_path / "mirror"
    shutil.copytree(data, copy / "data")
    cfg = copy / "mirror.toml"
    cfg.write_text(mirrored["cfg"].read_text())
    stored = sorted((copy / "data/store/HARPS").rglob("*.fits"))
    truncated, flipped = stored[3], stored[7]
    truncated.write_bytes(truncated.read_bytes()[:9000])
    raw = bytearray(flipped.read_bytes())
    raw[-3000] ^= 0xFF  # one flux byte: still readable FITS, no longer what was fetched
    flipped.write_bytes(bytes(raw))
    with Mirror.open(cfg) as m:
        report = export_spectra(m, tmp_path / "out", grid=parse_grid("3800:6900:1"),
                                where=mirrored["where"])
    rejects = {line.split(",")[0].split("?")[-1]: line
               for line in (tmp_path / "out/rejects.csv").read_text().splitlines()[1:]}
    def dp(p: Path) -> str:
        return p.stem.replace("_", ":")

    assert "unreadable: truncated" in rejects[dp(truncated)]
    assert "sha256 differs" in rejects[dp(flipped)]
    manifest = load_spectra(tmp_path / "out").manifest
    assert not {dp(truncated), dp(flipped)} & {d.split("?")[-1] for d in
                                                manifest.obs_publisher_did}
    assert report.exported + report.rejected == report.selected


def image_rows(mirrored: dict) -> list[list[str]]:
    return psql("SELECT obs_publisher_did, s_ra, s_dec, dp_id, obs_release_date > now() "
                f"FROM ivoa.obscore WHERE obs_collection = 'VHS' AND dp_id <= "
                f"'{mirrored['last_image']}' ORDER BY dp_id")


def image_file(dp_id: str) -> Path:
    """The upstream's own copy of an image (its DataLink #this points there)."""
    return UPSTREAM_FILES / "sdp/data/vhs" / f"{dp_id.replace(':', '_')}.fits"


def test_cutouts_are_centred_on_their_targets_and_misses_are_reported(mirrored, tmp_path):
    rows = image_rows(mirrored)
    rng = np.random.default_rng(3)
    targets, owner = [], {}
    for did, _, _, dp_id, embargoed in rows:
        path = image_file(dp_id)
        wcs = WCS(fits.getheader(path))
        ny, nx = fits.getdata(path).shape
        x, y = (nx - 1) / 2 + rng.uniform(-5, 5), (ny - 1) / 2 + rng.uniform(-5, 5)
        t_ra, t_dec = (float(v) for v in wcs.pixel_to_world_values(x, y))
        targets.append(Target(f"in-{len(targets)}", t_ra, t_dec))
        owner[targets[-1].id] = (did, embargoed == "t")
    edge_ra, edge_dec = (float(v) for v in wcs.pixel_to_world_values(4.0, 4.0))
    targets += [Target("edge", edge_ra, edge_dec), Target("north", 10.0, 80.0)]
    with Mirror.open(mirrored["cfg"]) as m:
        report = export_cutouts(m, tmp_path / "cut", targets=targets, size=28)
    cube = np.load(tmp_path / "cut/cutouts.npy")
    manifest = load_manifest(tmp_path / "cut")
    stored = {t for t, (_, emb) in owner.items() if not emb}
    assert set(manifest.target_id) == stored and cube.shape == (len(stored), 28, 28)
    for row in manifest.itertuples():
        assert row.obs_publisher_did == owner[row.target_id][0]  # the images do not overlap
        wcs = WCS(fits.Header.fromstring(row.wcs_header, sep="\n"))
        centre = SkyCoord(*wcs.pixel_to_world_values(13.5, 13.5), unit="deg")
        off = centre.separation(SkyCoord(row.ra, row.dec, unit="deg")).arcsec
        assert off / row.pixel_scale_arcsec < 0.1
        assert (row.x_target, row.y_target) == pytest.approx((13.5, 13.5), abs=1e-6)
        assert np.isfinite(cube[row.row]).all()
    rejects = {line.split(",")[0]: line for line in
               (tmp_path / "cut/rejects.csv").read_text().splitlines()[1:]}
    assert "outside every selected image" in rejects["north"]
    assert "too near the image's edge" in rejects["edge"]
    for t, (_, emb) in owner.items():
        assert (t in rejects) == emb
        if emb:
            assert "not stored (product state embargoed)" in rejects[t]
    assert report.rejected == len(rejects) == len(targets) - len(stored)


def test_nearest_cutouts_are_the_image_pixels_themselves(mirrored, tmp_path):
    _, _, _, dp_id, _ = next(r for r in image_rows(mirrored) if r[4] == "f")
    path = image_file(dp_id)
    data, wcs = fits.getdata(path), WCS(fits.getheader(path))
    t_ra, t_dec = (float(v) for v in wcs.pixel_to_world_values(30.2, 31.7))
    with Mirror.open(mirrored["cfg"]) as m:
        export_cutouts(m, tmp_path / "n", targets=[Target("a", t_ra, t_dec)], size=28,
                       centre="nearest")
        export_cutouts(m, tmp_path / "e", targets=[Target("a", t_ra, t_dec)], size=28)
    nearest, exact = np.load(tmp_path / "n/cutouts.npy"), np.load(tmp_path / "e/cutouts.npy")
    header = load_manifest(tmp_path / "n").wcs_header[0]
    own = WCS(fits.Header.fromstring(header, sep="\n"))
    x0, y0 = wcs.world_to_pixel_values(*own.pixel_to_world_values(0, 0))  # in the image
    assert (x0, y0) == pytest.approx((round(float(x0)), round(float(y0))), abs=1e-6)
    assert abs(x0 + 13.5 - 30.2) <= 0.5 and abs(y0 + 13.5 - 31.7) <= 0.5
    x0, y0 = round(float(x0)), round(float(y0))
    np.testing.assert_array_equal(nearest[0], data[y0:y0 + 28, x0:x0 + 28])
    # the spline moved the image by (0.2, -0.3) pixels: close to, not equal to, the pixels
    assert not np.array_equal(exact[0], nearest[0])
    assert np.corrcoef(exact[0].ravel(), nearest[0].ravel())[0, 1] > 0.5


def test_embed_draws_a_png_and_pca_variance_decreases(mirrored, tmp_path):
    out = export(mirrored, tmp_path / "s", grid="3800:6900:2", columns=["snr"])
    report = embed(out.out, tmp_path / "look/pca.png", method="pca", color="snr")
    png = Path(report.picture)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    ratios = report.explained_variance_ratio
    assert len(ratios) >= 2 and all(a >= b for a, b in zip(ratios, ratios[1:], strict=False))
    import pyarrow.parquet as pq

    saved = pq.read_table(report.embedding)
    assert saved.num_rows == out.exported and {"x", "y", "snr"} <= set(saved.column_names)
    if os.environ.get("MIRROR_KEEP_PNG"):
        shutil.copy(png, os.environ["MIRROR_KEEP_PNG"])


def test_an_export_runs_through_the_service_of_the_process_holding_the_catalogue(
        mirrored, tmp_path):
    """While `mirror serve` holds the catalogue (DuckDB locks every other process out), the
    export selects records and finds their files through its TAP service: same bytes."""
    alone = tmp_path / "alone"
    export(mirrored, alone)
    lock = Path(str(mirror_config(mirrored["cfg"]).catalogue_path) + ".lock")
    server = subprocess.Popen([sys.executable, "-m", "mirror.cli", "--config",
                               str(mirrored["cfg"]), "--quiet", "serve", "--port", "0"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (
                lock.exists() and "endpoint" in lock.read_text()):
            assert server.poll() is None, server.stderr.read() if server.stderr else ""
            time.sleep(0.1)
        assert "endpoint" in lock.read_text(), "the server advertised its endpoint"
        routed = tmp_path / "routed"
        done = subprocess.run(
            [sys.executable, "-m", "mirror.cli", "--config", str(mirrored["cfg"]), "--json",
             "export", "spectra", "--where", mirrored["where"], "--grid", "3800:6900:0.5",
             "--out", str(routed)], capture_output=True, text=True, timeout=300)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert done.returncode == 0, done.stderr
    assert digest(routed) == digest(alone)
