"""The ASGI application: TAP 1.1 routes, VOSI, DALI examples and the mirror's status."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mirror.server.context import ServiceContext
from mirror.server.products import routes as product_routes


def build_app(ctx: ServiceContext) -> Starlette:
    """The service's routes over `ctx`; TAP endpoints sit at the root of the base URL."""

    async def status(request: Request) -> Response:
        return JSONResponse(ctx.status() if ctx.status else [])

    async def state(request: Request) -> Response:
        if ctx.state is None:
            return JSONResponse({"error": "no daemon runs in this service"}, status_code=404)
        return JSONResponse(ctx.state())

    routes = [Route("/mirror/status", status), Route("/mirror/state", state),
              *product_routes(ctx)]
    app = Starlette(routes=routes)
    app.state.ctx = ctx
    return app
