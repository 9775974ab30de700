"""Cutting one image around a target: the image's WCS, where the cutout's pixels fall in it,
and the cutout (astropy Cutout2D, then a spline onto pixels centred on the target)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.nddata import Cutout2D, NoOverlapError, PartialOverlapError
from astropy.wcs import WCS, FITSFixedWarning
from astropy.wcs.utils import proj_plane_pixel_scales
from scipy.ndimage import map_coordinates

SPLINE_MARGIN = 4  # image pixels around the samples a cubic spline needs


class NoCutout(Exception):
    """This image cannot give this target's cutout; the message says why."""


@dataclass(frozen=True)
class Image:
    """A 2-D image with its celestial WCS, as stored."""

    data: np.ndarray
    wcs: WCS

    @property
    def scale_arcsec(self) -> float:
        """Pixel scale (mean of both axes) in arcseconds."""
        return float(np.mean(proj_plane_pixel_scales(self.wcs.celestial)) * 3600)


@dataclass(frozen=True)
class Cutout:
    """A cutout, its own WCS, and the target's pixel position in it (0-based)."""

    data: np.ndarray
    wcs: WCS
    x: float
    y: float


def open_image(path: Path) -> Image:
    """The first HDU with 2-D data and a celestial WCS."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            with fits.open(path, memmap=False) as hdul:
                for hdu in hdul:
                    if hdu.is_image and hdu.data is not None and hdu.data.ndim == 2:
                        wcs = WCS(hdu.header)
                        if wcs.has_celestial and wcs.naxis == 2:
                            return Image(np.asarray(hdu.data, np.float32), wcs)
        except (OSError, ValueError, TypeError) as exc:
            raise NoCutout(f"unreadable image: {type(exc).__name__}: {exc}") from exc
    raise NoCutout("no 2-D image HDU with a celestial WCS")


def cut(image: Image, ra: float, dec: float, n: int, step: float, exact: bool) -> Cutout:
    """An n x n cutout whose pixels are `step` image pixels apart, centred on (ra, dec):
    exactly (cubic spline, the WCS shifted by the same fraction) or, not `exact`, Cutout2D's
    box around the pixel holding the target (no resampling; step must be 1)."""
    x_t, y_t = (float(v) for v in image.wcs.world_to_pixel_values(ra, dec))
    if not (math.isfinite(x_t) and math.isfinite(y_t)):
        raise NoCutout("the target does not project onto the image")
    if not exact:  # Cutout2D as it is: the box around the pixel holding the target
        try:
            box = Cutout2D(image.data, (x_t, y_t), (n, n), wcs=image.wcs, mode="strict")
        except (PartialOverlapError, NoOverlapError) as exc:
            raise NoCutout(f"too near the image's edge ({_edge(image, x_t, y_t):.1f} pixels "
                           f"from it)") from exc
        data, wcs = box.data.astype(np.float32), box.wcs
    else:
        half = step * (n - 1) / 2
        x0, y0 = x_t - half, y_t - half
        ny, nx = image.data.shape
        if min(x0, y0) < 0 or x0 + 2 * half > nx - 1 or y0 + 2 * half > ny - 1:
            raise NoCutout(f"too near the image's edge ({_edge(image, x_t, y_t):.1f} pixels "
                           f"from it; the cutout needs {half:.1f})")
        wcs = _shifted(image.wcs, x0, y0, step, n)
        data = _sampled(image, x0, y0, step, n)
    cx, cy = (float(v) for v in wcs.world_to_pixel_values(ra, dec))
    return Cutout(data, wcs, cx, cy)


def _edge(image: Image, x: float, y: float) -> float:
    ny, nx = image.data.shape
    return min(x, y, nx - 1 - x, ny - 1 - y)


def _sampled(image: Image, x0: float, y0: float, step: float, n: int) -> np.ndarray:
    """The image at (x0 + step*i, y0 + step*j): Cutout2D takes the region (with the spline's
    margin), map_coordinates interpolates it."""
    span = step * (n - 1)
    size = int(math.ceil(span)) + 2 * SPLINE_MARGIN + 1
    centre = (x0 + span / 2, y0 + span / 2)
    box = Cutout2D(image.data, centre, (size, size), mode="trim", copy=False)
    ox, oy = box.origin_original
    grid = y0 - oy + step * np.arange(n), x0 - ox + step * np.arange(n)
    yy, xx = np.meshgrid(*grid, indexing="ij")
    out = map_coordinates(np.asarray(box.data, np.float64), [yy, xx], order=3,
                          mode="nearest", prefilter=True)
    return out.astype(np.float32)


def _shifted(wcs: WCS, x0: float, y0: float, step: float, n: int) -> WCS:
    """The WCS of pixels (x0 + step*i, y0 + step*j) of an image with `wcs`."""
    if step != 1 and (wcs.sip is not None or wcs.has_distortion):
        raise NoCutout("a distorted (SIP) WCS cannot be resampled here; use --pixels")
    out = wcs.deepcopy()
    out.wcs.crpix = 1 + (out.wcs.crpix - 1 - np.array([x0, y0])) / step
    if step != 1:
        if out.wcs.has_cd():
            out.wcs.cd = out.wcs.cd * step
        else:
            out.wcs.cdelt = out.wcs.cdelt * step
    out.pixel_shape = (n, n)
    return out
