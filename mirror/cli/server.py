"""`mirror serve`: the local TAP service in the foreground (registered by `mirror.cli`)."""

from __future__ import annotations

import argparse
import contextlib
import socket
from collections.abc import Callable

import uvicorn

from mirror.api import Mirror
from mirror.cli.output import err, out
from mirror.errors import MirrorError
from mirror.server.app import build_app
from mirror.server.context import ServiceContext
from mirror.server.guard import access_token

Command = Callable[[str, str], argparse.ArgumentParser]


def register(command: Command) -> None:
    """Add this module's subcommands; each parser sets `handler` (mirror, args) -> exit code."""
    parser = command("serve", help="serve the catalogue as a TAP service (TOPCAT, pyvo, "
                                   "other mirrors) until interrupted")
    parser.add_argument("--host", help="address to bind (default: [serve] host, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="TCP port (default: [serve] port; 0: any)")
    parser.set_defaults(handler=cmd_serve)


def cmd_serve(mirror: Mirror, args: argparse.Namespace) -> int:
    serve = mirror.config.serve
    host = args.host or serve.host
    port = serve.port if args.port is None else args.port
    token = access_token(host, serve)
    catalogue = mirror.catalogue(write=True)
    ctx = ServiceContext(catalogue, mirror.config, token=token,
                         status=lambda: [s.as_dict() for s in mirror.status()])
    sock = _bind(host, port)
    shown = f"[{host}]" if ":" in host else host
    ctx.base_url = f"http://{shown}:{sock.getsockname()[1]}"
    app = build_app(ctx)
    if not args.quiet:
        out.print(f"TAP service at {ctx.base_url} (Ctrl-C stops it)", highlight=False)
        err.print(f"  TOPCAT: File > Load Table > TAP, URL {ctx.base_url}; "
                  f"pyvo: pyvo.dal.TAPService({ctx.base_url!r})", highlight=False)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                           timeout_graceful_shutdown=5))
    try:
        server.run(sockets=[sock])  # uvicorn stops gracefully on SIGINT and SIGTERM
    finally:
        ctx.close()
        with contextlib.suppress(OSError):
            sock.close()
    return 0


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise MirrorError(f"cannot listen on {host}:{port}: {exc.strerror}",
                          "give another --port (0 picks a free one) or stop whatever uses it") \
            from exc
    sock.listen(128)
    sock.set_inheritable(True)
    return sock
