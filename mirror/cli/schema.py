"""`mirror schema`: the schema catalogue in the terminal, as Markdown, or as an HTML site."""

from __future__ import annotations

import argparse
import difflib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from rich.markup import escape
from rich.table import Table as RichTable
from rich.text import Text

from mirror.api import Mirror
from mirror.cli.output import err, out
from mirror.errors import MirrorError
from mirror.schema import load
from mirror.schema.examples import checked_examples
from mirror.schema.explain import ucd_words
from mirror.schema.markdown import fraction, render
from mirror.schema.model import Catalogue, Column, Table
from mirror.schema.search import highlight_spans, search, suggestions, terms

Command = Callable[..., argparse.ArgumentParser]  # command(name, help=...)


def register(command: Command) -> None:
    """Add `mirror schema`; its parser sets `handler` (mirror, args) -> exit code."""
    p = command("schema", "tables and columns: described, profiled, searchable, documented")
    p.add_argument("name", nargs="?", metavar="TABLE[.COLUMN]",
                   help="a table (its columns) or a qualified column (in full, with profile)")
    p.add_argument("--search", "-s", metavar="TEXT",
                   help="search names, descriptions, units and UCDs of every column")
    p.add_argument("--markdown", nargs="?", const="-", metavar="FILE",
                   help="write the whole catalogue as Markdown (to stdout without FILE)")
    p.add_argument("--html", metavar="DIR", help="write a static HTML site into DIR")
    p.add_argument("--examples", action="store_true",
                   help="list the example queries, each run locally")
    p.add_argument("--profile", action="store_true",
                   help="recompute the data profiles now (needs the catalogue for writing)")
    p.set_defaults(handler=cmd_schema)


def cmd_schema(mirror: Mirror, args: argparse.Namespace) -> int:
    if args.profile:
        _profile(mirror, args)
    if args.markdown or args.html or args.examples:
        return _documents(mirror, args)
    if args.profile and not (args.name or args.search):
        return 0
    catalogue = load(mirror.query)
    for note in catalogue.notes:
        err.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    if args.search:
        return _search(catalogue, args)
    if args.name:
        return _show(catalogue, args.name, args)
    return _list(catalogue, args)


def _profile(mirror: Mirror, args: argparse.Namespace) -> None:
    from mirror.schema.profiles import refresh_profiles  # mocpy, matplotlib

    reports = refresh_profiles(mirror.catalogue())
    mirror.close()  # a later read opens the catalogue afresh (read-only)
    if args.json and not (args.name or args.search or args.markdown or args.html):
        out.print_json(json.dumps([r.__dict__ for r in reports]))
    elif not args.quiet and not args.json:
        for r in reports:
            err.print(f"profiled {r.table}: {r.rows:,} rows, {r.columns} columns in "
                      f"{r.seconds:.2f} s", highlight=False)


def _list(catalogue: Catalogue, args: argparse.Namespace) -> int:
    if args.json:
        out.print_json(json.dumps([t.as_dict(columns=False) for t in catalogue.tables],
                                  default=str))
        return 0
    if args.quiet:
        return 0
    table = RichTable(header_style="bold", title="tables (mirror schema TABLE for columns)",
                      title_justify="left")
    table.add_column("table", style="cyan", no_wrap=True)
    table.add_column("rows", justify="right")
    table.add_column("cols", justify="right")
    table.add_column("description")
    for t in catalogue.tables:
        table.add_row(t.name, "?" if t.rows is None else f"{t.rows:,}", str(len(t.columns)),
                      escape(t.description or ""))
    out.print(table)
    return 0


def _show(catalogue: Catalogue, name: str, args: argparse.Namespace) -> int:
    table = catalogue.table(name)
    if table is not None:
        return _columns(table, args)
    table_name, _, column_name = name.rpartition(".")
    table = catalogue.table(table_name) if table_name else None
    column = table.column(column_name) if table else None
    if column is None:
        raise _unknown(catalogue, name)
    if args.json:
        out.print_json(json.dumps(column.as_dict(), default=str))
    elif not args.quiet:
        _print_column(column)
    return 0


