"""`mirror embed`: a first look at exported spectra, a 2-D embedding (PCA, or UMAP on the
leading principal components) coloured by a manifest column, beside the first components
drawn as spectra. The embedding is saved next to the picture (same name, .parquet)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mirror.errors import ExportError
from mirror.ml.load import load_spectra
from mirror.ml.manifest import read_json

COVERAGE = 0.9  # a pixel enters the fit when at least this share of spectra have it
UMAP_INPUT = 20  # principal components UMAP starts from


@dataclass
class EmbedReport:
    """What `embed` fitted and wrote."""

    picture: str
    embedding: str
    method: str
    spectra: int
    pixels: int
    explained_variance_ratio: list[float] = field(default_factory=list)
    color: str | None = None


def embed(folder: str | os.PathLike[str], picture: str | os.PathLike[str], *,
          method: str = "pca", color: str | None = None, components: int = 5) -> EmbedReport:
    """Fit the embedding of the export in `folder`; draw it into `picture` (PNG)."""
    flux, _, mask, wavelength, manifest = load_spectra(folder)
    color = _color_column(manifest, color)
    x, keep = prepare(flux, mask)
    from sklearn.decomposition import PCA

    n_comp = max(2, min(max(components, UMAP_INPUT if method == "umap" else 2), *x.shape))
    pca = PCA(n_components=n_comp, svd_solver="randomized", random_state=0)
    scores = pca.fit_transform(x)
    if method == "pca":
        xy = scores[:, :2]
    elif method == "umap":
        xy = _umap(scores)
    else:
        raise ExportError(f"unknown method {method!r}", "pca or umap")
    out = Path(picture)
    out.parent.mkdir(parents=True, exist_ok=True)
    ratios = [float(v) for v in pca.explained_variance_ratio_]
    unit = read_json(Path(folder))["arguments"]["grid"]["unit"]
    _draw(out, xy, manifest, color, wavelength[keep], unit, pca, method)
    saved = out.with_suffix(".parquet")
    _save(saved, xy, manifest, color, method, ratios)
    return EmbedReport(str(out), str(saved), method, len(x), int(keep.sum()), ratios, color)


def prepare(flux: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows scaled to median 1 over the pixels most spectra cover (a fit of shapes, not of
    brightness); the few masked values left take their pixel's median."""
    if len(flux) < 3:
        raise ExportError(f"{len(flux)} spectra are too few to embed", "export at least 3")
    keep = (~mask).mean(axis=0) >= COVERAGE
    if keep.sum() < 2:
        raise ExportError("fewer than 2 pixels are covered by 90% of the spectra",
                          "export a grid the spectra share")
    # float32: half the memory of float64 for a fit that needs no more precision
    x = np.where(mask[:, keep], np.nan, flux[:, keep]).astype(np.float32)
    scale = np.nanmedian(x, axis=1, keepdims=True)
    scale[~np.isfinite(scale) | (scale == 0)] = 1.0
    x /= np.abs(scale)
    fill = np.nanmedian(x, axis=0)
    rows, cols = np.where(np.isnan(x))
    x[rows, cols] = np.nan_to_num(fill[cols])
    return x, keep


def _color_column(manifest: Any, color: str | None) -> str | None:
    if color is None:
        return "snr" if "snr" in manifest.columns else None
    if color not in manifest.columns:
        raise ExportError(f"the manifest has no column {color!r}",
                          f"one of: {', '.join(map(str, manifest.columns))} (export more "
                          "with --columns)")
    return color


def _umap(scores: np.ndarray) -> np.ndarray:
    try:
        import umap
    except ImportError as exc:
        raise ExportError("--method umap needs umap-learn, which is not installed",
                          "pip install umap-learn, or use --method pca") from exc
    reducer = umap.UMAP(n_components=2, random_state=0, n_jobs=1,  # a seed means one thread
                        n_neighbors=min(15, len(scores) - 1))
    return np.asarray(reducer.fit_transform(scores), np.float64)


def _draw(out: Path, xy: np.ndarray, manifest: Any, color: str | None,
          wavelength: np.ndarray, unit: str, pca: Any, method: str) -> None:
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    fig = Figure(figsize=(13, 5.2), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[1, 1.4])
    values = None if color is None else _numeric(manifest[color])
    points = left.scatter(xy[:, 0], xy[:, 1], s=6, c=values, cmap="viridis", alpha=0.8,
                          linewidths=0)
    if values is not None:
        numeric = manifest[color].dtype.kind in "iufb"
        fig.colorbar(points, ax=left, label=color if numeric else f"{color} (category)")
    axis = "PC" if method == "pca" else "UMAP "
    left.set(xlabel=f"{axis}1", ylabel=f"{axis}2",
             title=f"{method.upper()} of {len(xy):,} spectra")
    ratios = pca.explained_variance_ratio_
    right.plot(wavelength, pca.mean_, color="black", lw=0.8, label="mean (median-scaled)")
    span = float(np.ptp(pca.mean_)) or 1.0
    for i in range(min(3, len(ratios))):
        comp = pca.components_[i]
        comp = comp / (np.ptp(comp) or 1.0) * span * 0.8
        right.plot(wavelength, comp - (i + 1) * span, lw=0.8,
                   label=f"PC{i + 1} ({100 * ratios[i]:.1f}% of variance)")
    right.set(xlabel=f"wavelength ({unit})", yticks=[],
              title="mean spectrum and first components (offset, scaled)")
    right.legend(loc="upper left", bbox_to_anchor=(0, -0.12), ncols=2, fontsize=8,
                 frameon=False)
    fig.savefig(out, dpi=110, metadata={"Software": None})


def _numeric(series: Any) -> np.ndarray:
    """A colour per point: numbers as they are, anything else by category."""
    try:
        return np.asarray(series, np.float64)
    except (TypeError, ValueError):
        import pandas as pd

        return np.asarray(pd.Categorical(series.astype(str)).codes, np.float64)


def _save(path: Path, xy: np.ndarray, manifest: Any, color: str | None, method: str,
          ratios: list[float]) -> None:
    columns = {"row": pa.array(manifest["row"].to_numpy(), pa.int64()),
               "obs_publisher_did": pa.array(manifest["obs_publisher_did"].astype(str)),
               "x": pa.array(xy[:, 0]), "y": pa.array(xy[:, 1])}
    if color is not None and color not in columns:
        columns[color] = pa.Array.from_pandas(manifest[color])
    meta = {"method": method, "explained_variance_ratio": ratios}
    table = pa.table(columns).replace_schema_metadata({"mirror.embed": json.dumps(meta)})
    pq.write_table(table, path, compression="zstd")
