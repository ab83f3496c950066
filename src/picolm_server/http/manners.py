"""HTTP manners that browsers, proxies and curl expect of any server.

``HEAD`` answered wherever ``GET`` is, ``Allow`` on a 405, the ``Bearer`` scheme in any
case (or the key in ``x-api-key``), comment pings on a quiet event stream, and an
unexpected exception answered in the OpenAI error envelope by a middleware that sits
inside CORS and the request log, so that even that answer carries their headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import APIError
from .errors import error_response

logger = logging.getLogger("picolm_server")

SSE_PING = b": ping\n\n"
_PING_MESSAGE: Message = {"type": "http.response.body", "body": SSE_PING, "more_body": True}


def bearer_token(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The credentials of an ``Authorization: Bearer <token>`` header, the scheme in any
    case (RFC 9110 says schemes are case-insensitive); ``b""`` for another scheme and
    None when there is no such header."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" else b""
    return None


def api_key_header(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The ``x-api-key`` header (Anthropic's clients send the key there), or None."""
    for name, value in headers:
        if name == b"x-api-key":
            return value.strip()
    return None


def allow_header(headers: Mapping[str, str] | None) -> dict[str, str]:
    """A 405's headers with ``HEAD`` listed wherever ``GET`` is (it is answered too)."""
    result = dict(headers or {})
    methods = [method.strip() for method in result.get("Allow", "").split(",") if method.strip()]
    if "GET" in methods and "HEAD" not in methods:
        methods.append("HEAD")
    if methods:
        result["Allow"] = ", ".join(sorted(methods))
    return result


class HeadAsGetMiddleware:
    """Answer ``HEAD`` as ``GET`` without the body (the headers stay those of ``GET``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        # A copy: the server's own scope must keep saying HEAD so it sends no body.
        inner = {**scope, "method": "GET"}

        async def send_headers_only(message: Message) -> None:
            if message["type"] == "http.response.start":
                if "route" in inner:  # which route answered, for the request log
                    scope["route"] = inner["route"]
            elif message["type"] == "http.response.body":
                if message.get("more_body"):
                    return
                message = {**message, "body": b""}
            await send(message)

        await self.app(inner, receive, send_headers_only)


def _is_event_stream(message: Message) -> bool:
    for name, value in message.get("headers", []):
        if name.lower() == b"content-type":
            return bool(value.startswith(b"text/event-stream"))
    return False


class SSEPingMiddleware:
    """Send an SSE comment (``: ping``) whenever an event stream has been quiet for
    ``interval`` seconds: PicoLM can compute a long prompt for tens of seconds before the
    first token, and proxies and clients give up on a silent connection. Clients skip
    comment lines (the SSE specification; the openai SDKs do)."""

    def __init__(self, app: ASGIApp, interval: float) -> None:
        self.app = app
        self.interval = interval

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.interval <= 0:
            await self.app(scope, receive, send)
            return
        last_sent = time.monotonic()
        done = False
        pinger: asyncio.Task[None] | None = None

        async def ping_while_quiet() -> None:
            nonlocal last_sent
            while True:
                await asyncio.sleep(max(last_sent + self.interval - time.monotonic(), 0.0))
                if done:
                    return
                if time.monotonic() - last_sent >= self.interval:
                    last_sent = time.monotonic()
                    try:
                        await send(_PING_MESSAGE)
                    except OSError:  # the client has gone; the app finds out on its own
                        return

        async def send_noting_time(message: Message) -> None:
            nonlocal last_sent, done, pinger
            last_sent = time.monotonic()
            if message["type"] == "http.response.start":
                if _is_event_stream(message):
                    pinger = asyncio.ensure_future(ping_while_quiet())
            elif not message.get("more_body"):
                # Checked by the pinger right before it sends: nothing may follow this.
                done = True
            await send(message)

        try:
            await self.app(scope, receive, send_noting_time)
        finally:
            done = True
            if pinger is not None:
                pinger.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pinger


class UnexpectedErrorMiddleware:
    """An exception no handler knows becomes a 500 in the envelope of the request's API,
    logged with its traceback. (Starlette's own last-resort handler sits outside every middleware,
    so its answer would lack CORS headers and the request id.)"""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_noting_start(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_noting_start)
        except Exception as exc:
            if started:
                raise  # mid-response: nothing sensible can be sent any more
            logger.exception("unexpected error while handling a request")
            error = APIError(f"The server had an error: {type(exc).__name__}.")
            await error_response(error, scope)(scope, receive, send)
