"""The TAP seam: every request to a service goes through `TapClient`.

Pages come back as CSV bytes (fast to load); metadata and TAP_SCHEMA as VOTables (exact text,
full field descriptions), interpreted by pyvo. HTTP and pyvo failures are translated here into
`TransientError` (retried by the policy) or `PermanentError` (reported at once).
"""

from __future__ import annotations

import email.utils
import io
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import pyvo
import requests
from astropy.io.votable import parse as parse_votable
from astropy.table import Table

from mirror import __version__
from mirror.errors import PermanentError, RateLimitError, TransientError, UpstreamError
from mirror.catalogue.types import ColumnSpec
from mirror.retry import RetryPolicy

log = logging.getLogger("mirror")
USER_AGENT = f"mirror/{__version__} (IVOA archive mirror; pyvo/{pyvo.__version__})"


@dataclass(frozen=True)
class Limits:
    """Row limits a service announces in its capabilities (None: not announced)."""

    maxrec: int | None
    hardlimit: int | None


class HostBearer(requests.auth.AuthBase):
    """Bearer token sent only to the archive's own host, never on redirects elsewhere."""

    def __init__(self, token: str, host: str) -> None:
        self._token = token
        self._host = host

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        if urlsplit(r.url or "").hostname == self._host:
            r.headers["Authorization"] = f"Bearer {self._token}"
        return r

    def __repr__(self) -> str:  # never show the token, even in a debugger or a log of objects
        return f"HostBearer(host={self._host!r})"


def make_session(url: str, token: str | None) -> requests.Session:
    """An HTTP session with an honest User-Agent and, if given, a host-bound bearer token."""
    session = requests.Session()
    session.headers["User-Agent"] = USER_AGENT
    if token:
        session.auth = HostBearer(token, urlsplit(url).hostname or "")
    return session


class TapClient:
    """One TAP service: sync or async queries, with retries on transient failures."""

    def __init__(self, url: str, *, session: requests.Session | None = None,
                 token: str | None = None, timeout: float = 120.0,
                 policy: RetryPolicy | None = None, mode: str = "sync") -> None:
        self.url = url.rstrip("/")
        self.session = session or make_session(self.url, token)
        self.timeout = timeout
        self.policy = policy or RetryPolicy()
        self.mode = mode

    def limits(self) -> Limits:
        """The service's MAXREC default and hard limit, from its capabilities (if it has any)."""
        def ask() -> Limits:
            with translate_errors(self.url + "/capabilities"):
                svc = pyvo.dal.TAPService(self.url, session=self.session)
                return Limits(_int(svc.maxrec), _int(svc.hardlimit))
        try:
            return self.policy.call(ask, "reading capabilities")
        except PermanentError as exc:
            log.info("no usable capabilities at %s (%s); assuming no row limit is announced",
                     self.url, exc.message)
            return Limits(None, None)

    def csv(self, adql: str, maxrec: int | None = None) -> bytes:
        """Run a query and return the CSV body (header line first)."""
        return self.policy.call(lambda: self._run(adql, "csv", maxrec), "TAP query")

    def table(self, adql: str, maxrec: int | None = None) -> Table:
        """Run a query and return an astropy Table from the VOTable answer."""
        def ask() -> Table:
            body = self._run(adql, "votable", maxrec)
            with translate_errors(self.url):
                results = pyvo.dal.TAPResults(parse_votable(io.BytesIO(body)), url=self.url,
                                              session=self.session)
                return results.to_table()
        return self.policy.call(ask, "TAP query")

    def columns(self, table: str) -> list[ColumnSpec]:
        """Every column the service publishes for `table`, with its VOTable description."""
        from mirror.harvest.plan import metadata_query

        body = self.policy.call(lambda: self._run(metadata_query(table), "votable", 0),
                                "reading column metadata")
        with translate_errors(self.url):
            fields = parse_votable(io.BytesIO(body)).get_first_table().fields
        return [_spec(f) for f in fields]

    def _run(self, adql: str, fmt: str, maxrec: int | None) -> bytes:
        if self.mode == "async":
            return self._run_async(adql, fmt, maxrec)
        params = {"REQUEST": "doQuery", "LANG": "ADQL", "FORMAT": fmt, "QUERY": adql}
        if maxrec is not None:
            params["MAXREC"] = str(maxrec)
        url = self.url + "/sync"
        with translate_errors(url):
            response = self.session.post(url, data=params, timeout=self.timeout)
            check_response(response, url)
            return response.content

    def _run_async(self, adql: str, fmt: str, maxrec: int | None) -> bytes:
        url = self.url + "/async"
        with translate_errors(url):
            job = pyvo.dal.AsyncTAPJob.create(self.url, adql, maxrec=maxrec,
                                              session=self.session, FORMAT=fmt)
            try:
                job.run()
                job.wait(phases={"COMPLETED", "ERROR", "ABORTED"}, timeout=self.timeout)
                job.raise_if_error()
                response = self.session.get(job.result_uri, timeout=self.timeout)
                check_response(response, job.result_uri)
                return response.content
            finally:
                try:
                    job.delete()
                except Exception:  # noqa: BLE001 - a job left behind expires on its own
                    log.debug("could not delete async job %s", job.url)


