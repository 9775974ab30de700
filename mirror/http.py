"""The HTTP seam shared by harvesting and fetching: sessions, and errors translated into ours.

requests' and pyvo's exceptions become `TransientError` (retried by a `RetryPolicy`) or
`PermanentError` (reported at once) here and nowhere else.
"""

from __future__ import annotations

import email.utils
import io
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from urllib.parse import urlsplit

import requests
import requests.auth
import urllib3
from astropy.io.votable import parse as parse_votable

from mirror import __version__
from mirror.errors import PermanentError, RateLimitError, TransientError, UpstreamError

USER_AGENT = f"mirror/{__version__} (IVOA archive mirror; pyvo/{metadata.version('pyvo')})"


class HostBearer(requests.auth.AuthBase):
    """Bearer token sent only to the archive's own host, never on redirects elsewhere."""

    def __init__(self, token: str, host: str, port: int | None = None) -> None:
        self._token = token
        self._host = host
        self._port = port

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        if origin(r.url or "") == (self._host, self._port):
            r.headers["Authorization"] = f"Bearer {self._token}"
        return r

    def __repr__(self) -> str:  # never show the token, even in a debugger or a log of objects
        return f"HostBearer(host={self._host!r})"


def make_session(url: str, token: str | None) -> requests.Session:
    """An HTTP session with an honest User-Agent and, if given, a host-bound bearer token."""
    session = requests.Session()
    session.headers["User-Agent"] = USER_AGENT
    if token:
        session.auth = HostBearer(token, *origin(url))
    return session


def origin(url: str) -> tuple[str, int | None]:
    """(host, port) with the scheme's default port filled in: a token belongs to one service."""
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.hostname or "", parts.port or default


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
    import pyvo.dal  # here, not at the top: pyvo costs 0.3 s of every command's start-up

    try:
        yield
    except UpstreamError:
        raise
    except (requests.ConnectionError, requests.Timeout,
            requests.exceptions.ChunkedEncodingError, urllib3.exceptions.HTTPError) as exc:
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
