"""The ASGI application: TAP 1.1 routes, VOSI, DALI examples and the mirror's status."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from mirror.errors import MirrorError
from mirror.server import examples as dali_examples
from mirror.server import uws, vosi
from mirror.server.context import ServiceContext
from mirror.server.guard import Guard
from mirror.server.jobs import JobStore
from mirror.server.products import routes as product_routes
from mirror.server.tap import SyncRoute, error_response, sync_endpoint

XML = "text/xml"
_USERINFO = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s\"]+@")


def jobs_folder(catalogue: Path) -> Path:
    """Where async jobs and their results live: a folder beside the catalogue file."""
    return catalogue.with_name(f"{catalogue.stem}.jobs")


def build_app(ctx: ServiceContext) -> Starlette:
    """The service's routes over `ctx`; TAP endpoints sit at the root of the base URL."""
    store = JobStore(ctx, jobs_folder(ctx.config.catalogue_path))
    ctx.closers.append(store.close)  # a LocalService runs without lifespan events
    up_since = dt.datetime.now(dt.UTC)

    async def capabilities(request: Request) -> Response:
        return Response(vosi.capabilities(ctx, ctx.link_base(request)), media_type=XML)

    async def availability(request: Request) -> Response:
        return Response(vosi.availability(True, up_since, "the local mirror answers ADQL"),
                        media_type=XML)

    async def tables(request: Request) -> Response:
        name = request.path_params.get("name")
        try:
            doc = await run_in_threadpool(_tableset, ctx, name)
        except MirrorError as exc:
            return error_response(exc, ctx, 500)
        if doc is None:
            return PlainTextResponse(f"no table {str(name)[:100]!r} here; GET /tables lists them",
                                     status_code=404)
        return Response(doc, media_type=XML)

    async def examples(request: Request) -> Response:
        items = await run_in_threadpool(dali_examples.examples, ctx)
        return Response(dali_examples.document(items), media_type="application/xhtml+xml")

    async def status(request: Request) -> Response:
        rows = await run_in_threadpool(ctx.status) if ctx.status else []
        wanted = request.query_params.get("runs", "")
        if not wanted.isdigit():
            return _json(rows)
        history = await run_in_threadpool(_runs, ctx, min(int(wanted), 10_000),
                                          request.query_params.get("source") or None)
        return _json({"sources": rows, "runs": history})  # `mirror status --runs N` elsewhere

    async def state(request: Request) -> Response:
        if ctx.state is None:
            return JSONResponse({"error": "no daemon runs in this service"}, status_code=404)
        return _json(await run_in_threadpool(ctx.state))

    async def index(request: Request) -> Response:
        here = ctx.link_base(request)
        return PlainTextResponse(
            f"mirror: a local TAP service\nTAP base URL: {here}\n"
            f"capabilities: {here}/capabilities\ntables: {here}/tables\n")

    routes = [Route("/", index),
              Route("/sync", sync_endpoint(ctx), methods=["GET", "POST"]),
              *uws.routes(store),
              Route("/capabilities", capabilities), Route("/availability", availability),
              Route("/tables", tables), Route("/tables/{name}", tables),
              Route("/examples", examples),
              Route("/mirror/status", status), Route("/mirror/state", state),
              *product_routes(ctx)]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        store.close()

    middleware = [Middleware(Guard, token=ctx.token,
                             max_body=ctx.config.serve.max_body_kb * 1024),
                  Middleware(SyncRoute, ctx=ctx)]  # /sync's short way, behind the guard
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.ctx = ctx
    app.state.jobs = store
    return app


def _tableset(ctx: ServiceContext, only: str | None = None) -> str | None:
    def rows(adql: str) -> list[dict[str, Any]]:
        with ctx.runners.runner() as r:
            return r.query(adql, maxrec=1_000_000).arrow.to_pylist()

    return vosi.tableset(rows("SELECT * FROM TAP_SCHEMA.schemas"),
                         rows("SELECT * FROM TAP_SCHEMA.tables"),
                         rows("SELECT * FROM TAP_SCHEMA.columns"),
                         rows("SELECT * FROM TAP_SCHEMA.keys"),
                         rows("SELECT * FROM TAP_SCHEMA.key_columns"), only)


def _runs(ctx: ServiceContext, limit: int, source: str | None) -> list[dict[str, Any]]:
    """The newest sync runs, read beside the writer on a connection of their own."""
    from mirror.catalogue import runs

    with ctx.catalogue.reader() as conn:
        return [dict(r._mapping) for r in runs.runs(conn, source, limit)]


def _json(value: Any) -> Response:
    """JSON without credentials: `user:password@` in any URL (a source's, say) is dropped."""
    text = _USERINFO.sub(r"\1", json.dumps(value, default=str))
    return Response(text, media_type="application/json")