def _int(value: object) -> int | None:
    try:
        return int(value) if value is not None else None  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None


def _spec(field: object) -> ColumnSpec:
    f = field  # astropy.io.votable.tree.Field
    values = getattr(f, "values", None)
    null = getattr(values, "null", None) if values is not None else None
    arraysize = getattr(f, "arraysize", None)
    return ColumnSpec(
        name=str(getattr(f, "name", None) or getattr(f, "ID")),
        datatype=str(getattr(f, "datatype", "char")),
        arraysize=str(arraysize) if arraysize is not None else None,
        xtype=getattr(f, "xtype", None), unit=str(f.unit) if getattr(f, "unit", None) else None,
        ucd=getattr(f, "ucd", None), utype=getattr(f, "utype", None),
        description=getattr(f, "description", None),
        null_value=str(null) if null is not None else None)


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds: either a number or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def check_response(response: requests.Response, url: str) -> None:
    """Raise the right error for a non-2xx answer (or a 2xx VOTable carrying an error)."""
    status = response.status_code
    if status == 429:
        raise RateLimitError(f"{url} asks us to slow down (HTTP 429)",
                             retry_after=retry_after_seconds(response.headers.get("Retry-After")),
                             url=url, status=status)
    if status >= 500 or status in (408, 425):
        raise TransientError(f"{url} answered HTTP {status}", url=url, status=status)
    if status >= 400:
        raise PermanentError(f"{url} refused the request (HTTP {status}): {_reason(response)}",
                             "check the source's url, table and where in the config",
                             url=url, status=status)


def _reason(response: requests.Response) -> str:
    """The service's own words: a VOTable QUERY_STATUS message, or the start of the body."""
    try:
        votable = parse_votable(io.BytesIO(response.content))
        for info in votable.iter_infos():
            if info.name == "QUERY_STATUS" and info.value == "ERROR":
                return (info.content or "error").strip()[:500]
    except Exception:  # noqa: BLE001 - not a VOTable: fall back to the text
        pass
    return response.text.strip()[:300] or response.reason


@contextmanager
def translate_errors(url: str) -> Iterator[None]:
    """Map requests' and pyvo's exceptions onto ours, most specific first."""
    try:
        yield
    except UpstreamError:
        raise
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise TransientError(f"{url}: {type(exc).__name__}: {exc}", url=url) from exc
    except pyvo.dal.DALQueryError as exc:
        raise PermanentError(f"{url} refused the query: {exc.reason}",
                             "check the ADQL in the source's where setting", url=url) from exc
    except pyvo.dal.DALServiceError as exc:
        code = exc.code or 0
        if code == 429:
            raise RateLimitError(f"{url} asks us to slow down (HTTP 429)", url=url,
                                 status=code) from exc
        if code >= 500 or isinstance(exc.cause, (requests.ConnectionError, requests.Timeout)):
            raise TransientError(f"{url}: {exc.reason}", url=url, status=code) from exc
        raise PermanentError(f"{url}: {exc.reason}", url=url, status=code) from exc
    except requests.RequestException as exc:
        raise PermanentError(f"{url}: {exc}", url=url) from exc
    except (ValueError, IndexError) as exc:  # astropy cannot parse what came back
        raise PermanentError(f"{url} answered something that is not a VOTable: {exc}",
                             "is the source's url a TAP service?", url=url) from exc
