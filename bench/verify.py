"""Benchmark: verifying FITS products, the fast bytes-only check against astropy's, in one run.

Writes N FITS files of ~100 KB with CHECKSUM/DATASUM (ESO SDP-like: a primary header with
HIERARCH cards and a one-row BINTABLE of WAVE/FLUX/ERR arrays, every other file an image), then
verifies each with `verify_file` twice: once as shipped (fast path) and once with the fast path
switched off (astropy's `fits.open(..., checksum=True)`, what verify_file did before). Printed:
microseconds per file for both, their ratio, and the fast check alone on bytes in memory.

    python bench/verify.py               # 2,000 files
    python bench/verify.py --files 200   # a smoke check
"""

from __future__ import annotations

import argparse
import hashlib
import io
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mirror.store import fitscheck, verify

TARGET_US = 200.0  # fast path, per 100 KB file
DISTINCT = 50  # distinct products written by astropy; the rest are copies under other names


def make_product(seed: int) -> bytes:
    """One ~100 KB FITS file with checksums: a spectrum (even seeds) or an image (odd)."""
    from astropy.io import fits

    rng = np.random.default_rng(seed)
    primary = fits.PrimaryHDU()
    for i in range(60):
        primary.header[f"HIERARCH ESO QC CCD{i} RON"] = float(rng.random())
    if seed % 2:
        hdus = [fits.PrimaryHDU(rng.random((160, 160)).astype("float32"),
                                header=primary.header)]
    else:
        n = 6000
        cols = [fits.Column(name="WAVE", format=f"{n}D", array=[np.linspace(3800, 6900, n)]),
                fits.Column(name="FLUX", format=f"{n}E", array=[rng.random(n)]),
                fits.Column(name="ERR", format=f"{n}E", array=[rng.random(n)])]
        hdus = [primary, fits.BinTableHDU.from_columns(cols, name="SPECTRUM")]
    out = io.BytesIO()
    fits.HDUList(hdus).writeto(out, checksum=True)
    return out.getvalue()


def per_file_us(paths: list[Path], check: Callable[[Path], object]) -> float:
    start = time.perf_counter()
    for path in paths:
        check(path)
    return (time.perf_counter() - start) / len(paths) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    args = parser.parse_args()
    products = [make_product(seed) for seed in range(min(DISTINCT, args.files))]
    with tempfile.TemporaryDirectory() as tmp:
        paths, digests = [], {}
        for i in range(args.files):
            path = Path(tmp) / f"product{i:05d}.fits"
            data = products[i % len(products)]
            path.write_bytes(data)
            paths.append(path)
            digests[path] = hashlib.sha256(data).hexdigest()  # the fetcher hashes as it writes

        def shipped(path: Path) -> None:
            v = verify.verify_file(path, access_format="application/fits", sha256=digests[path])
            assert v.ok and "verified" in v.reason, v

        def astropy_only(path: Path) -> None:
            saved = verify._check_fits_fast
            verify._check_fits_fast = lambda path, size: None  # type: ignore[assignment]
            try:
                shipped(path)
            finally:
                verify._check_fits_fast = saved

        for warm_up in (shipped, astropy_only):  # imports and caches out of the timing
            warm_up(paths[0])
        fast = per_file_us(paths, shipped)
        slow = per_file_us(paths, astropy_only)
        in_memory = [products[i % len(products)] for i in range(args.files)]
        start = time.perf_counter()
        for data in in_memory:
            assert fitscheck.check_fits(data).ok  # type: ignore[union-attr]
        core = (time.perf_counter() - start) / len(in_memory) * 1e6
    size = sum(map(len, products)) / len(products) / 1024
    print(f"{args.files} FITS files of {size:.0f} KiB with CHECKSUM/DATASUM")
    print(f"  astropy path (fits.open, checksum=True): {slow:9.0f} us/file")
    print(f"  fast path (verify_file as shipped):      {fast:9.0f} us/file "
          f"({slow / fast:.0f}x faster; target < {TARGET_US:.0f} us)")
    print(f"  fitscheck.check_fits on bytes in memory: {core:9.0f} us/file")


if __name__ == "__main__":
    main()
