"""The schema catalogue: every queryable table and column, described, profiled and explained.

Loaded through ADQL (`load(query)` with `Mirror.query`), so it reads a catalogue held by a
daemon as well as an open one; rendered for the terminal (`mirror schema`), as Markdown and as a
static HTML site. Data profiles are computed by the writer (`profiles.refresh_profiles`).
"""

from mirror.schema.load import load
from mirror.schema.model import Catalogue, Column, ColumnProfile, Table, TableProfile

__all__ = ["Catalogue", "Column", "ColumnProfile", "Table", "TableProfile", "load"]
