"""Chunked (spectra x pixels) arrays of flux, error and mask, written row block by row block.

Four containers: Parquet (fixed-size list columns, one row group per block), NumPy .npz,
HDF5 and Zarr. Each file is written under a temporary name and renamed when complete, and
nothing in it depends on the clock or the machine: the same rows give the same bytes
(deterministic codecs, no timestamps: HDF5 with `track_times=False`, zip entries dated 1980).
"""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FORMATS = ("npz", "parquet", "hdf5", "zarr")  # npz first: the cheapest for the one writer
NAMES = {"parquet": "spectra.parquet", "npz": "spectra.npz", "hdf5": "spectra.h5",
         "zarr": "spectra.zarr"}
ARRAYS = ("flux", "error", "mask")
DTYPES = {"flux": np.dtype("<f4"), "error": np.dtype("<f4"), "mask": np.dtype("bool")}
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


class ArrayWriter(Protocol):
    blocked: bool  # rows must arrive in blocks of chunk_rows (the file's layout follows them)

    def append(self, flux: np.ndarray, error: np.ndarray, mask: np.ndarray) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


def open_writer(fmt: str, folder: Path, wavelength: np.ndarray, chunk_rows: int
                ) -> ArrayWriter:
    """A writer of `fmt` for rows of len(wavelength) pixels, in blocks of `chunk_rows`."""
    target = folder / NAMES[fmt]
    writers: dict[str, type[ArrayWriter]] = {"parquet": _Parquet, "npz": _Npz,
                                             "hdf5": _Hdf5, "zarr": _Zarr}
    return writers[fmt](target, wavelength, chunk_rows)  # type: ignore[call-arg]


def _partial(target: Path) -> Path:
    return target.with_name(f".{target.name}.partial")


def _replace(tmp: Path, target: Path) -> None:
    """Put `tmp` in place of `target` (a file or a folder)."""
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    os.replace(tmp, target)


