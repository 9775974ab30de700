"""The schema catalogue as one Markdown document: tables, columns, profiles, checked examples."""

from __future__ import annotations

from mirror.schema.examples import Example
from mirror.schema.model import Catalogue, Column, Table


def cell(text: object) -> str:
    """A value fit for a Markdown table cell (pipes escaped, one line)."""
    if text is None or text == "":
        return ""
    return " ".join(str(text).split()).replace("|", "\\|")


def fraction(value: float | None) -> str:
    return "" if value is None else f"{value:.1%}" if value >= 0.001 or value == 0 else "<0.1%"


def unit_text(c: Column) -> str:
    return f"`{c.unit}` ({c.unit_words})" if c.unit and c.unit_words else (
        f"`{c.unit}`" if c.unit else "")


def ucd_text(c: Column) -> str:
    return f"`{c.ucd}` ({c.ucd_words})" if c.ucd and c.ucd_words else (
        f"`{c.ucd}`" if c.ucd else "")


def table_summary(t: Table) -> str:
    """One line: rows, sky coverage, time range."""
    parts = [f"{t.rows:,} rows" if t.rows is not None else "rows unknown"]
    p = t.profile
    if p and p.sky_fraction is not None:
        parts.append(f"{p.positions:,} positions covering {p.sky_fraction:.4%} of the sky "
                     f"(MOC depth {p.moc_depth})")
    if p and p.t_min_iso:
        parts.append(f"time {p.t_min_iso} to {p.t_max_iso} (MJD {p.t_min_mjd:.3f} to "
                     f"{p.t_max_mjd:.3f})")
    return "; ".join(parts)


def render(catalogue: Catalogue, examples: list[Example] | None = None,
           title: str = "Schema catalogue") -> str:
    """The whole catalogue as Markdown."""
    out = [f"# {title}", "", "| table | rows | description |", "| --- | ---: | --- |"]
    for t in catalogue.tables:
        rows = "" if t.rows is None else f"{t.rows:,}"
        out.append(f"| [`{t.name}`](#{_anchor(t.name)}) | {rows} | {cell(t.description)} |")
    for t in catalogue.tables:
        out += ["", *render_table(t)]
    if examples:
        out += ["", "## Example queries", ""]
        for e in examples:
            out += render_example(e)
    for note in catalogue.notes:
        out += ["", f"> note: {note}"]
    return "\n".join(out) + "\n"


def render_table(t: Table) -> list[str]:
    out = [f"## {t.name}", "", cell(t.description) or "(no description)", "",
           table_summary(t), "",
           "| column | type | unit | UCD | description | standard | nulls | distinct | min | max |",
           "| --- | --- | --- | --- | --- | --- | ---: | ---: | --- | --- |"]
    for c in t.columns:
        p = c.profile
        out.append(
            f"| `{c.name}` | {cell(c.adql_type)}{' / ' + c.local_type if c.local_type else ''} "
            f"| {cell(unit_text(c))} | {cell(ucd_text(c))} | {cell(c.description)} "
            f"| {cell(c.standard)} | {fraction(p.null_fraction) if p else ''} "
            f"| {'' if not p or p.distinct is None else f'{p.distinct:,}'} "
            f"| {cell(p.min) if p else ''} | {cell(p.max) if p else ''} |")
    return out


def render_example(e: Example) -> list[str]:
    outcome = (f"**fails locally**: {e.error}" if e.error else
               f"{e.rows:,} rows{' (more match)' if e.overflow else ''} locally")
    return [f"### {e.name}", "", f"_{e.origin}_: {cell(e.description)}", "", "```sql", e.adql,
            "```", "", outcome, ""]


def _anchor(name: str) -> str:
    return name.lower().replace(".", "")
