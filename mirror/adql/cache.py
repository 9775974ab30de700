"""Translations of cone searches remembered by their shape: the query text with the numbers of
its CIRCLEs left out.

TAP clients send one query shape again and again with other centres, and translating one cone
(sqlglot parse, checks, binding, lowering, generation) costs more CPU than DuckDB's scan of it.
A shape seen twice is translated once more with probe numbers in the CIRCLEs, and becomes a
template when the SQL of both translations is exactly the template filled with their numbers:
each number written as the lowering writes a constant (`_number`), each CIRCLE's HEALPix
ranges as the prefilter writes them (`shape_ranges`). Those are the only two ways a constant
circle reaches the SQL; everything else in the query (other numbers included) is part of the
key, so any other text gets a translation of its own. A shape that does not fit (a circle the
prefilter cannot use, a number that reaches the SQL some other way) is translated every time.
"""

from __future__ import annotations

import dataclasses
import math
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass

from mirror.errors import AdqlError

from . import Translation, translate
from .prefilter import shape_ranges
from .tables import HPX_COLUMN, TableMap

SIZE = 256  # shapes remembered (and as many seen once)
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_ARG = rf"([+-]?)\s*({_NUMBER})"
# CIRCLE([coordsys,] ra, dec, r) with three plain numbers, in text whose strings, quoted
# identifiers and comments are blanked out (`_masked`), so nothing in them can match
_CIRCLE = re.compile(rf"\bCIRCLE\s*\(\s*(?:'[^']*'\s*,\s*)?{_ARG}\s*,\s*{_ARG}\s*,\s*{_ARG}\s*\)",
                     re.IGNORECASE)
_HIDDEN = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|/\*.*?\*/", re.DOTALL)
_RANGE_COLUMN = re.compile(rf"\(((?:\w+|\"[^\"]*\")\.{HPX_COLUMN}) BETWEEN ")


@dataclass(frozen=True)
class _Template:
    """The SQL split around its slots: `pieces[i]` precedes slot i, the last piece ends it.
    A slot is ("number", k): the k-th number, or ("ranges", c, column): circle c's ranges."""

    pieces: tuple[str, ...]
    slots: tuple[tuple, ...]
    translation: Translation


_UNFIT = object()  # a shape whose translations are not a template of its numbers


class TranslationCache:
    """`translate` for one TableMap, remembering the templates of cone-search shapes."""

    def __init__(self, tables: TableMap, size: int = SIZE) -> None:
        self.tables = tables
        self.size = size
        self._templates: OrderedDict[tuple, object] = OrderedDict()
        self._seen: OrderedDict[tuple, None] = OrderedDict()
        self._lock = threading.Lock()  # a Runner of the Python API may serve several threads

    def translate(self, adql: str, *, maxrec: int | None = None) -> Translation:
        """The same Translation as `mirror.adql.translate(adql, tables, maxrec=maxrec)`."""
        found = _numbers(adql)
        if found is None:
            return translate(adql, self.tables, maxrec=maxrec)
        shape, spans, signs = found
        key = (shape, maxrec)
        with self._lock:
            entry = self._templates.get(key)
            if entry is not None:
                self._templates.move_to_end(key)
        if isinstance(entry, _Template):
            values = [sign * float(adql[a:b]) for (a, b), sign in zip(spans, signs, strict=True)]
            sql = _fill(entry, values)
            if sql is not None:
                return _copy(entry.translation, sql)
            return translate(adql, self.tables, maxrec=maxrec)
        translation = translate(adql, self.tables, maxrec=maxrec)
        if entry is None:
            with self._lock:  # the second time: worth a probe translation
                second = self._seen.pop(key, False) is None
                if not second:
                    self._seen[key] = None
                    if len(self._seen) > self.size:
                        self._seen.popitem(last=False)
            if second:
                self._remember(key, self._template(adql, spans, signs, maxrec, translation))
        return translation

    def _remember(self, key: tuple, entry: object) -> None:
        with self._lock:
            self._templates[key] = entry
            if len(self._templates) > self.size:
                self._templates.popitem(last=False)

    def _template(self, adql: str, spans: list[tuple[int, int]], signs: list[int],
                  maxrec: int | None, actual: Translation) -> object:
        """The template both `actual` and a translation with probe numbers fill, or _UNFIT."""
        probes = [_probe(adql[a:b], i) for i, (a, b) in enumerate(spans)]
        text = adql
        for (a, b), probe in sorted(zip(spans, probes, strict=True), reverse=True):
            text = text[:a] + probe + text[b:]
        try:
            probed = translate(text, self.tables, maxrec=maxrec)
        except AdqlError:  # a probe the checks refuse: not a template, nothing wrong
            return _UNFIT
        if dataclasses.replace(probed, sql="") != dataclasses.replace(actual, sql=""):
            return _UNFIT
        values = [sign * float(p) for p, sign in zip(probes, signs, strict=True)]
        template = _split(probed, values)
        if template is None or _fill(template, [sign * float(adql[a:b]) for (a, b), sign
                                                in zip(spans, signs, strict=True)]) != actual.sql:
            return _UNFIT
        return template