def remove(path: Path) -> None:
    """Delete a file or a folder (Zarr), if there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


class _Parquet:
    """flux, error: fixed_size_list<float32>; mask: fixed_size_list<bool>; the wavelength
    grid in the schema metadata (float64 little-endian bytes)."""
    blocked = True

    def __init__(self, target: Path, wavelength: np.ndarray, chunk_rows: int) -> None:
        self.target, self.tmp, self.n = target, _partial(target), wavelength.size
        fields = [pa.field(name, pa.list_(pa.bool_() if name == "mask" else pa.float32(),
                                          self.n), nullable=False) for name in ARRAYS]
        meta = {b"wavelength": wavelength.astype("<f8").tobytes()}
        self.schema = pa.schema(fields, metadata=meta)
        # zstd level 1: the masks shrink ~100x, noisy floats ~20%, at half level 3's cost
        self.writer = pq.ParquetWriter(self.tmp, self.schema, compression="zstd",
                                       compression_level=1, write_statistics=False,
                                       use_dictionary=False)

    def append(self, flux: np.ndarray, error: np.ndarray, mask: np.ndarray) -> None:
        arrays = [pa.FixedSizeListArray.from_arrays(pa.array(a.ravel()), self.n)
                  for a in (flux, error, mask)]
        self.writer.write_batch(pa.record_batch(arrays, schema=self.schema),
                                row_group_size=len(flux))

    def close(self) -> None:
        self.writer.close()
        _replace(self.tmp, self.target)

    def abort(self) -> None:
        self.writer.close()
        remove(self.tmp)


class _Npz:
    """Rows go to one raw temp file per array; close writes the .npy entries into the zip,
    streamed, with a fixed date, so memory stays one block however many rows."""
    blocked = False  # a byte stream: any blocking gives the same file

    def __init__(self, target: Path, wavelength: np.ndarray, chunk_rows: int) -> None:
        self.target, self.wavelength, self.rows = target, wavelength, 0
        self.raw = {name: _partial(target.with_name(f"{target.name}.{name}"))
                    for name in ARRAYS}
        self.files = {name: open(path, "wb") for name, path in self.raw.items()}  # noqa: SIM115

    def append(self, flux: np.ndarray, error: np.ndarray, mask: np.ndarray) -> None:
        for name, a in zip(ARRAYS, (flux, error, mask), strict=True):
            self.files[name].write(np.ascontiguousarray(a, DTYPES[name]).tobytes())
        self.rows += len(flux)

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        tmp = _partial(self.target)
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name in ARRAYS:
                shape = (self.rows, self.wavelength.size)
                with open(self.raw[name], "rb") as src:
                    self._entry(zf, name, DTYPES[name], shape, src)
            self._entry(zf, "wavelength", np.dtype("<f8"), self.wavelength.shape,
                        None, self.wavelength.astype("<f8").tobytes())
        _replace(tmp, self.target)
        for path in self.raw.values():
            path.unlink()

    @staticmethod
    def _entry(zf: zipfile.ZipFile, name: str, dtype: np.dtype, shape: tuple[int, ...],
               src: Any, data: bytes | None = None) -> None:
        info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
        info.compress_type = zipfile.ZIP_STORED
        with zf.open(info, "w", force_zip64=True) as out:
            np.lib.format.write_array_header_1_0(
                out, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                      "shape": shape})
            if data is not None:
                out.write(data)
            else:
                shutil.copyfileobj(src, out, 1 << 22)

    def abort(self) -> None:
        for f in self.files.values():
            f.close()
        for path in self.raw.values():
            path.unlink(missing_ok=True)


class _Hdf5:
    """Datasets flux/error/mask chunked (block, pixels); the mask gzip-compressed (noisy
    floats gain ~10% from gzip at 5x the writing time)."""
    blocked = True

    def __init__(self, target: Path, wavelength: np.ndarray, chunk_rows: int) -> None:
        import h5py  # optional dependency, needed for this format only

        self.target, self.tmp, self.rows = target, _partial(target), 0
        self.file = h5py.File(self.tmp, "w", libver="earliest", track_order=False)
        n = wavelength.size
        self.sets = {name: self.file.create_dataset(
            name, shape=(0, n), maxshape=(None, n), dtype=DTYPES[name],
            chunks=(max(1, min(chunk_rows, 1024)), n), track_times=False,
            **({"compression": "gzip", "compression_opts": 1} if name == "mask" else {}))
            for name in ARRAYS}
        self.file.create_dataset("wavelength", data=wavelength.astype("<f8"),
                                 track_times=False)

    def append(self, flux: np.ndarray, error: np.ndarray, mask: np.ndarray) -> None:
        k = len(flux)
        for name, a in zip(ARRAYS, (flux, error, mask), strict=True):
            ds = self.sets[name]
            ds.resize(self.rows + k, axis=0)
            ds[self.rows:self.rows + k] = a
        self.rows += k

    def close(self) -> None:
        self.file.close()
        _replace(self.tmp, self.target)

    def abort(self) -> None:
        self.file.close()
        remove(self.tmp)


class _Zarr:
    """A Zarr v3 group with arrays flux/error/mask chunked (block, pixels); the mask zstd."""
    blocked = True

    def __init__(self, target: Path, wavelength: np.ndarray, chunk_rows: int) -> None:
        import zarr  # optional dependency, needed for this format only

        self.target, self.tmp, self.rows = target, _partial(target), 0
        remove(self.tmp)
        group = zarr.open_group(str(self.tmp), mode="w")
        n = wavelength.size
        self.arrays = {name: group.create_array(
            name, shape=(0, n), chunks=(chunk_rows, n), dtype=DTYPES[name],
            compressors="auto" if name == "mask" else None) for name in ARRAYS}
        group.create_array("wavelength", data=wavelength.astype("<f8"))

    def append(self, flux: np.ndarray, error: np.ndarray, mask: np.ndarray) -> None:
        k = len(flux)
        for name, a in zip(ARRAYS, (flux, error, mask), strict=True):
            arr = self.arrays[name]
            arr.resize((self.rows + k, arr.shape[1]))
            arr[self.rows:self.rows + k] = a
        self.rows += k

    def close(self) -> None:
        _replace(self.tmp, self.target)

    def abort(self) -> None:
        remove(self.tmp)


class NpyWriter:
    """One .npy array grown block by block along its first axis: rows go to a temp file and
    the header (whose shape needs the final row count) is written when it closes."""

    def __init__(self, target: Path, row_shape: tuple[int, ...], dtype: str) -> None:
        self.target, self.row_shape, self.dtype = target, row_shape, np.dtype(dtype)
        self.raw, self.rows = _partial(target.with_name(target.name + ".rows")), 0
        self.file = open(self.raw, "wb")  # noqa: SIM115

    def append(self, rows: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(rows, self.dtype).tobytes())
        self.rows += len(rows)

    def close(self) -> None:
        self.file.close()
        tmp = _partial(self.target)
        with open(tmp, "wb") as out, open(self.raw, "rb") as src:
            np.lib.format.write_array_header_1_0(
                out, {"descr": np.lib.format.dtype_to_descr(self.dtype),
                      "fortran_order": False, "shape": (self.rows, *self.row_shape)})
            shutil.copyfileobj(src, out, 1 << 22)
        _replace(tmp, self.target)
        self.raw.unlink()

    def abort(self) -> None:
        self.file.close()
        self.raw.unlink(missing_ok=True)
