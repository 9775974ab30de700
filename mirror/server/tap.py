"""TAP 1.1 synchronous queries (`/sync`) and the error answers every TAP route shares."""

from __future__ import annotations

import functools

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from mirror.errors import MirrorError, to_wire
from mirror.server import votable
from mirror.server.context import ServiceContext
from mirror.server.execute import message, run, scrub
from mirror.server.formats import VOTABLE
from mirror.server.params import read_params, tap_query
from mirror.server.pool import PoolBusyError


def error_response(exc: MirrorError, ctx: ServiceContext, status: int | None = None) -> Response:
    """A DALI error VOTable: 400 for a malformed request, 503 when busy, else `status`/200."""
    code = status or getattr(exc, "status", None) or 200
    headers = {}
    if isinstance(exc, PoolBusyError):
        code, headers = 503, {"Retry-After": str(exc.retry_after)}
    wire = [(k, scrub(v, ctx)) for k, v in to_wire(exc).items()]  # a reader re-raises the kind
    return Response(votable.error_document(message(exc, ctx), wire), status_code=code,
                    media_type=VOTABLE, headers=headers)


def sync_endpoint(ctx: ServiceContext):  # noqa: ANN201 (a starlette endpoint)
    """GET/POST /sync: run the query now and answer its result (or its error) directly."""

    async def sync(request: Request) -> Response:
        try:
            params = await read_params(request)
            tq = tap_query(params, ctx.runners.maxrec)
            work = functools.partial(run, ctx, tq, timeout=duration(params, ctx))
            body, _ = await ctx.workers.run(work)
        except MirrorError as exc:
            return error_response(exc, ctx)
        return Response(body, media_type=tq.format.mime)

    return sync


class SyncRoute:
    """GET and form-POST /sync taken before the router: the same endpoint and answer, without
    the layers in between (exception middleware, route matching, request/response wrappers:
    ~0.1 ms of a small cone search's ~1 ms service overhead). Everything else, HEAD /sync and
    multipart bodies (whose parse errors the exception middleware answers) included, goes on to
    the router. Sits inside the Guard: the token and the body limit apply as before."""

    def __init__(self, app: ASGIApp, *, ctx: ServiceContext) -> None:
        self.app = app
        self.sync = sync_endpoint(ctx)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/sync" and not scope.get("root_path") \
                and _plain(scope):
            response = await self.sync(Request(scope, receive, send))
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _plain(scope: Scope) -> bool:
    """A GET, or a POST whose body is URL-encoded (or absent)."""
    if scope["method"] == "GET":
        return True
    if scope["method"] != "POST":
        return False
    kind = next((v for k, v in scope["headers"] if k == b"content-type"), b"")
    return not kind.startswith(b"multipart/")


def duration(params: dict[str, str], ctx: ServiceContext) -> float | None:
    """EXECUTIONDURATION on /sync (a local reader's --timeout), never above the service's own
    limit; absent or unreadable: the service's limit."""
    try:
        asked = float(params.get("executionduration", ""))
    except ValueError:
        return None
    return min(asked, ctx.runners.timeout) if asked > 0 else None
