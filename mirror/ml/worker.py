"""The per-spectrum work of `mirror export spectra`, run in pool processes: read, check the
sha256 against the catalogue's, convert units, resample, mask, normalise."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mirror.ml.grid import Grid
from mirror.ml.read import Unreadable, read_spectrum
from mirror.ml.resample import resample, to_grid_axis

NORMALIZE = ("none", "median")


@dataclass(frozen=True)
class Job:
    """One selected spectrum: its row in the selection, its file and expected sha256."""

    row: int
    path: Path
    sha256: str | None


@dataclass(frozen=True)
class Outcome:
    """What became of one job: `reason` is None when it was exported."""

    row: int
    reason: str | None
    sha256: str = ""
    good: int = 0  # unmasked pixels
    scale: float = 1.0  # what the flux was divided by (--normalize median)
    wave_unit: str = ""
    flux_unit: str = ""
    reader: str = ""


@dataclass(frozen=True)
class Batch:
    """Outcomes of a list of jobs, in order, and the arrays of the exported ones."""

    outcomes: list[Outcome]
    flux: np.ndarray
    error: np.ndarray
    mask: np.ndarray


_EDGES: dict[tuple[float, float, float], np.ndarray] = {}


def run(jobs: list[Job], grid: Grid, normalize: str) -> Batch:
    """Process `jobs` in order; float32 rows for the exported ones."""
    key = (grid.start, grid.stop, grid.step)
    edges = _EDGES.get(key)
    if edges is None:
        edges = _EDGES.setdefault(key, grid.edges())
    outcomes, rows = [], []
    for job in jobs:
        outcome, arrays = _one(job, grid, edges, normalize)
        outcomes.append(outcome)
        if arrays is not None:
            rows.append(arrays)
    n = grid.n
    if not rows:
        empty = np.empty((0, n), np.float32)
        return Batch(outcomes, empty, empty.copy(), np.empty((0, n), bool))
    return Batch(outcomes, np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows]),
                 np.stack([r[2] for r in rows]))


def _one(job: Job, grid: Grid, edges: np.ndarray, normalize: str
         ) -> tuple[Outcome, tuple[np.ndarray, np.ndarray, np.ndarray] | None]:
    try:
        data = job.path.read_bytes()
    except FileNotFoundError:
        return Outcome(job.row, "missing from the store (run `mirror verify`)"), None
    except OSError as exc:
        return Outcome(job.row, f"cannot read the file: {exc.strerror}"), None
    sha = hashlib.sha256(data).hexdigest()
    changed = job.sha256 is not None and sha != job.sha256
    note = ("; its sha256 differs from the catalogue's: changed since it was fetched "
            "(run `mirror verify`)") if changed else ""
    try:
        spec = read_spectrum(data, job.path)
        wave, flux, error = to_grid_axis(spec.wave, spec.wave_unit, spec.flux, spec.error,
                                         spec.flux_unit, grid.unit)
        res = resample(wave, flux, error, edges)
    except (Unreadable, ValueError) as exc:
        return Outcome(job.row, f"unreadable: {exc}{note}", sha), None
    if changed:
        return Outcome(job.row, "the file's sha256 differs from the catalogue's: changed "
                                "since it was fetched (run `mirror verify`)", sha), None
    good = int(res.mask.size - res.mask.sum())
    if good == 0:
        lo, hi = float(np.nanmin(wave)), float(np.nanmax(wave))
        return Outcome(job.row, f"does not cover the grid: its range is {lo:g}-{hi:g} "
                                f"{grid.unit}", sha), None
    scale = 1.0
    if normalize == "median":
        scale = float(np.median(res.flux[~res.mask]))
        if not (np.isfinite(scale) and scale > 0):
            return Outcome(job.row, f"median flux {scale:g} cannot normalise", sha), None
    outcome = Outcome(job.row, None, sha, good, scale, spec.wave_unit, spec.flux_unit,
                      spec.reader)
    return outcome, ((res.flux / scale).astype(np.float32),
                     (res.error / scale).astype(np.float32), res.mask)
