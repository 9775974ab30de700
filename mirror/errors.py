"""The exception tree of `mirror`: every error says what went wrong and what to do next.

    MirrorError
    ├── ConfigError            the config file is missing, unreadable or has a bad value
    ├── CatalogueError         the local DuckDB catalogue cannot be used
    │   └── CatalogueBusyError another process holds the catalogue (DuckDB admits one writer)
    ├── UpstreamError          a TAP service failed or answered something unusable
    │   ├── TransientError     worth retrying: connection errors, timeouts, 5xx, 429
    │   │   └── RateLimitError 429, knows the server's Retry-After
    │   ├── PermanentError     not worth retrying: 4xx, a query the service refuses
    │   └── AuthError          the archive refused the token or sent a login page
    ├── SyncError              a sync ran but could not prove or apply its result
    │   ├── WithdrawalCapError more records vanished upstream than `max_withdrawals` allows
    │   └── CancelledError     stopped on request (SIGTERM) at a safe point; committed work stays
    ├── StoreError             the product store cannot place, keep or hand out a file
    │   ├── UnsafePathError    a path would leave the store root (hostile or broken name)
    │   └── CollisionError     a different file already sits at the target path
    ├── AdqlError              an ADQL query cannot be translated
    │   ├── AdqlSyntaxError    not ADQL: knows line, column and the offending text
    │   ├── AdqlUnsupportedError valid ADQL this mirror does not implement (names it)
    │   ├── AdqlSecurityError  refused: not a query, or it would touch files, network, settings
    │   ├── AdqlTypeError      parts that do not fit: a geometry as a condition, unconvertible units
    │   ├── UnknownTableError  no such table here; suggests the closest names
    │   └── UnknownColumnError no such column in the query's tables; suggests the closest names
    ├── QueryError             the local catalogue failed a translated query
    │   └── QueryTimeoutError  it ran past its time limit
    └── ExportError            an export, cutout or embedding cannot run as asked

Foreign exceptions are translated at the edge where they occur, always ``raise ... from exc``.
"""

from __future__ import annotations


