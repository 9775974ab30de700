"""The schema catalogue as a static, self-contained HTML site (jinja2; inline CSS, JS and images).

`index.html` lists the tables, searches every column client-side (the index is JSON in the page)
and shows the checked example queries; one page per table documents its columns and profiles.
No page loads anything from the network.
"""

from __future__ import annotations

import base64
import io
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

from mirror.schema.examples import Example
from mirror.schema.model import Catalogue, Table

_ENV = jinja2.Environment(loader=jinja2.PackageLoader("mirror.schema", "templates"),
                          autoescape=True, trim_blocks=True, lstrip_blocks=True,
                          undefined=jinja2.StrictUndefined)
SKY_MAX_CELLS = 200_000


def page_name(table: str) -> str:
    """The file of a table's page: its name with anything unusual replaced."""
    return "table-" + re.sub(r"[^A-Za-z0-9._-]", "_", table) + ".html"


def search_index(catalogue: Catalogue) -> list[dict[str, Any]]:
    """What the search box searches: one short record per column."""
    out = []
    for i, c in enumerate(catalogue.columns()):
        out.append({"t": c.table, "n": c.name, "u": c.unit or "", "uw": c.unit_words or "",
                    "d": c.ucd or "", "dw": c.ucd_words or "", "x": c.description or "",
                    "p": int(c.principal), "s": int(bool(c.standard)), "i": i,
                    "h": f"{page_name(c.table)}#{c.name}"})
    return out


def build_site(catalogue: Catalogue, examples: list[Example], directory: Path,
               title: str = "mirror schema catalogue") -> list[Path]:
    """Write the site into `directory` (created); returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    common = {"title": title, "root": "", "n_tables": len(catalogue.tables),
              "n_columns": len(catalogue.columns()),
              "generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}
    tables = [_view(t) for t in catalogue.tables]
    index_json = json.dumps(search_index(catalogue), separators=(",", ":")).replace("</", "<\\/")
    written = [directory / "index.html"]
    written[0].write_text(_ENV.get_template("index.html").render(
        tables=tables, examples=examples, notes=catalogue.notes, index_json=index_json,
        **common), encoding="utf-8")
    page = _ENV.get_template("table.html")
    for t in tables:
        path = directory / t["href"]
        sky = sky_png(t["profile"].moc) if t["profile"] and t["profile"].moc else None
        path.write_text(page.render(t=t, sky=sky, **common), encoding="utf-8")
        written.append(path)
    return written


def _view(t: Table) -> dict[str, Any]:
    return {"name": t.name, "description": t.description, "utype": t.utype,
            "columns": t.columns, "profile": t.profile, "href": page_name(t.name),
            "rows_text": "?" if t.rows is None else f"{t.rows:,}"}


def sky_png(moc_text: str) -> str | None:
    """The MOC's cells on an all-sky Mollweide map, as base64 PNG (None if unreadable)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from cdshealpix.nested import healpix_to_lonlat
    from mocpy import MOC

    try:
        moc = MOC.from_string(moc_text, format="ascii")
    except (ValueError, TypeError):
        return None
    depth = int(moc.max_order)
    cells = moc.flatten()[:SKY_MAX_CELLS].astype(np.uint64)
    lon, lat = healpix_to_lonlat(cells, depth)
    ra = np.remainder(lon.to_value("rad") + np.pi, 2 * np.pi) - np.pi
    fig = plt.figure(figsize=(5.2, 2.9), dpi=110)
    ax = fig.add_subplot(111, projection="mollweide")
    ax.scatter(-ra, lat.to_value("rad"), s=4, color="#c9822b", alpha=0.8, linewidths=0)
    ax.grid(True, color="#dfe3ea")
    ax.set_xticklabels([])
    ax.tick_params(labelsize=7)
    ax.set_title(f"sky coverage (MOC depth {depth}, {len(cells):,} cells)", fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")
