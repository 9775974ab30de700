"""An .npz whose arrays are written in place, row block by row block, with no second copy.

The rows of flux, error and mask arrive together, but a zip holds its entries one after the
other, and an .npy header names the row count, known only at the end. So the zip is laid out
for the largest possible row count (the spectra selected), each block goes with `os.pwrite`
to its final offset, each array's CRC-32 is kept as the rows pass, and `close` writes the
local headers, .npy headers (fixed 128 bytes) and the central directory (zip64, dated
1980-01-01) around the data. Room left by rejected spectra stays a hole in a sparse file, which
zip readers skip (they follow the central directory). The entry CRCs join the header's CRC to
the rows' with zlib's crc32_combine, done here in Python (a 32x32 GF(2) matrix power).
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np

NPY_HEADER = 128
_LOCAL = struct.Struct("<4s2B4HL2L2H")
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")
_DOS_DATE = (0 << 9) | (1 << 5) | 1  # 1980-01-01, the earliest a zip can say
_FULL = 0xFFFFFFFF


def npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """A version 1.0 .npy header of exactly NPY_HEADER bytes."""
    text = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                 "shape": shape})
    room = NPY_HEADER - 10
    if len(text) + 1 > room:
        raise ValueError(f"shape {shape} does not fit a {NPY_HEADER}-byte .npy header")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", room) + (text.ljust(room - 1) + "\n").encode()


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC-32 of A+B from crc(A), crc(B) and len(B) (zlib's crc32_combine)."""
    if len2 <= 0:
        return crc1
    odd = [0xEDB88320] + [1 << n for n in range(31)]  # one zero bit
    even = _square(odd)  # two zero bits
    odd = _square(even)  # four
    while True:
        even = _square(odd)
        if len2 & 1:
            crc1 = _times(even, crc1)
        len2 >>= 1
        if not len2:
            break
        odd = _square(even)
        if len2 & 1:
            crc1 = _times(odd, crc1)
        len2 >>= 1
        if not len2:
            break
    return crc1 ^ crc2


def _times(matrix: list[int], vector: int) -> int:
    out, i = 0, 0
    while vector:
        if vector & 1:
            out ^= matrix[i]
        vector >>= 1
        i += 1
    return out


def _square(matrix: list[int]) -> list[int]:
    return [_times(matrix, row) for row in matrix]


class InPlaceNpz:
    """Rows appended to named 2-D arrays of `width` columns, at most `max_rows` rows."""

    def __init__(self, path: Path, arrays: dict[str, np.dtype], width: int,
                 max_rows: int) -> None:
        self.path, self.width, self.rows = path, width, 0
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self.entries: list[tuple[str, np.dtype, int]] = []  # name, dtype, local header at
        self.crc: dict[str, int] = {}
        at = 0
        for name, dtype in arrays.items():
            self.entries.append((name, dtype, at))
            self.crc[name] = 0
            at = self._data_at(name, at) + max_rows * width * dtype.itemsize
        self.end = at  # where the entries written at close begin

    @staticmethod
    def _data_at(name: str, local_at: int) -> int:
        return local_at + _LOCAL.size + len(f"{name}.npy") + 20 + NPY_HEADER

    def append(self, arrays: dict[str, np.ndarray]) -> None:
        """The next rows of every array (the same count in each)."""
        count = 0
        for name, dtype, local_at in self.entries:
            array = np.ascontiguousarray(arrays[name], dtype)
            count, data = len(array), memoryview(array.data).cast("B")
            row_bytes = self.width * dtype.itemsize
            os.pwrite(self.fd, data, self._data_at(name, local_at) + self.rows * row_bytes)
            self.crc[name] = zlib.crc32(data, self.crc[name])
        self.rows += count

    def close(self, extra: dict[str, np.ndarray]) -> None:
        """Write the headers, the small `extra` arrays and the central directory."""
        central, at = [], self.end
        for name, dtype, local_at in self.entries:
            header = npy_header(dtype, (self.rows, self.width))
            size = self.rows * self.width * dtype.itemsize
            crc = crc32_combine(zlib.crc32(header), self.crc[name], size)
            local = self._local(name, crc, len(header) + size)
            os.pwrite(self.fd, local + header, local_at)
            central.append(self._central(name, crc, len(header) + size, local_at))
        for name, array in extra.items():
            body = npy_header(array.dtype, array.shape) + np.ascontiguousarray(array).tobytes()
            crc = zlib.crc32(body)
            local = self._local(name, crc, len(body))
            os.pwrite(self.fd, local + body, at)
            central.append(self._central(name, crc, len(body), at))
            at += len(local) + len(body)
        directory = b"".join(central)
        tail = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, len(central),
                           len(central), len(directory), at)
        tail += struct.pack("<4sLQL", b"PK\x06\x07", 0, at + len(directory), 1)
        tail += struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(central), len(central),
                            _FULL, _FULL, 0)
        os.pwrite(self.fd, directory + tail, at)
        os.ftruncate(self.fd, at + len(directory) + len(tail))
        os.close(self.fd)

    def abort(self) -> None:
        os.close(self.fd)
        self.path.unlink(missing_ok=True)

    @staticmethod
    def _local(name: str, crc: int, size: int) -> bytes:
        raw = f"{name}.npy".encode()
        return (_LOCAL.pack(b"PK\x03\x04", 45, 0, 0, 0, 0, _DOS_DATE, crc, _FULL, _FULL,
                            len(raw), 20) + raw + struct.pack("<HHQQ", 1, 16, size, size))

    @staticmethod
    def _central(name: str, crc: int, size: int, offset: int) -> bytes:
        raw = f"{name}.npy".encode()
        return (_CENTRAL.pack(b"PK\x01\x02", 45, 0, 45, 0, 0, 0, 0, _DOS_DATE, crc, _FULL,
                              _FULL, len(raw), 28, 0, 0, 0, 0, _FULL)
                + raw + struct.pack("<HHQQQ", 1, 24, size, size, offset))
