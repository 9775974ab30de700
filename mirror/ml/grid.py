"""The common spectral grid of an export: pixel centres START..STOP by STEP in one unit."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import astropy.units as u
import numpy as np

from mirror.errors import ExportError

MAX_PIXELS = 5_000_000  # a row of flux, error and mask: 45 MB; more is surely a typo


@dataclass(frozen=True)
class Grid:
    """Pixel centres `start + step * i` for i in 0..n-1; each pixel spans centre +- step/2."""

    start: float
    stop: float
    step: float
    unit: str = "Angstrom"

    @property
    def n(self) -> int:
        return int(math.floor((self.stop - self.start) / self.step + 1e-9)) + 1

    def centres(self) -> np.ndarray:
        """Pixel centres, float64, computed the same way everywhere (reproducible bytes)."""
        return self.start + self.step * np.arange(self.n, dtype=np.float64)

    def edges(self) -> np.ndarray:
        return self.start - self.step / 2 + self.step * np.arange(self.n + 1, dtype=np.float64)

    def as_dict(self) -> dict[str, Any]:
        return {"start": self.start, "stop": self.stop, "step": self.step, "unit": self.unit,
                "pixels": self.n}


def parse_grid(text: str, unit: str = "Angstrom") -> Grid:
    """`START:STOP:STEP` in `unit` (any spectral unit astropy knows) -> Grid."""
    parts = text.split(":")
    try:
        start, stop, step = (float(p) for p in parts)
    except ValueError as exc:
        raise ExportError(f"bad grid {text!r}: expected START:STOP:STEP numbers",
                          "e.g. --grid 3800:6900:0.05 (pixel centres, in --unit)") from exc
    if not (step > 0 and stop > start and all(map(math.isfinite, (start, stop, step)))):
        raise ExportError(f"bad grid {text!r}: STOP must exceed START and STEP be positive",
                          "e.g. --grid 3800:6900:0.05")
    spectral_unit(unit)
    grid = Grid(start, stop, step, unit)
    if grid.n > MAX_PIXELS:
        raise ExportError(f"the grid {text!r} has {grid.n:,} pixels (at most {MAX_PIXELS:,})",
                          "use a larger STEP or a narrower range")
    return grid


@lru_cache(maxsize=64)
def spectral_unit(name: str) -> u.UnitBase:
    """`name` as an astropy unit of wavelength, frequency, energy or wavenumber."""
    try:
        unit = u.Unit(name)
    except ValueError as exc:
        raise ExportError(f"unknown unit {name!r}", "e.g. Angstrom, nm, um, Hz") from exc
    if not unit.is_equivalent(u.AA, equivalencies=u.spectral()):
        raise ExportError(f"{name!r} is not a spectral unit",
                          "give a wavelength, frequency or energy unit (Angstrom, nm, Hz)")
    return unit
