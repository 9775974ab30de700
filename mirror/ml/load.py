"""Reading an export back: `load_spectra(DIR)` and a small iterable dataset (PyTorch-ready)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow.parquet as pq

from mirror.errors import ExportError
from mirror.ml.arrays import ARRAYS, NAMES
from mirror.ml.manifest import MANIFEST, read_json


class Spectra(NamedTuple):
    """An exported set: rows of flux, error, mask (True: no valid value) on `wavelength`,
    and the manifest (pandas) whose row i describes array row i."""

    flux: np.ndarray
    error: np.ndarray
    mask: np.ndarray
    wavelength: np.ndarray
    manifest: Any


def load_spectra(folder: str | os.PathLike[str]) -> Spectra:
    """The arrays and manifest of a `mirror export spectra` folder, whatever its format."""
    reader = ArrayReader(Path(folder))
    flux, error, mask = reader.read(0, reader.rows)
    return Spectra(flux, error, mask, reader.wavelength, load_manifest(folder))


def load_manifest(folder: str | os.PathLike[str]) -> Any:
    """manifest.parquet as a pandas DataFrame."""
    return pq.read_table(Path(folder) / MANIFEST).to_pandas()


class ArrayReader:
    """Row blocks of an export's arrays, read without loading the rest."""

    def __init__(self, folder: Path) -> None:
        meta = read_json(folder)
        if meta.get("kind") != "spectra":
            raise ExportError(f"{folder} holds a {meta.get('kind')} export, not spectra")
        self.fmt = meta["arguments"]["format"]
        self.path = folder / NAMES[self.fmt]
        self.rows = int(meta["exported"])
        self._open()

    def _open(self) -> None:
        if self.fmt == "parquet":
            self._pq = pq.ParquetFile(self.path)
            raw = self._pq.schema_arrow.metadata[b"wavelength"]
            self.wavelength = np.frombuffer(raw, "<f8").copy()
        elif self.fmt == "npz":
            self._npz = np.load(self.path)
            self.wavelength = self._npz["wavelength"]
        elif self.fmt == "hdf5":
            import h5py

            self._h5 = h5py.File(self.path, "r")
            self.wavelength = self._h5["wavelength"][:]
        else:
            import zarr

            self._zarr = zarr.open_group(str(self.path), mode="r")
            self.wavelength = np.asarray(self._zarr["wavelength"][:])  # type: ignore[index]

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows start..stop-1 of flux, error and mask."""
        n = self.wavelength.size
        if self.fmt == "parquet":
            table = self._parquet_rows(start, stop)
            return tuple(  # type: ignore[return-value]
                table.column(k).combine_chunks().values.to_numpy(zero_copy_only=False)
                .reshape(-1, n) if table.num_rows else np.empty((0, n)) for k in ARRAYS)
        source: Any = {"npz": getattr(self, "_npz", None), "hdf5": getattr(self, "_h5", None),
                       "zarr": getattr(self, "_zarr", None)}[self.fmt]
        return tuple(np.asarray(source[k][start:stop]) for k in ARRAYS)  # type: ignore[return-value]

    def _parquet_rows(self, start: int, stop: int) -> Any:
        import pyarrow as pa

        groups, first, at = [], None, 0
        for g in range(self._pq.num_row_groups):
            size = self._pq.metadata.row_group(g).num_rows
            if at + size > start and at < stop:
                groups.append(g)
                first = at if first is None else first
            at += size
        if not groups:
            return pa.table({k: [] for k in ARRAYS})
        table = self._pq.read_row_groups(groups)
        return table.slice(start - (first or 0), stop - start)

    def blocks(self, size: int) -> Iterator[tuple[int, tuple[np.ndarray, ...]]]:
        """(first row, arrays) for consecutive blocks of `size` rows."""
        for start in range(0, self.rows, size):
            yield start, self.read(start, min(self.rows, start + size))


class SpectraDataset:
    """Iterates (flux, error, mask, row) per spectrum, reading `block` rows at a time; under
    a PyTorch DataLoader with workers each worker takes every n-th block."""

    def __init__(self, folder: str | os.PathLike[str], block: int = 256) -> None:
        self.folder, self.block = Path(folder), block
        self.rows = ArrayReader(self.folder).rows

    def __len__(self) -> int:
        return self.rows

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
        worker, workers = _torch_worker()
        reader = ArrayReader(self.folder)
        for i, (start, (flux, error, mask)) in enumerate(reader.blocks(self.block)):
            if i % workers != worker:
                continue
            for j in range(len(flux)):
                yield flux[j], error[j], mask[j], start + j


def _torch_worker() -> tuple[int, int]:
    try:
        from torch.utils.data import get_worker_info
    except ImportError:
        return 0, 1
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def torch_dataset(folder: str | os.PathLike[str], block: int = 256) -> Any:
    """A `torch.utils.data.IterableDataset` of (flux, error, mask, row) tensors; masked
    pixels of flux and error are NaN. Needs torch (imported here, not before)."""
    try:
        import torch
        from torch.utils.data import IterableDataset
    except ImportError as exc:
        raise ExportError("PyTorch is not installed",
                          "pip install torch, or iterate mirror.ml.SpectraDataset "
                          "(numpy arrays)") from exc

    class _Torch(IterableDataset):  # type: ignore[misc,type-arg]
        def __init__(self) -> None:
            self.inner = SpectraDataset(folder, block)

        def __len__(self) -> int:
            return len(self.inner)

        def __iter__(self) -> Iterator[tuple[Any, Any, Any, int]]:
            for flux, error, mask, row in self.inner:
                yield (torch.from_numpy(np.array(flux)), torch.from_numpy(np.array(error)),
                       torch.from_numpy(np.array(mask)), row)

    return _Torch()
