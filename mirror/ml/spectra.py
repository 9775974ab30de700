"""`mirror export spectra`: stored 1-D spectra -> one (spectra x pixels) array on a common grid.

A pool of processes reads and resamples (worker.run) blocks of spectra while this process
writes their rows in selection order, block by block: memory stays a few blocks whatever the
selection's size, both cores work, and the output does not depend on how many workers ran (the
array is cut into blocks of `chunk_rows` accepted rows, not into the workers' tasks).
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mirror import __version__
from mirror.errors import ExportError
from mirror.ml import worker
from mirror.ml.arrays import FORMATS, NAMES, open_writer, remove
from mirror.ml.grid import Grid
from mirror.ml.manifest import prepare_folder, write_json, write_manifest, write_rejects
from mirror.ml.select import DEFAULT_WHERE, Mirrored, select, wanted_columns

BLOCK_BYTES = 16 << 20  # rows per written block: ~16 MB of flux, error and mask
TASK_BYTES = 4 << 20  # rows per worker task: ~4 MB back through the pipe
IN_PROCESS_BELOW = 64  # fewer jobs than this: starting a pool costs more than it saves
# fork where there is one: workers start in milliseconds with the modules loaded (forkserver
# re-imports astropy, ~1 s); they touch no DuckDB, logging or console state of the parent
START_METHOD = os.environ.get("MIRROR_ML_START",
                              "fork" if "fork" in multiprocessing.get_all_start_methods()
                              else "spawn")
Progress = Callable[[int, int, int], None]  # (done, total, rejected)


@dataclass
class SpectraReport:
    """What an export wrote: counts, files and time."""

    out: str
    selected: int
    exported: int
    rejected: int
    seconds: float
    files: list[str] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)


def export_spectra(mirror: Mirrored, out: str | os.PathLike[str], *, grid: Grid,
                   where: str = DEFAULT_WHERE, normalize: str = "none", fmt: str = "npz",
                   columns: Sequence[str] = (), workers: int | None = None,
                   progress: Progress | None = None) -> SpectraReport:
    """Export the spectra `where` selects, resampled onto `grid`, into the folder `out`."""
    started = time.perf_counter()
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}", f"one of {', '.join(FORMATS)}")
    if normalize not in worker.NORMALIZE:
        raise ExportError(f"unknown normalisation {normalize!r}",
                          f"one of {', '.join(worker.NORMALIZE)}")
    folder = prepare_folder(Path(out))
    selection = select(mirror, where, wanted_columns(mirror, columns))
    reasons = {i.row: i.reason for i in selection.items if i.reason}
    jobs = [worker.Job(i.row, i.path, i.sha256) for i in selection.items if i.path]
    block = max(1, min(4096, BLOCK_BYTES // (grid.n * 9)))
    writer = open_writer(fmt, folder, grid.centres(), block, len(jobs))
    total, unstored = len(selection.items), len(selection.items) - len(jobs)

    def tick(done: int) -> None:
        if progress:
            progress(unstored + done, total, len(reasons))

    try:
        outcomes = _write_rows(writer, _batches(jobs, grid, normalize, workers), block,
                               reasons, tick)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    exported = [o for o in outcomes if o.reason is None]
    args = {"where": where, "grid": grid.as_dict(), "normalize": normalize, "format": fmt,
            "columns": list(columns)}
    meta = {"mirror_version": __version__, "kind": "spectra", "arguments": args,
            "arrays": NAMES[fmt], "dtype": {"flux": "float32", "error": "float32",
                                            "mask": "bool (True: no valid value)"},
            "selected": len(selection.items), "exported": len(exported),
            "rejected": len(reasons)}
    write_manifest(folder, selection.table, [o.row for o in exported],
                   _computed(exported, selection, mirror), meta)
    write_rejects(folder, selection.table, reasons)
    write_json(folder, meta)
    for other in set(NAMES.values()) - {NAMES[fmt]}:  # an earlier export in another format
        remove(folder / other)
    return SpectraReport(str(folder), len(selection.items), len(exported), len(reasons),
                         time.perf_counter() - started,
                         [NAMES[fmt], "manifest.parquet", "rejects.csv", "export.json"],
                         _tally(reasons))


def _write_rows(writer: Any, batches: Iterator[worker.Batch], block: int,
                reasons: dict[int, str], tick: Callable[[int], object]
                ) -> list[worker.Outcome]:
    """Hand the exported rows to `writer` in order, in blocks of `block` rows when its
    layout follows them; collect the outcomes and the reasons of the rejected."""
    outcomes: list[worker.Outcome] = []
    pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    buffered = 0
    for batch in batches:
        outcomes += batch.outcomes
        reasons.update({o.row: o.reason for o in batch.outcomes if o.reason})
        if len(batch.flux):
            pending.append((batch.flux, batch.error, batch.mask))
            buffered += len(batch.flux)
        while buffered >= block or (buffered and not writer.blocked):
            pending, buffered = _flush(writer, pending, block if writer.blocked else buffered)
        tick(len(outcomes))
    if buffered:
        _flush(writer, pending, buffered)
    return outcomes


def _tally(reasons: dict[int, str]) -> dict[str, int]:
    """How many rejects per kind of reason (the text before any colon)."""
    counts: dict[str, int] = {}
    for reason in reasons.values():
        key = reason.split(":")[0]
        counts[key] = counts.get(key, 0) + 1
    return counts


def _computed(exported: list[worker.Outcome], selection: Any,
              mirror: Mirrored) -> dict[str, list[Any]]:
    """Per exported spectrum, what the export learnt: file, sha256, pixels, units, scale."""
    root = Path(mirror.config.store_root).resolve()
    items = {i.row: i for i in selection.items}
    return {
        "store_path": [items[o.row].path.relative_to(root).as_posix() for o in exported],
        "sha256": [o.sha256 for o in exported],
        "product_last_modified": [items[o.row].modified for o in exported],
        "good_pixels": [o.good for o in exported],
        "norm_scale": [o.scale for o in exported],
        "wave_unit": [o.wave_unit for o in exported],
        "flux_unit": [o.flux_unit for o in exported],
        "reader": [o.reader for o in exported],
    }


def _flush(writer: Any, pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
           rows: int) -> tuple[list[tuple[np.ndarray, np.ndarray, np.ndarray]], int]:
    """Write the first `rows` buffered rows as one block; keep the rest."""
    stacked = (list(pending[0]) if len(pending) == 1
               else [np.concatenate([p[k] for p in pending]) for k in range(3)])
    writer.append(*(a[:rows] for a in stacked))
    rest = [a[rows:] for a in stacked]
    left = len(rest[0])
    return ([(rest[0], rest[1], rest[2])] if left else []), left


def _batches(jobs: list[worker.Job], grid: Grid, normalize: str,
             workers: int | None) -> Iterator[worker.Batch]:
    """Batches of processed jobs in job order: in this process for few jobs, else a pool
    with a bounded number of tasks in flight (memory stays bounded)."""
    size = max(1, min(64, TASK_BYTES // (grid.n * 9)))
    tasks = [jobs[i:i + size] for i in range(0, len(jobs), size)]
    count = workers if workers is not None else (os.cpu_count() or 1)
    if count <= 1 or len(jobs) < IN_PROCESS_BELOW:
        for task in tasks:
            yield worker.run(task, grid, normalize)
        return
    context = multiprocessing.get_context(START_METHOD)
    with ProcessPoolExecutor(count, mp_context=context) as pool:
        window: deque[Future[worker.Batch]] = deque()
        ahead = 2 * count + 1  # tasks in flight: the bound on memory
        for i in range(len(tasks)):
            while len(window) < ahead and i + len(window) < len(tasks):
                window.append(pool.submit(worker.run, tasks[i + len(window)], grid,
                                          normalize))
            yield window.popleft().result()
