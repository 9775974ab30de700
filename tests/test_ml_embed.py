"""Reading exports back (load_spectra, the iterable and PyTorch datasets) and `mirror embed`
on a synthetic export; the export command's user errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mirror.ml import ExportError, SpectraDataset, load_spectra, torch_dataset
from mirror.ml.arrays import open_writer
from mirror.ml.embed import embed, prepare
from mirror.ml.manifest import write_json, write_manifest


def synthetic_export(folder: Path, n: int = 60, pixels: int = 200, fmt: str = "npz") -> None:
    """Two families of spectra (a line that moves, a slope that varies) plus noise."""
    rng = np.random.default_rng(1)
    wave = 4000 + 5.0 * np.arange(pixels)
    slope = rng.uniform(-1, 1, n)
    centre = rng.uniform(4300, 4700, n)
    flux = (1 + 0.3 * slope[:, None] * (wave - wave.mean()) / np.ptp(wave)
            - 0.5 * np.exp(-0.5 * ((wave - centre[:, None]) / 20) ** 2))
    flux += rng.normal(0, 0.01, flux.shape)
    mask = np.zeros(flux.shape, bool)
    mask[:3, :5] = True  # a few spectra start later
    folder.mkdir(parents=True)
    writer = open_writer(fmt, folder, wave, 16, n)
    for i in range(0, n, 16):
        writer.append(flux[i:i + 16].astype("f4"), np.full((min(16, n - i), pixels), 0.01, "f4"),
                      mask[i:i + 16])
    writer.close()
    meta = {"kind": "spectra", "exported": n, "arguments": {
        "format": fmt, "grid": {"start": 4000, "stop": wave[-1], "step": 5.0, "unit": "Angstrom"}}}
    table = pa.table({"obs_publisher_did": [f"ivo://x/{i:03d}" for i in range(n)],
                      "mirror_source": ["x"] * n, "snr": rng.uniform(5, 50, n),
                      "kind": ["a" if s > 0 else "b" for s in slope]})
    write_manifest(folder, table, list(range(n)), {}, meta)
    write_json(folder, meta)


def test_load_spectra_and_the_datasets_give_the_rows_in_order(tmp_path: Path) -> None:
    synthetic_export(tmp_path / "e", fmt="parquet")
    flux, error, mask, wavelength, manifest = load_spectra(tmp_path / "e")
    assert flux.shape == (60, 200) and flux.dtype == np.float32 and mask.dtype == bool
    assert list(manifest.row) == list(range(60)) and wavelength[1] - wavelength[0] == 5.0
    rows = list(SpectraDataset(tmp_path / "e", block=7))
    assert [r[3] for r in rows] == list(range(60))
    np.testing.assert_array_equal(np.stack([r[0] for r in rows]), flux)
    torch = pytest.importorskip("torch")  # optional dependency; the numpy dataset above is not
    loader = torch.utils.data.DataLoader(torch_dataset(tmp_path / "e", block=16), batch_size=25)
    batches = list(loader)
    assert [len(b[3]) for b in batches] == [25, 25, 10]
    np.testing.assert_array_equal(torch.cat([b[0] for b in batches]).numpy(), flux)


def test_embed_draws_a_png_and_saves_the_embedding(tmp_path: Path) -> None:
    synthetic_export(tmp_path / "e")
    report = embed(tmp_path / "e", tmp_path / "pics/pca.png", method="pca", color="kind")
    png = Path(report.picture)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ratios = report.explained_variance_ratio
    assert all(a >= b for a, b in zip(ratios, ratios[1:], strict=False)) and ratios[0] > 0.3
    saved = pq.read_table(report.embedding)
    assert saved.column_names == ["row", "obs_publisher_did", "x", "y", "kind"]
    assert saved.num_rows == 60 and report.color == "kind"


def test_embed_names_a_missing_colour_column(tmp_path: Path) -> None:
    synthetic_export(tmp_path / "e")
    with pytest.raises(ExportError, match="no column 'teff'") as caught:
        embed(tmp_path / "e", tmp_path / "x.png", color="teff")
    assert "snr" in (caught.value.hint or "")


def test_prepare_scales_rows_and_fills_the_few_masked_values() -> None:
    flux = np.array([[2.0, 4.0, 6.0, 8.0], [1.0, 1.0, 3.0, 1.0], [5.0, 5.0, 5.0, 5.0]])
    mask = np.array([[False] * 4, [True, False, False, False], [False] * 4])
    x, keep = prepare(flux, mask)
    assert keep.tolist() == [False, True, True, True]  # pixel 0 is covered by 2 of 3 only
    np.testing.assert_allclose(np.median(x, axis=1), 1.0)
    assert np.isfinite(x).all()


def test_export_errors_are_messages_not_tracebacks(tmp_path: Path) -> None:
    cfg = tmp_path / "mirror.toml"
    cfg.write_text('[[source]]\nname = "x"\nurl = "http://127.0.0.1:9/tap"\n')
    for args, message in [(["spectra", "--grid", "6900:3800:1"], "STOP must exceed START"),
                          (["spectra", "--grid", "1:2:0.1", "--unit", "kg"], "not a spectral"),
                          (["cutouts", "--targets", str(tmp_path / "no.csv")], "cannot read")]:
        done = subprocess.run([sys.executable, "-m", "mirror.cli", "--config", str(cfg),
                               "export", *args, "--out", str(tmp_path / "out")],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr
        assert message in done.stderr and "Traceback" not in done.stderr