def _unknown(catalogue: Catalogue, name: str) -> MirrorError:
    names = [t.name for t in catalogue.tables] + [c.qualified for c in catalogue.columns()]
    close = difflib.get_close_matches(name, names, n=4, cutoff=0.6)
    bare = name.rpartition(".")[2].lower()
    similar = difflib.get_close_matches(bare, {c.name.lower() for c in catalogue.columns()},
                                        n=2, cutoff=0.7)
    close += [c.qualified for c in catalogue.columns()  # an unqualified or misspelt column
              if c.name.lower() in similar and c.qualified not in close][:4]
    hint = (f"did you mean {', '.join(close)}?" if close else
            "`mirror schema` lists the tables; `mirror schema --search WORD` finds columns")
    return MirrorError(f"no table or column {name!r} in the catalogue", hint)


def _columns(table: Table, args: argparse.Namespace) -> int:
    if args.json:
        out.print_json(json.dumps(table.as_dict(), default=str))
        return 0
    if args.quiet:
        return 0
    out.print(f"[bold cyan]{escape(table.name)}[/]  {escape(table.description or '')}",
              highlight=False)
    summary = _summary(table)
    if summary:
        out.print(summary, highlight=False, style="dim")
    grid = RichTable(header_style="bold", show_lines=False)
    for head in ("column", "type", "unit", "UCD", "description", "nulls", "distinct"):
        grid.add_column(head, justify="right" if head in ("nulls", "distinct") else "left")
    for c in table.columns:
        p = c.profile
        grid.add_row(
            Text(c.name, style="bold" if c.principal else ""), escape(c.adql_type),
            _pair(c.unit, c.unit_words), _pair(c.ucd, c.ucd_words),
            escape(c.description or ""), fraction(p.null_fraction) if p else "",
            f"{p.distinct:,}" if p and p.distinct is not None else "")
    out.print(grid)
    return 0


def _summary(table: Table) -> str:
    parts = [f"{table.rows:,} rows" if table.rows is not None else ""]
    p = table.profile
    if p and p.sky_fraction is not None:
        parts.append(f"{p.positions:,} positions on {p.sky_fraction:.4%} of the sky")
    if p and p.t_min_iso:
        parts.append(f"time {p.t_min_iso} .. {p.t_max_iso}")
    return "; ".join(x for x in parts if x)


def _pair(value: str | None, words: str | None) -> Text:
    text = Text(value or "")
    if words:
        text.append(f"\n{words}", style="dim")
    return text


def _print_column(c: Column) -> None:
    rows: list[tuple[str, str]] = [
        ("column", c.qualified), ("type", f"{c.adql_type}  (DuckDB {c.local_type or '?'})"),
        ("unit", f"{c.unit}  = {c.unit_words}" if c.unit_words else c.unit or "-")]
    rows.append(("UCD", c.ucd or "-"))
    for word, text in ucd_words(c.ucd):
        rows.append(("", f"  {word}: {text or '(not a UCD1+ word)'}"))
    if c.ucd_words:
        rows.append(("", f"  = {c.ucd_words}"))
    flags = [f for f, on in (("principal", c.principal), ("indexed", c.indexed),
                             ("std", c.std)) if on]
    rows += [("utype", c.utype or "-"), ("description", c.description or "-"),
             ("flags", ", ".join(flags) or "-"), ("standard", c.standard or "the service's own"),
             ("published by", ", ".join(c.sources) or "mirror")]
    p = c.profile
    if p:
        rows += [("rows", f"{p.rows:,}"), ("nulls", f"{p.nulls:,} ({fraction(p.null_fraction)})"),
                 ("distinct", f"~{p.distinct:,}" if p.distinct is not None else "-"),
                 ("min", p.min or "-"), ("max", p.max or "-"),
                 ("examples", ", ".join(p.examples) or "-"), ("profiled", p.computed_at or "-")]
    grid = RichTable.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for key, value in rows:
        grid.add_row(key, escape(str(value)))
    out.print(grid)


