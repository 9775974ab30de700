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

import importlib
from typing import Any

# imported on first use: cutouts pull in astropy.nddata and scipy, which `mirror export
# spectra` (and every other command, through the CLI's parser) need not pay for
_WHERE = {
    "ExportError": "mirror.errors", "CutoutReport": "mirror.ml.cutouts",
    "Target": "mirror.ml.cutouts", "export_cutouts": "mirror.ml.cutouts",
    "read_targets": "mirror.ml.cutouts", "EmbedReport": "mirror.ml.embed",
    "embed": "mirror.ml.embed", "Grid": "mirror.ml.grid", "parse_grid": "mirror.ml.grid",
    "Spectra": "mirror.ml.load", "SpectraDataset": "mirror.ml.load",
    "load_manifest": "mirror.ml.load", "load_spectra": "mirror.ml.load",
    "torch_dataset": "mirror.ml.load", "SpectraReport": "mirror.ml.spectra",
    "export_spectra": "mirror.ml.spectra",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'mirror.ml' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)


def __dir__() -> list[str]:
    return __all__
