"""Reading one stored 1-D spectrum: the ESO SDP layout fast, other layouts through astropy and
specutils.

The SDP layout (one binary-table row of WAVE/FLUX/ERR arrays) is read by parsing the header
cards' values and taking the row's arrays straight from the bytes with numpy: ~0.1 ms a file
where `fits.open` and FITS_rec cost 1.7 ms (as `mirror.store.fitscheck` does for checksums).
Anything that layout does not model exactly (scaled columns, heaps, several rows, other
column names) goes to `fits.open`, and what that cannot place, to specutils.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

BLOCK = 2880
_END = b"END" + b" " * 77
WAVE_NAMES = ("WAVE", "WAVELENGTH", "LAMBDA", "WAVE_AIR", "WAVE_VAC")
FLUX_NAMES = ("FLUX", "FLUX_REDUCED", "FLUX_CAL")
ERROR_NAMES = ("ERR", "ERROR", "ERR_REDUCED", "FLUX_ERR", "ERR_FLUX", "SIGMA")
_STRUCTURAL = ("XTENSION", "BITPIX", "NAXIS", "PCOUNT", "GCOUNT", "TFIELDS", "TTYPE", "TFORM",
               "TUNIT", "TSCAL", "TZERO", "TDIM", "EXTNAME")  # the cards the layout needs
_STRING = re.compile(r"'((?:[^']|'')*)'")
_DTYPES = {"D": ">f8", "E": ">f4", "J": ">i4", "I": ">i2", "K": ">i8", "B": "u1"}


class Unreadable(Exception):
    """The file is not a spectrum any reader here understands; the message says why."""


class _NotSdp(Exception):
    """Not exactly the SDP layout: let a general reader try."""


@dataclass(frozen=True)
class Spectrum:
    """A spectrum as stored: its axis, flux and error with their units, and who read it."""

    wave: np.ndarray
    flux: np.ndarray
    error: np.ndarray | None
    wave_unit: str
    flux_unit: str
    reader: str


def read_spectrum(data: bytes, path: Path | None = None) -> Spectrum:
    """Read the spectrum in `data` (the file's bytes); Unreadable says why it cannot be."""
    if not data:
        raise Unreadable("empty file")
    try:
        return _read_sdp(data)
    except _NotSdp as first:
        reason = str(first)
    try:
        return _read_astropy(data)
    except Unreadable as exc:  # FITS, but no table astropy can place: specutils may
        reason = str(exc)
    except Exception as exc:  # astropy raises anything from OSError to IndexError on junk
        raise Unreadable(f"{reason}; astropy: {type(exc).__name__}: {exc}") from exc
    if path is not None:
        try:
            return _read_specutils(path)
        except Exception as exc:
            reason += f"; specutils neither: {str(exc).splitlines()[0][:200]}"
    raise Unreadable(reason)


# -- the SDP fast path -----------------------------------------------------------------------


def _headers(data: bytes) -> list[tuple[dict[str, Any], int]]:
    """Each HDU's cards (keyword -> value) and the offset of its data, walking the blocks."""
    out, pos = [], 0
    while pos < len(data):
        end = _find_end(data, pos)
        header = _cards(data[pos:end])
        start = pos + -(-(end - pos) // BLOCK) * BLOCK
        out.append((header, start))
        size = abs(header.get("BITPIX", 8)) // 8 * header.get("GCOUNT", 1) * (
            header.get("PCOUNT", 0) + _product(header))
        pos = start + -(-size // BLOCK) * BLOCK
    return out


def _cards(raw: bytes) -> dict[str, Any]:
    """Keyword -> value of a header's value cards (strings, numbers, logicals): astropy's
    `Header` parses each card on access at ~40 us a keyword, which was most of a read."""
    out: dict[str, Any] = {}
    text = raw.decode("ascii")
    for at in range(0, len(text) - 80, 80):
        if text[at + 8:at + 10] != "= " or not text.startswith(_STRUCTURAL, at):
            continue
        value = text[at + 10:at + 80].lstrip()
        if value.startswith("'"):
            found = _STRING.match(value)
            if not found:
                raise _NotSdp(f"malformed string card {text[at:at + 8].strip()}")
            out[text[at:at + 8].rstrip()] = found.group(1).replace("''", "'").rstrip()
            continue
        word = value.split("/", 1)[0].strip()
        out[text[at:at + 8].rstrip()] = _number(word)
    return out


def _number(word: str) -> Any:
    if word in ("T", "F"):
        return word == "T"
    try:
        return int(word)
    except ValueError:
        pass
    try:
        return float(word.replace("D", "E"))
    except ValueError:
        return word  # complex or odd values: kept as text, never needed here


def _find_end(data: bytes, pos: int) -> int:
    at = pos
    while True:
        at = data.find(_END, at)
        if at < 0:
            raise _NotSdp("no END card: not FITS, or truncated")
        if (at - pos) % 80 == 0:
            return at + 80
        at += 1


def _product(header: dict[str, Any]) -> int:
    naxis = header.get("NAXIS", 0)
    if not naxis:
        return 0
    n = 1
    for i in range(1, naxis + 1):
        n *= header.get(f"NAXIS{i}", 0)
    return n


def _read_sdp(data: bytes) -> Spectrum:
    try:
        hdus = _headers(data)
    except (ValueError, UnicodeDecodeError, TypeError) as exc:
        raise _NotSdp(f"not FITS: {exc}") from exc
    for header, start in hdus[1:]:
        if header.get("XTENSION") != "BINTABLE" or header.get("NAXIS2") != 1:
            continue
        cols = _columns(header)
        wave, flux = _pick(cols, WAVE_NAMES), _pick(cols, FLUX_NAMES)
        if wave is None or flux is None:
            continue
        error = _pick(cols, ERROR_NAMES)
        row = header["NAXIS1"]
        if start + row > len(data):
            raise Unreadable(f"truncated: {len(data):,} bytes, the spectrum's table needs "
                             f"{start + row:,}")
        arrays = {k: _array(data, start, cols[k]) for k in (wave, flux, error) if k}
        return Spectrum(arrays[wave], arrays[flux], arrays.get(error or ""),
                        cols[wave]["unit"] or "Angstrom", cols[flux]["unit"], "sdp")
    raise _NotSdp("no one-row binary table with wavelength and flux columns")


def _columns(header: dict[str, Any]) -> dict[str, dict]:
    cols, offset = {}, 0
    for i in range(1, header.get("TFIELDS", 0) + 1):
        form = str(header.get(f"TFORM{i}", "")).strip()
        code = form.lstrip("0123456789")
        repeat = int(form[:len(form) - len(code)] or 1)
        if code[:1] not in _DTYPES or len(code) != 1:
            raise _NotSdp(f"column format {form} is not modelled here")
        name = str(header.get(f"TTYPE{i}", "")).strip().upper()
        if any(f"{k}{i}" in header for k in ("TSCAL", "TZERO", "TDIM")):
            raise _NotSdp(f"column {name} is scaled or shaped")
        cols[name] = {"offset": offset, "repeat": repeat, "dtype": _DTYPES[code],
                      "unit": str(header.get(f"TUNIT{i}", "")).strip()}
        offset += repeat * np.dtype(_DTYPES[code]).itemsize
    if offset != header.get("NAXIS1"):
        raise _NotSdp("column widths do not add up to the row")
    return cols


def _pick(cols: dict[str, dict], names: tuple[str, ...]) -> str | None:
    return next((n for n in names if n in cols), None)


def _array(data: bytes, start: int, col: dict) -> np.ndarray:
    return np.frombuffer(data, col["dtype"], col["repeat"], start + col["offset"]).astype(
        np.float64)


# -- general readers -----------------------------------------------------------------------


def _read_astropy(data: bytes) -> Spectrum:
    """A table of arrays (any row count 1) or of one pixel per row, found by column names."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with fits.open(io.BytesIO(data), memmap=False) as hdul:
            hdul.verify("exception")
            for hdu in hdul:
                if not isinstance(hdu, fits.BinTableHDU | fits.TableHDU):
                    continue
                names = {n.upper(): n for n in hdu.columns.names}
                wave, flux = _pick(names, WAVE_NAMES), _pick(names, FLUX_NAMES)  # type: ignore[arg-type]
                if wave is None or flux is None:
                    continue
                error = _pick(names, ERROR_NAMES)  # type: ignore[arg-type]
                arrays = {k: np.asarray(hdu.data[names[k]], np.float64).ravel()
                          for k in (wave, flux, error) if k}
                units = {k: hdu.columns[names[k]].unit or "" for k in (wave, flux)}
                return Spectrum(arrays[wave], arrays[flux], arrays.get(error or ""),
                                units[wave] or "Angstrom", units[flux], "astropy")
    raise Unreadable("no table with wavelength and flux columns "
                     f"(looked for {'/'.join(WAVE_NAMES)} and {'/'.join(FLUX_NAMES)})")


def _read_specutils(path: Path) -> Spectrum:
    """Whatever specutils' registered loaders can read (1-D only)."""
    import specutils  # heavy, optional: only for layouts the readers above do not place

    cls = getattr(specutils, "Spectrum", None) or specutils.Spectrum1D
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spec = cls.read(str(path))
    if spec.flux.ndim != 1:
        raise Unreadable(f"specutils reads a {spec.flux.ndim}-D spectrum; 1-D needed")
    err = None
    if spec.uncertainty is not None:
        err = np.asarray(spec.uncertainty.represent_as(
            specutils.manipulation.StdDevUncertainty).array, np.float64)  # type: ignore[attr-defined]
    return Spectrum(np.asarray(spec.spectral_axis.value, np.float64),
                    np.asarray(spec.flux.value, np.float64), err,
                    spec.spectral_axis.unit.to_string(), spec.flux.unit.to_string(), "specutils")
