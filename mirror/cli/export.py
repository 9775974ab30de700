"""`mirror export spectra|cutouts` and `mirror embed`: training sets from the local store
(registered by `mirror.cli`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from mirror.api import Mirror
from mirror.cli.output import emit, err, out

Command = Callable[..., argparse.ArgumentParser]  # command(name, help=...)


def register(command: Command) -> None:
    """Add this module's subcommands; each parser sets `handler` (mirror, args) -> exit code."""
    from mirror.cli import _common  # at run time: mirror.cli is loaded by then

    common = argparse.ArgumentParser(add_help=False)
    _common(common, default=argparse.SUPPRESS)
    export = command("export", help="write ML-ready training sets from the stored products")
    kinds = export.add_subparsers(dest="kind", required=True, metavar="KIND")
    _spectra(kinds.add_parser("spectra", parents=[common],
                              help="stored 1-D spectra resampled onto one grid"))
    _cutouts(kinds.add_parser("cutouts", parents=[common],
                              help="image cutouts around a list of targets"))
    _embed(command("embed", help="a 2-D embedding (PCA or UMAP) of exported spectra, drawn"))


def _spectra(p: argparse.ArgumentParser) -> None:
    from mirror.ml.arrays import FORMATS
    from mirror.ml.select import DEFAULT_WHERE

    p.add_argument("--where", default=DEFAULT_WHERE, metavar="ADQL",
                   help=f"ADQL condition over ivoa.obscore (default: {DEFAULT_WHERE})")
    p.add_argument("--grid", required=True, metavar="START:STOP:STEP",
                   help="pixel centres of the common grid, e.g. 3800:6900:0.05")
    p.add_argument("--unit", default="Angstrom", help="unit of --grid (default: Angstrom)")
    p.add_argument("--normalize", choices=["none", "median"], default="none",
                   help="divide each spectrum by its median flux (default: none)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--format", choices=FORMATS, default="npz",
                   help="array container (default: npz, the fastest to write; parquet: "
                        "fixed-size list columns)")
    p.add_argument("--columns", default="", metavar="COL,...",
                   help="ObsCore columns for the manifest, e.g. snr,s_ra,s_dec,target_name")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="processes reading and resampling (default: one per core)")
    p.set_defaults(handler=cmd_export_spectra)


def _cutouts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--targets", required=True, metavar="FILE.csv",
                   help="CSV with columns ra, dec (degrees, ICRS) and optionally id")
    p.add_argument("--size", type=float, default=28, help="cutout size (default: 28)")
    unit = p.add_mutually_exclusive_group()
    unit.add_argument("--pixels", dest="unit", action="store_const", const="pixels",
                      default="pixels", help="--size is in image pixels (default)")
    unit.add_argument("--arcsec", dest="unit", action="store_const", const="arcsec",
                      help="--size is in arcseconds")
    p.add_argument("--pick", choices=["deepest", "all"], default="deepest",
                   help="deepest: one image per target, the largest abmaglim; all: every "
                        "image that contains the cutout (default: deepest)")
    p.add_argument("--where", default="dataproduct_type = 'image'", metavar="ADQL",
                   help="ADQL condition choosing the candidate images")
    p.add_argument("--centre", choices=["exact", "nearest"], default="exact",
                   help="exact: resampled so the target is the cutout's centre; nearest: "
                        "cut at the nearest pixel, no resampling (default: exact)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.set_defaults(handler=cmd_export_cutouts)


def _embed(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", required=True, metavar="DIR",
                   help="folder of `mirror export spectra`")
    p.add_argument("--method", choices=["pca", "umap"], default="pca")
    p.add_argument("--color", default=None, metavar="COLUMN",
                   help="manifest column colouring the points (default: snr if present)")
    p.add_argument("--out", required=True, metavar="FILE.png", help="the picture")
    p.set_defaults(handler=cmd_embed)


@contextmanager
def _bar(args: argparse.Namespace, what: str) -> Iterator[Callable[[int, int, int], None]]:
    """A rich progress bar (done of total, rejected) on a terminal, else nothing."""
    if args.quiet or args.json or not err.is_terminal:
        yield lambda done, total, rejected: None
        return
    columns = (TextColumn(what), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rejected]:,} rejected"), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(what, total=None, rejected=0)

        def update(done: int, total: int, rejected: int) -> None:
            bar.update(task, completed=done, total=total, rejected=rejected)

        yield update


def cmd_export_spectra(mirror: Mirror, args: argparse.Namespace) -> int:
    from mirror.ml import export_spectra, parse_grid

    grid = parse_grid(args.grid, args.unit)
    columns = [c.strip() for c in args.columns.split(",") if c.strip()]
    with _bar(args, "spectra") as progress:
        report = export_spectra(mirror, args.out, grid=grid, where=args.where,
                                normalize=args.normalize, fmt=args.format, columns=columns,
                                workers=args.workers, progress=progress)
    rate = report.exported / report.seconds if report.seconds else 0.0
    emit(args, asdict(report),
         f"exported {report.exported:,} of {report.selected:,} selected spectra "
         f"({grid.n:,} pixels each) to {report.out} in {report.seconds:.1f} s "
         f"({rate:,.0f} spectra/s); {report.rejected:,} rejected, listed in rejects.csv")
    _reasons(args, report.reasons)
    return 0


def cmd_export_cutouts(mirror: Mirror, args: argparse.Namespace) -> int:
    from mirror.ml.cutouts import export_cutouts

    with _bar(args, "targets") as progress:
        report = export_cutouts(mirror, args.out, targets=args.targets, size=args.size,
                                unit=args.unit, pick=args.pick, where=args.where,
                                centre=args.centre, progress=progress)
    emit(args, asdict(report),
         f"wrote {report.cutouts:,} cutouts for {report.targets - report.rejected:,} of "
         f"{report.targets:,} targets to {report.out} in {report.seconds:.1f} s; "
         f"{report.rejected:,} targets without a cutout, listed in rejects.csv")
    _reasons(args, report.reasons)
    return 0


def cmd_embed(mirror: Mirror, args: argparse.Namespace) -> int:
    from mirror.ml.embed import embed

    report = embed(args.input, args.out, method=args.method, color=args.color)
    emit(args, asdict(report),
         f"{args.method.upper()} of {report.spectra:,} spectra ({report.pixels:,} pixels) "
         f"drawn in {report.picture}; embedding saved in {report.embedding}")
    return 0


def _reasons(args: argparse.Namespace, reasons: dict[str, Any]) -> None:
    if args.quiet or args.json:
        return
    for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1]):
        out.print(f"  [yellow]{n:,}[/] {reason}", highlight=False)
