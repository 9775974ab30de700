"""DataLink resolution: products whose access_url is a DataLink document (as at ESO).

IDs are batched per DataLink service, read with pyvo, and mapped back by the `ID` column; a
service may answer fewer IDs than it was asked (DaCHS' `//obscore#dl` redirects on the first
image id and answers only that one), so unanswered IDs are asked again, one per request.
"""

from __future__ import annotations

import io
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import requests
from astropy.io.votable import parse as parse_votable

from mirror.errors import MirrorError
from mirror.http import check_response, translate_errors
from mirror.retry import RetryPolicy

log = logging.getLogger("mirror")
DATALINK_FORMAT = "content=datalink"
BATCH = 50


def is_datalink(access_format: str | None) -> bool:
    return bool(access_format) and DATALINK_FORMAT in (access_format or "").replace(" ", "").lower()


@dataclass
class Links:
    """What DataLink says about one product."""

    this: str | None = None
    size: int | None = None
    content_type: str | None = None
    auxiliary: list[str] = field(default_factory=list)
    error: str | None = None


def resolve(products: Iterable[tuple[str, str]], session: requests.Session,
            policy: RetryPolicy, timeout: float = 60.0) -> dict[str, Links]:
    """(product_id, access_url) pairs -> Links per product_id."""
    groups: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for pid, url in products:
        base, link_id = _split(url)
        groups[base].append((pid, link_id or pid))
    out: dict[str, Links] = {}
    for base, items in groups.items():
        for i in range(0, len(items), BATCH):
            batch = items[i:i + BATCH]
            answered = _ask(base, [lid for _, lid in batch], session, policy, timeout)
            for pid, lid in batch:
                if lid not in answered:  # not in the batch answer: ask alone
                    answered.update(_ask(base, [lid], session, policy, timeout))
                out[pid] = answered.get(lid, Links(error="the DataLink service did not "
                                                         "answer for this ID"))
    return out


def _split(url: str) -> tuple[str, str | None]:
    parts = urlsplit(url)
    params = parse_qsl(parts.query, keep_blank_values=True)
    link_id = next((v for k, v in params if k.upper() == "ID"), None)
    rest = urlencode([(k, v) for k, v in params if k.upper() != "ID"])
    return urlunsplit(parts._replace(query=rest)), link_id


def _ask(base: str, ids: Sequence[str], session: requests.Session, policy: RetryPolicy,
         timeout: float) -> dict[str, Links]:
    def get() -> bytes:
        with translate_errors(base):
            response = session.get(base, params=[("ID", i) for i in ids], timeout=timeout)
            check_response(response, base)
            return response.content
    try:
        body = policy.call(get, "DataLink request")
        with translate_errors(base):
            from pyvo.dal.adhoc import DatalinkResults  # pyvo: 0.3 s of start-up

            results = DatalinkResults(parse_votable(io.BytesIO(body)), url=base,
                                               session=session)
    except MirrorError as exc:
        log.warning("DataLink %s failed for %d ids: %s", base, len(ids), exc.message)
        return {i: Links(error=exc.message) for i in ids} if len(ids) == 1 else {}
    return _links(results)


def _links(results: Any) -> dict[str, Links]:
    out: dict[str, Links] = {}
    for row in results:
        lid = str(row["ID"])
        links = out.setdefault(lid, Links())
        error = _text(row, "error_message")
        semantics = (_text(row, "semantics") or "").strip()
        url = _text(row, "access_url")
        if error and not url:
            links.error = error
        elif semantics == "#this" and url:
            links.this, links.content_type = url, _text(row, "content_type")
            size = _text(row, "content_length")
            links.size = int(float(size)) if size else None
        elif semantics == "#auxiliary" and url:
            links.auxiliary.append(url)
    return out


def _text(row: object, name: str) -> str | None:
    try:
        value = row[name]  # type: ignore[index]
    except (KeyError, IndexError):
        return None
    if value is None or str(value) in ("", "--"):
        return None
    return value.decode() if isinstance(value, bytes) else str(value)
