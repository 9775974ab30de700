"""`mirror serve`: the local TAP service in the foreground (registered by `mirror.cli`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from mirror.api import Mirror
from mirror.cli.output import err, out

Command = Callable[..., argparse.ArgumentParser]  # command(name, help=...)


def register(command: Command) -> None:
    """Add this module's subcommands; each parser sets `handler` (mirror, args) -> exit code."""
    parser = command("serve", help="serve the catalogue as a TAP service (TOPCAT, pyvo, "
                                   "other mirrors) until interrupted")
    parser.add_argument("--host", help="address to bind (default: [serve] host, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="TCP port (default: [serve] port; 0: any)")
    parser.set_defaults(handler=cmd_serve)


def cmd_serve(mirror: Mirror, args: argparse.Namespace) -> int:
    from mirror.server.context import ServiceContext
    from mirror.server.guard import access_token
    from mirror.server.service import LocalService

    serve = mirror.config.serve
    host = args.host or serve.host
    port = serve.port if args.port is None else args.port
    token = access_token(host, serve)  # refuses an exposed address without a token
    # many small queries at once: one DuckDB thread each beats several threads per query
    catalogue = mirror.catalogue(write=True, threads=serve.threads)
    ctx = ServiceContext(catalogue, mirror.config, token=token,
                         status=lambda: [s.as_dict() for s in mirror.status()])
    service = LocalService(ctx, host, port)
    try:
        url = service.start()
        if not args.quiet:
            out.print(f"TAP service at {url} (Ctrl-C stops it)", highlight=False)
            err.print(f"  TOPCAT: VO > Table Access Protocol, TAP URL {url}; "
                      f"pyvo: pyvo.dal.TAPService({url!r})", highlight=False)
        service.serve_forever()  # until SIGINT or SIGTERM
    finally:
        service.stop()
        ctx.close()
    return 0
