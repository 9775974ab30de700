"""The daemon's logs: readable lines by default, JSON lines for log collectors, never a secret.

Tokens come from environment variables named by `token_env` and are never passed to a log call;
`RedactFilter` is the second line of defence: any configured token value that reaches a record
(message, arguments, traceback, extra fields) is replaced before a handler writes it.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO

from mirror.config import Config

MASK = "***"
MIN_SECRET = 4  # shorter values would mask ordinary words
# attributes every LogRecord has; anything else was passed with `extra=` and is a field
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime",
                                                                           "taskName"}


_SOURCE: ContextVar[str | None] = ContextVar("mirror_log_source", default=None)


@contextmanager
def for_source(name: str) -> Iterator[None]:
    """Records logged by this thread meanwhile carry `source=name` (the harvester and the
    fetcher log without it; a collector filters JSON lines by the field)."""
    token = _SOURCE.set(name)
    try:
        yield
    finally:
        _SOURCE.reset(token)


class SourceFilter(logging.Filter):
    """Give a record without a `source` field the source being run in its thread, if any."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "source", None) is None:
            name = _SOURCE.get()
            if name is not None:
                record.source = name
        return True


def secrets_of(config: Config) -> list[str]:
    """Every token value the config refers to (sources and the service)."""
    values = [src.token() for src in config.sources]
    serve = getattr(config, "serve", None)
    if serve is not None and hasattr(serve, "token"):
        values.append(serve.token())
    return sorted({v for v in values if v and len(v) >= MIN_SECRET}, key=len, reverse=True)


class RedactFilter(logging.Filter):
    """Replace secret values in a record; `secrets` is re-read per record (config reloads)."""

    def __init__(self, secrets: Callable[[], Iterable[str]]) -> None:
        super().__init__()
        self.secrets = secrets

    def redact(self, text: str) -> str:
        for secret in self.secrets():
            text = text.replace(secret, MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = list(self.secrets())
        if not secrets:
            return True
        record.msg, record.args = self.redact(record.getMessage()), None
        if record.exc_info:
            record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        for key, value in list(vars(record).items()):
            if key not in _STANDARD and isinstance(value, str):
                setattr(record, key, self.redact(value))
        return True


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """The `extra=` fields of a record."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, event, source, message, and any extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        extra = fields(record)
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "event": extra.pop("event", record.name),
            "source": extra.pop("source", None),
            "message": record.getMessage()}
        out.update(extra)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["traceback"] = record.exc_text
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """`2026-01-01 12:00:00 INFO  eso: message` for people reading a terminal or journal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-5s %(prefix)s%(message)s",
                         datefmt="%Y-%m-%d %H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        source = getattr(record, "source", None)
        said = source and record.getMessage().startswith(f"{source}:")  # named it already
        record.prefix = f"{source}: " if source and not said else ""
        return super().format(record)


def setup(fmt: str, secrets: Callable[[], Iterable[str]], *, debug: bool = False,
          stream: TextIO | None = None) -> logging.Handler:
    """Route every log record through one redacting handler in the chosen format."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(SourceFilter())
    handler.addFilter(RedactFilter(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    for name in ("mirror",):  # the CLI may have set it quieter
        logging.getLogger(name).setLevel(logging.NOTSET)
    for noisy in ("urllib3", "uvicorn.access", "watchdog", "asyncio", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return handler
