"""Spectra export pieces on real and synthetic data: the resampler (flux, error, masks,
units), the readers (the SDP fast path against astropy, broken files), the array containers
(bytes reproducible, read back the same)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from mirror.ml import ExportError, Grid, parse_grid
from mirror.ml.arrays import FORMATS, NAMES, open_writer
from mirror.ml.read import Unreadable, _read_astropy, read_spectrum
from mirror.ml.resample import pixel_edges, resample, to_grid_axis
from mirror.ml.worker import Job, run

DATA = Path(__file__).parent / "data"
HARPS = DATA / "harps_spectrum.fits"


def integral(edges: np.ndarray, density: np.ndarray, lo: float, hi: float) -> float:
    """Integral of a piecewise-constant density between lo and hi."""
    cum = np.concatenate([[0.0], np.cumsum(np.nan_to_num(density) * np.diff(edges))])
    return float(np.interp(hi, edges, cum) - np.interp(lo, edges, cum))


def harps() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with fits.open(HARPS) as h:
        row = h[1].data[0]
        return (np.asarray(row["WAVE"], float), np.asarray(row["FLUX"], float),
                np.asarray(row["ERR"], float))


# -- the resampler ----------------------------------------------------------------------------


def test_resampling_a_linear_spectrum_conserves_its_known_integral() -> None:
    wave = np.linspace(4000, 6000, 997)  # a step that does not divide the grid's
    flux = 2.0 + 0.001 * wave  # integral from a to b: 2(b-a) + 0.0005(b^2-a^2)
    grid = Grid(4100, 5900, 3.7)
    out = resample(wave, flux, None, grid.edges())
    lo, hi = grid.edges()[10], grid.edges()[400]
    exact = 2 * (hi - lo) + 0.0005 * (hi ** 2 - lo ** 2)
    assert integral(grid.edges(), out.flux, lo, hi) == pytest.approx(exact, rel=1e-6)


@pytest.mark.parametrize("step", [0.05, 0.7, 2.0, 9.3])
def test_resampling_the_harps_spectrum_conserves_flux_in_a_band(step: float) -> None:
    wave, flux, err = harps()
    grid = Grid(3800, 6900, step)
    out = resample(wave, flux, err, grid.edges())
    band = (5012.3, 5561.7)
    before = integral(pixel_edges(wave), flux, *band)
    after = integral(grid.edges(), out.flux, *band)
    assert after == pytest.approx(before, rel=0.01)
    assert not out.mask[(grid.centres() > 3850) & (grid.centres() < 6850)].any()


def test_constant_error_shrinks_by_the_square_root_of_pixels_combined() -> None:
    wave = 4000 + np.arange(2000) * 0.5
    err = np.full(wave.size, 3.0)
    for k in (2, 4, 9):
        grid = Grid(wave[0] + (k - 1) * 0.25, wave[-1] - k, k * 0.5)  # aligned edges
        out = resample(wave, np.ones(wave.size), err, grid.edges())
        good = ~out.mask
        assert good.sum() > 100
        np.testing.assert_allclose(out.error[good], 3.0 / np.sqrt(k), rtol=1e-9)
        np.testing.assert_allclose(out.flux[good], 1.0, rtol=1e-12)


def test_a_finer_grid_keeps_the_error_of_the_pixel_it_falls_in() -> None:
    wave = 4000 + np.arange(100) * 2.0
    err = np.linspace(1, 2, 100)
    grid = Grid(4010.25, 4150, 0.5)
    out = resample(wave, np.ones(100), err, grid.edges())
    inside = np.searchsorted(pixel_edges(wave), grid.centres()) - 1
    whole = np.floor((grid.edges()[:-1] - 3999) / 2) == np.floor((grid.edges()[1:] - 3999) / 2)
    np.testing.assert_allclose(out.error[whole], err[inside][whole], rtol=1e-9)


def test_pixels_outside_the_coverage_or_touching_bad_input_are_masked() -> None:
    wave = 5000 + np.arange(100) * 1.0  # pixel edges 4999.5 .. 5099.5
    flux = np.ones(100)
    flux[50] = np.nan  # covers 5049.5 .. 5050.5
    out = resample(wave, flux, np.ones(100), Grid(4990, 5110, 1.0).edges())
    centres = Grid(4990, 5110, 1.0).centres()
    expected = (centres - 0.5 < 4999.5) | (centres + 0.5 > 5099.5) | (centres == 5050)
    np.testing.assert_array_equal(out.mask, expected)
    assert np.isnan(out.flux[out.mask]).all() and np.isfinite(out.flux[~out.mask]).all()


def test_a_decreasing_axis_gives_the_same_result() -> None:
    wave, flux, err = harps()
    edges = Grid(4000, 6000, 1.5).edges()
    up = resample(wave, flux, err, edges)
    down = resample(wave[::-1], flux[::-1], err[::-1], edges)
    np.testing.assert_array_equal(up.flux, down.flux)
    np.testing.assert_array_equal(up.error, down.error)


def test_a_non_monotonic_axis_is_refused() -> None:
    with pytest.raises(ValueError, match="monotonic"):
        resample(np.array([1.0, 3.0, 2.0]), np.ones(3), None, np.array([1.0, 2.0]))


def test_a_grid_in_nm_gives_the_same_arrays_as_one_in_angstrom() -> None:
    job = [Job(0, HARPS, None)]
    angstrom = run(job, Grid(3700, 7000, 0.5, "Angstrom"), "none")
    nm = run(job, Grid(370, 700, 0.05, "nm"), "none")
    np.testing.assert_array_equal(angstrom.mask, nm.mask)
    assert angstrom.mask.any() and not angstrom.mask.all()  # the grid passes both ends
    np.testing.assert_allclose(nm.flux, angstrom.flux, rtol=1e-5)
    np.testing.assert_allclose(nm.error, angstrom.error, rtol=1e-5)


def test_a_frequency_grid_converts_a_physical_flux_density() -> None:
    wave = np.linspace(5000, 6000, 11)
    flam = np.full(11, 1e-15)  # erg/s/cm2/A
    nu, fnu, _ = to_grid_axis(wave, "Angstrom", flam, None, "erg / (s cm2 Angstrom)", "Hz")
    assert nu[0] == pytest.approx(2.99792458e18 / 5000)
    assert fnu[0] == pytest.approx(1e-15 * 5000 ** 2 / 2.99792458e18, rel=1e-9)


def test_grids_are_checked() -> None:
    assert parse_grid("3800:6900:0.05").n == 62001
    assert parse_grid("380:690:0.005", "nm").n == 62001
    for bad, unit in [("3800:6900", "Angstrom"), ("6900:3800:1", "Angstrom"),
                      ("1:2:0", "Angstrom"), ("1:2:0.1", "kg"), ("1:1e9:1e-3", "nm")]:
        with pytest.raises(ExportError):
            parse_grid(bad, unit)


# -- the readers ------------------------------------------------------------------------------


def test_the_sdp_fast_path_reads_what_astropy_reads() -> None:
    data = HARPS.read_bytes()
    fast, slow = read_spectrum(data, HARPS), _read_astropy(data)
    assert (fast.reader, slow.reader) == ("sdp", "astropy")
    for name in ("wave", "flux", "error"):
        np.testing.assert_array_equal(getattr(fast, name), getattr(slow, name))
    with fits.open(HARPS) as h:
        assert fast.wave_unit == h[1].columns["WAVE"].unit == "angstrom"
        assert fast.flux_unit == h[1].columns["FLUX"].unit


def test_a_table_of_one_pixel_per_row_is_read_through_astropy(tmp_path: Path) -> None:
    wave, flux, err = harps()
    table = fits.BinTableHDU.from_columns([
        fits.Column(name="WAVELENGTH", format="D", unit="nm", array=wave / 10),
        fits.Column(name="FLUX", format="E", array=flux),
        fits.Column(name="ERROR", format="E", array=err)])
    path = tmp_path / "rows.fits"
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(path)
    spec = read_spectrum(path.read_bytes(), path)
    assert spec.reader == "astropy" and spec.wave_unit == "nm"
    np.testing.assert_allclose(spec.wave, wave / 10)
    via_nm = run([Job(0, path, None)], Grid(4000, 6000, 2.0), "none")
    via_sdp = run([Job(0, HARPS, None)], Grid(4000, 6000, 2.0), "none")
    np.testing.assert_allclose(via_nm.flux, via_sdp.flux, rtol=1e-5)


@pytest.mark.parametrize(("cut", "reason"), [(20_000, "truncated"), (100, "not FITS"),
                                             (0, "empty file")])
def test_broken_files_are_unreadable_with_a_reason(cut: int, reason: str) -> None:
    with pytest.raises(Unreadable, match=reason):
        read_spectrum(HARPS.read_bytes()[:cut])


def test_a_corrupt_or_changed_file_is_an_outcome_with_its_reason(tmp_path: Path) -> None:
    good = HARPS.read_bytes()
    (tmp_path / "cut.fits").write_bytes(good[:20_000])
    (tmp_path / "changed.fits").write_bytes(good)
    sha = hashlib.sha256(good).hexdigest()
    jobs = [Job(0, HARPS, sha), Job(1, tmp_path / "cut.fits", sha),
            Job(2, tmp_path / "changed.fits", "0" * 64), Job(3, tmp_path / "gone.fits", sha)]
    batch = run(jobs, Grid(4000, 6000, 1.0), "median")
    reasons = [o.reason for o in batch.outcomes]
    assert reasons[0] is None and len(batch.flux) == 1
    assert "truncated" in reasons[1] and "sha256 differs" in reasons[1]
    assert "sha256 differs" in reasons[2] and "missing" in reasons[3]
    good_flux = batch.flux[0][~batch.mask[0]]
    assert np.median(good_flux) == pytest.approx(1.0, rel=1e-6)  # --normalize median


# -- the array containers ---------------------------------------------------------------------


def digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in [path, *path.rglob("*")] if p.is_file()):
        h.update(f.relative_to(path.parent).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("fmt", FORMATS)
def test_containers_write_the_same_bytes_twice_and_read_back(fmt: str, tmp_path: Path) -> None:
    from mirror.ml.load import ArrayReader
    from mirror.ml.manifest import write_json

    rng = np.random.default_rng(7)
    wavelength = np.arange(50.0)
    blocks = [(rng.normal(size=(k, 50)).astype("f4"), rng.random((k, 50)).astype("f4"),
               rng.random((k, 50)) > 0.8) for k in (8, 8, 3)]
    digests = []
    for run_ in ("a", "b"):
        folder = tmp_path / run_
        folder.mkdir()
        writer = open_writer(fmt, folder, wavelength, 8, 25)
        for block in blocks:
            writer.append(*block)
        writer.close()
        digests.append(digest(folder / NAMES[fmt]))
        write_json(folder, {"kind": "spectra", "arguments": {"format": fmt}, "exported": 19})
        assert sorted(p.name for p in folder.iterdir()) == sorted([NAMES[fmt], "export.json"])
        reader = ArrayReader(folder)
        np.testing.assert_array_equal(reader.wavelength, wavelength)
        for got, want in zip(reader.read(0, 19), (np.concatenate([b[i] for b in blocks])
                                                   for i in range(3)), strict=True):
            np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(reader.read(6, 10)[0], blocks[0][0][6:].tolist()
                                      + blocks[1][0][:2].tolist())
    assert digests[0] == digests[1]
