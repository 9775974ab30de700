"""Ranked search over every column: names, descriptions, units, UCDs and their explanations.

Each word of the query must match somewhere in a column's text; where it matches sets the score
(an exact name beats a UCD word, which beats a unit, which beats a word of the description).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

from mirror.schema.model import Catalogue, Column

# (field, exact-word score, substring score): what a match in each field is worth
_WEIGHTS = (
    ("name", 100, 40),
    ("ucd", 50, 25),
    ("unit", 45, 0),
    ("description", 20, 8),
    ("ucd_words", 15, 5),
    ("unit_words", 15, 5),
    ("table", 6, 3),
)
_WORD = re.compile(r"[\w.*/+]+")


@dataclass
class Hit:
    """One column the query found, with its score and the words that matched."""

    column: Column
    score: float
    fields: dict[str, list[str]] = field(default_factory=dict)  # field -> query words matched
    also: list[str] = field(default_factory=list)  # other tables with the same column

    def as_dict(self) -> dict[str, object]:
        return {"column": self.column.qualified, "score": self.score, "matched": self.fields,
                "unit": self.column.unit, "ucd": self.column.ucd,
                "description": self.column.description, "also": self.also}


def terms(text: str) -> list[str]:
    """The query's words, lower-cased ('em.wl', 'snr', 'km/s' stay whole)."""
    return [t.lower() for t in _WORD.findall(text)]


def _fields(c: Column) -> dict[str, str]:
    return {"name": c.name, "ucd": c.ucd or "", "unit": c.unit or "",
            "description": c.description or "", "ucd_words": c.ucd_words or "",
            "unit_words": c.unit_words or "", "table": c.table}


def _score(term: str, name: str, text: str, exact: int, partial: int) -> float:
    low = text.lower()
    if not low:
        return 0
    if name == "name":
        if low == term:
            return exact
        return partial * 1.5 if low.startswith(term) else partial if term in low else 0
    if name == "ucd":
        words = [w.strip() for w in low.split(";")]
        if term in words:
            return exact
        atoms = {a for w in words for a in w.split(".")}
        return partial if term in atoms or any(w.startswith(term) for w in words) else 0
    if name == "unit":
        return exact if low == term else 0
    if term in set(terms(low)):
        return exact
    return partial if len(term) >= 3 and term in low else 0


def search(catalogue: Catalogue, text: str, limit: int | None = 50, *,
           group: bool = True) -> list[Hit]:
    """Columns matching every word of `text`, best first; with `group`, a column described
    alike in several tables (ivoa.obscore and each source's) is one hit naming the others."""
    words = terms(text)
    if not words:
        return []
    hits = []
    for column in catalogue.columns():
        texts = _fields(column)
        total = 0.0
        matched: dict[str, list[str]] = {}
        for term in words:
            best = 0.0
            for name, exact, partial in _WEIGHTS:
                score = _score(term, name, texts[name], exact, partial)
                if score:
                    matched.setdefault(name, []).append(term)
                best = max(best, score)
            if not best:
                break
            total += best
        else:
            bonus = 2 * column.principal + (1 if column.standard else 0)
            hits.append(Hit(column, total + bonus, matched))
    order = {t.name: i for i, t in enumerate(catalogue.tables)}
    hits.sort(key=lambda h: (-h.score, order.get(h.column.table, 0), h.column.index))
    if group:
        hits = _grouped(hits)
    return hits[:limit] if limit else hits


def _grouped(hits: list[Hit]) -> list[Hit]:
    first: dict[tuple[str | None, ...], Hit] = {}
    out = []
    for h in hits:
        c = h.column
        key = (c.name.lower(), c.description, c.unit, c.ucd, c.datatype)
        if key in first:
            first[key].also.append(c.table)
        else:
            first[key] = h
            out.append(h)
    return out


def suggestions(catalogue: Catalogue, text: str, n: int = 5) -> list[str]:
    """Close names, UCD words and description words for a query that found nothing."""
    vocabulary: set[str] = set()
    for c in catalogue.columns():
        vocabulary.add(c.name.lower())
        vocabulary.update(w.strip().lower() for w in (c.ucd or "").split(";") if w.strip())
        if c.unit:
            vocabulary.add(c.unit.lower())
        vocabulary.update(w for w in terms(c.description or "") if len(w) > 3)
    out: list[str] = []
    for term in terms(text):
        for close in difflib.get_close_matches(term, sorted(vocabulary), n=n, cutoff=0.6):
            if close not in out:
                out.append(close)
    return out[:n]


def highlight_spans(text: str, words: list[str]) -> list[tuple[int, int]]:
    """(start, end) of every occurrence of the query words in `text`, for highlighting."""
    spans = []
    low = text.lower()
    for w in sorted(set(words), key=len, reverse=True):
        start = low.find(w)
        while start >= 0 and w:
            spans.append((start, start + len(w)))
            start = low.find(w, start + len(w))
    return sorted(spans)
