"""From the mirror to a training set: spectra on a common grid, image cutouts, a first look.

    >>> from mirror import Mirror
    >>> from mirror.ml import export_spectra, parse_grid, load_spectra
    >>> with Mirror.open("mirror.toml") as m:
    ...     export_spectra(m, "harps", grid=parse_grid("3800:6900:0.5"))
    >>> flux, error, mask, wavelength, manifest = load_spectra("harps")

Uses the local ADQL layer to select and the store to read; never harvests or fetches.
"""

from mirror.ml.errors import ExportError
from mirror.ml.grid import Grid, parse_grid
from mirror.ml.load import Spectra, SpectraDataset, load_manifest, load_spectra, torch_dataset
from mirror.ml.spectra import SpectraReport, export_spectra

__all__ = ["ExportError", "Grid", "Spectra", "SpectraDataset", "SpectraReport",
           "export_spectra", "load_manifest", "load_spectra", "parse_grid", "torch_dataset"]
