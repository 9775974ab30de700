"""Benchmark: `mirror export spectra` against a plain loop over the same files, in one run.

Syncs the local DaCHS upstream (127.0.0.1:8080, `tests/upstream/start.sh`) into a temporary
mirror, fetches its HARPS spectra, and replicates them inside that temporary mirror (file copies
under new names, catalogue rows with new DIDs) up to --spectra. Then, each in its own process:

- mirror: `mirror export spectra` (ADQL selection, sha256 check, flux-conserving resampling of
  flux and error, masks, Parquet), with its default pool (one worker per core);
- plain: for each file, astropy `fits.open`, `np.interp` of flux and error onto the grid,
  `np.save` of one .npy per spectrum; what a first script does.

Printed: spectra per second of both, their ratio (target >= 2x on 2 cores), and the peak RSS
of each process tree (the CLI with its workers; /proc polled every 20 ms).

    python bench/export.py                       # 2,000 spectra, grid 3800:6900:0.5
    python bench/export.py --grid 3800:6900:0.05 # the issue's example grid, 62,001 pixels
    python bench/export.py --spectra 300         # a smoke check
    python bench/export.py --format parquet      # mirror writes Parquet (zstd) instead of npz
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import duckdb
import numpy as np

UPSTREAM = "http://127.0.0.1:8080/tap"
TARGET = 2.0


def build_mirror(tmp: Path, spectra: int) -> Path:
    """A mirror holding `spectra` stored HARPS spectra (fetched ones, then copies)."""
    from mirror import Mirror

    cfg = tmp / "mirror.toml"
    cfg.write_text(f'[catalogue]\npath = "m.duckdb"\n[store]\nroot = "store"\n[[source]]\n'
                   f'name = "dachs"\nurl = "{UPSTREAM}"\n'
                   "fetch_where = \"obs_collection = 'HARPS'\"\n")
    with Mirror.open(cfg) as m:
        m.sync()
        m.fetch()
    con = duckdb.connect(str(tmp / "m.duckdb"))
    try:
        stored = con.execute("SELECT product_id, path FROM products WHERE state = 'done' "
                             "ORDER BY product_id").fetchall()
        copy = 0
        while con.execute("SELECT count(*) FROM products WHERE state = 'done'"
                          ).fetchone()[0] < spectra:
            copy += 1
            need = spectra - con.execute("SELECT count(*) FROM products WHERE state = 'done'"
                                         ).fetchone()[0]
            batch = stored[:need]
            for _, path in batch:
                src = tmp / "store" / path
                shutil.copyfile(src, src.with_name(f"{src.stem}.copy{copy}.fits"))
            ids = [pid for pid, _ in batch]
            con.execute("CREATE OR REPLACE TEMP TABLE pick AS SELECT unnest(?) AS id", [ids])
            con.execute(f"INSERT INTO obscore_dachs SELECT * REPLACE (obs_publisher_did || "
                        f"'/copy{copy}' AS obs_publisher_did) FROM obscore_dachs "
                        "WHERE obs_publisher_did IN (SELECT id FROM pick)")
            con.execute(f"INSERT INTO products SELECT * REPLACE (product_id || '/copy{copy}' "
                        f"AS product_id, replace(path, '.fits', '.copy{copy}.fits') AS path) "
                        "FROM products WHERE product_id IN (SELECT id FROM pick)")
    finally:
        con.close()
    return cfg


def stored(tmp: Path) -> list[tuple[str, Path]]:
    """(DID, file) of every stored spectrum, in the order an export writes them."""
    con = duckdb.connect(str(tmp / "m.duckdb"), read_only=True)
    try:
        rows = con.execute("SELECT product_id, path FROM products WHERE state = 'done' "
                           "ORDER BY product_id").fetchall()
    finally:
        con.close()
    return [(did, tmp / "store" / path) for did, path in rows]


def tree_rss_mb(pid: int) -> float:
    """Proportional resident memory (PSS: pages shared by forked workers counted once) of a
    process and all its descendants, MB."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total / 1024


def measured(cmd: list[str]) -> tuple[float, float, str]:
    """(seconds, peak RSS of the process tree in MB, stdout) of one command."""
    peak = [0.0]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)

    def poll() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_rss_mb(proc.pid))
            time.sleep(0.02)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    out, _ = proc.communicate()
    seconds = time.perf_counter() - start
    watcher.join()
    if proc.returncode:
        raise SystemExit(f"{cmd[:4]} failed with exit code {proc.returncode}")
    return seconds, peak[0], out