def _masked(text: str) -> str:
    """`text` with the insides of strings, quoted identifiers and comments blanked (same
    length, so positions hold)."""
    def blank(m: re.Match[str]) -> str:
        s = m.group(0)
        return s[0] + "\x01" * (len(s) - 2) + s[-1] if s[0] in "'\"" else " " * len(s)
    return _HIDDEN.sub(blank, text)


def _numbers(adql: str) -> tuple[str, list[tuple[int, int]], list[int]] | None:
    """(the shape: `adql` with each CIRCLE number replaced by its kind, the numbers' spans,
    their signs), or None when the query has no such CIRCLE."""
    spans: list[tuple[int, int]] = []
    signs: list[int] = []
    for m in _CIRCLE.finditer(_masked(adql)):
        for g in (2, 4, 6):
            spans.append(m.span(g))
            signs.append(-1 if m.group(g - 1) == "-" else 1)
    if not spans:
        return None
    parts, last = [], 0
    for a, b in spans:  # an integer and a decimal are kept apart: `_is_integer` reads that
        parts += [adql[last:a], "\x00i" if adql[a:b].isdigit() else "\x00f"]
        last = b
    parts.append(adql[last:])
    return "".join(parts), spans, signs


def _probe(number: str, i: int) -> str:
    """Another number of the same kind, close to `number` (a valid circle stays valid) and
    unlike the others (each is found in the SQL by its text)."""
    if number.isdigit():
        return str(int(number) + i + 1)
    return repr(float(number) + (i + 1) * 1.234567e-6)


def number_sql(value: float) -> str | None:
    """How the lowering writes a constant coordinate (`rewrite._number`), None if it would
    need a CAST (NaN, infinities)."""
    if not math.isfinite(value):
        return None
    text = repr(float(value))
    return text if "e" in text else text + "e0"


def ranges_sql(column: str, ranges: list[tuple[int, int]]) -> str:
    """How the prefilter writes a circle's HEALPix ranges."""
    return "(" + " OR ".join(f"{column} BETWEEN {lo} AND {hi}" for lo, hi in ranges) + ")"


def _split(probed: Translation, values: list[float]) -> _Template | None:
    """The template of `probed.sql`: every number and every circle's ranges found exactly once
    (circle c holds numbers 3c..3c+2), or None."""
    sql = probed.sql
    found: list[tuple[int, int, tuple]] = []
    for k, value in enumerate(values):
        text = number_sql(value)
        hits = [] if text is None else \
            [m.span() for m in re.finditer(rf"(?<![\w.-]){re.escape(text)}(?![\w.])", sql)]
        if len(hits) != 1:
            return None
        found.append((*hits[0], ("number", k)))
    for c in range(len(values) // 3):
        ranges = shape_ranges(values[3 * c:3 * c + 3])
        if not ranges:
            return None
        lo, hi = ranges[0]
        heads = [m for m in _RANGE_COLUMN.finditer(sql)
                 if sql.startswith(f"BETWEEN {lo} AND {hi}", m.end() - len("BETWEEN "))]
        text = ranges_sql(heads[0].group(1), ranges) if len(heads) == 1 else ""
        if not text or sql.count(text) != 1:
            return None
        start = sql.index(text)
        found.append((start, start + len(text), ("ranges", c, heads[0].group(1))))
    found.sort()
    pieces, slots, last = [], [], 0
    for a, b, slot in found:
        if a < last:
            return None
        pieces.append(sql[last:a])
        slots.append(slot)
        last = b
    pieces.append(sql[last:])
    return _Template(tuple(pieces), tuple(slots), probed)


def _fill(template: _Template, values: list[float]) -> str | None:
    """The template's SQL for these numbers; None if a number or a circle does not fit it (the
    full translation decides then)."""
    out = []
    for piece, slot in zip(template.pieces, template.slots, strict=False):
        out.append(piece)
        if slot[0] == "number":
            text = number_sql(values[slot[1]])
        else:
            c = slot[1]
            ranges = shape_ranges(values[3 * c:3 * c + 3])
            text = ranges_sql(slot[2], ranges) if ranges else None
        if text is None:
            return None
        out.append(text)
    out.append(template.pieces[-1])
    return "".join(out)


def _copy(translation: Translation, sql: str) -> Translation:
    return Translation(sql, list(translation.columns), translation.limit,
                       list(translation.tables), dict(translation.geometry),
                       dict(translation.aliases))
