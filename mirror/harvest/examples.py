"""Replicating a service's own example queries: the DALI examples document at `{tap}/examples`.

DaCHS and others publish XHTML with RDFa: each example is an element with `typeof="example"`
holding `property="name"` and `property="query"` elements; its other text is the description.
pyvo's `TAPService.examples` keeps only the queries, so the document is parsed here (with the
standard library's tolerant HTML parser: the document is XHTML, but not every service's is).
"""

from __future__ import annotations

import logging
import re
from html.parser import HTMLParser
from typing import Any

import sqlalchemy as sa

from mirror.catalogue.engine import utcnow
from mirror.catalogue.models import tap_examples
from mirror.errors import MirrorError
from mirror.harvest.tap import TapClient
from mirror.http import check_response, translate_errors

log = logging.getLogger("mirror")
_VOID = {"br", "img", "hr", "meta", "link", "input", "col", "area", "base", "wbr", "source"}


class _Examples(HTMLParser):
    """Collects (name, description, query) from elements typed `example`."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[dict[str, str | None]] = []
        self._depth = 0            # element depth
        self._example: int | None = None   # depth of the open example element
        self._prop: tuple[str, int] | None = None  # open property element and its depth
        self._parts: dict[str, list[str]] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _VOID:
            return
        self._depth += 1
        a = dict(attrs)
        if self._example is None and "example" in (a.get("typeof") or "").split():
            self._example, self._parts = self._depth, {"name": [], "query": [], "text": []}
        elif self._example is not None and self._prop is None:
            prop = (a.get("property") or "").strip()
            if prop in ("name", "query"):
                self._prop = (prop, self._depth)
        if tag in ("p", "li", "br", "div") and self._example is not None and self._prop is None:
            self._parts["text"].append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _VOID:
            return
        if self._prop is not None and self._prop[1] == self._depth:
            self._prop = None
        if self._example is not None and self._example == self._depth:
            self._finish()
        self._depth -= 1

    def handle_data(self, data: str) -> None:
        if self._example is None:
            return
        self._parts[self._prop[0] if self._prop else "text"].append(data)

    def _finish(self) -> None:
        name = " ".join("".join(self._parts["name"]).split())
        query = "".join(self._parts["query"]).strip()
        text = "\n".join(" ".join(p.split()) for p in "".join(self._parts["text"]).split("\n"))
        if query:
            self.found.append({"name": name or query.splitlines()[0][:80], "query": query,
                               "description": re.sub(r"\n{2,}", "\n", text).strip() or None})
        self._example = None


def parse_examples(document: str) -> list[dict[str, Any]]:
    """The examples of a DALI examples document, in document order."""
    parser = _Examples()
    parser.feed(document)
    parser.close()
    return parser.found


def read_examples(client: TapClient) -> list[dict[str, Any]]:
    """The service's examples; none when it publishes no document (examples are optional)."""
    url = client.url + "/examples"
    try:
        with translate_errors(url):
            response = client.session.get(url, timeout=client.timeout)
            check_response(response, url)
    except MirrorError as exc:
        log.info("no TAP examples at %s (%s)", url, exc.message)
        return []
    return parse_examples(response.text)


def replace_examples(conn: sa.Connection, source: str, rows: list[dict[str, Any]]) -> None:
    """Replace a source's replicated examples."""
    conn.execute(tap_examples.delete().where(tap_examples.c.source == source))
    now = utcnow()
    if rows:
        conn.execute(tap_examples.insert(), [
            {"source": source, "seq": i, "fetched_at": now, **row} for i, row in enumerate(rows)])
