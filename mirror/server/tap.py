"""TAP 1.1 synchronous queries (`/sync`) and the error answers every TAP route shares."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from mirror.errors import MirrorError
from mirror.server import votable
from mirror.server.context import ServiceContext
from mirror.server.execute import message, run
from mirror.server.formats import VOTABLE
from mirror.server.params import read_params, tap_query
from mirror.server.pool import PoolBusyError


def error_response(exc: MirrorError, ctx: ServiceContext, status: int | None = None) -> Response:
    """A DALI error VOTable: 400 for a malformed request, 503 when busy, else `status`/200."""
    code = status or getattr(exc, "status", None) or 200
    headers = {}
    if isinstance(exc, PoolBusyError):
        code, headers = 503, {"Retry-After": str(exc.retry_after)}
    return Response(votable.error_document(message(exc, ctx)), status_code=code,
                    media_type=VOTABLE, headers=headers)


def sync_endpoint(ctx: ServiceContext):  # noqa: ANN201 (a starlette endpoint)
    """GET/POST /sync: run the query now and answer its result (or its error) directly."""

    async def sync(request: Request) -> Response:
        try:
            params = await read_params(request)
            tq = tap_query(params, ctx.runners.maxrec)
            body, _ = await run_in_threadpool(run, ctx, tq)
        except MirrorError as exc:
            return error_response(exc, ctx)
        return Response(body, media_type=tq.format.mime)

    return sync
