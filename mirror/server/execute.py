"""One TAP query from checked parameters to response bytes, shared by /sync and /async jobs."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

from mirror.errors import MirrorError
from mirror.query import Runner
from mirror.server.context import ServiceContext
from mirror.server.formats import render
from mirror.server.params import TapQuery
from mirror.server.products import localise

_USERINFO = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s\"']+@")
_ABSOLUTE_PATH = re.compile(r"(?<![\w:/])/(?:[\w.-]+/)+[\w.-]*")


def run(ctx: ServiceContext, tq: TapQuery, *, timeout: float | None = None,
        wait: float | None = None,
        started: Callable[[Runner | None], None] | None = None) -> tuple[bytes, bool]:
    """The result document of `tq` and whether MAXREC cut it; raises MirrorError."""
    with ctx.runners.runner(wait) as runner:
        if started is not None:
            started(runner)
        try:
            result = runner.query(tq.query, maxrec=tq.maxrec, timeout=timeout)
        finally:
            if started is not None:
                started(None)  # before the runner goes back: no abort may reach its next query
    arrow = localise(result.arrow, ctx)  # outside the slot: the next query may run meanwhile
    return render(result, arrow, tq.format, [("QUERY", tq.query.strip())]), result.overflow


def message(exc: MirrorError, ctx: ServiceContext) -> str:
    """An error as a client should read it: message and hint, no local path."""
    text = exc.message + (f" (hint: {exc.hint})" if exc.hint else "")
    return scrub(text, ctx)


def scrub(text: str, ctx: ServiceContext) -> str:
    """`text` without the catalogue's folders, the home folder or any other absolute path."""
    for folder in _private_folders(ctx):
        text = text.replace(folder, "<local>")
    text = _USERINFO.sub(r"\1", text)  # credentials in a URL: scheme://user:password@host
    return _ABSOLUTE_PATH.sub("<local path>", text)


def _private_folders(ctx: ServiceContext) -> list[str]:
    folders = {str(ctx.config.catalogue_path.parent), str(ctx.config.store_root),
               str(Path.home()), os.getcwd()}
    if ctx.config.file is not None:
        folders.add(str(ctx.config.file.parent))
    return sorted((f for f in folders if len(f) > 1), key=len, reverse=True)