class MirrorError(Exception):
    """Base of all errors `mirror` raises on purpose; `hint` says what the user can do."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class ConfigError(MirrorError):
    """The configuration is missing, unreadable or has an invalid value."""


class CatalogueError(MirrorError):
    """The local catalogue cannot be opened, migrated or written."""


class CatalogueBusyError(CatalogueError):
    """Another process holds the catalogue read-write."""


class UpstreamError(MirrorError):
    """A TAP service failed or answered something unusable."""

    def __init__(self, message: str, hint: str | None = None, *, url: str | None = None,
                 status: int | None = None) -> None:
        super().__init__(message, hint)
        self.url = url
        self.status = status


class TransientError(UpstreamError):
    """A failure that may go away: connection error, timeout, 5xx, 429."""


class RateLimitError(TransientError):
    """HTTP 429; `retry_after` is the server's wish in seconds, if it said one."""

    def __init__(self, message: str, retry_after: float | None = None, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.retry_after = retry_after


class PermanentError(UpstreamError):
    """A failure that retrying will not fix (4xx, a refused query)."""


class SyncError(MirrorError):
    """A sync could not prove or apply its result."""


class WithdrawalCapError(SyncError):
    """More records vanished upstream than the source's `max_withdrawals` allows."""


class CancelledError(SyncError):
    """Work stopped on request at a safe point (between windows or transfers)."""


class AuthError(UpstreamError):
    """The archive refused our credentials (or sent a login page): stop, store nothing."""


class StoreError(MirrorError):
    """The product store cannot write, move or read a file (disk full, permissions, ...)."""

    def __init__(self, message: str, hint: str | None = None, *,
                 path: str | None = None) -> None:
        super().__init__(message, hint)
        self.path = path


class UnsafePathError(StoreError):
    """A relative path would leave the store root: a bug or a hostile name, never retried."""


class CollisionError(StoreError):
    """A different file already sits at the target path; `existing`/`incoming` are sha256s."""

    def __init__(self, message: str, hint: str | None = None, *, path: str | None = None,
                 existing: str | None = None, incoming: str | None = None) -> None:
        super().__init__(message, hint, path=path)
        self.existing = existing
        self.incoming = incoming


class AdqlError(MirrorError):
    """An ADQL query that cannot be translated to the local catalogue's SQL."""


class AdqlSyntaxError(AdqlError):
    """Not ADQL; `line` and `column` (1-based) point at `text`, the offending part."""

    def __init__(self, message: str, hint: str | None = None, *, query: str = "",
                 line: int = 0, column: int = 0, text: str = "") -> None:
        super().__init__(message, hint)
        self.query = query
        self.line = line
        self.column = column
        self.text = text

    def __str__(self) -> str:
        where = f" (line {self.line}, column {self.column})" if self.line else ""
        out = f"{self.message}{where}"
        lines = self.query.splitlines()
        if 0 < self.line <= len(lines):
            source = lines[self.line - 1].expandtabs(1)
            width = max(1, len(self.text.splitlines()[0]) if self.text else 1)
            out += f"\n  {source}\n  {' ' * max(0, self.column - 1)}{'^' * width}"
        return out if not self.hint else f"{out}\n  hint: {self.hint}"


class AdqlUnsupportedError(AdqlError):
    """Valid ADQL that this mirror does not implement; `construct` names it."""

    def __init__(self, message: str, hint: str | None = None, *, construct: str = "") -> None:
        super().__init__(message, hint)
        self.construct = construct


class AdqlSecurityError(AdqlError):
    """Refused: not a SELECT, or it would touch files, the network or settings."""


class AdqlTypeError(AdqlError):
    """Well-formed ADQL whose parts do not fit (a geometry as a condition, units that differ)."""


class UnknownTableError(AdqlError):
    """A table the catalogue does not have; `suggestions` are the closest known names."""

    def __init__(self, message: str, hint: str | None = None, *,
                 suggestions: tuple[str, ...] = ()) -> None:
        super().__init__(message, hint)
        self.suggestions = suggestions


class UnknownColumnError(AdqlError):
    """A column none of the query's tables has; `suggestions` are the closest names."""

    def __init__(self, message: str, hint: str | None = None, *,
                 suggestions: tuple[str, ...] = ()) -> None:
        super().__init__(message, hint)
        self.suggestions = suggestions


class QueryError(MirrorError):
    """The catalogue refused or failed a query (DuckDB's first line says why)."""


class QueryTimeoutError(QueryError):
    """A query ran longer than its time limit and was stopped."""


# -- errors across the local service: a reader in another process raises the same kind ----------

_WIRE = ("line", "column", "text")


def to_wire(exc: MirrorError) -> dict[str, str]:
    """What a service tells its client about `exc` (beside the message) so the client can raise
    the same kind: `error_kind`, `hint`, and where an ADQL syntax error sits."""
    out = {"error_kind": type(exc).__name__}
    if exc.hint:
        out["hint"] = exc.hint
    if isinstance(exc, AdqlSyntaxError):
        out.update({k: str(getattr(exc, k)) for k in _WIRE if getattr(exc, k)})
    return out


def from_wire(message: str, fields: dict[str, str], query: str = "") -> MirrorError:
    """The error a service described with `to_wire` (QueryError when the kind is not ours)."""
    kind = globals().get(fields.get("error_kind", ""), QueryError)
    if not (isinstance(kind, type) and issubclass(kind, MirrorError)):
        kind = QueryError
    hint = fields.get("hint") or None
    if kind is AdqlSyntaxError:
        line, column = (int(v) if (v := fields.get(k, "")).isdigit() else 0
                        for k in ("line", "column"))
        return AdqlSyntaxError(message, hint, query=query, line=line, column=column,
                               text=fields.get("text", ""))
    try:
        return kind(message, hint)  # type: ignore[no-any-return]
    except TypeError:  # a kind with required extras
        return QueryError(message, hint)


class ExportError(MirrorError):
    """An export, cutout or embedding cannot run as asked (bad grid, folder, column, ...)."""
