"""ASGI middleware in front of every route: the bearer token and the request body limit."""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mirror.config import ServeConfig
from mirror.errors import ConfigError

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the service on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def access_token(host: str, serve: ServeConfig) -> str | None:
    """The bearer token the service demands; binding beyond loopback without one is refused,
    and with one is announced loudly."""
    token = serve.token()
    if is_loopback(host):
        return token
    if not serve.token_env:
        raise ConfigError(f"refusing to serve on {host}: that exposes the catalogue beyond "
                          "this machine and no access token is configured",
                          "set serve.token_env to the name of an environment variable "
                          "holding a long random token, or bind 127.0.0.1")
    if token is None:
        raise ConfigError(f"refusing to serve on {host}: the variable ${serve.token_env} "
                          "named by serve.token_env is not set or empty",
                          f"export {serve.token_env}=<a long random token>")
    log.warning("EXPOSED: the TAP service listens on %s, reachable from other machines; every "
                "request must carry the bearer token from $%s", host, serve.token_env)
    return token


class Guard:
    """Refuses requests without the token (401) or with a body over `max_body` bytes (413)."""

    def __init__(self, app: ASGIApp, *, token: str | None, max_body: int) -> None:
        self.app = app
        self.token = token.encode() if token else None
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if self.token is not None and not self._authorised(headers.get(b"authorization", b"")):
            await _answer(send, 401, "a bearer token is required",
                          "send `Authorization: Bearer <token>` (the value of the variable "
                          "named by [serve] token_env)", {"www-authenticate": "Bearer"})
            return
        length = headers.get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.max_body:
            await _answer(send, 413, "the request body is too large",
                          f"send at most {self.max_body // 1024} KiB ([serve] max_body_kb)")
            return
        # the body is read here, up to the limit, and replayed: a body streamed without a
        # Content-Length is refused before any route starts answering
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            if seen > self.max_body:
                await _answer(send, 413, "the request body is too large",
                              f"send at most {self.max_body // 1024} KiB ([serve] max_body_kb)")
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    def _authorised(self, header: bytes) -> bool:
        scheme, _, value = header.partition(b" ")
        assert self.token is not None
        return scheme.lower() == b"bearer" and hmac.compare_digest(value.strip(), self.token)


async def _answer(send: Send, status: int, message: str, hint: str,
                  extra: dict[str, str] | None = None) -> None:
    body = json.dumps({"error": message, "hint": hint}).encode()
    headers: list[Any] = [(b"content-type", b"application/json"),
                          (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
