"""The `mirror` command line. Nothing imports this module."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from mirror import __version__
from mirror.api import Mirror
from mirror.cli import daemon, export, schema, server
from mirror.cli.output import emit, err, out
from mirror.errors import MirrorError
from mirror.progress import fetch_progress
from mirror.query import QueryResult
from mirror.query.writers import BINARY, WRITERS, null_text, write

if TYPE_CHECKING:  # for annotations only: the services load when a command runs them
    from mirror.fetch.fetcher import FetchReport
    from mirror.harvest.harvester import SyncReport

# commands registered the way a plugin would be: each module adds its parsers with `register`
PLUGINS = (schema, server, daemon, export)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mirror", description="A local, complete, incremental mirror of ObsCore archives.")
    parser.add_argument("--version", action="version", version=f"mirror {__version__}")
    _common(parser, default=None)
    # the same options after the command (`mirror status --json`): SUPPRESS keeps a value given
    # before the command from being reset by the subcommand's default
    common = argparse.ArgumentParser(add_help=False)
    _common(common, default=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, parents=[common])

    command("init", help="create or migrate the catalogue")
    sync = command("sync", help="harvest ObsCore metadata from the configured sources")
    sync.add_argument("source", nargs="?", help="only this source (default: all)")
    sync.add_argument("--dry-run", action="store_true",
                      help="report what would change; write nothing")
    sync.add_argument("--full", action="store_true",
                      help="ignore the watermark: a full pass over the source")
    sync.add_argument("--fetch", action="store_true",
                      help="then fetch the newly selected products (as `mirror fetch`)")
    fetch = command("fetch", help="download the selected products into the store")
    fetch.add_argument("source", nargs="?", help="only this source (default: all)")
    fetch.add_argument("--retry-failed", action="store_true",
                       help="try products that failed before again")
    verify = command("verify", help="re-check the store against the catalogue")
    verify.add_argument("--no-repair", action="store_true",
                        help="only report; do not quarantine, re-queue or adopt")
    status = command("status", help="per source: rows, last sync, watermark, runs")
    status.add_argument("--runs", type=int, default=0, metavar="N",
                        help="also list the last N sync runs")
    query = command("query", help="run an ADQL query on the local catalogue")
    query.add_argument("adql", nargs="?", default="-",
                       help="the query; '@FILE' reads it from FILE, '-' or nothing from stdin")
    query.add_argument("--file", metavar="FILE", help="read the query from FILE")
    query.add_argument("--format", choices=["table", *WRITERS], default=None,
                       help="output format (default: table, or the --output file's suffix)")
    query.add_argument("--output", "-o", metavar="FILE", help="write the result to FILE")
    query.add_argument("--maxrec", type=int, metavar="N",
                       help="at most N rows (default: [query] maxrec)")
    query.add_argument("--timeout", type=float, metavar="S",
                       help="stop the query after S seconds (default: [query] timeout)")
    for plugin in PLUGINS:
        plugin.register(command)  # each sets `handler` with parser.set_defaults
    return parser


def _common(parser: argparse.ArgumentParser, default: object) -> None:
    flag: dict[str, Any] = {"action": "store_true",
                            "default": False if default is None else default}
    parser.add_argument("--config", metavar="FILE", default=default,
                        help="config file (default: $MIRROR_CONFIG, else ./mirror.toml)")
    parser.add_argument("--debug", help="show tracebacks and debug logs", **flag)
    fmt = parser.add_mutually_exclusive_group()
    fmt.add_argument("--quiet", "-q", help="print nothing but errors", **flag)
    fmt.add_argument("--json", help="print machine-readable JSON", **flag)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.ERROR if args.quiet else logging.WARNING,
        format="%(message)s", handlers=[RichHandler(console=err, show_path=False)])
    try:
        with Mirror.open(args.config) as mirror:
            handler = getattr(args, "handler", None) or COMMANDS[args.command]
            return int(handler(mirror, args))
    except MirrorError as exc:
        if args.debug:
            raise
        err.print(f"[bold red]error:[/] {exc.message}", highlight=False, soft_wrap=True)
        if exc.hint:
            err.print(f"  [yellow]hint:[/] {exc.hint}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err.print("interrupted; committed work is kept, run the command again to resume")
        return 130


def cmd_init(mirror: Mirror, args: argparse.Namespace) -> int:
    revision = mirror.init()
    emit(args, {"catalogue": str(mirror.config.catalogue_path), "revision": revision},
          f"catalogue {mirror.config.catalogue_path} is at revision {revision}")
    return 0


Handler = Callable[[Mirror, argparse.Namespace], int]


def writes(handler: Handler) -> Handler:
    """A command that writes the catalogue serves it to other processes meanwhile (DuckDB locks
    them out of the file): `mirror query` in another terminal answers instead of failing."""
    @functools.wraps(handler)
    def run(mirror: Mirror, args: argparse.Namespace) -> int:
        from mirror.server.service import serving  # uvicorn, starlette: writers alone

        with serving(mirror.catalogue(), mirror.config,
                     status=lambda: [s.as_dict() for s in mirror.status()]):
            return handler(mirror, args)
    return run


@writes
def cmd_sync(mirror: Mirror, args: argparse.Namespace) -> int:
    show = not (args.quiet or args.json) and err.is_terminal

    def progress(event: dict[str, Any]) -> None:
        if show and event["phase"] == "rows":
            err.print(f"  {event['source']}: {event['rows']:,} rows, {event['windows']} windows, "
                      f"{event['rate']:,.0f} rows/s", end="\r", highlight=False)

    reports = mirror.sync(args.source, dry_run=args.dry_run, full=args.full, progress=progress)
    if args.json and not args.fetch:
        out.print_json(json.dumps([_report_dict(r) for r in reports]))
    elif not args.quiet and not args.json:
        for r in reports:
            _print_report(r)
    ok = all(r.status == "ok" for r in reports)
    if args.fetch and not args.dry_run:
        fetched = _fetch(mirror, args.source, False, args)
        if args.json:
            out.print_json(json.dumps({"sync": [_report_dict(r) for r in reports],
                                       "fetch": [asdict(f) for f in fetched]}))
        ok = ok and all(f.status == "ok" for f in fetched)
    return 0 if ok else 1


@writes
def cmd_fetch(mirror: Mirror, args: argparse.Namespace) -> int:
    reports = _fetch(mirror, args.source, args.retry_failed, args)
    if args.json:
        out.print_json(json.dumps([asdict(r) for r in reports]))
    return 0 if all(r.status == "ok" for r in reports) else 1


def _fetch(mirror: Mirror, source: str | None, retry_failed: bool,
           args: argparse.Namespace) -> list[FetchReport]:
    show = not (args.quiet or args.json)
    with fetch_progress(err, enabled=show and err.is_terminal) as progress:
        reports = mirror.fetch(source, retry_failed=retry_failed, progress=progress)
    if show:
        for r in reports:
            colour = "green" if r.status == "ok" else "red"
            rate = r.bytes / r.seconds / 1e6 if r.seconds else 0
            out.print(f"[{colour}]{r.source}[/]: fetched {r.done:,} products "
                      f"({r.bytes / 1e6:,.1f} MB, {rate:,.1f} MB/s) in {r.seconds:.1f} s; "
                      f"{r.adopted:,} adopted, {r.failed:,} failed, {r.embargoed:,} embargoed, "
                      f"{r.skipped:,} skipped by caps, {r.withdrawn:,} newly withdrawn",
                      highlight=False)
            for e in r.errors[:20]:
                out.print(f"  [red]error:[/] {e}", highlight=False)
    return reports


@writes
def cmd_verify(mirror: Mirror, args: argparse.Namespace) -> int:
    report = mirror.verify(repair=not args.no_repair)
    if args.json:
        out.print_json(json.dumps(asdict(report)))
    elif not args.quiet:
        action = "" if report.repaired else " (report only)"
        out.print(f"checked {report.checked:,} stored products{action}: {report.ok:,} ok, "
                  f"{len(report.missing):,} missing (re-queued), {len(report.corrupt):,} corrupt "
                  f"(quarantined, re-queued), {len(report.adopted):,} adopted, "
                  f"{len(report.unknown):,} unknown files, {report.partials:,} partial downloads",
                  highlight=False)
        for path in report.corrupt[:20]:
            out.print(f"  [red]corrupt:[/] {path}", highlight=False)
        for path in report.unknown[:20]:
            out.print(f"  [yellow]unknown:[/] {path}", highlight=False)
    return 0 if not (report.missing or report.corrupt) else 1


def cmd_status(mirror: Mirror, args: argparse.Namespace) -> int:
    states = mirror.status()
    history = mirror.runs(limit=args.runs) if args.runs else []
    live = daemon.service_state(mirror)  # None unless a daemon holds the catalogue
    if args.json:
        out.print_json(json.dumps({"sources": [s.as_dict() for s in states],
                                   "runs": history, "daemon": live}, default=str))
        return 0
    if args.quiet:
        return 0
    out.print(f"[bold]catalogue[/] {mirror.config.catalogue_path}", highlight=False)
    if live:
        daemon.print_state(live)
    for s in states:
        out.print(f"\n[bold]{s.name}[/]  {s.url}", highlight=False)
        out.print(f"  rows       {s.rows:,} current, {s.withdrawn:,} withdrawn", highlight=False)
        last = f"{s.last_sync} ({s.last_status}), {s.runs} runs" if s.last_sync else "never"
        out.print(f"  last sync  {last}", highlight=False)
        if s.last_errors:
            out.print(f"  [red]errors[/]     {s.last_errors.splitlines()[0]}", highlight=False)
        wm = (f"{s.watermark_column} > {s.watermark}" if s.watermark_column
              else "none: full passes with row hashing")
        out.print(f"  watermark  {wm}", highlight=False)
        stored = ", ".join(f"{n:,} {state}" for state, n in sorted(s.products.items()))
        if stored:
            stored += f"; {s.product_bytes / 1e6:,.1f} MB stored"
        out.print(f"  products   {stored or 'none selected yet (mirror fetch)'}", highlight=False)
    if history:
        runs = Table(title="sync runs", title_justify="left")
        for col in ("run", "source", "started", "status", "kind", "new", "changed",
                    "withdrawn", "windows", "proof"):
            runs.add_column(col)
        for r in history:
            runs.add_row(str(r["run_id"]), r["source"], str(r["started_at"])[5:16], r["status"],
                         r["kind"], str(r["rows_new"]), str(r["rows_changed"]),
                         str(r["rows_withdrawn"]), str(r["windows"]),
                         {True: "ok", False: "FAILED", None: "-"}[r["proof_ok"]])
        out.print(runs)
    return 0


SUFFIXES = {".csv": "csv", ".vot": "votable", ".xml": "votable", ".votable": "votable",
            ".parquet": "parquet", ".pq": "parquet", ".fits": "fits", ".fit": "fits",
            ".json": "json"}


def cmd_query(mirror: Mirror, args: argparse.Namespace) -> int:
    fmt = _query_format(args)
    if fmt == "table" and args.output is not None:
        raise MirrorError("the table format is for the terminal",
                          f"give --format ({', '.join(WRITERS)}) with --output")
    if fmt in BINARY and args.output is None and sys.stdout.isatty():
        raise MirrorError(f"{fmt} output is binary and stdout is a terminal",
                          "give --output FILE, or redirect stdout to a file")
    result = mirror.query(_query_text(args), maxrec=args.maxrec, timeout=args.timeout)
    if fmt == "table":
        if not args.quiet:
            _print_result(result)
    else:
        write(result, fmt, args.output, sys.stdout.buffer)
    if result.overflow and not args.quiet:
        err.print(f"[yellow]OVERFLOW:[/] the result was cut at {len(result):,} rows (maxrec); "
                  "narrow the query or raise --maxrec", highlight=False)
    return 0


def _query_format(args: argparse.Namespace) -> str:
    if args.format:
        return str(args.format)
    if args.json:
        return "json"
    if args.output is None:
        return "table"
    suffix = Path(args.output).suffix.lower()
    if suffix not in SUFFIXES:
        raise MirrorError(f"cannot tell the format of {args.output} from its suffix",
                          f"give --format ({', '.join(WRITERS)})")
    return SUFFIXES[suffix]


def _query_text(args: argparse.Namespace) -> str:
    """The ADQL: --file, @FILE, the argument, or stdin ('-' or no argument)."""
    source = args.file or (args.adql[1:] if args.adql.startswith("@") else None)
    if source:
        try:
            return Path(source).read_text(encoding="utf-8")
        except OSError as exc:
            raise MirrorError(f"cannot read the query from {source}: {exc.strerror}") from exc
    if args.adql != "-":
        return str(args.adql)
    if sys.stdin.isatty():
        raise MirrorError("no query given",
                          'e.g. mirror query "SELECT TOP 10 * FROM ivoa.obscore", '
                          "or pipe the ADQL into `mirror query -`")
    return sys.stdin.read()


def _print_result(result: QueryResult) -> None:
    table = Table(show_lines=False, header_style="bold")
    for f in result.arrow.schema:
        unit = (f.metadata or {}).get(b"unit")
        table.add_column(escape(f.name + (f" [{unit.decode()}]" if unit else "")),
                         overflow="fold")
    for row in zip(*(c.to_pylist() for c in null_text(result.arrow).columns), strict=True):
        table.add_row(*map(escape, row))
    out.print(table)
    err.print(f"{len(result):,} rows in {result.seconds * 1000:,.1f} ms", highlight=False)


COMMANDS = {"init": cmd_init, "sync": cmd_sync, "fetch": cmd_fetch, "verify": cmd_verify,
            "status": cmd_status, "query": cmd_query}


def _report_dict(r: SyncReport) -> dict[str, Any]:
    d = asdict(r)
    d["would_withdraw"] = r.would_withdraw[:1000]
    d["rows"] = r.rows
    return d


def _print_report(r: SyncReport) -> None:
    verb = "would change" if r.dry_run else "synced"
    colour = "green" if r.status == "ok" else "red"
    rate = r.rows / r.seconds if r.seconds else 0
    out.print(f"[{colour}]{r.source}[/]: {verb} ({r.kind}) in {r.seconds:.1f} s: "
              f"{r.new:,} new, {r.changed + r.reappeared:,} changed, {r.unchanged:,} unchanged, "
              f"{r.repaired:,} repaired, "
              f"{len(r.would_withdraw) if r.dry_run else r.withdrawn:,} withdrawn; "
              f"{r.windows} windows, {rate:,.0f} rows/s", highlight=False)
    if r.upstream_count is not None and not r.dry_run:
        proof = "complete" if r.proof_ok else "NOT proven"
        out.print(f"  service counts {r.upstream_count:,}, mirror holds {r.local_count:,}: "
                  f"{proof}", highlight=False)
    for e in r.errors:
        out.print(f"  [red]error:[/] {e}", highlight=False)

