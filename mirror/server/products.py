"""Local products and DataLink (stub until the tap-products work lands: no routes, rows as-is)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa

if TYPE_CHECKING:
    from starlette.routing import BaseRoute

    from mirror.server.context import ServiceContext


def routes(ctx: ServiceContext) -> list[BaseRoute]:
    """Routes serving stored products (`/products/{key}`) and DataLink (`/datalink`)."""
    return []


def localise(table: pa.Table, ctx: ServiceContext) -> pa.Table:
    """Point `access_url` of rows whose product is stored at this service's copy."""
    return table