def plain(paths_file: str, grid: str, out: str) -> None:
    """The peer: astropy open + np.interp + np.save, one file at a time."""
    from astropy.io import fits

    start, stop, step = (float(v) for v in grid.split(":"))
    centres = start + step * np.arange(int(round((stop - start) / step)) + 1)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    for i, line in enumerate(Path(paths_file).read_text().splitlines()):
        with fits.open(line) as h:
            row = h[1].data[0]
            wave, flux, err = row["WAVE"], row["FLUX"], row["ERR"]
            resampled = np.stack([np.interp(centres, wave, flux, left=np.nan, right=np.nan),
                                  np.interp(centres, wave, err, left=np.nan, right=np.nan)])
        np.save(folder / f"{i:07d}.npy", resampled.astype(np.float32))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spectra", type=int, default=2000)
    parser.add_argument("--grid", default="3800:6900:0.5")
    parser.add_argument("--format", default="npz", choices=("npz", "parquet", "hdf5", "zarr"),
                        help="mirror's output format (the plain loop writes .npy files)")
    parser.add_argument("--child", nargs=3, metavar=("PATHS", "GRID", "OUT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        plain(*args.child)
        return
    with tempfile.TemporaryDirectory(prefix="bench-export-") as name:
        tmp = Path(name)
        cfg = build_mirror(tmp, args.spectra)
        files = stored(tmp)
        os.sync()
        sizes = sorted({max(1, len(files) // 4), len(files)})
        runs: dict[tuple[str, int], tuple[float, float]] = {}
        for n in sizes:
            for label in ("mirror", "plain"):
                runs[label, n] = run(label, files[:n], cfg, args.grid, tmp / f"{label}{n}",
                                     args.format)
        report(runs, sizes, args.grid, args.format)


def run(label: str, files: list[tuple[str, Path]], cfg: Path, grid: str,
        out: Path, fmt: str = "npz") -> tuple[float, float]:
    """(seconds, peak PSS MB) of one export of `files`, each side in its own process."""
    if label == "plain":
        listing = out.with_suffix(".txt")
        listing.write_text("".join(f"{path}\n" for _, path in files))
        cmd = [sys.executable, __file__, "--child", str(listing), grid, str(out)]
    else:
        where = f"dataproduct_type = 'spectrum' AND obs_publisher_did <= '{files[-1][0]}'"
        cmd = [sys.executable, "-m", "mirror.cli", "--config", str(cfg), "--json", "export",
               "spectra", "--where", where, "--grid", grid, "--format", fmt, "--out", str(out)]
    seconds, rss, printed = measured(cmd)
    if label == "mirror":
        exported = json.loads(printed)["exported"]
        assert exported == len(files), (exported, len(files))
    shutil.rmtree(out)
    return seconds, rss


def report(runs: dict[tuple[str, int], tuple[float, float]], sizes: list[int],
           grid: str, fmt: str) -> None:
    start, stop, step = (float(v) for v in grid.split(":"))
    pixels = int(round((stop - start) / step)) + 1
    print(f"HARPS spectra onto {grid} ({pixels:,} pixels), mirror writing {fmt}, "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    for (label, n), (seconds, rss) in sorted(runs.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        print(f"  {label:7s} {n:6,} spectra  {n / seconds:7,.0f} spectra/s  "
              f"({seconds:6.2f} s)  peak PSS {rss:6,.0f} MB")
    big = sizes[-1]
    ratio = runs["plain", big][0] / runs["mirror", big][0]
    print(f"  end to end, {big:,} spectra: mirror / plain = {ratio:.2f}x "
          f"({'meets' if ratio >= TARGET else 'misses'} the {TARGET:g}x target)")
    if len(sizes) == 2:
        small = sizes[0]
        rate = {label: (big - small) / (runs[label, big][0] - runs[label, small][0])
                for label in ("plain", "mirror")}
        print(f"  marginal (start-up excluded): mirror {rate['mirror']:,.0f}/s, plain "
              f"{rate['plain']:,.0f}/s = {rate['mirror'] / rate['plain']:.2f}x")
        growth = runs["mirror", big][1] / runs["mirror", small][1]
        print(f"  mirror's peak PSS at {big / small:.0f}x the spectra: {growth:.2f}x "
              f"(bounded: blocks, not the whole array, are in memory)")


if __name__ == "__main__":
    main()
