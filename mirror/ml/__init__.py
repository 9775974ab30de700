"""From the mirror to a training set: spectra on a common grid, image cutouts, a first look.

    >>> from mirror import Mirror
    >>> from mirror.ml import embed, export_cutouts, export_spectra, load_spectra, parse_grid
    >>> with Mirror.open("mirror.toml") as m:
    ...     export_spectra(m, "harps", grid=parse_grid("3800:6900:0.5"))
    ...     export_cutouts(m, "qso", targets="quasars.csv", size=28)
    >>> flux, error, mask, wavelength, manifest = load_spectra("harps")
    >>> embed("harps", "harps.png", method="pca", color="snr")

Uses the local ADQL layer to select and the store to read; never harvests or fetches.
"""

from mirror.errors import ExportError
from mirror.ml.cutouts import CutoutReport, Target, export_cutouts, read_targets
from mirror.ml.embed import EmbedReport, embed
from mirror.ml.grid import Grid, parse_grid
from mirror.ml.load import Spectra, SpectraDataset, load_manifest, load_spectra, torch_dataset
from mirror.ml.spectra import SpectraReport, export_spectra

__all__ = ["CutoutReport", "EmbedReport", "ExportError", "Grid", "Spectra", "SpectraDataset",
           "SpectraReport", "Target", "embed", "export_cutouts", "export_spectra",
           "load_manifest", "load_spectra", "parse_grid", "read_targets", "torch_dataset"]