def _search(catalogue: Catalogue, args: argparse.Namespace) -> int:
    hits = search(catalogue, args.search)
    if args.json:
        out.print_json(json.dumps({"query": args.search, "hits": [h.as_dict() for h in hits],
                                   "suggestions": [] if hits else
                                   suggestions(catalogue, args.search)}, default=str))
        return 0 if hits else 1
    if not hits:
        close = suggestions(catalogue, args.search)
        err.print(f"no column matches {args.search!r} in its name, description, unit or UCD",
                  highlight=False)
        err.print("  [yellow]hint:[/] " + (f"close words: {', '.join(close)}" if close else
                  "try one word, a unit (deg), a UCD word (em.wl) or `mirror schema` for tables"),
                  highlight=False)
        return 1
    if args.quiet:
        return 0
    words = terms(args.search)
    matched = "1 column matches" if len(hits) == 1 else f"{len(hits):,} columns match"
    grid = RichTable(header_style="bold", title=f"{matched} {args.search!r}",
                     title_justify="left")
    for head in ("column", "unit", "UCD", "description"):
        grid.add_column(head)
    for h in hits:
        c = h.column
        name = _marked(c.qualified, words)
        if h.also:
            name.append(f"\nalso {', '.join(h.also)}", style="dim")
        grid.add_row(name, _marked_pair(c.unit, c.unit_words, words),
                     _marked_pair(c.ucd, c.ucd_words, words), _marked(c.description or "", words))
    out.print(grid)
    return 0


def _marked(text: str, words: list[str]) -> Text:
    out_text = Text(text)
    for start, end in highlight_spans(text, words):
        out_text.stylize("bold black on yellow", start, end)
    return out_text


def _marked_pair(value: str | None, words_text: str | None, words: list[str]) -> Text:
    text = _marked(value or "", words)
    if words_text:
        text.append("\n")
        text.append_text(_marked(words_text, words))
    return text


def _documents(mirror: Mirror, args: argparse.Namespace) -> int:
    started = time.perf_counter()
    catalogue = load(mirror.query)
    examples = checked_examples(mirror.query)
    result: dict[str, object] = {"examples": [e.as_dict() for e in examples]}
    if args.markdown:
        text = render(catalogue, examples)
        if args.markdown == "-":
            sys.stdout.write(text)
        else:
            Path(args.markdown).write_text(text, encoding="utf-8")
            result["markdown"] = args.markdown
    if args.html:
        from mirror.schema.site import build_site  # jinja2 and the sky maps' matplotlib

        files = build_site(catalogue, examples, Path(args.html))
        result["html"] = [str(f) for f in files]
    result["seconds"] = round(time.perf_counter() - started, 3)
    if args.json:
        out.print_json(json.dumps(result, default=str))
    elif not args.quiet:
        _report_documents(args, examples, result)
    return 0  # the documents were written; a failing example is flagged in them and above


def _report_documents(args: argparse.Namespace, examples: list, result: dict) -> None:
    if args.examples:
        for e in examples:
            mark = "[red]FAILS[/]" if e.error else f"[green]{e.rows:,} rows[/]"
            out.print(f"[bold]{escape(e.name)}[/] ({escape(e.origin)}): {mark}", highlight=False)
            out.print(escape(e.adql), style="cyan", highlight=False)
            if e.error:
                out.print(f"  [red]error:[/] {escape(e.error)}", highlight=False)
    for e in (x for x in examples if x.error and not args.examples):
        err.print(f"[red]example fails locally:[/] {escape(e.name)}: {escape(e.error)}",
                  highlight=False)
    if args.html:
        err.print(f"wrote {len(result['html'])} pages into {args.html} in {result['seconds']} s "
                  f"(open {Path(args.html) / 'index.html'})", highlight=False)
    if args.markdown and args.markdown != "-":
        err.print(f"wrote {args.markdown}", highlight=False)
