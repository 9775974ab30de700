"""Chunked (spectra x pixels) arrays of flux, error and mask, written row block by row block.

Four containers: NumPy .npz (written in place, mirror.ml.npz), Parquet (fixed-size list
columns, one row group per block), HDF5 and Zarr. Each file is written under a temporary name
and renamed when complete, and nothing in it depends on the clock or the machine: the same
rows give the same bytes (deterministic codecs, no timestamps: HDF5 with `track_times=False`,
zip entries dated 1980).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mirror.ml.npz import InPlaceNpz

FORMATS = ("npz", "parquet", "hdf5", "zarr")  # npz first: the cheapest for the one writer
NAMES = {"parquet": "spectra.parquet", "npz": "spectra.npz", "hdf5": "spectra.h5",
         "zarr": "spectra.zarr"}
ARRAYS = ("flux", "error", "mask")
DTYPES = {"flux": np.dtype("<f4"), "error": np.dtype("<f4"), "mask": np.dtype("bool")}


class ArrayWriter(Protocol):
    blocked: bool  # rows must arrive in blocks of chunk_rows (the file's layout follows them)

    def append(self, flux: np.ndarray, error: np.ndarray, mask: np.ndarray) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


def open_writer(fmt: str, folder: Path, wavelength: np.ndarray, chunk_rows: int,
                max_rows: int) -> ArrayWriter:
    """A writer of `fmt` for at most `max_rows` rows of len(wavelength) pixels, in blocks of
    `chunk_rows`."""
    target = folder / NAMES[fmt]
    if fmt == "npz":
        return _Npz(target, wavelength, chunk_rows, max_rows)
    writers: dict[str, type[ArrayWriter]] = {"parquet": _Parquet, "hdf5": _Hdf5, "zarr": _Zarr}
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
    """Each block goes straight to its place in the final .npz (see mirror.ml.npz): written
    once, memory one block however many rows."""

    blocked = False  # a byte stream: any blocking gives the same file

    def __init__(self, target: Path, wavelength: np.ndarray, chunk_rows: int,
                 max_rows: int) -> None:
        self.target, self.tmp, self.wavelength = target, _partial(target), wavelength
        self.npz = InPlaceNpz(self.tmp, DTYPES, wavelength.size, max_rows)

    def append(self, flux: np.ndarray, error: np.ndarray, mask: np.ndarray) -> None:
        self.npz.append({"flux": flux, "error": error, "mask": mask})

    def close(self) -> None:
        self.npz.close({"wavelength": self.wavelength.astype("<f8")})
        _replace(self.tmp, self.target)

    def abort(self) -> None:
        self.npz.abort()


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
