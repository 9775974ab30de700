"""Flux-conserving resampling onto a common grid, vectorised numpy.

Flux is taken as constant over each input pixel (edges halfway between centres, as specutils'
FluxConservingResampler does); an output pixel gets the integral of flux over its span divided
by its width, from the cumulative integral over the input pixels, so the cost is
O(input + output) with no weight matrix. The error follows as variance over the same weights:
var_out = sum_i (overlap_i * err_i)^2 / width_out^2, from a cumulative sum of (width_i*err_i)^2
plus the two partly covered input pixels at the ends. A bin inside one input pixel (most of
them on a finer grid) simply takes that pixel's flux and error.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import astropy.units as u
import numpy as np


@dataclass(frozen=True)
class Resampled:
    """Flux and error on the grid; `mask` is True where a pixel is not covered or bad."""

    flux: np.ndarray
    error: np.ndarray
    mask: np.ndarray


def pixel_edges(centres: np.ndarray) -> np.ndarray:
    """Edges halfway between increasing centres; the outer ones mirror their neighbours."""
    mid = (centres[1:] + centres[:-1]) / 2
    return np.concatenate(([2 * centres[0] - mid[0]], mid, [2 * centres[-1] - mid[-1]]))


def resample(wave: np.ndarray, flux: np.ndarray, error: np.ndarray | None,
             edges: np.ndarray) -> Resampled:
    """Resample flux (a density along `wave`) and its error onto the bins `edges`.

    `wave` must be strictly monotonic (a decreasing axis is flipped). Output pixels not wholly
    inside the input's span, or touching a non-finite input pixel, are masked (NaN)."""
    wave, flux, error = _increasing(np.asarray(wave, np.float64), flux, error)
    e_in = pixel_edges(wave)
    width = np.diff(e_in)
    bad = ~np.isfinite(flux) if error is None else ~(np.isfinite(flux) & np.isfinite(error))
    f = np.where(bad, 0.0, flux).astype(np.float64)
    tol = 1e-9 * max(abs(edges[0]), abs(edges[-1]))  # nm and Angstrom grids mask alike
    lo_all, hi_all = edges[:-1], edges[1:]
    covered = (lo_all >= e_in[0] - tol) & (hi_all <= e_in[-1] + tol)
    a = np.clip(edges, e_in[0], e_in[-1])
    idx = _pixel_of(e_in, a)
    ia, ib = idx[:-1], idx[1:]
    # a bin inside one input pixel takes its values as they are; only the bins that span an
    # input edge (all of them on a coarser grid, ~1/k of them on a k times finer one) sum
    cross = np.flatnonzero(ia != ib)
    out_width = np.diff(edges)
    flux_out = f[ia]
    flux_out[cross] = _spanning(e_in, f, f * width, a, ia[cross], ib[cross], cross, 1) / (
        out_width[cross])
    mask = ~covered
    if bad.any():  # rare: skip a second pass over the grid when every pixel is good
        badf = bad.astype(np.float64)
        touched = badf[ia] > 0
        touched[cross] = _spanning(e_in, badf, badf * width, a, ia[cross], ib[cross],
                                   cross, 1) > 0
        mask |= touched
    if error is None:
        err_out = np.full(flux_out.shape, np.nan)
    else:
        var = np.where(bad, 0.0, error).astype(np.float64) ** 2
        var_out = var[ia]
        var_out[cross] = _spanning(e_in, var, var * width ** 2, a, ia[cross], ib[cross],
                                   cross, 2) / out_width[cross] ** 2
        err_out = np.sqrt(var_out)
    flux_out[mask] = np.nan
    err_out[mask] = np.nan
    return Resampled(flux_out, err_out, mask)


def _increasing(wave: np.ndarray, flux: np.ndarray,
                error: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    step = np.diff(wave)
    if wave.size < 2 or not np.all(np.isfinite(wave)):
        raise ValueError("the spectral axis has fewer than 2 pixels or non-finite values")
    if np.all(step > 0):
        return wave, flux, error
    if np.all(step < 0):
        return wave[::-1], flux[::-1], None if error is None else error[::-1]
    raise ValueError("the spectral axis is not monotonic")


def _cumulative(values: np.ndarray) -> np.ndarray:
    out = np.empty(values.size + 1, np.float64)
    out[0] = 0.0
    np.cumsum(values, out=out[1:])
    return out


def _pixel_of(e_in: np.ndarray, a: np.ndarray) -> np.ndarray:
    """The input pixel [e_i, e_i+1) holding each of the sorted `a` (clipped to the last)."""
    if a.size > 4 * e_in.size:  # a much finer grid: place the few input edges instead
        first = np.searchsorted(a, e_in, side="left")  # a[j] >= e_k from j = first[k] on
        idx = np.cumsum(np.bincount(first, minlength=a.size + 1)[:a.size]) - 1
    else:
        idx = np.searchsorted(e_in, a, side="right") - 1
    return np.clip(idx, 0, e_in.size - 2)


def _spanning(e_in: np.ndarray, density: np.ndarray, per_pixel: np.ndarray, a: np.ndarray,
              ia: np.ndarray, ib: np.ndarray, bins: np.ndarray, power: int) -> np.ndarray:
    """sum over input pixels of overlap^power * density for bins [a_j, a_j+1] spanning input
    pixels ia..ib: the partly covered first and last pixels plus the whole ones between,
    from the cumulative sum of `per_pixel` (= width^power * density)."""
    lo, hi = a[bins], a[bins + 1]
    whole = _cumulative(per_pixel)
    return ((e_in[ia + 1] - lo) ** power * density[ia] + (whole[ib] - whole[ia + 1])
            + (hi - e_in[ib]) ** power * density[ib])


def to_grid_axis(wave: np.ndarray, wave_unit: str, flux: np.ndarray, error: np.ndarray | None,
                 flux_unit: str, grid_unit: str
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The spectral axis in the grid's unit (u.spectral()); a physical flux density follows
    (u.spectral_density) when the axis changes kind, e.g. wavelength to frequency."""
    scale = _linear_factor(wave_unit, grid_unit)
    if scale is not None:  # same kind of axis: one multiplication, flux density unchanged
        return wave * scale, flux, error
    src, dst = u.Unit(wave_unit), u.Unit(grid_unit)
    new_wave = (wave * src).to_value(dst, equivalencies=u.spectral())
    funit = _unit_or_none(flux_unit)
    target = _density_in(funit, dst) if funit is not None else None
    if target is not None:
        factor = (np.ones_like(wave) * funit).to_value(
            target, equivalencies=u.spectral_density(wave * src))
        flux = flux * factor
        error = None if error is None else error * factor
    return new_wave, flux, error


@lru_cache(maxsize=64)
def _linear_factor(src: str, dst: str) -> float | None:
    a, b = u.Unit(src), u.Unit(dst)
    return float(a.to(b)) if a.is_equivalent(b) else None


@lru_cache(maxsize=64)
def _unit_or_none(name: str) -> u.UnitBase | None:
    try:
        unit = u.Unit(name)
    except ValueError:
        return None
    return unit


def _density_in(flux_unit: u.UnitBase, axis: u.UnitBase) -> u.UnitBase | None:
    """The flux density unit per `axis` that `flux_unit` converts to, if it is a density."""
    for per in (u.erg / u.s / u.cm ** 2, u.photon / u.s / u.cm ** 2):
        target = per / axis
        if flux_unit.is_equivalent(target, equivalencies=u.spectral_density(1 * u.AA)):
            return target
    return None
